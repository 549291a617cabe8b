"""Readers (stats, DataFrames, report, the CLI's result commands) on runs with hostile files.

Decisions these tests pin down:

* Which results lines are records is decided by :func:`evalledger.ledger.parse_record_line`
  alone: the streaming readers, the scan behind stats/DataFrames/report and the writer's repair
  all count the same lines. A line with ``NaN``/``Infinity`` (Python's ``json`` writes them, and
  so can our writer) is a record everywhere; non-finite numbers read as NA and never poison sums.
  A string-less ``sample_id`` or a ``status`` that is not a string makes a line garbage.
* Samples the manifest lists as ``ids_not_in_dataset`` are kept as DataFrame rows with
  ``in_dataset`` False, and left out of every count and accuracy (listed as ``unknown_sample_ids``).
* A manifest or resume state of the wrong shape never crashes a reader: wrong fields read as unknown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from evalledger.fsio import write_json_atomic
from evalledger.ledger import ReadReport, iter_file_records, parse_record_line
from evalledger.readers import CheckpointManager, get_stats, load_results
from evalledger.readers.scan import scan_run

FINISHED = "2026-11-01T12:00:00.000Z"


def rec(sid: str, status: str = "ok", correct: bool | None = True, **fields: Any) -> dict[str, Any]:
    ok = status == "ok"
    r: dict[str, Any] = {
        "sample_id": sid, "status": status, "attempts": 1, "shard": None, "model": "openai/m", "task": "qa",
        "prediction": "1" if ok else None, "target": "1", "score": correct if ok else None,
        "correct": correct if ok else None, "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": 0.01,
        "latency_s": 1.0, "error": None if ok else {"type": "BadRequestError", "message": "bad", "status_code": 400},
        "started_at": FINISHED, "finished_at": FINISHED,
    }
    r.update(fields)
    return r


def make_run(run_dir: Path, records: list[dict[str, Any]], **manifest: Any) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    m = {"run_id": run_dir.name, "config": {"model": "openai/m"}, "task": "qa", "dataset": {"name": "qa"},
         "sample_count": 3}
    m.update(manifest)
    write_json_atomic(run_dir / "manifest.json", m)
    with CheckpointManager(run_dir) as ledger:
        ledger.append_records(records)
    return run_dir


def append_lines(run_dir: Path, lines: list[bytes]) -> None:
    with open(run_dir / "results.jsonl", "ab") as f:
        f.write(b"".join(lines))


GOOD = [rec("a"), rec("b", correct=False), rec("c", "error")]
GARBAGE = [
    b'{"sample_id": [1], "status": "ok"}\n',  # unhashable id
    b'{"sample_id": 5}\n',  # not a string id
    b'{"sample_id": "x1", "status": 5}\n',  # status not a string
    b'{"sample_id": "x2", "status": ["ok"]}\n',  # unhashable status
    b'{"sample_id": "x3\\ud800", "status": "ok"}\n',  # a lone surrogate: no writer of ours made it
    b"[1, 2]\n",
]
# Records (they parse) whose fields have the wrong type: read as missing, never a crash.
ODD = [
    json.dumps(rec("d", cost_usd=float("nan"), latency_s=float("inf"), score=float("nan"))).encode() + b"\n",
    json.dumps(rec("e", usage=[1], cost_usd="x", finished_at=5, started_at=[1])).encode() + b"\n",
    json.dumps(rec("f", "error", error="boom", model=[1], task={"a": 1}, shard=[2])).encode() + b"\n",
    json.dumps(rec("g", "error", error={"type": [1], "message": {"x": 1}, "status_code": "abc"})).encode() + b"\n",
    json.dumps(rec("h", attempts=10**30, usage={"input_tokens": "x", "output_tokens": 10**30}, extra=[1])).encode()
    + b"\n",
]


# ------------------------------------------------------------------------- samples not in the dataset
def test_stats_leave_out_samples_not_in_the_dataset_and_frames_mark_them(tmp_path):
    run = make_run(tmp_path / "run", GOOD + [rec("ghost-1"), rec("ghost-2", "error")],
                   ids_not_in_dataset=["ghost-1", "ghost-2"])
    s = get_stats(run)
    assert (s["completed_samples"], s["error_count"], s["correct_count"], s["pending_samples"]) == (2, 1, 1, 1)
    assert s["accuracy"] == 0.5 and s["errors_by_type"] == {"BadRequestError": 1}
    assert s["unknown_sample_ids"] == ["ghost-1", "ghost-2"]
    assert s["shards"]["all"]["ok"] == 2 and s["files"]["results.jsonl"]["completed"] == 2
    assert s["input_tokens"] == 50  # paid for all the same: tokens and cost stay over every record
    df = load_results(run)
    assert list(df["sample_id"]) == ["a", "b", "c", "ghost-1", "ghost-2"]  # kept, never hidden
    assert list(df["in_dataset"]) == [True, True, True, False, False] and str(df["in_dataset"].dtype) == "boolean"

    errs = run_cli(["errors", str(run), "--json"], env=None)
    assert errs.returncode == 0 and [g["sample_ids"] for g in json.loads(errs.stdout)] == [["c"]]
    text = run_cli(["stats", str(run)], env=None)
    assert text.returncode == 0 and "not in dataset" in text.stdout and "ghost-1, ghost-2" in text.stdout


def test_without_a_foreign_list_every_row_is_in_the_dataset(tmp_path):
    run = make_run(tmp_path / "run", GOOD)
    assert list(load_results(run)["in_dataset"]) == [True, True, True]
    assert get_stats(run)["unknown_sample_ids"] == []


# ------------------------------------------------------------------------- one rule for results lines
def test_every_reader_counts_the_same_lines_as_records(tmp_path):
    run = make_run(tmp_path / "run", GOOD)
    append_lines(run, GARBAGE + ODD)
    report = ReadReport()
    streamed = [r["sample_id"] for r in iter_file_records(run / "results.jsonl", report)]
    assert streamed == ["a", "b", "c", "d", "e", "f", "g", "h"] and report.skipped_lines == len(GARBAGE)
    for line in GARBAGE:
        assert parse_record_line(line) is None
    scan = scan_run(run)
    assert scan.unparseable_lines == len(GARBAGE) and sorted(scan.sample_ids) == streamed
    s = get_stats(run)
    assert s["unparseable_lines"] == len(GARBAGE)
    assert sorted(load_results(run)["sample_id"]) == streamed


def test_nan_and_wrong_types_read_as_missing_never_poison_sums(tmp_path):
    run = make_run(tmp_path / "run", GOOD)
    append_lines(run, ODD)
    s = get_stats(run)
    assert s["completed_samples"] == 5 and s["error_count"] == 3  # a, b, d, e, h ok; c, f, g errors
    assert s["cost_usd"] is None  # records without a usable cost: the total is unknown, not lower or NaN
    # Only whole numbers are token counts ("x" is not; orjson reads 10**30 as the float 1e30).
    assert s["input_tokens"] == 10 * 6 and s["output_tokens"] == 5 * 6
    assert s["latency_p95_s"] == 1.0  # Infinity is not a latency
    df = load_results(run).set_index("sample_id")
    assert df["latency_s"].isna()["d"] and df["cost_usd"].isna()["d"] and df["score"].isna()["d"]
    assert df["attempts"].isna()["h"] and df["finished_at"].isna()["e"]
    assert df.loc["f", "model"] == "[1]" and df.loc["g", "error_type"] == "[1]"


# ------------------------------------------------------------------------- manifest and resume state
@pytest.mark.parametrize("state", ["[1, 2]", '"text"', '{"last_checkpoint": [1]}', '{"last_checkpoint": 5}'])
def test_resume_state_of_the_wrong_shape_is_ignored(tmp_path, state):
    run = make_run(tmp_path / "run", GOOD)
    (run / "resume_state.json").write_text(state)
    assert get_stats(run)["last_checkpoint"] == FINISHED


def test_manifest_fields_of_the_wrong_type_read_as_unknown(tmp_path):
    run = make_run(tmp_path / "run", GOOD, config=[1], dataset="qa", task={"a": 1}, sample_count="3",
                   ids_not_in_dataset="ghost")
    s = get_stats(run)
    assert (s["model"], s["task"], s["dataset"], s["total_samples"], s["pending_samples"]) == (None,) * 5
    assert s["completed_samples"] == 2
    assert "config is not an object" in s["manifest_problem"] and "manifest.json" in s["manifest_problem"]


# ------------------------------------------------------------------------- the CLI on all of it at once
def test_result_commands_on_a_hostile_run_exit_0_without_traceback(tmp_path):
    out = tmp_path / "out"
    run = make_run(out / "run", GOOD + [rec("ghost", "error")], config="x", ids_not_in_dataset=["ghost"])
    append_lines(run, GARBAGE + ODD)
    (run / "resume_state.json").write_text('{"last_checkpoint": {"a": 1}}')
    (run / "resume_state.shard-1-of-2.json").write_text("[]")
    commands = [
        ["stats", "run", "-o", str(out)], ["stats", "run", "-o", str(out), "--json"], ["list", "-o", str(out)],
        ["errors", "run", "-o", str(out)], ["export", "run", "--output-dir", str(out), "--out", str(tmp_path / "x.csv")],
        ["export", "run", "--output-dir", str(out), "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")],
        ["report", "run", "--output-dir", str(out), "-o", str(tmp_path / "r.html")],
        ["report", str(out), "-o", str(tmp_path / "all.html")],
    ]
    for args in commands:
        p = run_cli(args, env=None, cwd=tmp_path)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr)
    s = json.loads(run_cli(["stats", "run", "-o", str(out), "--json"], env=None).stdout)
    assert s["unparseable_lines"] == len(GARBAGE) and s["unknown_sample_ids"] == ["ghost"]
    assert s["completed_samples"] == 5 and s["error_count"] == 3


def test_result_commands_on_an_unidentifiable_run_exit_2_naming_the_file(tmp_path):
    run = make_run(tmp_path / "run", GOOD)
    (run / "manifest.json").write_text("[1]")  # cannot tell which experiment: stats still show the results
    p = run_cli(["stats", str(run)], env=None)
    assert p.returncode == 0 and "manifest.json" in p.stdout
    missing = run_cli(["stats", str(tmp_path / "nope")], env=None)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "nope" in missing.stderr
