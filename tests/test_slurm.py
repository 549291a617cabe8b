"""Shards as a job array on a real Slurm (single node, on 127.0.0.1), against the loopback fake API.

``tests/slurm_cluster.py`` starts slurmctld and slurmd from a config in a temp dir; the jobs run
on this host, so they reach the fake server in this pytest process. Skipped, with the reason,
where Slurm is not installed (``.ci/run`` installs it) or we are not root.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import FakeServer
from helpers import cli_env, marker, read_lines, run_cli, write_qa_dataset
from slurm_cluster import SlurmCluster, unavailable_reason

from evalledger.datasets import shard_of
from evalledger.ops import run_status

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"needs a local Slurm: {_REASON}")

MODEL = "openai/test-model"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    """One single-node cluster for this module (starting one takes a few seconds)."""
    with SlurmCluster() as c:
        yield c


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(latency=0.05) as s:
        yield s


def _env(cluster: SlurmCluster, server: FakeServer) -> dict[str, str]:
    env = cli_env(server)
    env.update({k: v for k, v in cluster.env.items() if k in ("SLURM_CONF", "PATH")})
    return env


def _submit(cluster: SlurmCluster, server: FakeServer, tmp_path: Path, n: int, *extra: str) -> tuple[str, Path]:
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    r = run_cli(["slurm", "--dataset", str(data), "--model", MODEL, "--output-dir", str(tmp_path / "out"),
                 "--run-id", "r", "--submit", *extra], _env(cluster, server), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"submitted Slurm job (\d+)", r.stdout)
    assert m, r.stdout
    assert f"squeue -j {m.group(1)}" in r.stdout and "evalledger status r" in r.stdout
    return m.group(1), tmp_path / "out" / "r"


def _tasks(cluster: SlurmCluster, job_id: str) -> dict[int, tuple[str, str, int]]:
    """Array task id -> (state, exit code, restarts), from scontrol (finished jobs stay for MinJobAge)."""
    r = cluster.run("scontrol", "show", "job", job_id, "--oneliner", check=False)
    out: dict[int, tuple[str, str, int]] = {}
    for line in r.stdout.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "ArrayTaskId" in f and f["ArrayTaskId"].isdigit():
            out[int(f["ArrayTaskId"])] = (f.get("JobState", "?"), f.get("ExitCode", "?"), int(f.get("Restarts", 0)))
    return out


def _wait_done(cluster: SlurmCluster, job_id: str, n_tasks: int, timeout: float) -> dict[int, tuple[str, str, int]]:
    deadline = time.monotonic() + timeout
    tasks: dict[int, tuple[str, str, int]] = {}
    while time.monotonic() < deadline:
        tasks = _tasks(cluster, job_id)
        if len(tasks) == n_tasks and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")
                                         for s, _, _ in tasks.values()):
            return tasks
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout:.0f}s: {tasks}\n{cluster.logs_tail(10)}")


def _merge(tmp_path: Path, server: FakeServer) -> list[dict]:
    merged = tmp_path / "merged.jsonl"
    r = run_cli(["merge", "r", "--output-dir", str(tmp_path / "out"), "-o", str(merged)], cli_env(server))
    assert r.returncode == 0, r.stderr
    assert "coverage exact" in r.stdout, r.stdout
    lines, tail = read_lines(merged)
    assert tail == b""
    return lines


def test_four_task_array_runs_every_sample_exactly_once(cluster: SlurmCluster, server: FakeServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    n = 40
    job_id, run_dir = _submit(cluster, server, tmp_path, n, "--shards", "4", "--max-parallel", "2",
                              "--concurrency", "4")
    # Throttled to 2 at once: tasks 3 and 4 wait in the queue at first, and status says so.
    for k in ("SLURM_CONF", "PATH"):  # run_status asks squeue, as the status command does
        monkeypatch.setenv(k, cluster.env[k])
    early = run_status(run_dir)
    assert [(s.state, s.slurm_state) for s in early.shard_status[2:]] == [("queued", "PENDING")] * 2, early
    tasks = _wait_done(cluster, job_id, 4, timeout=90)
    assert tasks == {k: ("COMPLETED", "0:0", 0) for k in (1, 2, 3, 4)}, tasks

    lines = _merge(tmp_path, server)
    assert [x["sample_id"] for x in lines] == [f"s{i:05d}" for i in range(n)]  # every sample, once
    assert all(x["status"] == "ok" and x["correct"] is True for x in lines)
    # Each task ran its own shard: its records are exactly the samples the stable hash gives it.
    for k in (1, 2, 3, 4):
        recs, _ = read_lines(run_dir / f"results.shard-{k}-of-4.jsonl")
        assert sorted(x["sample_id"] for x in recs) == sorted(
            f"s{i:05d}" for i in range(n) if shard_of(f"s{i:05d}", 4) == k)
        log = (run_dir / "slurm" / "logs" / f"shard-{k}-of-4.log").read_text()
        assert f"task {k} of job {job_id}" in log and "evalledger exited with 0" in log, log
    assert all(server.count_for(marker(i)) == 1 for i in range(n))
    assert server.request_count == n

    st = json.loads(run_cli(["status", "r", "--output-dir", str(tmp_path / "out"), "--json"], cli_env(server)).stdout)
    assert st["last_job_id"] == job_id and st["shards"] == 4 and st["complete"]
    assert [s["state"] for s in st["shard_status"]] == ["done"] * 4


def _wait_records(path: Path, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            got = len(read_lines(path)[0])
            if got >= at_least:
                return got
        time.sleep(0.1)
    raise AssertionError(f"{path} never reached {at_least} records")


def test_preempted_tasks_resume_without_paying_twice(cluster: SlurmCluster, server: FakeServer, tmp_path: Path) -> None:
    n = 60
    server.latency = 0.4  # a shard takes ~10 s: long enough to be interrupted half-way
    job_id, run_dir = _submit(cluster, server, tmp_path, n, "--shards", "2", "--concurrency", "2")
    sizes = {k: sum(1 for i in range(n) if shard_of(f"s{i:05d}", 2) == k) for k in (1, 2)}

    # Task 2 (whose Slurm job ID is the array's own): Slurm's time-limit warning, USR1 to the batch
    # shell only; the script has evalledger save, then requeues its task.
    before2 = _wait_records(run_dir / "results.shard-2-of-2.jsonl", 3, timeout=60)
    cluster.run("scancel", "--signal=USR1", "--batch", f"{job_id}_2")
    log2_path = run_dir / "slurm" / "logs" / "shard-2-of-2.log"
    deadline = time.monotonic() + 30
    while "requeueing" not in log2_path.read_text():
        assert time.monotonic() < deadline, log2_path.read_text()
        time.sleep(0.1)
    # Task 1, still running: the administrator's requeue (SIGTERM to every process, back in the queue).
    # Had task 2's requeue hit the whole array, task 1 would be pending now and this would fail.
    before1 = len(read_lines(run_dir / "results.shard-1-of-2.jsonl")[0])
    assert _tasks(cluster, job_id)[1][0] == "RUNNING"
    cluster.run("scontrol", "requeue", f"{job_id}_1")

    tasks = _wait_done(cluster, job_id, 2, timeout=120)
    assert {k: v[:2] for k, v in tasks.items()} == {1: ("COMPLETED", "0:0"), 2: ("COMPLETED", "0:0")}, tasks
    # Each was requeued exactly once: task 2's own requeue must not touch its sibling (the last
    # task's job ID is the array's, and `scontrol requeue <array id>` would requeue every task).
    assert tasks[1][2] == 1 and tasks[2][2] == 1, tasks
    assert before1 < sizes[1] and before2 < sizes[2]

    log1 = (run_dir / "slurm" / "logs" / "shard-1-of-2.log").read_text()
    log2 = (run_dir / "slurm" / "logs" / "shard-2-of-2.log").read_text()
    for log in (log1, log2):
        # One log per task, appended across restarts: the interrupted run saved (143), the next resumed.
        assert "restart 0" in log and "restart 1" in log, log
        assert "evalledger exited with 143" in log and "evalledger exited with 0" in log, log
    assert f"requeueing {job_id}_2 to resume it" in log2, log2
    assert "requeueing" not in log1  # Slurm requeued that one itself

    lines = _merge(tmp_path, server)
    assert [x["sample_id"] for x in lines] == [f"s{i:05d}" for i in range(n)]
    # Never paid twice: every sample reached the API exactly once across both incarnations.
    paid = {i: server.count_for(marker(i)) for i in range(n)}
    assert all(c == 1 for c in paid.values()), {i: c for i, c in paid.items() if c != 1}
    # And the resumed incarnations skipped what the first ones had done.
    assert re.search(r"\b([1-9]\d*) already done", log1) and re.search(r"\b([1-9]\d*) already done", log2)
