"""``--shard auto``, the generated sbatch script, ``evalledger status`` and ``evalledger merge``, without Slurm.

The script is run for real by bash with the variables Slurm would set and a stand-in
``scontrol`` that records what it was asked, against the loopback fake API; the commands are
real subprocesses. The same paths under a real Slurm are in test_slurm.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import all_records, cli_env, marker, read_lines, run_cli, write_qa_dataset

from evalledger.datasets import parse_shard, shard_of
from evalledger.errors import UsageError
from evalledger.ops import SlurmOptions, merge_run, render_script, run_status
from evalledger.ops.slurm import array_spec
from evalledger.readers import CheckpointManager

MODEL = "openai/test-model"


def slurm_env(task_id: int, count: int, *, task_min: int = 1, step: int = 1, job_id: int = 77) -> dict[str, str]:
    """The array variables Slurm sets in a task of a contiguous (optionally stepped) array."""
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_ARRAY_JOB_ID": str(job_id),
        "SLURM_ARRAY_TASK_ID": str(task_id),
        "SLURM_ARRAY_TASK_MIN": str(task_min),
        "SLURM_ARRAY_TASK_MAX": str(task_min + (count - 1) * step),
        "SLURM_ARRAY_TASK_COUNT": str(count),
        "SLURM_ARRAY_TASK_STEP": str(step),
    }


# ----------------------------------------------------------------------------------- --shard auto


@pytest.mark.parametrize(("task_min", "step"), [(0, 1), (1, 1), (5, 1), (0, 2), (1, 3)])
def test_shard_auto_maps_every_task_to_its_own_shard(task_min: int, step: int) -> None:
    count = 8
    shards = [parse_shard("auto", environ=slurm_env(task_min + i * step, count, task_min=task_min, step=step))
              for i in range(count)]
    assert shards == [(k, count) for k in range(1, count + 1)]


def test_shard_auto_with_a_throttle_sees_the_same_variables() -> None:
    # --array=0-7%4: Slurm still reports MIN=0 MAX=7 COUNT=8 (seen on 22.05); only scheduling changes.
    assert parse_shard("auto", environ=slurm_env(7, 8, task_min=0)) == (8, 8)


def test_shard_auto_refuses_an_array_with_holes() -> None:
    # --array=1,3,8 as Slurm reports it: COUNT=3 MIN=1 MAX=8 STEP=1.
    env = {"SLURM_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_MAX": "8", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_STEP": "1"}
    for task in ("1", "3", "8"):  # even the tasks that would map inside 1..3 are refused
        with pytest.raises(UsageError, match="holes.*--array=1-3"):
            parse_shard("auto", environ={**env, "SLURM_ARRAY_TASK_ID": task})


def test_shard_auto_outside_an_array_says_so() -> None:
    with pytest.raises(UsageError, match="not running in a Slurm job array.*--shard K/N"):
        parse_shard("auto", environ={})
    with pytest.raises(UsageError, match="in a Slurm job that is not an array"):
        parse_shard("auto", environ={"SLURM_JOB_ID": "12"})
    with pytest.raises(UsageError, match="not integers"):
        parse_shard("auto", environ={**slurm_env(1, 2), "SLURM_ARRAY_TASK_ID": "x"})


def test_run_with_shard_auto_outside_an_array_exits_2_before_anything(tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = run_cli(["run", "--dataset", str(data), "--model", MODEL, "-o", str(tmp_path / "out"), "--shard", "auto"],
                env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--shard auto: not running in a Slurm job array" in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------------- the script


def test_array_spec_and_options() -> None:
    assert array_spec(4) == "1-4"
    assert array_spec(10, 3) == "1-10%3"
    assert array_spec(4, 8) == "1-4"  # a throttle above N is no throttle
    for bad, flag in ((SlurmOptions(shards=0), "--shards"), (SlurmOptions(shards=2, time="4h"), "--time"),
                      (SlurmOptions(shards=2, mem="lots"), "--mem"), (SlurmOptions(shards=2, max_parallel=0), "--max-parallel"),
                      (SlurmOptions(shards=2, partition="a b"), "--partition")):
        with pytest.raises(UsageError, match=flag):
            bad.validate()


def test_rendered_script_has_the_directives_and_is_valid_bash(tmp_path: Path) -> None:
    opts = SlurmOptions(shards=6, partition="gpu", time="1:00:00", cpus=2, mem="4G", max_parallel=3,
                        extra_sbatch=("--account=proj",))
    text = render_script(["python", "-m", "evalledger", "run", "--dataset", "/d/x y.jsonl", "--shard", "auto"], opts,
                         run_id="r1", run_dir=tmp_path / "out" / "r1", workdir=tmp_path)
    directives = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]
    for d in ("--array=1-6%3", "--requeue", "--signal=B:USR1@60", "--open-mode=append", "--partition=gpu",
              "--time=1:00:00", "--cpus-per-task=2", "--mem=4G", "--account=proj", f"--chdir={tmp_path}",
              f"--output={tmp_path}/out/r1/slurm/logs/shard-%a-of-6.log"):
        assert d in directives, (d, directives)
    # sbatch stops reading directives at the first command: they must all come before it.
    first_command = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    assert max(i for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH")) < first_command
    assert "'/d/x y.jsonl'" in text  # quoted for bash
    script = tmp_path / "s.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def _slurm_cli(data: Path, out: Path, *extra: str) -> list[str]:
    return ["slurm", "--dataset", str(data), "--model", MODEL, "--output-dir", str(out), "--shards", "2", *extra]


def _script_run_command(script: Path) -> list[str]:
    """The argv of run_cmd=( … ) in a generated script, as bash sees it."""
    out = subprocess.run(["bash", "-c", f'eval "$(sed -n "/^run_cmd=(/,/^)/p" {script})"; printf "%s\\n" "${{run_cmd[@]}}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_slurm_command_writes_the_script_with_the_run_options(fake_server, tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    out = tmp_path / "out"
    sub = tmp_path / "sub"
    sub.mkdir()
    # Relative paths on purpose: the task starts elsewhere and must still find them.
    r = run_cli(["slurm", "--dataset", "../qa.jsonl", "--model", MODEL, "-o", "../out", "--shards", "3",
                 "--max-tokens", "64", "--no-retry-errors", "--concurrency", "3", "--max-parallel", "2", "--time", "30"],
                cli_env(fake_server), cwd=sub)
    assert r.returncode == 0, r.stderr
    scripts = list(out.glob("*/slurm/run-3-shards.sbatch"))
    assert len(scripts) == 1, r.stdout
    run_dir = scripts[0].parents[1]
    assert f"wrote {scripts[0]}" in r.stdout and "sbatch " in r.stdout
    # Writing a script changes no run file: drift is checked read-only, the tasks create the manifest.
    assert not (run_dir / "manifest.json").exists()
    listed = run_cli(["list", "--output-dir", str(out), "--json"], cli_env(fake_server))
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # no phantom run
    assert (run_dir / "slurm" / "logs").is_dir()  # sbatch does not create the log directory
    argv = _script_run_command(scripts[0])
    assert argv[:4] == [sys.executable, "-m", "evalledger", "run"]
    assert argv[-2:] == ["--shard", "auto"]
    assert "--no-retry-errors" in argv
    rest = [a for a in argv[4:-2] if a != "--no-retry-errors"]
    pairs = dict(zip(rest[::2], rest[1::2], strict=True))
    assert pairs["--dataset"] == str(data.resolve()) and pairs["--output-dir"] == str(out.resolve())
    assert pairs["--max-tokens"] == "64" and pairs["--concurrency"] == "3"
    assert pairs["--grace-seconds"] == "20"  # below Slurm's KillWait unless the user chose one
    assert "--shards" not in argv and "--time" not in argv and "--max-parallel" not in argv
    text = scripts[0].read_text()
    assert "#SBATCH --array=1-3%2" in text and "#SBATCH --time=30" in text
    assert fake_server.request_count == 0  # writing a script sends nothing


@pytest.mark.parametrize(("flag", "why"), [("--overwrite", "every task would move the run aside"),
                                           ("--no-resume", "must resume its own shard")])
def test_slurm_command_refuses_flags_that_break_requeue(tmp_path: Path, flag: str, why: str) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    r = run_cli(_slurm_cli(data, tmp_path / "out", flag), dict(os.environ), cwd=tmp_path)
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert not list(tmp_path.glob("out/*/slurm/*.sbatch"))


def test_slurm_command_checks_the_dataset_and_sbatch_before_queueing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n{oops\n')
    r = run_cli(_slurm_cli(bad, tmp_path / "out", "--submit"), dict(os.environ), cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl line 2" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()

    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    env = dict(os.environ, PATH=str(no_slurm))  # the interpreter is called by absolute path
    r = run_cli(_slurm_cli(data, tmp_path / "out", "--submit"), env, cwd=tmp_path)
    assert r.returncode == 2 and "sbatch not found" in r.stderr, r.stderr

    sbatch = no_slurm / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    r = run_cli(_slurm_cli(data, tmp_path / "out", "--submit", "--partition", "nope"), env, cwd=tmp_path)
    assert r.returncode == 2 and "invalid partition specified: nope" in r.stderr, r.stderr


def _write_script(fake_server, tmp_path: Path, n: int, shards: int, *extra: str) -> tuple[Path, Path]:
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    r = run_cli(["slurm", "--dataset", str(data), "--model", MODEL, "-o", str(tmp_path / "out"), "--shards", str(shards),
                 "--concurrency", "2", *extra], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (script,) = tmp_path.glob(f"out/*/slurm/run-{shards}-shards.sbatch")
    return script, script.parents[1]


def _fake_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in scontrol on PATH that appends its arguments to a file."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / "scontrol.calls"
    scontrol = bindir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    return bindir, calls


def test_script_forwards_usr1_saves_and_requeues_then_resumes_without_paying_twice(fake_server, tmp_path: Path) -> None:
    fake_server.latency = 0.15
    n = 30
    script, run_dir = _write_script(fake_server, tmp_path, n, 1)
    bindir, calls = _fake_scontrol(tmp_path)
    env = cli_env(fake_server, **slurm_env(1, 1, job_id=4242))
    env["PATH"] = f"{bindir}:{env['PATH']}"
    results = run_dir / "results.shard-1-of-1.jsonl"

    # First incarnation: Slurm's warning signal (USR1 to the batch shell only) arrives mid-run.
    p = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (results.exists() and len(read_lines(results)[0]) >= 4):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[0] if p.poll() is not None else "timeout"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGUSR1)  # the shell's pid, as with --signal=B:USR1
    log, _ = p.communicate(timeout=60)
    assert p.returncode == 143, log
    assert "USR1: asking evalledger to save" in log and "evalledger exited with 143" in log, log
    # The task asks for itself to come back, by JOBID_TASKID: the bare job ID could mean the whole array.
    assert calls.read_text().split() == ["requeue", "4242_1"], log
    first = [r["sample_id"] for r in all_records(run_dir)]
    assert 4 <= len(first) < n, len(first)  # stopped mid-run: the test means something

    # The requeued incarnation resumes: only the rest is sent.
    env["SLURM_RESTART_COUNT"] = "1"
    r = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restart 1" in r.stdout
    assert calls.read_text().split() == ["requeue", "4242_1"]  # no second requeue after a clean finish
    recs = all_records(run_dir)
    assert sorted(x["sample_id"] for x in recs) == [f"s{i:05d}" for i in range(n)]  # each once
    for i in range(n):
        assert fake_server.count_for(marker(i)) == 1, i  # nothing paid twice

    # Requeued again after the shard is complete: exits 0 at once, sends nothing.
    before = fake_server.request_count
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fake_server.request_count == before
    assert "evalledger exited with 0" in r.stdout
    assert time.monotonic() - t0 < 15  # start-up and a dataset check, no waiting on anything


def test_script_on_sigterm_saves_and_leaves_requeueing_to_slurm(fake_server, tmp_path: Path) -> None:
    fake_server.latency = 0.15
    script, run_dir = _write_script(fake_server, tmp_path, 20, 1)
    bindir, calls = _fake_scontrol(tmp_path)
    env = cli_env(fake_server, **slurm_env(1, 1))
    env["PATH"] = f"{bindir}:{env['PATH']}"
    results = run_dir / "results.shard-1-of-1.jsonl"
    p = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (results.exists() and len(read_lines(results)[0]) >= 2):
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)  # what Slurm does on preemption or scancel: every process
    log, _ = p.communicate(timeout=60)
    assert p.returncode == 143, log
    assert not calls.exists()  # scancel must stay cancelled; --requeue brings pre-empted tasks back
    done = len(all_records(run_dir))
    assert 2 <= done < 20
    assert fake_server.request_count == done  # in-flight samples finished within the grace period


# ----------------------------------------------------------------------------------- status and merge


def _run_shard(fake_server, data: Path, out: Path, k: int, n: int, tmp_path: Path) -> None:
    r = run_cli(["run", "--dataset", str(data), "--model", MODEL, "-o", str(out), "--run-id", "r", "--quiet",
                 "--shard", f"{k}/{n}"], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def _status(out: Path, *extra: str) -> dict:
    r = run_cli(["status", "r", "--output-dir", str(out), "--json", *extra], dict(os.environ))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_status_per_shard_missing_running_stalled_and_done(fake_server, tmp_path: Path) -> None:
    n = 24
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    _run_shard(fake_server, data, out, 1, 3, tmp_path)
    _run_shard(fake_server, data, out, 2, 3, tmp_path)
    run_dir = out / "r"
    sizes = {k: sum(1 for i in range(n) if shard_of(f"s{i:05d}", 3) == k) for k in (1, 2, 3)}

    st = _status(out, "--shards", "3")
    assert (st["total"], st["done"], st["errors"], st["pending"]) == (n, sizes[1] + sizes[2], 0, sizes[3])
    rows = {s["shard"]: s for s in st["shard_status"]}
    assert [(rows[k]["done"], rows[k]["total"], rows[k]["state"], rows[k]["lock"]) for k in (1, 2, 3)] == [
        (sizes[1], sizes[1], "done", "free"), (sizes[2], sizes[2], "done", "free"), (0, sizes[3], "missing", "free")]
    assert st["missing"] == [3] and not st["complete"]
    assert rows[1]["last_activity"] and rows[3]["last_activity"] is None

    # A writer holds shard 3's lock (as a running task does): running, and stalled once it is quiet.
    # (The library call is what the command prints; one command run below checks the text.)
    with CheckpointManager(run_dir, (3, 3)):
        st = run_status(run_dir, shards=3).to_dict()
        assert st["running"] == [3] and st["shard_status"][2]["lock"] == "held"
        assert st["shard_status"][2]["owner"]["pid"] == os.getpid()
        st = run_status(run_dir, shards=3, stalled_after=5, now=time.time() + 6).to_dict()
        assert st["stalled"] == [3] and st["shard_status"][2]["state"] == "stalled"
        time.sleep(1.1)
        text = run_cli(["status", "r", "--output-dir", str(out), "--shards", "3", "--stalled-after", "1"],
                       dict(os.environ))
        assert "STALLED" in text.stdout and f"pid {os.getpid()}" in text.stdout, text.stdout
    # The lock is gone; the shard has an (empty) results file now: started but stopped.
    st = run_status(run_dir, shards=3).to_dict()
    assert st["shard_status"][2]["state"] == "stopped" and st["shard_status"][2]["lock"] == "free"

    _run_shard(fake_server, data, out, 3, 3, tmp_path)
    st = _status(out)  # N found from the shard files
    assert st["shards"] == 3 and st["complete"] and st["done"] == n
    assert all(s["state"] == "done" for s in st["shard_status"])
    text = run_cli(["status", "r", "--output-dir", str(out)], dict(os.environ)).stdout
    assert "3/3 shards done" in text and "complete" in text, text


def test_merge_dedups_and_checks_exact_coverage(fake_server, tmp_path: Path) -> None:
    n = 20
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    run_dir = out / "r"
    _run_shard(fake_server, data, out, 1, 2, tmp_path)
    merged = tmp_path / "merged.jsonl"

    # Half the shards: refused, nothing written, the missing samples named.
    r = run_cli(["merge", "r", "--output-dir", str(out), "-o", str(merged)], dict(os.environ))
    missing = sorted(f"s{i:05d}" for i in range(n) if shard_of(f"s{i:05d}", 2) == 2)
    assert r.returncode == 1 and f"{len(missing)} of {n} sample(s) have no ok record" in r.stderr, r.stderr
    assert missing[0] in r.stderr and not merged.exists()
    rep = merge_run(run_dir, merged, allow_incomplete=True)
    assert not rep.exact and rep.missing == [s for s in (f"s{i:05d}" for i in range(n)) if s in missing]
    assert rep.written == len(read_lines(merged)[0]) == n - len(missing)

    _run_shard(fake_server, data, out, 2, 2, tmp_path)
    # A second ok record for one sample, finished later (say, a rerun with the same identity): the latest wins.
    shard1 = run_dir / "results.shard-1-of-2.jsonl"
    recs, _ = read_lines(shard1)
    again = dict(recs[0], finished_at="2999-01-01T00:00:00.000Z", latency_s=123.0)
    with open(shard1, "a") as f:
        f.write(json.dumps(again) + "\n")
    r = run_cli(["merge", "r", "--output-dir", str(out), "-o", str(merged), "--json"], dict(os.environ))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["exact"] and rep["written"] == n and rep["duplicates_dropped"] == 1
    lines, tail = read_lines(merged)
    assert tail == b"" and [x["sample_id"] for x in lines] == [f"s{i:05d}" for i in range(n)]  # once each, dataset order
    assert next(x for x in lines if x["sample_id"] == again["sample_id"])["latency_s"] == 123.0
    assert "coverage exact" in r.stderr

    # A record in a shard file that does not own it: the shards no longer cover the dataset exactly.
    wrong = read_lines(run_dir / "results.shard-2-of-2.jsonl")[0][0]
    with open(shard1, "a") as f:
        f.write(json.dumps(wrong) + "\n")
    merged.unlink()
    rep = merge_run(run_dir, merged)
    assert rep.misplaced == [f"{wrong['sample_id']} in results.shard-1-of-2.jsonl"] and not rep.exact
    assert rep.output is None and not merged.exists()

    with pytest.raises(UsageError, match="read as a results file"):
        merge_run(run_dir, run_dir / "results.jsonl")
    assert not (run_dir / "results.jsonl").exists()
