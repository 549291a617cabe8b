"""Looking at results: load_results / load_runs, get_stats, the stats/list/export/errors commands, progress.

Data comes from real runs against the loopback fake server, or, for shapes a run cannot easily
produce (shards with duplicates, torn tails, self-correction fields, a writer holding its lock),
from records written with the real CheckpointManager.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import cli_env, marker, run_cli, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.fsio import write_json_atomic
from evalledger.readers import CheckpointManager, get_stats, load_results, load_runs, wilson_interval
from evalledger.run import run_experiment
from evalledger.run.progress import Progress

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=timezone.utc)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rec(sid: str, status: str = "ok", correct: bool | None = True, *, latency: float = 1.0, at: float = 0.0,
        shard: str | None = None, cost: float | None = None, tokens: tuple[int, int] = (10, 5),
        err_type: str = "BadRequestError", code: int | None = 400, **extra_fields: Any) -> dict[str, Any]:
    """A record shaped like the runner's; ``at`` is seconds after T0 when it finished."""
    ok = status == "ok"
    r: dict[str, Any] = {
        "sample_id": sid, "status": status, "attempts": 1, "shard": shard, "model": "openai/m", "task": "qa",
        "input_hash": "0" * 16, "prompt": [{"role": "user", "content": f"question {sid}"}],
        "response": f"answer {sid}" if ok else None, "prediction": "1" if ok else None, "target": "1" if ok else None,
        "score": correct if ok else None, "correct": correct if ok else None,
        "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}, "cost_usd": cost, "latency_s": latency,
        "request_ids": ["req_x"],
        "error": None if ok else {"type": err_type, "message": f"{err_type} for {sid}", "retryable": False,
                                  "status_code": code},
        "started_at": iso(T0 + timedelta(seconds=at - latency)), "finished_at": iso(T0 + timedelta(seconds=at)),
    }
    r.update(extra_fields)
    return r


def write_manifest(run_dir: Path, *, model: str = "openai/m", dataset: str = "qa", task: str = "qa",
                   sample_count: int | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "manifest.json", {"run_id": run_dir.name, "config": {"model": model}, "task": task,
                                                  "dataset": {"name": dataset}, "sample_count": sample_count})


def write_records(run_dir: Path, records: list[dict[str, Any]], shard: tuple[int, int] | None = None) -> None:
    with CheckpointManager(run_dir, shard) as ledger:
        ledger.append_records(records)


def cfg(server, data: Path, out: Path, **kw: Any) -> RunConfig:
    base = dict(dataset=str(data), model="openai/test-model", output_dir=out, base_url=server.openai_base_url,
                api_key="sk-test", quiet=True, concurrency=4, max_retry_wait=0.05)
    base.update(kw)
    return RunConfig(**base)


# ------------------------------------------------------------------------------------ DataFrames
def test_load_results_of_a_real_run_is_typed_and_matches_the_ledger(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    fake_server.fail_when(marker(5), 400)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s.exit_code == 1
    df = load_results(s.run_id, output_dir=tmp_path / "out")

    assert len(df) == 12 and list(df["sample_id"]) == [f"s{i:05d}" for i in range(12)]
    assert str(df["correct"].dtype) == "boolean" and str(df["input_tokens"].dtype) == "Int64"
    assert str(df["latency_s"].dtype) == "Float64" and str(df["started_at"].dt.tz) == "UTC"
    assert str(df["error_status_code"].dtype) == "Int64"
    err = df[df.sample_id == "s00005"].iloc[0]
    assert err["status"] == "error" and pd.isna(err["correct"])  # an error is not a wrong answer
    assert err["error_type"] == "BadRequestError" and err["error_status_code"] == 400
    ok = df[df.status == "ok"]
    assert ok["correct"].all() and list(ok["prediction"].head(2)) == ["0", "1"]
    raw = [json.loads(x) for x in (s.run_dir / "results.jsonl").read_text().splitlines()]
    assert int(df["input_tokens"].sum()) == sum(r["usage"]["input_tokens"] for r in raw)
    assert (df["finished_at"] >= df["started_at"]).all()
    assert "The answer is 3" in df.loc[df.sample_id == "s00003", "response"].iloc[0]
    assert "response" not in load_results(s.run_dir, text=False).columns


def test_shards_duplicates_torn_tail_and_extra_fields(tmp_path):
    run = tmp_path / "out" / "r1"
    write_manifest(run, sample_count=8)
    write_records(run, [
        rec("a", shard="1/2", at=1),
        rec("b", "error", at=2, shard="1/2"), rec("b", correct=False, at=3, shard="1/2"),  # error, then ok: ok
        rec("c", at=4, shard="1/2"), rec("c", "error", at=5, shard="1/2", err_type="RateLimitError", code=429),
    ], shard=(1, 2))
    write_records(run, [
        rec("d", "error", at=1, shard="2/2", err_type="APITimeoutError", code=None),
        rec("d", "error", at=2, shard="2/2", err_type="InternalServerError", code=500),  # latest error wins
        rec("e", correct=False, at=3, shard="2/2", extra={"correct_before": False, "correct_after": True, "turns": 2}),
        rec("f", at=4, shard="2/2", transition="correct→correct", new_field=7),
    ], shard=(2, 2))
    with open(run / "results.shard-2-of-2.jsonl", "ab") as f:
        f.write(b'{"not json\n')  # a complete but garbled line
        f.write(b'{"sample_id": "g", "status": "ok", "corr')  # a torn tail (or a write in progress)

    df = load_results(run)
    assert list(df["sample_id"]) == ["a", "b", "c", "d", "e", "f"]
    by = df.set_index("sample_id")
    assert by.loc["b", "status"] == "ok" and bool(by.loc["b", "correct"]) is False
    assert by.loc["c", "status"] == "ok"  # a later error never hides an ok
    assert by.loc["d", "error_type"] == "InternalServerError" and by.loc["d", "error_status_code"] == 500
    assert set(df["shard"]) == {"1/2", "2/2"}
    # Pass-through fields: self-correction keys unprefixed wherever they were, other extras prefixed.
    assert str(df["correct_before"].dtype) == "boolean" and bool(by.loc["e", "correct_after"]) is True
    assert by.loc["e", "extra_turns"] == 2 and by.loc["f", "new_field"] == 7
    assert by.loc["f", "transition"] == "correct→correct" and pd.isna(by.loc["a", "transition"])

    s = get_stats(run)
    assert (s["completed_samples"], s["error_count"], s["pending_samples"], s["correct_count"]) == (5, 1, 3, 3)
    assert s["errors_by_type"] == {"InternalServerError": 1}
    assert s["unparseable_lines"] == 1 and s["partial_tail_bytes"] > 0 and s["records_read"] == 10
    assert s["shards"]["1/2"]["ok"] == 3 and s["shards"]["2/2"]["ok"] == 2 and s["shards"]["2/2"]["error_records"] == 2
    assert s["running"] is False and s["eta_s"] is None
    assert s["accuracy_before"] == 0.0 and s["accuracy_after"] == 1.0
    assert s["transitions"]["incorrect→correct"] == 1


def test_stats_numbers_ci_latency_cost_throughput(tmp_path):
    run = tmp_path / "r"
    write_manifest(run, sample_count=12)
    recs = [rec(f"s{i}", correct=i < 8, latency=float(i + 1), at=10.0 * i, cost=0.01) for i in range(10)]
    recs.append(rec("s10", "error", at=95.0, cost=0.002))
    recs.append(rec("s0", at=2000.0, cost=0.01))  # a re-run of s0 after a long pause (resume)
    write_records(run, recs)
    s = CheckpointManager(run).get_stats()  # the same dict as evalledger.get_stats
    assert s == {**get_stats(run), "last_checkpoint": s["last_checkpoint"]}
    assert s["accuracy"] == 0.8 and s["completed_samples"] == 10
    lo, hi = s["accuracy_ci95"]
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # textbook Wilson
    assert wilson_interval(0, 0) is None and wilson_interval(10, 10)[1] == 1.0
    # p50/p95 over ok samples (s0's latest record has latency 1.0): numpy's linear interpolation
    lats = sorted([1.0] + [float(i + 1) for i in range(1, 10)])
    assert s["latency_p50_s"] == pytest.approx(pd.Series(lats).quantile(0.5))
    assert s["latency_p95_s"] == pytest.approx(pd.Series(lats).quantile(0.95))
    assert s["cost_usd"] == pytest.approx(0.112) and s["cost_per_correct_usd"] == pytest.approx(0.112 / 8)
    assert s["input_tokens"] == 120 and s["output_tokens"] == 60
    # Working time is when some sample was under way, from its start (finish - latency) to its
    # finish: s1..s10 cover [8, 95] (s1 started at 10 - 2), s0's re-run [1999, 2000]; the pause
    # between is not working time. 11 samples finished in 88 s.
    assert s["throughput_per_min"] == pytest.approx(11 / 88 * 60)


def test_load_runs_concatenates_and_filters(tmp_path):
    out = tmp_path / "out"
    for name, model, ds in [("r1", "openai/a", "gsm8k"), ("r2", "anthropic/b", "gsm8k"), ("r3", "openai/a", "mmlu")]:
        write_manifest(out / name, model=model, dataset=ds, sample_count=3)
        write_records(out / name, [rec(f"{name}-{i}") for i in range(3)])
    (out / "r1.old-20260101").mkdir()  # moved aside by --overwrite: not a run to list
    df = load_runs(out)
    assert len(df) == 9 and list(df.columns[:2]) == ["run_id", "dataset"]
    assert sorted(df["run_id"].unique()) == ["r1", "r2", "r3"]
    assert sorted(load_runs(out, model="openai/*")["run_id"].unique()) == ["r1", "r3"]
    only = load_runs(out, model="openai/*", dataset="gsm8k")
    assert set(only["run_id"]) == {"r1"} and set(only["dataset"]) == {"gsm8k"}
    assert load_runs(out, task="mcq").empty


# ------------------------------------------------------------------------------------ running runs
def test_stats_and_list_see_a_running_run_holding_its_lock(tmp_path):
    out = tmp_path / "out"
    write_manifest(out / "done", sample_count=2)
    write_records(out / "done", [rec("x"), rec("y")])
    live = out / "live"
    write_manifest(live, sample_count=100)
    now = datetime.now(timezone.utc)
    writer = CheckpointManager(live, (1, 2)).open_writer()
    try:
        writer.append_records([{**rec(f"l{i}", shard="1/2"), "finished_at": iso(now - timedelta(seconds=20 - i))}
                               for i in range(20)])
        s = get_stats(live)
        assert s["running"] is True and s["shards"]["1/2"]["running"] is True
        assert [w["pid"] for w in s["writers"].values()] == [os.getpid()]
        assert s["eta_s"] == pytest.approx(80 / (19 / 19), rel=0.01)  # 80 pending at 1 sample/s
        r = run_cli(["list", "--output-dir", str(out)], dict(os.environ))
        assert r.returncode == 0, r.stderr
        lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
        assert re.search(rf"running \(pid {os.getpid()} on ", lines["live"]) and "20/100" in lines["live"]
        # written without a runner, so it has no status marker; nobody holds its lock
        assert lines["done"].rstrip().endswith("unknown (no status marker)") and "2/2" in lines["done"]
        listed = json.loads(run_cli(["list", "--output-dir", str(out), "--json"], dict(os.environ)).stdout)
        assert [x["running"] for x in listed] == [False, True]
        # list must not have touched the writer's lock: it can still append.
        writer.append_records([rec("l99", shard="1/2")])
    finally:
        writer.close()
    assert get_stats(live)["running"] is False and get_stats(live)["eta_s"] is None


# ------------------------------------------------------------------------------------ CLI
def test_cli_stats_errors_and_export(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 10)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    fake_server.fail_when(marker(2), 400)
    fake_server.fail_when(marker(7), 400)
    fake_server.fail_when(marker(4), 500)  # retried, then exhausted
    r = run_cli(["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(out), "--run-id", "e",
                 "--max-attempts", "2", "--max-retry-wait", "0.05", "--quiet"], env, cwd=tmp_path)
    assert r.returncode == 1, r.stderr

    r = run_cli(["stats", "e", "--output-dir", str(out)], env, cwd=tmp_path)
    table = dict(re.split(r"\s{2,}", ln.strip(), maxsplit=1) for ln in r.stdout.splitlines())
    assert table["accuracy"] == "100.00%" and table["with errors"] == "3"
    assert table["accuracy 95% CI"].startswith("64.57% – 100.00%")
    assert table["errors: BadRequestError"] == "2" and table["errors: InternalServerError"] == "1"
    assert table["status"] == "incomplete (3 sample(s) with errors)"

    r = run_cli(["errors", "e", "--output-dir", str(out)], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "BadRequestError (HTTP 400): 2 sample(s)"
    assert "InternalServerError (HTTP 500): 1 sample(s)" in r.stdout and "e.g. s00004" in r.stdout
    groups = json.loads(run_cli(["errors", "e", "--output-dir", str(out), "--json"], env, cwd=tmp_path).stdout)
    assert [(g["type"], g["count"], g["sample_ids"]) for g in groups] == [
        ("BadRequestError", 2, ["s00002", "s00007"]), ("InternalServerError", 1, ["s00004"])]

    expected = load_results("e", output_dir=out)
    for fmt in ("csv", "jsonl", "parquet"):
        r = run_cli(["export", "e", "--output-dir", str(out), "--format", fmt], env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        path = tmp_path / f"e.{fmt}"
        got = {"csv": pd.read_csv, "parquet": pd.read_parquet,
               "jsonl": lambda p: pd.read_json(p, lines=True, dtype={"prediction": str})}[fmt](path)
        assert list(got["sample_id"]) == list(expected["sample_id"]), fmt
        assert list(got["status"]) == list(expected["status"]), fmt
        assert int(got["input_tokens"].sum()) == int(expected["input_tokens"].sum()), fmt
        assert got.loc[got.sample_id == "s00004", "error_type"].iloc[0] == "InternalServerError", fmt
    r = run_cli(["export", "e", "--output-dir", str(out), "--format", "csv", "-o", str(tmp_path / "x.csv")], env)
    assert r.returncode == 0 and (tmp_path / "x.csv").exists()
    r = run_cli(["export", "nope", "--output-dir", str(out)], env, cwd=tmp_path)
    assert r.returncode == 2 and "nope" in r.stderr


def test_export_parquet_without_pyarrow_names_the_extra(tmp_path):
    run = tmp_path / "out" / "r"
    write_manifest(run, sample_count=1)
    write_records(run, [rec("a")])
    blocker = tmp_path / "no_pyarrow"
    (blocker / "pyarrow").mkdir(parents=True)
    # A package that fails to import, first on the path: what a missing pyarrow looks like.
    (blocker / "pyarrow" / "__init__.py").write_text("raise ImportError('No module named pyarrow')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = run_cli(["export", str(run), "--format", "parquet"], env, cwd=tmp_path)
    assert r.returncode == 2
    assert "evalledger[parquet]" in r.stderr and "pyarrow" in r.stderr
    assert not (tmp_path / "r.parquet").exists()


# ------------------------------------------------------------------------------------ progress
class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_lines_every_interval_even_without_progress():
    buf = io.StringIO()
    p = Progress(10, 2, interval=0.05, stream=buf, label="run-x", concurrency=8)
    p.update([{"status": "ok", "correct": True, "cost_usd": 0.25, "usage": {"input_tokens": 3}},
              {"status": "error", "usage": {}}])
    p.note_rate_limit_wait(2.0)
    time.sleep(0.3)  # no records arrive meanwhile: lines must still come
    p.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3, lines
    assert lines[-1].startswith("[evalledger] run-x 4/10 ok=1 err=1 acc=100.0% cost=$0.2500 conc=8 rl_waits=1 (2s)")
    assert "rate=" in lines[-1] and "eta=" in lines[-1]
    n = len(lines)
    time.sleep(0.15)
    assert len(buf.getvalue().splitlines()) == n  # close() stops the ticker


def test_progress_quiet_and_tty_bar():
    quiet = io.StringIO()
    p = Progress(5, 0, quiet=True, interval=0.01, stream=quiet, concurrency=2)
    p.update([{"status": "ok", "correct": True}])
    time.sleep(0.05)
    p.close()
    assert quiet.getvalue() == ""

    tty = _TTY()
    p = Progress(5, 1, stream=tty, concurrency=3, interval=0.01)
    p.update([{"status": "ok", "correct": False, "cost_usd": None, "usage": {"input_tokens": 5}}])
    p.set_concurrency(2)
    p.close()
    out = tty.getvalue()
    assert "2/5" in out and "conc=2" in out and "acc=0.0%" in out and "cost=?" in out  # tokens with no price


def test_run_prints_status_lines_with_configured_concurrency(fake_server, tmp_path, capfd):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    fake_server.latency = 0.05
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", quiet=False, concurrency=2, progress_interval=0.1))
    assert s.exit_code == 0
    err = capfd.readouterr().err
    status = [ln for ln in err.splitlines() if ln.startswith("[evalledger]")]
    assert status and all("conc=2" in ln for ln in status), err
    assert re.search(r" \d+/12 ok=\d+ err=0 acc=(100\.0%|-) cost=\? conc=2 rl_waits=0", status[-1])


def test_corrupt_manifest_still_listed_and_extras_never_shadow_base_columns(tmp_path):
    out = tmp_path / "out"
    write_manifest(out / "good", sample_count=1)
    write_records(out / "good", [rec("a", extra={"model": "judge-x"}, model_note="n", input_tokens=99)])
    (out / "bad").mkdir()
    write_records(out / "bad", [rec("b")])
    (out / "bad" / "manifest.json").write_text("{not json")
    r = run_cli(["list", "--output-dir", str(out)], dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:-1]] == ["bad", "good"]
    assert "not valid JSON" in get_stats(out / "bad")["manifest_problem"]
    df = load_results(out / "good")
    assert df.loc[0, "model"] == "openai/m" and df.loc[0, "extra_model"] == "judge-x"
    assert df.loc[0, "model_note"] == "n"
    assert df.loc[0, "input_tokens"] == 10 and df.loc[0, "record_input_tokens"] == 99  # usage wins, field kept


def test_throughput_counts_working_time_not_the_gaps_between_finishes(tmp_path):
    """Samples finished together (one group commit) and a run resumed after a pause: throughput is
    samples per minute of the time some sample was under way."""
    run = tmp_path / "r"
    write_manifest(run, sample_count=8)
    # Session 1: four samples sent at t=0, answered 10 s later within a few ms of each other.
    # Session 2, after a pause of 1000 s: the same again. 8 samples in 20 s of work: 24/min.
    recs = [rec(f"a{i}", latency=10.0, at=10.0 + i / 1000) for i in range(4)]
    recs += [rec(f"b{i}", latency=10.0, at=1010.0 + i / 1000) for i in range(4)]
    write_records(run, recs)
    s = get_stats(run)
    assert s["throughput_per_min"] == pytest.approx(8 / 20.003 * 60, rel=0.01)


def test_throughput_of_a_real_run_matches_its_pace(fake_server, tmp_path):
    """8 samples, 2 at a time, each answered in 0.3 s, one attempt each: 4 rounds of 0.3 s of work.
    The throughput can be no higher than the server allows and no lower than 8 over the whole
    run's wall time (which adds start-up)."""
    fake_server.latency = 0.3
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=2, adaptive_concurrency=False))
    assert s.exit_code == 0 and fake_server.request_count == 8
    per_min = get_stats(s.run_dir)["throughput_per_min"]
    assert 8 / s.duration_s * 60 * 0.9 <= per_min <= 8 / (4 * 0.3) * 60 * 1.05, (per_min, s.duration_s)
