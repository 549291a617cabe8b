"""Run status markers (issue 9): every exit path writes its status, and a stale `running` never misleads.

Each test runs real runs against the loopback fake server (through the SDK), reads ``status.json``
and checks what every reader (get_stats, list, status, stats) shows.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import (
    cli_env,
    line_count,
    marker,
    popen_cli,
    run_cli,
    run_config,
    tiny_fs,
    wait_for,
    write_qa_dataset,
)

from evalledger.config import RunConfig
from evalledger.fsio import sha256_file
from evalledger.ledger import PROCESS_GONE, run_lifecycle
from evalledger.readers import get_stats, list_runs
from evalledger.run import run_experiment


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    return run_config(server, data, out, **{**dict(max_attempts=2, run_id="r"), **kw})


def status(run_dir: Path, name: str = "status.json") -> dict:
    return json.loads((run_dir / name).read_text())


def test_all_ok_writes_complete_with_the_hash_of_every_results_file(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s.exit_code == 0
    st = status(s.run_dir)
    assert st["state"] == "complete" and st["exit_code"] == 0 and st["reason"] is None
    assert st["counts"]["completed_samples"] == 12 and st["counts"]["pending_samples"] == 0
    results = s.run_dir / "results.jsonl"
    assert st["files"]["results.jsonl"]["sha256"] == sha256_file(results)
    assert st["files"]["results.jsonl"]["bytes"] == results.stat().st_size
    assert st["started_at"] and st["finished_at"] and st["host"] and isinstance(st["pid"], int)
    assert get_stats(s.run_dir)["state"] == "complete"
    # A resume that finds nothing to do keeps it complete (and the same hash).
    s2 = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s2.requests == 0 and status(s.run_dir)["files"] == st["files"]


def test_errors_left_is_incomplete_with_exit_1(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    fake_server.fail_when(marker(3), status=400)  # not retryable: an error record
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s.exit_code == 1
    st = status(s.run_dir)
    assert (st["state"], st["reason"], st["exit_code"]) == ("incomplete", "errors", 1)
    assert st["counts"]["pending_samples"] == 1 and "files" not in st
    life = run_lifecycle(s.run_dir)
    assert life.state == "incomplete" and "1 sample(s) with errors" in life.label


def test_budget_stop_is_interrupted_budget(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 30)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=1, price_input=1000.0,
                           price_output=1000.0, max_cost=0.2))
    assert s.exit_code == 5
    st = status(s.run_dir)
    assert (st["state"], st["reason"], st["exit_code"]) == ("interrupted", "budget", 5)
    assert "budget reached, exit 5" in run_lifecycle(s.run_dir).label


def test_fatal_401_is_interrupted_fatal(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    fake_server.fail_always(status=401)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s.exit_code == 2
    st = status(s.run_dir)
    assert (st["state"], st["reason"], st["exit_code"]) == ("interrupted", "fatal", 2)
    assert "401" in st["message"] or "API key" in st["message"]
    assert get_stats(s.run_dir)["state_label"] == "interrupted (fatal provider error, exit 2)"


def test_sigterm_is_interrupted_signal_143(fake_server, tmp_path):
    fake_server.latency = 0.3
    data = write_qa_dataset(tmp_path / "qa.jsonl", 40)
    out = tmp_path / "out"
    run_dir = out / "sig"
    proc = popen_cli(["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(out), "--run-id",
                      "sig", "--concurrency", "4", "--quiet"], cli_env(fake_server), cwd=tmp_path)
    try:
        wait_for(lambda: line_count(run_dir / "results.jsonl") >= 4, 30, "the first records", proc)
        # While it runs, every reader says running, with the writer's pid.
        st = status(run_dir)
        assert st["state"] == "running" and st["pid"] == proc.pid
        life = run_lifecycle(run_dir)
        assert life.state == "running" and f"pid {proc.pid}" in life.label
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    st = status(run_dir)
    assert (st["state"], st["reason"], st["exit_code"]) == ("interrupted", "signal", 143)
    assert run_lifecycle(run_dir).label == "interrupted (SIGTERM, exit 143)"


def test_kill_9_reads_as_process_gone_everywhere_and_the_next_run_corrects_it(fake_server, tmp_path):
    fake_server.latency = 0.2
    n = 30
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    run_dir = out / "k"
    args = ["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(out), "--run-id", "k",
            "--concurrency", "2", "--quiet"]
    env = cli_env(fake_server)
    proc = popen_cli(args, env, cwd=tmp_path)
    try:
        wait_for(lambda: line_count(run_dir / "results.jsonl") >= 2, 30, "the first records", proc)
        proc.kill()
        proc.communicate(timeout=10)  # reaped: its pid is gone, not a zombie
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status(run_dir)["state"] == "running"  # what the killed writer left on disk

    assert run_lifecycle(run_dir).label == PROCESS_GONE
    s = get_stats(run_dir)
    assert (s["state"], s["state_label"]) == ("interrupted", PROCESS_GONE) and not s["running"]
    assert list_runs(out)[0]["state"] == PROCESS_GONE
    for cmd in (["stats", "k", "--output-dir", str(out)], ["list", "--output-dir", str(out)],
                ["status", "k", "--output-dir", str(out)]):
        r = run_cli(cmd, env, cwd=tmp_path)
        assert r.returncode == 0 and PROCESS_GONE in r.stdout, (cmd, r.stdout, r.stderr)

    fake_server.latency = 0.0
    r = run_cli(args, env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stopped without a final status" in r.stderr
    st = status(run_dir)
    assert st["state"] == "complete" and st["counts"]["completed_samples"] == n
    assert run_lifecycle(run_dir).state == "complete"


def test_disk_full_is_interrupted_disk_even_with_no_space_left(fake_server, tmp_path):
    """The final status is written into the pre-allocated reserve, so a full disk cannot leave `running`."""
    n = 40
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    big = "lorem ipsum " * 700
    fake_server.responder = lambda body: big + "\n#### " + body["messages"][-1]["content"].split("[[ANSWER:")[1].split("]]")[0]
    with tiny_fs(tmp_path, "200k") as mnt:
        out = mnt / "out"
        r = run_cli(["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(out), "--run-id", "full",
                     "--max-tokens", "8", "--min-free-mb", "0", "--concurrency", "2", "--quiet"], cli_env(fake_server),
                    cwd=tmp_path)
        assert r.returncode == 4, r.stderr
        # The disk really is full: a new small file cannot be written.
        with pytest.raises(OSError):
            with open(mnt / "probe", "wb") as f:
                f.write(b"x" * 65536)
                f.flush()
        st = status(out / "full")
        assert (st["state"], st["reason"], st["exit_code"]) == ("interrupted", "disk", 4), st
        assert run_lifecycle(out / "full").label == "interrupted (disk full, exit 4)"


def test_shards_each_have_a_status_and_the_run_is_complete_when_all_are(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 16)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out, shard=(1, 3)))
    run_experiment(cfg(fake_server, data, out, shard=(3, 3)))
    run_dir = out / "r"
    assert status(run_dir, "status.shard-1-of-3.json")["shard"] == "1/3"
    life = run_lifecycle(run_dir)
    assert life.state == "incomplete" and life.missing_shards == [2] and "shard 2 of 3 never ran" in life.label
    run_experiment(cfg(fake_server, data, out, shard=(2, 3)))
    life = run_lifecycle(run_dir)
    assert life.state == "complete" and life.shards == 3 and len(life.markers) == 3


def test_a_results_file_edited_after_completion_is_flagged_by_readers(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    with open(s.run_dir / "results.jsonl", "ab") as f:
        f.write(b'{"sample_id":"s00000","status":"ok","score":0}\n')
    label = run_lifecycle(s.run_dir).label
    assert "results.jsonl changed since" in label and "evalledger verify" in label


def test_a_corrupt_marker_does_not_stop_readers_or_the_run(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", limit=2))
    (s.run_dir / "status.json").write_bytes(b"\x00\x00{not json")
    assert run_lifecycle(s.run_dir).state == "unknown"
    assert get_stats(s.run_dir)["state"] == "unknown"
    s2 = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s2.exit_code == 0 and status(s.run_dir)["state"] == "complete"


def test_list_shows_size_state_and_free_space(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out))
    (row,) = list_runs(out)
    du = int(subprocess.run(["du", "-sB1", str(out / "r")], capture_output=True, text=True, check=True).stdout.split()[0])
    assert row["size_bytes"] == du and row["state"] == "complete"
    r = run_cli(["list", "--output-dir", str(out)], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 0 and "complete" in r.stdout and "SIZE" in r.stdout
    assert "free" in r.stdout and str(out) in r.stdout


def test_outage_is_interrupted_outage_exit_3(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 20)
    fake_server.fail_always(status=502)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=1, max_attempts=1,
                           max_consecutive_errors=3))
    assert s.exit_code == 3
    st = status(s.run_dir)
    assert (st["state"], st["reason"], st["exit_code"]) == ("interrupted", "outage", 3)
    assert run_lifecycle(s.run_dir).label == "interrupted (API outage, exit 3)"


def test_a_signal_that_interrupts_nothing_ends_complete_exit_0(fake_server, tmp_path):
    """SIGTERM while the last sample is in flight: it finishes within the grace period, nothing is
    left, so the run is complete (exit 0), not 'interrupted' (which would make Slurm requeue it)."""
    import os

    data = write_qa_dataset(tmp_path / "qa.jsonl", 1)

    def respond(body):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler is the run's: it stops dispatching
        return "#### 0"

    fake_server.responder = respond
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", grace_seconds=10))
    assert (s.exit_code, s.status, s.remaining) == (0, "complete", 0), s.message
    assert status(s.run_dir)["state"] == "complete"


def test_the_reserve_exists_only_while_running(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    seen = []
    fake_server.responder = lambda body: (seen.append((tmp_path / "out" / "r" / ".status.json.reserve").exists()),
                                          "#### 0")[1]
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s.exit_code == 0 and seen and all(seen)
    assert not (s.run_dir / ".status.json.reserve").exists()
