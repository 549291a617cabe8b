"""End-to-end runs through the real SDKs over HTTP to the loopback fake server, from Python."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import all_records, marker, only_run_dir, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.datasets import shard_of
from evalledger.errors import ConfigDriftError, RunExistsError
from evalledger.readers import CheckpointManager, get_stats, load_results
from evalledger.run import run_experiment


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    base = dict(dataset=str(data), model="openai/test-model", output_dir=out, base_url=server.openai_base_url,
                api_key="sk-test", quiet=True, concurrency=4, max_retry_wait=0.2)
    base.update(kw)
    return RunConfig(**base)


def test_full_run_then_resume_sends_nothing(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 25)
    out = tmp_path / "out"
    s1 = run_experiment(cfg(fake_server, data, out))
    assert s1.exit_code == 0 and s1.status == "complete"
    assert s1.ok == 25 and s1.errors == 0
    assert fake_server.request_count == 25
    recs = all_records(s1.run_dir)
    assert sorted(r["sample_id"] for r in recs) == [f"s{i:05d}" for i in range(25)]
    r0 = next(r for r in recs if r["sample_id"] == "s00003")
    assert r0["status"] == "ok" and r0["correct"] is True and r0["prediction"] == "3" and r0["target"] == "3"
    assert r0["usage"]["input_tokens"] > 0 and r0["usage"]["output_tokens"] > 0
    assert r0["request_ids"] and r0["request_ids"][0].startswith("req_")
    assert r0["attempts"] == 1 and r0["error"] is None and r0["model"] == "openai/test-model"
    assert r0["prompt"][-1]["content"].startswith("Question 3")

    stats = get_stats(s1.run_id, output_dir=out)
    assert stats["completed_samples"] == 25 and stats["total_samples"] == 25
    assert stats["pending_samples"] == 0 and stats["error_count"] == 0 and stats["accuracy"] == 1.0
    assert stats["input_tokens"] == sum(r["usage"]["input_tokens"] for r in recs)
    assert stats["last_checkpoint"] is not None

    s2 = run_experiment(cfg(fake_server, data, out))
    assert s2.run_id == s1.run_id
    assert s2.exit_code == 0 and s2.skipped_completed == 25 and s2.requests == 0
    assert fake_server.request_count == 25  # not one request more
    assert len(all_records(s1.run_dir)) == 25


def test_overwrite_moves_old_run_aside_and_pays_again(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    out = tmp_path / "out"
    s1 = run_experiment(cfg(fake_server, data, out))
    # without the response cache (which would answer every request: tests/test_response_cache.py)
    s2 = run_experiment(cfg(fake_server, data, out, overwrite=True, cache=False))
    assert s2.run_id == s1.run_id and s2.ok == 6 and fake_server.request_count == 12
    assert s2.moved_aside is not None and s2.moved_aside.name.startswith(s1.run_id + ".old-")
    assert len(all_records(s2.moved_aside)) == 6  # old results preserved, not deleted
    assert len(all_records(s2.run_dir)) == 6


def test_no_resume_refuses_existing_results(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out))
    with pytest.raises(RunExistsError, match="--no-resume"):
        run_experiment(cfg(fake_server, data, out, resume=False))
    assert fake_server.request_count == 3


def test_four_shards_are_disjoint_and_cover_everything(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 40)
    out = tmp_path / "out"
    seen: dict[int, set[str]] = {}
    run_ids = set()
    for k in range(1, 5):
        s = run_experiment(cfg(fake_server, data, out, shard=(k, 4)))
        assert s.exit_code == 0
        run_ids.add(s.run_id)
        path = s.run_dir / f"results.shard-{k}-of-4.jsonl"
        ids = {json.loads(line)["sample_id"] for line in path.read_text().splitlines()}
        assert all(shard_of(i, 4) == k for i in ids)
        seen[k] = ids
    assert len(run_ids) == 1  # the shard is an execution knob, not identity
    union = set().union(*seen.values())
    assert union == {f"s{i:05d}" for i in range(40)}
    assert sum(len(v) for v in seen.values()) == 40  # disjoint
    assert fake_server.request_count == 40
    stats = get_stats(only_run_dir(out))
    assert stats["completed_samples"] == 40 and stats["pending_samples"] == 0
    assert set(stats["files"]) == {f"results.shard-{k}-of-4.jsonl" for k in range(1, 5)}
    df = load_results(only_run_dir(out))
    assert len(df) == 40 and set(df["shard"]) == {"1/4", "2/4", "3/4", "4/4"}
    # An unsharded resume over the same run sees every shard's records: nothing to pay for.
    s = run_experiment(cfg(fake_server, data, out))
    assert s.requests == 0 and s.skipped_completed == 40


def test_transient_bursts_end_with_every_sample_ok(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 20)
    fake_server.fail_next(5, status=429, retry_after=0.05)
    fake_server.fail_next(4, status=500)
    fake_server.fail_next(2, status=503)
    fake_server.fail_next(1, kind="reset")
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", max_attempts=8))
    assert s.exit_code == 0 and s.ok == 20 and s.errors == 0
    assert fake_server.request_count == 32
    recs = all_records(s.run_dir)
    assert len(recs) == 20 and sum(r["attempts"] for r in recs) == 32
    assert Counter(r["status"] for r in recs) == {"ok": 20}


def test_retry_after_is_honoured(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 1)
    fake_server.fail_next(1, status=429, retry_after=0.6)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", max_retry_wait=5))
    assert s.ok == 1
    reqs = fake_server.requests
    assert len(reqs) == 2
    gap = reqs[1].received_at - reqs[0].received_at
    assert gap >= 0.6, gap


def test_auth_error_stops_the_run_at_once(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 50)
    fake_server.fail_always(status=401)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=4))
    assert s.exit_code == 2 and s.status == "fatal"
    assert "API key" in s.message and "401" in s.message
    assert fake_server.request_count <= 4  # at most the requests already in flight
    assert all_records(s.run_dir) == []  # no flood of error records
    assert s.resume_command and "evalledger run" in s.resume_command


def test_model_not_found_is_fatal(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 10)
    fake_server.fail_always(status=404)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=2))
    assert s.exit_code == 2 and "not found" in s.message
    assert fake_server.request_count <= 2


def test_bad_request_records_error_and_continues(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 10)
    fake_server.fail_when(marker(4), status=400)
    out = tmp_path / "out"
    s = run_experiment(cfg(fake_server, data, out))
    assert s.exit_code == 1 and s.status == "errors" and s.ok == 9 and s.errors == 1
    assert fake_server.count_for(marker(4)) == 1  # a 400 is not retried
    rec = next(r for r in all_records(s.run_dir) if r["sample_id"] == "s00004")
    assert rec["status"] == "error" and rec["error"]["status_code"] == 400 and rec["error"]["retryable"] is False
    assert "s00004" in (s.run_dir / "errors.log").read_text()
    stats = get_stats(s.run_dir)
    # errors are not wrong answers: accuracy is over ok records only
    assert stats["error_count"] == 1 and stats["accuracy"] == 1.0 and stats["completed_samples"] == 9

    # --no-retry-errors leaves it alone; the default retries it.
    s2 = run_experiment(cfg(fake_server, data, out, retry_errors=False))
    assert s2.requests == 0 and s2.exit_code == 1
    fake_server.clear_faults()
    s3 = run_experiment(cfg(fake_server, data, out))
    assert s3.exit_code == 0 and s3.requests == 1 and s3.ok == 1
    df = load_results(s.run_dir)
    assert len(df) == 10 and (df["status"] == "ok").all()


def test_exhausted_retries_leave_a_retryable_error_record(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    fake_server.fail_when(marker(1), status=503)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", max_attempts=3))
    assert s.exit_code == 1 and s.errors == 1
    assert fake_server.count_for(marker(1)) == 3
    rec = next(r for r in all_records(s.run_dir) if r["sample_id"] == "s00001")
    assert rec["error"]["retryable"] is True and rec["attempts"] == 3


def test_unreachable_base_url_is_fatal(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    config = RunConfig(dataset=str(data), model="openai/x", output_dir=tmp_path / "out",
                       base_url=f"http://127.0.0.1:{port}/v1", api_key="k", quiet=True, max_attempts=2,
                       max_retry_wait=0.05, concurrency=1)
    s = run_experiment(config)
    assert s.exit_code == 2 and f"nothing is listening at http://127.0.0.1:{port}/v1" in s.message


def test_anthropic_provider_full_run(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    config = RunConfig(dataset=str(data), model="anthropic/claude-test", output_dir=tmp_path / "out",
                       base_url=fake_server.anthropic_base_url, api_key="sk-ant", quiet=True)
    s = run_experiment(config)
    assert s.exit_code == 0 and s.ok == 8
    paths = {r.path for r in fake_server.requests}
    assert paths == {"/v1/messages"}
    body = fake_server.requests[0].body
    assert "system" in body and all(m["role"] != "system" for m in body["messages"])
    rec = all_records(s.run_dir)[0]
    assert rec["correct"] is True and rec["usage"]["output_tokens"] > 0


def test_anthropic_overloaded_529_is_retried(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    fake_server.fail_next(2, status=529)
    config = RunConfig(dataset=str(data), model="anthropic/claude-test", output_dir=tmp_path / "out",
                       base_url=fake_server.anthropic_base_url, api_key="sk-ant", quiet=True, max_retry_wait=0.1)
    s = run_experiment(config)
    assert s.exit_code == 0 and s.ok == 3 and fake_server.request_count == 5


def test_config_drift_is_refused_with_a_diff(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out, run_id="myrun"))
    with pytest.raises(ConfigDriftError) as ei:
        run_experiment(cfg(fake_server, data, out, run_id="myrun", temperature=0.7, max_tokens=64))
    msg = str(ei.value)
    assert "temperature: run has 0.0, this command has 0.7" in msg
    assert "max_tokens" in msg and "--overwrite" in msg
    # the dataset content changing is drift too
    write_qa_dataset(data, 4)
    with pytest.raises(ConfigDriftError, match="dataset_sha256"):
        run_experiment(cfg(fake_server, data, out, run_id="myrun"))
    assert fake_server.request_count == 3


def test_run_id_is_stable_and_covers_identity_only(fake_server, tmp_path):
    from evalledger.run import prepare_run

    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    a = prepare_run(cfg(fake_server, data, tmp_path / "a"))
    b = prepare_run(cfg(fake_server, data, tmp_path / "b", concurrency=50, shard=(2, 3), limit=2, checkpoint_every=7))
    assert a.run_id == b.run_id
    assert a.run_id.startswith("qa_openai-test-model_qa_") and len(a.run_id.rsplit("_", 1)[1]) == 8
    for change in ({"temperature": 0.5}, {"seed": 1}, {"max_tokens": 10}, {"model": "openai/other"}, {"task": "mcq"}):
        if change.get("task") == "mcq":
            continue  # the qa dataset has no choices; covered by test_task_changes_run_id
        assert prepare_run(cfg(fake_server, data, tmp_path / "c", **change)).run_id != a.run_id, change
    # a copy of the same content elsewhere is the same experiment
    copy = tmp_path / "sub"
    copy.mkdir()
    (copy / "qa.jsonl").write_bytes(data.read_bytes())
    assert prepare_run(cfg(fake_server, copy / "qa.jsonl", tmp_path / "d")).run_id == a.run_id


def test_limit_extends_the_same_run(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 10)
    out = tmp_path / "out"
    s1 = run_experiment(cfg(fake_server, data, out, limit=4))
    assert s1.ok == 4 and get_stats(s1.run_dir)["total_samples"] == 4
    s2 = run_experiment(cfg(fake_server, data, out, limit=10))
    assert s2.run_id == s1.run_id and s2.ok == 6 and s2.skipped_completed == 4
    assert fake_server.request_count == 10
    assert get_stats(s1.run_dir)["total_samples"] == 10


def test_second_writer_on_same_run_is_refused(fake_server, tmp_path):
    from evalledger.errors import LockHeldError
    from evalledger.run import prepare_run

    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    config = cfg(fake_server, data, tmp_path / "out")
    run_dir = prepare_run(config).run_dir
    holder = CheckpointManager(run_dir).open_writer()
    try:
        with pytest.raises(LockHeldError) as ei:
            run_experiment(config)
        assert "pid" in str(ei.value) and str(__import__("os").getpid()) in str(ei.value)
        # a shard beside an unsharded writer would overlap its samples: refused, naming the holder
        with pytest.raises(LockHeldError, match="unsharded run is writing"):
            run_experiment(config.replace(shard=(1, 2)))
    finally:
        holder.close()
    assert fake_server.request_count == 0
    # two different shards run side by side; an unsharded writer beside them is refused
    s1 = CheckpointManager(run_dir, shard=(1, 2)).open_writer()
    try:
        s = run_experiment(config.replace(shard=(2, 2)))
        assert s.exit_code == 0
        with pytest.raises(LockHeldError, match=f"shards of this run are being written right now \\(pid {__import__('os').getpid()}"):
            run_experiment(config)
    finally:
        s1.close()


def test_corrupt_resume_state_is_rebuilt_with_warning(fake_server, tmp_path, capsys):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    out = tmp_path / "out"
    s = run_experiment(cfg(fake_server, data, out, limit=3))
    state_path = s.run_dir / "resume_state.json"
    state = json.loads(state_path.read_text())
    assert state["counters"]["ok_records"] == 3 and state["counters"]["requests"] == 3
    assert len(state["sha256"]) == 64
    state_path.write_text(state_path.read_text().replace('"ok_records": 3', '"ok_records": 99'))
    capsys.readouterr()
    s2 = run_experiment(cfg(fake_server, data, out))
    err = capsys.readouterr().err
    assert "checksum" in err and "rebuilding" in err
    assert s2.ok == 2 and s2.skipped_completed == 3
    st2, problem = CheckpointManager(s.run_dir).read_resume_state()
    assert problem is None and st2 is not None
    # rebuilt from the JSONL (3 earlier records) plus this invocation's 2, not the tampered 99
    assert st2["counters"]["ok_records"] == 5 and st2["counters"]["requests"] == 5
    assert st2["counters"]["completed_samples"] == 5
    (s.run_dir / "resume_state.json").unlink()  # missing is rebuilt too
    s3 = run_experiment(cfg(fake_server, data, out))
    assert s3.requests == 0
    assert CheckpointManager(s.run_dir).read_resume_state()[0]["counters"]["ok_records"] == 5


def test_torn_tail_is_repaired_and_preserved(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    out = tmp_path / "out"
    s = run_experiment(cfg(fake_server, data, out, limit=3))
    results = s.run_dir / "results.jsonl"
    torn = b'{"sample_id": "s00004", "status": "ok", "corr'
    with open(results, "ab") as f:
        f.write(torn)
    # readers ignore the partial line and do not count it
    st = get_stats(s.run_dir)
    assert st["completed_samples"] == 3 and st["partial_tail_bytes"] == len(torn)
    s2 = run_experiment(cfg(fake_server, data, out))
    assert s2.ok == 3  # s00003..s00005, including the torn one
    aside = list(s.run_dir.glob("results.jsonl.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn
    recs = all_records(s.run_dir)
    assert sorted(r["sample_id"] for r in recs) == [f"s{i:05d}" for i in range(6)]


def test_global_random_state_persists_across_resume(fake_server, tmp_path):
    """A task drawing from the global `random` continues its stream on resume instead of restarting."""
    import random

    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    s = run_experiment(cfg(fake_server, data, out, limit=2))
    random.random()  # the process moves on; the saved state must not
    state, _ = CheckpointManager(s.run_dir).read_resume_state()
    mgr = CheckpointManager(s.run_dir)
    mgr.restore_random_state(state)
    expected = random.random()
    mgr.restore_random_state(state)
    assert random.random() == expected
    assert "numpy_random_state" in state  # pandas imports numpy, so its global RNG is saved too


def test_insufficient_quota_429_is_fatal_not_retried(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 10)
    fake_server.fail_always(status=429, code="insufficient_quota", message="You exceeded your current quota")
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=2))
    assert s.exit_code == 2 and "quota" in s.message
    assert fake_server.request_count <= 2


def test_anthropic_rejects_sampling_flags_before_any_request(fake_server, tmp_path):
    from evalledger.errors import UsageError

    with pytest.raises(UsageError, match="--temperature"):
        RunConfig(dataset="gsm8k", model="anthropic/claude-test", temperature=0.7)


def test_study_script_help_runs():
    import subprocess
    import sys

    from helpers import REPO

    out = subprocess.run([sys.executable, str(REPO / "run_full_scale_study.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--models" in out.stdout and "--datasets" in out.stdout


def test_hung_request_times_out_and_is_retried(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    fake_server.fail_next(1, kind="hang", hang_seconds=30)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", request_timeout=0.5))
    assert s.exit_code == 0 and s.ok == 3
    assert fake_server.request_count == 4
    assert sorted(r["attempts"] for r in all_records(s.run_dir)) == [1, 1, 2]


def test_pathlib_paths_are_accepted_and_keep_the_run_id(fake_server, tmp_path):
    """Python callers pass pathlib.Path for file options; the run (and its resume hint) must work
    and land on the same run ID as the same config given as strings."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    s1 = run_experiment(cfg(fake_server, data, out, dataset=data))
    assert s1.exit_code == 0 and s1.ok == 3
    as_text = cfg(fake_server, data, out, dataset=str(data))
    assert cfg(fake_server, data, out, dataset=data) == as_text
    s2 = run_experiment(cfg(fake_server, data, out, dataset=str(data), resume=True))
    assert s2.run_dir == s1.run_dir and s2.skipped_completed == 3
    assert fake_server.request_count == 3
