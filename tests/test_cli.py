"""The ``evalledger`` command line, run as real subprocesses against the loopback fake server.

Every run goes ``python -m evalledger`` → click → the library → the real OpenAI SDK → HTTP on
127.0.0.1 (``cli_env`` sets OPENAI_BASE_URL / OPENAI_API_KEY). The tests check what a user sees:
exit codes, messages on stderr, and what is (or is not) in the ledger and on the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

from helpers import all_records, cli_env, marker, popen_cli, read_lines, run_cli, run_many, write_qa_dataset

MODEL = "openai/test-model"


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", str(data), "--model", MODEL, "--output-dir", str(out), "--quiet", *extra]


def assert_no_run_dir(out: Path) -> None:
    """Nothing was created for the run: no output dir at all, or an empty one."""
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def summary_json(stdout: str) -> dict:
    return json.loads(stdout)




# ----------------------------------------------------------------------------------- help


def test_help_and_version(tmp_path):
    from evalledger._version import __version__

    top, run, stats, validate, version = run_many(
        [["--help"], ["run", "--help"], ["stats", "--help"], ["validate", "--help"], ["--version"]],
        dict(os.environ), tmp_path)
    for r in (top, run, stats, validate, version):
        assert r.returncode == 0, (r.args, r.stderr)
    for cmd in ("run", "stats", "validate"):
        assert cmd in top.stdout
    for flag in ("--resume", "--no-resume", "--overwrite", "--shard", "--concurrency", "--checkpoint-every", "--seed",
                 "--temperature", "--max-tokens", "--no-retry-errors", "--grace-seconds", "--run-id"):
        assert flag in run.stdout, flag
    assert "--json" in stats.stdout and "RUN" in stats.stdout
    assert "--dataset" in validate.stdout
    assert __version__ in version.stdout


# ----------------------------------------------------------------------------------- run / resume / overwrite


def test_full_run_then_rerun_skips_all_then_overwrite(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    out = tmp_path / "out"
    env = cli_env(fake_server)

    r1 = run_cli(run_args(data, out, "--json", "--concurrency", "4"), env, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    s1 = summary_json(r1.stdout)
    run_id = s1["run_id"]
    assert run_id.startswith("qa_openai-test-model_qa_")
    assert s1["ok"] == 12 and s1["requests"] == 12 and s1["status"] == "complete"
    assert fake_server.request_count == 12
    run_dir = out / run_id
    recs = all_records(run_dir)
    assert sorted(r["sample_id"] for r in recs) == [f"s{i:05d}" for i in range(12)]
    assert all(r["status"] == "ok" and r["correct"] is True for r in recs)
    assert f"run {run_id}: 12/12 ok" in r1.stderr

    r2 = run_cli(run_args(data, out, "--json"), env, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert "0 requests, 12 skipped as done" in r2.stderr
    s2 = summary_json(r2.stdout)
    assert s2["run_id"] == run_id and s2["skipped_completed"] == 12 and s2["requests"] == 0
    assert fake_server.request_count == 12  # not one request more
    assert len(all_records(run_dir)) == 12
    assert "resume with" not in r2.stderr

    r3 = run_cli(run_args(data, out, "--json", "--overwrite"), env, cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    assert fake_server.request_count == 12  # the response cache answers every request: nothing is paid again
    assert all(r["cached"] is True and r["paid"]["input_tokens"] == 0 for r in all_records(run_dir))
    aside = [d for d in out.iterdir() if d.name.startswith(run_id + ".old-")]
    assert len(aside) == 1, list(out.iterdir())
    assert "moved the old run aside" in r3.stderr and aside[0].name in r3.stderr
    assert len(all_records(aside[0])) == 12  # the old results are kept, not deleted
    assert len(all_records(run_dir)) == 12


def test_no_resume_refuses_a_run_with_results(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    assert run_cli(run_args(data, out, "--run-id", "r"), env, cwd=tmp_path).returncode == 0
    before = (out / "r" / "results.jsonl").read_bytes()

    r = run_cli(run_args(data, out, "--run-id", "r", "--no-resume"), env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--no-resume" in r.stderr and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr
    assert fake_server.request_count == 4
    assert (out / "r" / "results.jsonl").read_bytes() == before


# ----------------------------------------------------------------------------------- lock


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_second_process_on_same_run_is_refused_and_so_is_a_shard_beside_it(fake_server, tmp_path):
    # The holder's requests hang until the test lets them go, so it holds the lock through every
    # check below however slow the machine is; no wall-clock assumptions.
    n = 6
    fake_server.fail_when("[[ANSWER:", kind="hang", hang_seconds=300)
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    base = run_args(data, out, "--run-id", "locked")

    first = popen_cli([*base, "--concurrency", "2", "--grace-seconds", "0"], env, cwd=tmp_path)
    try:
        _wait_for(lambda: fake_server.request_count >= 2, 30, "the first process to send its requests")
        assert first.poll() is None

        second = run_cli(base, env, cwd=tmp_path, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert socket.gethostname() in second.stderr
        assert "already being written" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # it did not wait for the lock: the holder is still running

        # A shard of the same run would overlap the unsharded writer's samples: refused too.
        shard = run_cli([*base, "--shard", "1/2", "--concurrency", "8"], env, cwd=tmp_path, timeout=60)
        assert shard.returncode == 2, shard.stderr
        assert "unsharded run is writing" in shard.stderr and f"pid {first.pid}" in shard.stderr
        # the refused processes sent nothing: still only the holder's two hanging requests
        assert fake_server.request_count == 2

        first.send_signal(signal.SIGTERM)  # the holder stops cleanly (grace 0: cancel the hung requests)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 143, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    run_dir = out / "locked"
    assert not (run_dir / "results.shard-1-of-2.jsonl").exists()
    # the lock is free again: the same command now completes the run
    fake_server.clear_faults()
    done = run_cli(base, env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    recs, tail = read_lines(run_dir / "results.jsonl")
    assert tail == b"" and {r["sample_id"] for r in recs if r["status"] == "ok"} == {f"s{i:05d}" for i in range(n)}


# ----------------------------------------------------------------------------------- bad input


def _bad_dataset_cases(tmp: Path) -> list[tuple[str, list[str], list[str]]]:
    """(name, extra args, substrings the error must contain). Each dataset is written here."""
    good = write_qa_dataset(tmp / "good.jsonl", 5)
    cases: list[tuple[str, list[str], list[str]]] = []

    cases.append(("missing file", ["--dataset", str(tmp / "nope.jsonl")], ["dataset not found", "nope.jsonl"]))

    txt = tmp / "data.txt"
    txt.write_text(good.read_text())
    cases.append(("unsupported extension", ["--dataset", str(txt)], ["unsupported dataset format", "data.txt"]))

    empty = tmp / "empty.jsonl"
    empty.write_text("")
    cases.append(("empty file", ["--dataset", str(empty)], ["empty.jsonl", "empty"]))

    lines = good.read_text().splitlines()
    bad_json = tmp / "badjson.jsonl"
    bad_json.write_text("\n".join([lines[0], lines[1], '{"id": "x", "question": ', *lines[3:]]) + "\n")
    cases.append(("invalid JSON", ["--dataset", str(bad_json)], ["badjson.jsonl", "line 3"]))

    no_answer = tmp / "noanswer.jsonl"
    rows = [json.loads(x) for x in lines]
    del rows[3]["answer"]
    no_answer.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases.append(("missing field", ["--dataset", str(no_answer)], ["noanswer.jsonl", "'answer'", "line 4"]))

    dup = tmp / "dup.jsonl"
    rows = [json.loads(x) for x in lines]
    rows[4]["id"] = rows[1]["id"]
    dup.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases.append(("duplicate ids", ["--dataset", str(dup)], ["dup.jsonl", "duplicate", "s00001", "lines 2, 5"]))

    g = ["--dataset", str(good)]
    cases += [
        ("bad id column", [*g, "--id-column", "nope"], ["good.jsonl", "'nope'"]),
        ("limit 0", [*g, "--limit", "0"], ["--limit"]),
        ("shard 0/4", [*g, "--shard", "0/4"], ["--shard"]),
        ("shard 5/4", [*g, "--shard", "5/4"], ["--shard"]),
        ("shard a/b", [*g, "--shard", "a/b"], ["--shard"]),
        ("model without prefix", [*g, "--model", "foo"], ["--model", "foo"]),
        ("unknown task", [*g, "--task", "nosuch"], ["--task", "nosuch"]),
        ("negative progress interval", [*g, "--progress-interval", "-1"], ["--progress-interval"]),
        ("nan progress interval", [*g, "--progress-interval", "nan"], ["--progress-interval"]),
    ]
    return cases


def test_bad_input_exits_2_before_any_request_or_run_dir(fake_server, tmp_path):
    env = cli_env(fake_server)
    src = tmp_path / "src"
    src.mkdir()
    cases = _bad_dataset_cases(src)
    outs, argvs = [], []
    for name, extra, _ in cases:
        out = tmp_path / ("out-" + name.replace(" ", "-").replace("/", "-"))
        args = ["run", "--model", MODEL, "--output-dir", str(out), "--quiet", *extra]
        if "--dataset" not in extra:
            args += ["--dataset", str(src / "good.jsonl")]
        outs.append(out)
        argvs.append(args)
    for (name, _, needles), out, r in zip(cases, outs, run_many(argvs, env, tmp_path)):
        assert r.returncode == 2, (name, r.returncode, r.stderr)
        assert r.stderr.startswith("error: "), (name, r.stderr)
        assert "Traceback" not in r.stderr, (name, r.stderr)
        for needle in needles:
            assert needle in r.stderr, (name, needle, r.stderr)
        assert_no_run_dir(out)
    assert fake_server.request_count == 0


def test_bad_run_id_is_refused(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    bad_ids = ["a/b", "has space", "../up"]
    outs = [tmp_path / f"out{i}" for i in range(len(bad_ids))]
    results = run_many([run_args(data, out, "--run-id", bad) for bad, out in zip(bad_ids, outs)],
                       cli_env(fake_server), tmp_path)
    for bad, out, r in zip(bad_ids, outs, results):
        assert r.returncode == 2, (bad, r.stderr)
        assert "--run-id" in r.stderr and repr(bad) in r.stderr and "Traceback" not in r.stderr
        assert_no_run_dir(out)
    assert fake_server.request_count == 0
    assert not (tmp_path / "up").exists()


def test_missing_api_key_is_refused_before_anything(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(var)
    r = run_cli(["run", "--dataset", str(data), "--model", "openai/gpt-4o-mini", "--output-dir", str(out)],
                env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "OPENAI_API_KEY" in r.stderr and "Traceback" not in r.stderr
    assert fake_server.request_count == 0
    assert_no_run_dir(out)


def test_config_drift_shows_the_field_diff(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    r1 = run_cli(run_args(data, out, "--run-id", "r1", "--temperature", "0"), env, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    manifest = (out / "r1" / "manifest.json").read_bytes()

    r2 = run_cli(run_args(data, out, "--run-id", "r1", "--temperature", "0.5"), env, cwd=tmp_path)
    assert r2.returncode == 2, r2.stderr
    assert "temperature: run has 0.0, this command has 0.5" in r2.stderr
    assert "--overwrite" in r2.stderr and "Traceback" not in r2.stderr
    assert fake_server.request_count == 3
    assert (out / "r1" / "manifest.json").read_bytes() == manifest
    assert len(all_records(out / "r1")) == 3


# ----------------------------------------------------------------------------------- provider errors


def test_auth_error_stops_at_once_with_exit_2(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 30)
    out = tmp_path / "out"
    fake_server.fail_always(401)
    r = run_cli(run_args(data, out, "--run-id", "auth", "--concurrency", "3"), cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "the API key was refused" in r.stderr
    assert "Incorrect API key" in r.stderr  # the provider's own words
    assert 1 <= fake_server.request_count <= 3
    assert all_records(out / "auth") == []  # no flood of error records
    assert not (out / "auth" / "errors.log").exists()


def test_sample_error_exits_1_then_rerun_fixes_it(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    fake_server.fail_when(marker(2), 400)
    r = run_cli(run_args(data, out, "--run-id", "e"), env, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "1 sample(s) ended with errors" in r.stderr and "run again" in r.stderr
    assert "resume with: evalledger run" in r.stderr
    recs = all_records(out / "e")
    err = [x for x in recs if x["status"] == "error"]
    assert [x["sample_id"] for x in err] == ["s00002"] and err[0]["error"]["status_code"] == 400
    assert fake_server.count_for(marker(2)) == 1  # a 400 is not retried

    fake_server.clear_faults()
    r2 = run_cli(run_args(data, out, "--run-id", "e"), env, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert fake_server.request_count == 7  # only the failed sample was sent again
    assert fake_server.count_for(marker(2)) == 2
    ok = {x["sample_id"] for x in all_records(out / "e") if x["status"] == "ok"}
    assert ok == {f"s{i:05d}" for i in range(6)}


# ----------------------------------------------------------------------------------- stats / validate


def test_stats_table_json_and_unknown_run(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    fake_server.fail_when(marker(4), 400)
    assert run_cli(run_args(data, out, "--run-id", "st"), env, cwd=tmp_path).returncode == 1

    table_r, json_r, by_path, unknown = run_many(
        [["stats", "st", "--output-dir", str(out)], ["stats", "st", "--output-dir", str(out), "--json"],
         ["stats", str(out / "st"), "--json"], ["stats", "nosuchrun", "--output-dir", str(out)]],
        env, tmp_path)

    assert table_r.returncode == 0, table_r.stderr
    table = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in table_r.stdout.splitlines())
    assert table["run"] == "st"
    assert table["accuracy"] == "100.00%"
    assert table["samples"] == "5" and table["completed (ok)"] == "4"
    assert table["with errors"] == "1" and table["pending"] == "1"

    assert json_r.returncode == 0, json_r.stderr
    s = json.loads(json_r.stdout)
    for key in ("completed_samples", "error_count", "pending_samples", "total_samples", "accuracy", "cost_usd",
                "input_tokens", "output_tokens", "last_checkpoint"):
        assert key in s, key
    assert (s["completed_samples"], s["error_count"], s["pending_samples"], s["total_samples"]) == (4, 1, 1, 5)
    assert s["accuracy"] == 1.0 and s["input_tokens"] > 0 and s["output_tokens"] > 0
    assert s["last_checkpoint"]

    # A run directory path works as well as a run ID.
    assert by_path.returncode == 0 and json.loads(by_path.stdout)["completed_samples"] == 4

    assert unknown.returncode == 2
    assert "nosuchrun" in unknown.stderr and "st" in unknown.stderr.split("runs in", 1)[1]
    assert unknown.stdout == ""


def test_validate_builtin_and_broken(tmp_path):
    env = dict(os.environ)
    r = run_cli(["validate", "--dataset", "gsm8k"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1319 samples" in r.stdout

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    r = run_cli(["validate", "--dataset", str(broken)], env, cwd=tmp_path)
    assert r.returncode == 2
    assert "broken.jsonl" in r.stderr and "line 2" in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_progress_interval_sets_the_plain_status_lines(fake_server, tmp_path):
    """Not a terminal (a pipe, like a Slurm log): status lines at --progress-interval; 0 turns them off."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    env = cli_env(fake_server)
    fake_server.latency = 0.15
    base = ["run", "--dataset", str(data), "--model", MODEL, "--concurrency", "1"]
    r = run_cli([*base, "--output-dir", str(tmp_path / "a"), "--progress-interval", "0.2"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[evalledger]")]
    assert len(lines) >= 3 and all(" conc=1 " in ln and "/8 ok=" in ln for ln in lines), r.stderr
    r = run_cli([*base, "--output-dir", str(tmp_path / "b"), "--progress-interval", "0"], env, cwd=tmp_path)
    assert r.returncode == 0 and "[evalledger]" not in r.stderr and "8/8 ok" in r.stderr, r.stderr
