"""Crashes and signals: the CLI killed with SIGKILL, interrupted with SIGINT/SIGTERM/SIGUSR1.

Each test runs ``python -m evalledger run`` as a real subprocess against the loopback fake server,
hurts it, and then checks the ledger strictly (every complete line must parse, a torn tail is
never read as data) and that resuming finishes the run without paying twice for acknowledged
samples (DESIGN promises 1-3 and "Shutdown").

Kill moments are drawn from ``random.Random(seed)``; the seed is ``$EVALLEDGER_CRASH_SEED``
(default below) so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import (
    all_records,
    cli_env,
    kill_9_when,
    line_count,
    marker,
    popen_cli,
    read_lines,
    run_cli,
    wait_for,
    write_qa_dataset,
)

from evalledger.readers import CheckpointManager

MODEL = "openai/test-model"
CRASH_SEED = int(os.environ.get("EVALLEDGER_CRASH_SEED", "20261123"))


def run_args(data: Path, out: Path, run_id: str, *extra: str) -> list[str]:
    return ["run", "--dataset", str(data), "--model", MODEL, "--output-dir", str(out), "--run-id", run_id,
            "--quiet", *extra]


def assert_torn_bytes_look_like_a_record_prefix(data: bytes) -> None:
    assert data, "empty torn tail"
    assert b"\n" not in data
    assert data.startswith(b'{"sample_id":"'), data[:80]


def ok_counts(records: list[dict]) -> Counter:
    return Counter(r["sample_id"] for r in records if r["status"] == "ok")


def resume_argv(stderr: str, env: dict[str, str]) -> list[str]:
    """The printed resume command, split as a shell would (run through ``python -m`` if not on PATH)."""
    lines = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    assert len(lines) == 1, stderr
    argv = shlex.split(lines[0][len("resume with: "):])
    assert argv[:2] == ["evalledger", "run"], argv
    if shutil.which("evalledger", path=env.get("PATH")) is None:
        return [sys.executable, "-m", "evalledger", *argv[1:]]
    return argv


# ----------------------------------------------------------------------------------- SIGKILL


CRASH_KILLS = int(os.environ.get("EVALLEDGER_CRASH_KILLS", "20"))


@pytest.mark.timeout(240 + 12 * CRASH_KILLS)  # a soak (EVALLEDGER_CRASH_KILLS=200) runs for many minutes
def test_sigkill_at_random_moments_then_resume_completes_exactly_once(fake_server, tmp_path):
    """The crash campaign: CRASH_KILLS kill -9s at seeded random moments, resuming each time.

    ``--checkpoint-every 1`` makes the resume-state write happen after nearly every batch, so
    many kills land during it; the state must then be valid (atomic rename) or absent, never torn.
    Soak locally with ``EVALLEDGER_CRASH_KILLS=200``.
    """
    concurrency, kills_wanted = 8, CRASH_KILLS
    n = max(150, 45 * kills_wanted)
    rng = random.Random(CRASH_SEED)
    fake_server.latency = 0.05
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = run_args(data, out, "crash", "--concurrency", str(concurrency), "--checkpoint-every", "1")
    results = out / "crash" / "results.jsonl"
    states_seen = Counter()

    kills = 0
    while kills < kills_wanted:
        before = line_count(results)
        kill_9_when(args, env, tmp_path, lambda: line_count(results) > before, 30, "new records were written",
                    rng.uniform(0.0, 0.2))
        kills += 1
        # Whatever the moment, the file is whole lines plus at most a prefix of one record.
        recs, tail = read_lines(results)
        if tail:
            assert_torn_bytes_look_like_a_record_prefix(tail)
        assert all(c == 1 for c in ok_counts(recs).values()), "a sample acknowledged twice"
        state, problem = CheckpointManager(out / "crash").read_resume_state()
        assert state is not None or "missing" in problem, problem  # never a torn or half-written state
        states_seen["valid" if state else "missing"] += 1

    done_before_final = len(ok_counts(read_lines(results)[0]))
    assert 0 < done_before_final < n, "the kills must leave work for the final run"

    final = run_cli(args, env, cwd=tmp_path, timeout=60)
    assert final.returncode == 0, final.stderr
    assert f"{n - done_before_final} ok" in final.stderr

    run_dir = out / "crash"
    recs = all_records(run_dir)  # strict: every line parses, no partial last line
    counts = ok_counts(recs)
    assert set(counts) == {f"s{i:05d}" for i in range(n)}
    assert all(c == 1 for c in counts.values()), [sid for sid, c in counts.items() if c != 1]
    assert all(r["status"] == "ok" and r["correct"] is True for r in recs)
    # temp files of state writes cut short by a kill are cleaned up by the next writer
    assert not list(run_dir.glob(".resume_state*.tmp")), list(run_dir.iterdir())
    for aside in run_dir.glob("results.jsonl.corrupt-*"):
        assert_torn_bytes_look_like_a_record_prefix(aside.read_bytes())

    per_sample = [fake_server.count_for(marker(i)) for i in range(n)]
    assert min(per_sample) >= 1
    duplicates = sum(per_sample) - n
    assert duplicates <= concurrency * kills, (duplicates, kills, CRASH_SEED)
    # The campaign's figures, for the closing note / a soak run (`pytest -s` shows them).
    print(f"\ncrash campaign: seed={CRASH_SEED} kills={kills} samples={n} records={len(recs)} "
          f"paid_duplicates={duplicates} corrupt_asides={len(list(run_dir.glob('results.jsonl.corrupt-*')))} "
          f"state_after_kill={dict(states_seen)}")

    st = run_cli(["stats", "crash", "--output-dir", str(out), "--json"], env, cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    stats = json.loads(st.stdout)
    assert stats["completed_samples"] == n and stats["pending_samples"] == 0 and stats["error_count"] == 0
    assert stats["partial_tail_bytes"] == 0 and stats["unparseable_lines"] == 0


def test_torn_tail_after_kill_is_not_data_and_resume_moves_it_aside(fake_server, tmp_path):
    n = 40
    fake_server.latency = 0.05
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = run_args(data, out, "torn", "--concurrency", "4")
    results = out / "torn" / "results.jsonl"

    kill_9_when(args, env, tmp_path, lambda: line_count(results) >= 3, 30, "three records were written")

    recs, tail = read_lines(results)
    done = {r["sample_id"] for r in recs if r["status"] == "ok"}
    assert 3 <= len(done) < n
    if not tail:
        # A kill rarely lands inside a single write(); make the torn tail by hand, as half of
        # the line of a sample that is not done yet.
        sid = next(f"s{i:05d}" for i in range(n) if f"s{i:05d}" not in done)
        line = json.dumps({**recs[0], "sample_id": sid}, ensure_ascii=False, separators=(",", ":"))
        tail = line[: len(line) // 2].encode()
        with open(results, "ab") as f:
            f.write(tail)
    assert_torn_bytes_look_like_a_record_prefix(tail)

    st = run_cli(["stats", "torn", "--output-dir", str(out), "--json"], env, cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    stats = json.loads(st.stdout)
    assert stats["partial_tail_bytes"] == len(tail)
    assert stats["completed_samples"] == len(done)
    assert stats["records_read"] == len(recs)
    assert stats["unparseable_lines"] == 0
    table = run_cli(["stats", "torn", "--output-dir", str(out)], env, cwd=tmp_path)
    assert table.returncode == 0 and f"{len(tail)} bytes of partial tail" in table.stdout

    final = run_cli(args, env, cwd=tmp_path, timeout=60)
    assert final.returncode == 0, final.stderr
    assert "repaired a torn last line" in final.stderr
    asides = list((out / "torn").glob("results.jsonl.corrupt-*"))
    assert len(asides) == 1, asides
    assert asides[0].read_bytes() == tail  # preserved byte for byte, never deleted
    assert asides[0].name in final.stderr

    counts = ok_counts(all_records(out / "torn"))
    assert set(counts) == {f"s{i:05d}" for i in range(n)} and set(counts.values()) == {1}
    # Nothing acknowledged before the kill was sent again.
    for sid in done:
        assert fake_server.count_for(marker(int(sid[1:]))) == 1, sid


# ----------------------------------------------------------------------------------- graceful signals


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 143)],
    ids=["SIGINT", "SIGTERM", "SIGUSR1"],
)
def test_signal_finishes_in_flight_then_printed_command_resumes(fake_server, tmp_path, sig, code):
    n, concurrency = 40, 4
    fake_server.latency = 0.3
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    run_dir = out / "sig"
    results = run_dir / "results.jsonl"

    proc = popen_cli(run_args(data, out, "sig", "--concurrency", str(concurrency)), env, cwd=tmp_path)
    try:
        wait_for(lambda: line_count(results) >= concurrency, 30, "the first records", proc)
        wait_for(lambda: fake_server.in_flight > 0, 10, "requests in flight", proc)
        proc.send_signal(sig)
        t = time.monotonic()
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert took < 8.0, took  # in-flight requests take 0.3 s; nothing waits for the whole 30 s grace
    name = signal.Signals(sig).name
    assert f"received {name}" in err
    assert f"interrupted by {name}" in err
    assert "resume with: evalledger run" in err
    assert "Traceback" not in err

    recs = all_records(run_dir)  # whole lines only
    counts = ok_counts(recs)
    assert all(c == 1 for c in counts.values())
    assert len(counts) < n, "the signal came too late to interrupt anything"
    # No request was sent after the signal (samples still waiting for a request slot are dropped
    # and stay pending), beyond the ~10 ms the signal takes to arrive.
    late = [round(r.received_at - t, 3) for r in fake_server.requests if r.received_at > t + 0.05]
    assert late == [], late
    statuses = fake_server.status_counts()
    # Every request that reached the server was answered (none cut off) and its answer recorded:
    # no paid answer was lost.
    assert statuses == {200: len(counts)}, statuses
    state, problem = CheckpointManager(run_dir).read_resume_state()
    assert problem is None and state["counters"]["ok_records"] == len(counts)

    if sig != signal.SIGINT:
        return  # the printed command is the same for every signal; running it once is enough
    fake_server.latency = 0.0
    resumed = subprocess.run(resume_argv(err, env), env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert fake_server.request_count == n  # nothing paid twice
    assert all(fake_server.count_for(marker(i)) == 1 for i in range(n))
    counts = ok_counts(all_records(run_dir))
    assert set(counts) == {f"s{i:05d}" for i in range(n)} and set(counts.values()) == {1}


def _start_and_wait_for_hanging_requests(server, tmp_path: Path, run_id: str, *extra: str):
    server.latency = 10.0
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    out = tmp_path / "out"
    env = cli_env(server)
    args = run_args(data, out, run_id, "--concurrency", "4", *extra)
    proc = popen_cli(args, env, cwd=tmp_path)
    wait_for(lambda: server.in_flight == 4, 30, "four requests in flight", proc)
    return proc, out / run_id, env, args


def _assert_consistent_and_empty(run_dir: Path) -> None:
    recs, tail = read_lines(run_dir / "results.jsonl")
    assert recs == [] and tail == b""  # nothing finished, nothing torn
    state, problem = CheckpointManager(run_dir).read_resume_state()
    assert problem is None and state is not None
    assert not (run_dir / ".lock.owner").exists()  # the lock was released


def test_second_sigint_stops_at_once(fake_server, tmp_path):
    proc, run_dir, env, args = _start_and_wait_for_hanging_requests(fake_server, tmp_path, "twice",
                                                                    "--grace-seconds", "30")
    try:
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # the first Ctrl-C waits for in-flight samples
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert took < 6.0, took  # not the 10 s latency (nor the 30 s grace); slack for a loaded 2-core machine
    assert "second SIGINT" in err and "resume with: evalledger run" in err
    assert "Traceback" not in err
    _assert_consistent_and_empty(run_dir)

    fake_server.latency = 0.0
    resumed = run_cli(args, env, cwd=tmp_path, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert len(all_records(run_dir)) == 8


def test_grace_period_expiry_cancels_in_flight(fake_server, tmp_path):
    proc, run_dir, env, args = _start_and_wait_for_hanging_requests(fake_server, tmp_path, "grace",
                                                                    "--grace-seconds", "1")
    try:
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert 1.0 <= took < 7.0, took  # waited the 1 s grace period, then stopped (not the 10 s latency)
    assert "received SIGTERM" in err and "waiting up to 1s" in err
    assert "Traceback" not in err
    _assert_consistent_and_empty(run_dir)


def test_sigkill_during_torn_tail_repair_loses_nothing(fake_server, tmp_path):
    """Kill the writer while it moves a (16 MiB) torn tail aside; the bytes must survive every kill."""
    n = 6
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = run_args(data, out, "repair", "--limit", "3")
    first = run_cli(args, env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = out / "repair"
    results = run_dir / "results.jsonl"
    good = results.read_bytes()
    # Big enough (16 MiB) that copying it aside takes a visible moment on this disk.
    tail = b'{"sample_id":"s00004","status":"ok","pad":"' + os.urandom(8 * 1024 * 1024).hex().encode()
    with open(results, "ab") as f:
        f.write(tail)

    rng = random.Random(CRASH_SEED)
    killed_mid_repair = 0
    for _ in range(3):
        asides_before = len(list(run_dir.glob("results.jsonl.corrupt-*")))
        proc = popen_cli(args, env, cwd=tmp_path)
        try:
            wait_for(lambda: len(list(run_dir.glob("results.jsonl.corrupt-*"))) > asides_before, 30,
                     "the repair to start", proc)
            time.sleep(rng.uniform(0.0, 0.05))
            proc.kill()
            proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        data_now = results.read_bytes()
        # Either untouched (tail still there) or already cut back to the good lines: never half.
        assert data_now in (good + tail, good), len(data_now)
        if data_now == good + tail:
            killed_mid_repair += 1
        else:
            break  # the repair completed before the kill; nothing more to interrupt

    final = run_cli([*args[:-2], "--limit", str(n)], env, cwd=tmp_path, timeout=60)
    assert final.returncode == 0, final.stderr
    assert results.read_bytes().startswith(good) and all_records(run_dir)
    asides = [p.read_bytes() for p in run_dir.glob("results.jsonl.corrupt-*")]
    assert tail in asides, "the complete torn tail must be preserved in one aside file"
    assert all(tail.startswith(a) for a in asides)  # interrupted copies are prefixes, nothing invented
    assert len(ok_counts(all_records(run_dir))) == n
    print(f"\nrepair kills: {killed_mid_repair} landed mid-repair, {len(asides)} aside files")
