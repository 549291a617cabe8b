"""Outages (circuit breaker) and disks that fill up, for real: a tmpfs mounted by the test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import all_records, cli_env, marker, run_cli, run_config, tiny_fs, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.errors import DiskSpaceError
from evalledger.readers import get_stats
from evalledger.run import run_experiment
from evalledger.run.scheduler import WORKERS_PER_SLOT


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    return run_config(server, data, out, **{**dict(max_attempts=2), **kw})


# ----------------------------------------------------------------------------------- outages


def test_circuit_breaker_stops_after_k_consecutive_errors(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 200)
    out = tmp_path / "out"
    fake_server.fail_next(3, status=400)  # a few early errors, then an ok resets the count
    s0 = run_experiment(cfg(fake_server, data, out, limit=10, concurrency=1, max_consecutive_errors=5))
    assert s0.status == "errors" and s0.errors == 3 and s0.ok == 7  # 3 in a row < 5: no trip

    before = fake_server.request_count
    fake_server.clear_faults()
    fake_server.fail_always(status=503)
    s = run_experiment(cfg(fake_server, data, out, max_consecutive_errors=5))
    assert s.exit_code == 3 and s.status == "outage"
    assert "looks down" in s.message and "503" in s.message
    assert s.resume_command and "--max-consecutive-errors 5" in s.resume_command
    # stopped after ~5 error samples (+ what was in flight), not 190
    assert 5 <= s.errors <= 5 + 2, s.errors
    # Each error record took both attempts. A sample whose first attempt failed and that would
    # retry after the trip is dropped instead (it stays pending; failed requests are not paid):
    # at most one request for each of the other workers (WORKERS_PER_SLOT per slot).
    assert fake_server.request_count - before <= 2 * s.errors + 2 * WORKERS_PER_SLOT
    assert s.requests == fake_server.request_count - before  # the summary counts what was sent, no more
    stats = get_stats(s.run_dir)
    # errors are counted apart: accuracy over the ok records only
    assert stats["completed_samples"] == 7 and stats["accuracy"] == 1.0

    fake_server.clear_faults()
    s2 = run_experiment(cfg(fake_server, data, out))
    assert s2.exit_code == 0 and stats["completed_samples"] + s2.ok == 200


def test_circuit_breaker_can_be_turned_off(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    fake_server.fail_always(status=500)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", max_consecutive_errors=0, max_attempts=1))
    assert s.exit_code == 1 and s.errors == 12


def test_circuit_breaker_via_cli_exits_3(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 60)
    fake_server.fail_always(status=502)
    r = run_cli(["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(tmp_path / "o"),
                 "--max-attempts", "1", "--max-consecutive-errors", "4", "--concurrency", "1", "--quiet"],
                cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "looks down" in r.stderr and "resume with: evalledger run" in r.stderr
    assert fake_server.request_count == 4


# ----------------------------------------------------------------------------------- disks


def test_preflight_refuses_when_the_disk_is_too_small(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 400)
    with tiny_fs(tmp_path, "256k") as mnt:
        with pytest.raises(DiskSpaceError) as ei:
            run_experiment(cfg(fake_server, data, mnt / "out", max_tokens=512, min_free_mb=0))
        msg = str(ei.value)
        assert str(mnt) in msg and "MB free" in msg and "400 pending samples" in msg
        assert ei.value.exit_code == 4
    assert fake_server.request_count == 0


def test_min_free_mb_headroom_is_enforced(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    with tiny_fs(tmp_path, "4m") as mnt:
        with pytest.raises(DiskSpaceError, match="--min-free-mb 50"):
            run_experiment(cfg(fake_server, data, mnt / "out", min_free_mb=50))
        s = run_experiment(cfg(fake_server, data, mnt / "out", min_free_mb=1))
        assert s.exit_code == 0


def test_disk_full_mid_run_stops_cleanly_and_resumes(fake_server, tmp_path):
    """ENOSPC for real: responses far larger than the estimate fill a small tmpfs mid-run."""
    n = 40
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    big = "lorem ipsum " * 700  # ~8 KB per response, whatever max_tokens says
    fake_server.responder = lambda body: big + "\n#### " + body["messages"][-1]["content"].split("[[ANSWER:")[1].split("]]")[0]
    env = cli_env(fake_server)
    with tiny_fs(tmp_path, "160k") as mnt:
        out = mnt / "out"
        args = ["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(out), "--run-id", "full",
                "--max-tokens", "8", "--min-free-mb", "0", "--concurrency", "2", "--quiet"]
        r = run_cli(args, env, cwd=tmp_path)
        assert r.returncode == 4, r.stderr
        results = out / "full" / "results.jsonl"
        assert str(results) in r.stderr and "MB free" in r.stderr and "resume with:" in r.stderr
        assert "Traceback" not in r.stderr
        data_now = results.read_bytes()
        assert data_now.endswith(b"\n")  # the refused batch left no partial line
        recs = [json.loads(x) for x in data_now.splitlines()]
        assert 0 < len(recs) < n and all(x["status"] == "ok" for x in recs)
        done = {x["sample_id"] for x in recs}

        # free space (grow the filesystem) and resume: every sample exactly once, nothing paid twice
        subprocess.run(["mount", "-o", "remount,size=2m", str(mnt)], check=True)
        r2 = run_cli(args, env, cwd=tmp_path)
        assert r2.returncode == 0, r2.stderr
        final = all_records(out / "full")
        ids = [x["sample_id"] for x in final]
        assert sorted(ids) == sorted(f"s{i:05d}" for i in range(n)) and len(ids) == n
        for i in range(n):
            paid = fake_server.count_for(marker(i))
            # a sample acknowledged before the failure is never sent again; one in the refused batch once more
            assert paid == 1 if f"s{i:05d}" in done else paid in (1, 2), (i, paid)
