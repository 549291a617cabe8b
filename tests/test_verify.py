"""`evalledger verify` (issue 9): each planted defect is found, a clean run is clean, nothing is changed.

Runs are real (the SDK against the loopback fake server); defects are planted by editing files the
way a person, a bad copy or a crash would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helpers import cli_env, run_cli, run_config, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.ops import verify_run
from evalledger.run import run_experiment


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    return run_config(server, data, out, **{**dict(max_attempts=2, run_id="v"), **kw})


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the sha256 of its bytes: to show a command changed nothing."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def kinds(report) -> list[str]:
    return sorted({f.kind for f in report.findings})


def complete_run(server, tmp_path: Path, n: int = 8, **kw) -> Path:
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    s = run_experiment(cfg(server, data, tmp_path / "out", **kw))
    assert s.exit_code == 0
    return s.run_dir


def test_a_clean_complete_run_is_clean_from_python_and_the_cli(fake_server, tmp_path):
    run_dir = complete_run(fake_server, tmp_path)
    before = tree_digest(run_dir)
    report = verify_run(run_dir)
    assert report.exit_code == 0 and report.findings == [], report.findings
    assert report.checked["records"] == 8 and report.checked["dataset_samples"] == 8
    r = run_cli(["verify", "v", "--output-dir", str(tmp_path / "out")], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "clean: no findings" in r.stdout and "8 records" in r.stdout
    assert tree_digest(run_dir) == before  # verify changes nothing


def test_duplicate_ok_records_say_which_one_readers_use(fake_server, tmp_path):
    run_dir = complete_run(fake_server, tmp_path)
    results = run_dir / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    first = json.loads(lines[0])
    again = {**first, "prediction": "999", "score": False, "correct": False}
    with open(results, "ab") as f:
        f.write((json.dumps(again) + "\n").encode())
    report = verify_run(run_dir)
    assert report.exit_code == 1
    (f,) = [f for f in report.findings if f.kind == "duplicate_ok"]
    sid = first["sample_id"]
    assert f"{sid} (results.jsonl line 1, results.jsonl line 9; readers use results.jsonl line 9" in f.message
    assert "1 with different scores or predictions" in f.message and "disagree" in f.message


def test_records_for_ids_not_in_the_dataset(fake_server, tmp_path):
    run_dir = complete_run(fake_server, tmp_path)
    with open(run_dir / "results.jsonl", "ab") as f:
        f.write(b'{"sample_id":"ghost-1","status":"ok","score":true}\n')
    report = verify_run(run_dir)
    (f,) = [f for f in report.findings if f.kind == "unknown_id"]
    assert "1 sample id(s)" in f.message and "ghost-1" in f.message


def test_ids_cannot_be_checked_when_the_dataset_changed_and_it_says_so(fake_server, tmp_path):
    run_dir = complete_run(fake_server, tmp_path)
    write_qa_dataset(tmp_path / "qa.jsonl", 3)  # the dataset file is rewritten in place
    report = verify_run(run_dir)
    assert report.exit_code == 0, report.findings
    assert any("could not check sample ids" in n and "changed since run" in n for n in report.notes)


def test_a_resume_state_that_fails_its_checksum(fake_server, tmp_path):
    run_dir = complete_run(fake_server, tmp_path)
    state_path = run_dir / "resume_state.json"
    state = json.loads(state_path.read_text())
    state["counters"]["ok_records"] += 1  # a hand edit that leaves valid JSON
    state_path.write_text(json.dumps(state))
    report = verify_run(run_dir)
    assert kinds(report) == ["bad_resume_state"]
    assert "fails its checksum" in report.findings[0].message and report.findings[0].file == "resume_state.json"


def test_a_results_file_edited_after_completion(fake_server, tmp_path):
    run_dir = complete_run(fake_server, tmp_path)
    results = run_dir / "results.jsonl"
    data = results.read_bytes()
    # Same length, same validity, one answer changed: only the hash can tell.
    rec = json.loads(data.splitlines()[2])
    edited = data.replace(json.dumps(rec["prediction"]).encode(), b'"7"', 1) if rec["prediction"] != "7" else data
    assert edited != data
    results.write_bytes(edited)
    report = verify_run(run_dir)
    (f,) = [f for f in report.findings if f.kind == "changed_after_complete"]
    assert "results.jsonl changed after the run completed" in f.message and "status.json" in f.message


def test_overlapping_shards_and_records_in_the_wrong_shard_file(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    out = tmp_path / "out"
    for k in (1, 2):
        assert run_experiment(cfg(fake_server, data, out, shard=(k, 2))).exit_code == 0
    run_dir = out / "v"
    assert verify_run(run_dir).exit_code == 0
    one = run_dir / "results.shard-1-of-2.jsonl"
    two = run_dir / "results.shard-2-of-2.jsonl"
    copied = one.read_bytes().splitlines(keepends=True)[0]
    with open(two, "ab") as f:
        f.write(copied)
    report = verify_run(run_dir)
    msgs = [f.message for f in report.findings if f.kind == "shard_overlap"]
    assert any("results.shard-1-of-2.jsonl and results.shard-2-of-2.jsonl both have ok records for 1 sample" in m
               for m in msgs), msgs
    assert any(m.startswith("results.shard-2-of-2.jsonl: 1 record(s) for samples of another shard") for m in msgs)
    assert "duplicate_ok" in kinds(report)


def test_uncovered_samples_name_the_shard_that_never_ran(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out, shard=(1, 3)))
    run_experiment(cfg(fake_server, data, out, shard=(3, 3)))
    report = verify_run(out / "v")
    (f,) = [f for f in report.findings if f.kind == "uncovered"]
    assert "have no ok record" in f.message and "(shard 2 never ran)" in f.message


def test_unparseable_lines_and_a_torn_tail_with_offsets_then_repair(fake_server, tmp_path):
    run_dir = complete_run(fake_server, tmp_path)
    results = run_dir / "results.jsonl"
    size = results.stat().st_size
    with open(results, "ab") as f:
        f.write(b"garbage that is not json\n")
        f.write(b'{"sample_id":"s00001","status":"ok","respo')  # a torn write
    before = tree_digest(run_dir)
    report = verify_run(run_dir)
    by_kind = {f.kind: f for f in report.findings}
    assert by_kind["unparseable_line"].offset == size and by_kind["unparseable_line"].line == 9
    assert f"line 9 (byte {size})" in by_kind["unparseable_line"].message
    assert by_kind["torn_tail"].offset == size + len(b"garbage that is not json\n")
    assert tree_digest(run_dir) == before

    r = run_cli(["verify", str(run_dir)], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 1 and "[torn_tail]" in r.stdout and "[unparseable_line]" in r.stdout

    repaired = verify_run(run_dir, repair=True)
    assert repaired.exit_code == 0, repaired.findings
    assert any("torn last line moved to" in x for x in repaired.repaired)
    assert any("1 line(s) that are not records moved to" in x for x in repaired.repaired)
    asides = sorted(p.name for p in run_dir.glob("results.jsonl.corrupt-*"))
    assert len(asides) == 2
    kept = b"".join((run_dir / a).read_bytes() for a in asides)
    assert b"garbage that is not json\n" in kept and b'"respo' in kept  # moved aside, never deleted
    # The repair did not touch the records: the completion hash matches again.
    assert results.stat().st_size == size


def test_repair_refuses_while_a_writer_holds_the_lock(fake_server, tmp_path):
    from evalledger.readers import CheckpointManager

    run_dir = complete_run(fake_server, tmp_path)
    with open(run_dir / "results.jsonl", "ab") as f:
        f.write(b"junk\n")
    writer = CheckpointManager(run_dir).open_writer()  # this moves the junk aside itself …
    try:
        with open(run_dir / "results.jsonl", "ab") as f:
            f.write(b"more junk\n")  # … so plant more while it holds the lock
        report = verify_run(run_dir, repair=True)
        assert any("not repaired, a writer holds its lock" in x for x in report.repaired)
        assert "unparseable_line" in kinds(report)
        assert any("the run is live" in n for n in report.notes)
    finally:
        writer.close()


def test_unreadable_runs_exit_2(fake_server, tmp_path):
    r = run_cli(["verify", "nope", "--output-dir", str(tmp_path)], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 2 and "no run found" in r.stderr
    run_dir = complete_run(fake_server, tmp_path)
    (run_dir / "manifest.json").write_text("{broken")
    report = verify_run(run_dir)
    assert report.exit_code == 2 and "manifest.json" in report.unreadable
    r = run_cli(["verify", str(run_dir), "--json"], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 2 and json.loads(r.stdout)["exit_code"] == 2
