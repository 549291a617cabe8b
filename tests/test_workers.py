"""``--workers N``: one run, N processes on this host (run/workers.py, run/worker_session.py,
run/hostlimit.py), through the real CLI and SDK against the loopback fake server.

What is checked: every sample exactly once (one ok record in the ledger, one answered request in the
server's log) for N = 2 and 3, from the CLI, Python and a study; a resume with another N; kill -9 of
one worker, then the same command; Ctrl-C / SIGTERM to the parent (one exit code, one resume
command); the run's lock held for the workers; one worker's 429 storm pausing the others; the
shared ``--rpm`` measured from the server's log, for a run's workers and for two runs sharing a
host limiter (EVALLEDGER_HOST_LIMITER).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import (
    all_records,
    cli_env,
    line_count,
    marker,
    popen_cli,
    run_cli,
    run_config,
    settle_requests,
    wait_for,
    write_qa_dataset,
)

from evalledger import get_stats, run_experiment
from evalledger.errors import UsageError
from evalledger.run.hostlimit import HOST_LIMITER_ENV, HostLimiter, limiter_dir, rpm_bucket, sweep_stale_limiters
from evalledger.run.units import PendingUnits
from evalledger.run.worker_link import deal
from evalledger.study import StudyConfig, StudyModel, run_study

MODEL = "openai/test-model"


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", str(data), "--model", MODEL, "--output-dir", str(out), "--run-id", "w", "--quiet",
            *extra]


def ok_counts(run_dir: Path) -> Counter:
    return Counter(r["sample_id"] for r in all_records(run_dir) if r["status"] == "ok")


def paid(server, n: int) -> list[int]:
    """Answered (paid) requests per sample, from the server's log."""
    return [server.count_for(marker(i), status=200) for i in range(n)]


def assert_each_once(run_dir: Path, server, n: int, *, paid_twice_at_most: int = 0) -> None:
    counts = ok_counts(run_dir)  # strict: every line of every results file parses, no partial tail
    assert set(counts) == {f"s{i:05d}" for i in range(n)}
    assert all(c == 1 for c in counts.values()), [sid for sid, c in counts.items() if c != 1]
    per_sample = paid(server, n)
    assert min(per_sample) == 1, per_sample
    assert sum(per_sample) - n <= paid_twice_at_most, per_sample


def resume_argv(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    assert len(lines) == 1, stderr
    argv = shlex.split(lines[0][len("resume with: "):])
    assert argv[:2] == ["evalledger", "run"], argv
    return argv[1:]


def worker_slices(n: int, workers: int) -> list[list[str]]:
    """Which sample ids each worker is dealt when all ``n`` are pending (the parent's own rule)."""
    samples = [SimpleNamespace(id=f"s{i:05d}") for i in range(n)]
    return [[sid for _, ids in parts for sid in ids] for parts in deal(PendingUnits([(1, samples)]), workers)]


def max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any ``window`` seconds."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


# ------------------------------------------------------------------------------------------ the basics
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_send_every_sample_once_and_readers_see_each_record_once(fake_server, tmp_path, workers):
    n = 60
    fake_server.latency = 0.02
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    r = run_cli(run_args(data, out, "--workers", str(workers), "--concurrency", "6"), env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"this invocation: {n} ok, 0 errors, {n} requests" in r.stderr
    run_dir = out / "w"
    assert_each_once(run_dir, fake_server, n)
    # Each worker wrote its own results file, each about a share of the run; the parent wrote none.
    per_file = {p.name: line_count(p) for p in sorted(run_dir.glob("results*.jsonl"))}
    assert per_file.pop("results.jsonl", 0) == 0
    assert sorted(per_file) == [f"results.worker-{k}.jsonl" for k in range(1, workers + 1)], per_file
    assert set(per_file.values()) == {n // workers}, per_file
    # One status marker, the parent's, vouching for the workers' files.
    assert [p.name for p in run_dir.glob("status*.json")] == ["status.json"]
    marker_doc = json.loads((run_dir / "status.json").read_text())
    assert marker_doc["state"] == "complete" and f"results.worker-{workers}.jsonl" in marker_doc["files"]

    st = run_cli(["stats", "w", "--output-dir", str(out), "--json"], env, cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    stats = json.loads(st.stdout)
    assert stats["completed_samples"] == n and stats["correct_count"] == n and stats["state"] == "complete"
    assert sum(s["ok"] for s in stats["shards"].values()) == n
    v = run_cli(["verify", "w", "--output-dir", str(out), "--json"], env, cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    s = run_cli(["status", str(run_dir), "--json"], env, cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert json.loads(s.stdout)["done"] == n and json.loads(s.stdout)["state"] == "complete"
    merged = tmp_path / "merged.jsonl"
    m = run_cli(["merge", str(run_dir), "-o", str(merged)], env, cwd=tmp_path)
    assert m.returncode == 0, m.stdout + m.stderr
    assert line_count(merged) == n


def test_python_api_and_resume_with_another_number_of_workers(fake_server, tmp_path):
    n = 45
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    first = run_experiment(run_config(fake_server, data, out, workers=3, concurrency=6, limit=20))
    assert (first.exit_code, first.ok, first.requests, first.remaining) == (0, 20, 20, 0)
    second = run_experiment(run_config(fake_server, data, out, workers=2, concurrency=4))
    assert (second.exit_code, second.skipped_completed, second.ok, second.requests) == (0, 20, n - 20, n - 20)
    assert second.stats["completed_samples"] == n
    third = run_experiment(run_config(fake_server, data, out, workers=1, epochs=2, concurrency=4))
    assert (third.exit_code, third.skipped_completed, third.ok) == (0, n, n)
    run_dir = first.run_dir
    assert sorted(p.name for p in run_dir.glob("results.worker-*.jsonl")) == [
        f"results.worker-{k}.jsonl" for k in (1, 2, 3)]
    # Epoch 1 once each over the workers' files, epoch 2 once each in the unsharded run's own.
    units = Counter((r["sample_id"], r.get("epoch", 1)) for r in all_records(run_dir) if r["status"] == "ok")
    assert len(units) == 2 * n and set(units.values()) == {1}
    assert sum(paid(fake_server, n)) == 2 * n


def test_workers_from_a_study_and_its_config_file(fake_server, tmp_path):
    from evalledger.configfile import load_study_config

    n = 12
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    study = StudyConfig(models=(StudyModel(MODEL, options={"base_url": fake_server.openai_base_url, "workers": 2}),),
                        datasets=(str(data),),
                        run_options={"output_dir": out, "api_key": "sk-test", "quiet": True, "concurrency": 4})
    result = run_study(study, echo=lambda _: None)
    assert result.exit_code == 0
    (pair,) = result.pairs
    assert pair.summary.ok == n
    assert len(list(pair.summary.run_dir.glob("results.worker-*.jsonl"))) == 2
    assert_each_once(pair.summary.run_dir, fake_server, n)

    toml = tmp_path / "study.toml"
    toml.write_text(f'datasets = ["{data}"]\n\n[shared]\nworkers = 3\n\n[[models]]\nmodel = "{MODEL}"\n'
                    "[[models]]\nmodel = \"openai/other\"\nworkers = 2\n")
    grid = load_study_config(toml)
    assert grid.run_config(MODEL, str(data)).workers == 3
    assert grid.run_config("openai/other", str(data)).workers == 2


def test_a_shard_run_with_workers_is_that_shard_for_every_reader(fake_server, tmp_path):
    n = 40
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    first = run_cli(run_args(data, out, "--shard", "1/2", "--workers", "2", "--concurrency", "4"), env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = out / "w"
    assert sorted(p.name for p in run_dir.glob("results*.jsonl")) == [
        "results.shard-1-of-2.worker-1.jsonl", "results.shard-1-of-2.worker-2.jsonl"]
    status = json.loads(run_cli(["status", str(run_dir), "--json"], env, cwd=tmp_path).stdout)
    one, two = status["shard_status"]
    assert (one["state"], one["done"], one["records"]) == ("done", one["total"], one["total"])
    assert two["state"] == "missing" and not status["complete"]
    second = run_cli(run_args(data, out, "--shard", "2/2"), env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    v = run_cli(["verify", "w", "--output-dir", str(out)], env, cwd=tmp_path)
    assert v.returncode == 0, v.stdout  # no record in another shard's file, no overlap
    assert json.loads(run_cli(["status", str(run_dir), "--json"], env, cwd=tmp_path).stdout)["complete"]
    assert_each_once(run_dir, fake_server, n)


def test_max_cost_holds_for_the_run_across_its_workers(fake_server, tmp_path):
    n = 40
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    # Expensive, so a few samples cost cents; max_tokens near the replies' length, so the projection
    # (prompt + max_tokens) lets the budget admit several samples per worker.
    price = dict(price_input=1000.0, price_output=1000.0, max_tokens=16)
    probe = run_experiment(run_config(fake_server, data, tmp_path / "probe", limit=1, cache=False, **price))
    budget = all_records(probe.run_dir)[0]["cost_usd"] * 12.5
    s = run_experiment(run_config(fake_server, data, out, workers=2, concurrency=4, max_cost=budget, **price))
    assert s.exit_code == 5 and s.status == "budget", s.message
    spent = get_stats(s.run_dir)["cost_usd"]
    assert spent <= budget and 4 <= s.ok <= 12, (spent, budget, s.ok)
    assert all(line_count(s.run_dir / f"results.worker-{k}.jsonl") >= 2 for k in (1, 2))  # both spent their share
    assert f"${budget:,.4f}" in s.message
    assert "--max-cost" in s.resume_command and "--workers 2" in s.resume_command
    done = run_experiment(run_config(fake_server, data, out, workers=2, concurrency=4, max_cost=budget * 10, **price))
    assert done.exit_code == 0 and done.stats["completed_samples"] == n
    assert get_stats(s.run_dir)["cost_usd"] <= budget * 10


# ------------------------------------------------------------------------------------------ crashes and signals
def test_kill_9_of_one_worker_then_the_same_command_finishes(fake_server, tmp_path):
    n = 90
    fake_server.latency = 0.15
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = run_args(data, out, "--workers", "3", "--concurrency", "6")
    run_dir = out / "w"
    victim = run_dir / "results.worker-2.jsonl"
    proc = popen_cli(args, env, cwd=tmp_path)
    try:
        wait_for(lambda: line_count(victim) >= 4, 60, "worker 2 wrote records", proc)
        # While the workers write, no other invocation may write the run.
        for other in ([], ["--shard", "1/2"], ["--workers", "2"]):
            r = run_cli(run_args(data, out, *other), env, cwd=tmp_path)
            assert r.returncode == 2 and ("being written" in r.stderr or "is writing" in r.stderr), r.stderr
        owner = json.loads((run_dir / ".lock.worker-2.owner").read_text())
        assert owner["worker"] == 2 and owner["pid"] != proc.pid
        os.kill(owner["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "worker 2 of 3" in err and "killed by SIGKILL" in err, err
    left = ok_counts(run_dir)
    assert 0 < n - len(left) <= n // 3, len(left)  # only the killed worker's units are left
    assert all(c == 1 for c in left.values())
    st = json.loads(run_cli(["stats", "w", "--output-dir", str(out), "--json"], env, cwd=tmp_path).stdout)
    assert st["pending_samples"] == n - len(left)
    settle_requests(fake_server)

    again = run_cli(resume_argv(err), env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{n - len(left)} ok" in again.stderr
    # A killed worker loses at most its requests in flight (2 slots); the response cache has most of them.
    assert_each_once(run_dir, fake_server, n, paid_twice_at_most=2)


def test_kill_9_of_the_parent_its_workers_stop_and_hold_the_run_until_they_have(fake_server, tmp_path):
    n = 40
    fake_server.latency = 4.0
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = run_args(data, out, "--workers", "2", "--concurrency", "4")
    run_dir = out / "w"
    proc = popen_cli(args, env, cwd=tmp_path)
    try:
        wait_for(lambda: line_count(run_dir / "results.worker-1.jsonl") >= 1, 60, "worker 1 wrote a record", proc)
        proc.kill()
        proc.wait(timeout=10)  # (not communicate(): the workers hold its stderr until they end)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    owners = [json.loads(p.read_text())["pid"] for p in run_dir.glob(".lock.worker-*.owner")]
    assert len(owners) == 2
    # The orphaned workers still hold the run's lock (they inherited it): nobody else may write it.
    r = run_cli(run_args(data, out), env, cwd=tmp_path)
    assert r.returncode == 2 and "worker processes of an earlier `run --workers` are still writing" in r.stderr, r.stderr

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    # They noticed the parent is gone and stopped as on SIGTERM: the requests in flight were finished.
    wait_for(lambda: all(gone(pid) for pid in owners), 60, "the orphaned workers stopped")
    assert not list(run_dir.glob(".lock.worker-*.owner"))  # closed cleanly
    proc.communicate(timeout=10)
    fake_server.latency = 0.01
    again = run_cli(args, env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_each_once(run_dir, fake_server, n)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_parent_stops_every_worker_with_one_exit_code_and_one_resume_command(
        fake_server, tmp_path, signum, code):
    n = 200
    fake_server.latency = 0.2
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    run_dir = out / "w"
    proc = popen_cli(run_args(data, out, "--workers", "2", "--concurrency", "4"), env, cwd=tmp_path)
    try:
        wait_for(lambda: all(line_count(run_dir / f"results.worker-{k}.jsonl") >= 2 for k in (1, 2)), 60,
                 "both workers wrote records", proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    argv = resume_argv(err)
    assert argv[argv.index("--workers") + 1] == "2"
    assert f"interrupted by {signal.Signals(signum).name}" in err
    done = ok_counts(run_dir)
    assert 0 < len(done) < n
    # Both workers stopped (none is left holding a lock), and the marker says so.
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert not any(json.loads(p.read_text()).get("pid") for p in run_dir.glob(".lock*.owner"))
    fake_server.latency = 0.01
    again = run_cli(argv, env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{n - len(done)} ok" in again.stderr
    # The grace period let every request in flight finish and be recorded: nothing paid twice.
    assert_each_once(run_dir, fake_server, n)


# ------------------------------------------------------------------------------------------ shared limits
def test_a_429_storm_seen_by_one_worker_pauses_them_all(fake_server, tmp_path):
    n = 300
    fake_server.latency = 0.1
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    first, second = ([marker(int(sid[1:])) for sid in ids] for ids in worker_slices(n, 2))

    def sent(markers: list[str]) -> list[float]:
        return sorted(r.received_at for r in fake_server.requests if any(m in r.text for m in markers))

    proc = popen_cli(run_args(data, out, "--workers", "2", "--concurrency", "8", "--max-retry-wait", "5", "--json"),
                     cli_env(fake_server), cwd=tmp_path)
    try:
        wait_for(lambda: len(sent(first)) >= 8 and len(sent(second)) >= 8, 60, "both workers were sending", proc)
        # Worker 2's next dozen samples are answered 429 + Retry-After 2: a storm only it sees.
        k = len(sent(second)) + 6
        for m in second[k:k + 12]:
            fake_server.fail_when(m, status=429, retry_after=2, times=1)
        out_text, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out_text)
    assert summary["limits"]["storms"] >= 1 and summary["limits"]["decreases"] >= 1
    log = fake_server.requests
    assert not any(r.status == 429 and any(m in r.text for m in first) for r in log)  # worker 1 got no 429
    storm_at = min(r.received_at for r in log if r.status == 429)
    mine = sent(first)
    assert sum(t < storm_at for t in mine) >= 8  # worker 1 was sending before (and, unshared, would go on)
    after = [storm_at] + [t for t in mine if t >= storm_at]
    gaps = [b - a for a, b in zip(after, after[1:])]
    # Yet it waited out worker 2's Retry-After: without the shared pause its requests follow each
    # other within a latency (0.1 s).
    assert max(gaps) >= 1.5, gaps
    assert_each_once(out / "w", fake_server, n)


def shared_rpm_holds(times: list[float], rpm: float, slack_s: float = 0.5) -> None:
    """At most the bucket's burst plus rpm/60 per second in every window, over every window length.

    A token bucket's schedule scales with its rate (its capacity is rpm/6: ten seconds' worth), so
    a run at 4×rpm for 15 s is the run at rpm for a minute with the clock sped up 4 times: checking
    every window from 1 s to the whole run at a high rpm checks the minute at the flag's rpm.
    ``slack_s``: the requests of half a second, for the time between a request's reservation in the
    client and its arrival in the server's log.
    """
    burst, rate = rpm / 6, rpm / 60
    for window in (1.0, 2.0, 5.0, 10.0, times[-1] - times[0]):
        assert max_in_window(times, window) <= burst + rate * (window + slack_s), window


@pytest.mark.minute
def test_the_shared_rpm_holds_over_a_literal_minute(fake_server, tmp_path):
    """The same at the flag's own pace: --rpm 300 across 3 workers for over a minute, and no
    60-second window of the server's log holds more than the minute's 300 plus the bucket's burst.
    A minute long, so not in the default suite: ``.ci/run`` runs it after the suite (``-m minute``)."""
    rpm, n = 300, 360  # 5/s after a burst of 50: ~62 s
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", workers=3, concurrency=30, rpm=rpm))
    assert s.exit_code == 0 and s.ok == n
    times = sorted(r.received_at for r in fake_server.requests)
    assert times[-1] - times[0] >= 60.0
    assert max_in_window(times, 60.0) <= rpm + rpm / 6
    shared_rpm_holds(times, rpm)


def test_the_shared_rpm_holds_across_the_workers(fake_server, tmp_path):
    rpm, n = 1200, 400  # 20/s after a burst of 200: ~10 s; unshared, 3 buckets would let all 400 go at once
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", workers=3, concurrency=30, rpm=rpm))
    assert s.exit_code == 0 and s.ok == n
    times = sorted(r.received_at for r in fake_server.requests)
    assert times[-1] - times[0] >= (n - rpm / 6) / (rpm / 60) - 1.0  # the limit was binding
    shared_rpm_holds(times, rpm)
    assert s.limits["throttled_s"] > 0


def test_two_runs_on_one_host_share_a_named_host_limiter(fake_server, tmp_path):
    """The Slurm case: array tasks on one node, each its own process, against one key (opt-in)."""
    rpm, n = 1200, 360
    data = write_qa_dataset(tmp_path / "d.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server, **{HOST_LIMITER_ENV: f"test-{uuid.uuid4().hex[:8]}"})
    procs = [popen_cli(run_args(data, out, "--shard", f"{k}/2", "--rpm", str(rpm), "--concurrency", "20"), env,
                       cwd=tmp_path) for k in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    times = sorted(r.received_at for r in fake_server.requests)
    assert len(times) == n
    assert times[-1] - times[0] >= (n - rpm / 6) / (rpm / 60) - 1.5
    shared_rpm_holds(times, rpm)
    assert_each_once(out / "w", fake_server, n)
    # Another run naming the same limiter with other limits is refused while it is in use.
    name = env[HOST_LIMITER_ENV]
    holder = HostLimiter.attach(name, rpm, None)
    try:
        with pytest.raises(UsageError, match="--rpm 1200 --tpm none; this run has --rpm 60"):
            HostLimiter.attach(name, 60, None)
    finally:
        holder.close()
        for path in (holder.path, holder.attach_path):  # a named limiter outlives its runs: this test's does not
            path.unlink(missing_ok=True)


def test_host_limiter_serves_reservations_in_order_and_cleans_up(tmp_path):
    now = [100.0]
    private = HostLimiter.private(600, None)
    path = private.path
    assert path.parent == limiter_dir() and path.exists()
    a = HostLimiter(path, 600, None, clock=lambda: now[0])
    bucket = rpm_bucket(a)
    # 600/min: a burst of 100, then one every 0.1 s, served in the order reserved across processes.
    assert all(bucket.try_take(1) for _ in range(100))
    assert not bucket.try_take(1)
    waits = [a.reserve(0, 1) for _ in range(3)]
    assert waits == pytest.approx([0.1, 0.2, 0.3])
    # A storm's pause and cuts are one for every attached process.
    assert a.pause_until(now[0] + 2) == private.read()[0]
    assert a.cut(now[0], 3.0) == 1 and private.cut(now[0] + 1, 3.0) is None and private.read()[1] == 1
    a.close()
    # A private limiter whose run was killed (nobody attached) is swept; a live one is not.
    killed = subprocess.run([sys.executable, "-c", "import os; from evalledger.run.hostlimit import HostLimiter; "
                             "print(HostLimiter.private(None, None).path, flush=True); os.kill(os.getpid(), 9)"],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stale_path = Path(killed.stdout.strip())
    assert stale_path.exists()
    sweep_stale_limiters()
    assert not stale_path.exists() and path.exists()
    private.close()
    assert not path.exists()


def test_one_worker_is_the_old_path_no_worker_files_no_limiter(fake_server, tmp_path):
    before = set(limiter_dir().glob("evalledger-*"))
    data = write_qa_dataset(tmp_path / "d.jsonl", 6)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", rpm=6000))
    assert s.exit_code == 0 and s.ok == 6
    assert not list(s.run_dir.glob("*worker*")) and set(limiter_dir().glob("evalledger-*")) == before
    assert "workers" not in s.limits
    # --workers with nothing pending starts no worker process and leaves no new file either.
    again = run_experiment(run_config(fake_server, data, tmp_path / "out", workers=2))
    assert again.exit_code == 0 and again.skipped_completed == 6 and not list(s.run_dir.glob("*worker*"))
