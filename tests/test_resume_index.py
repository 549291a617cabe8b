"""The resume caches under ``<run_dir>/.cache/``: the dataset's validated index (rows read back only
when pending) and the ledger's per-file index (only appended bytes scanned). Either may be stale,
torn or deleted at any time: a resume then gives exactly what it gives without it."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers import marker, write_qa_dataset
from test_resume_scan import assert_agrees, record, write

from evalledger.config import RunConfig
from evalledger.datasets import LazySamples
from evalledger.datasets import index as dataset_index
from evalledger.datasets.index import index_path
from evalledger.errors import DatasetError
from evalledger.ledger import index as ledger_index
from evalledger.ledger import scan_ledger
from evalledger.run import prepare_run, run_experiment
from evalledger.run.sample import input_hash

MODEL = "openai/test-model"


@pytest.fixture
def small_caches(monkeypatch):
    """Index datasets and results files of any size (the real thresholds are 1 MiB)."""
    monkeypatch.setattr(dataset_index, "MIN_BYTES", 0)
    monkeypatch.setattr(ledger_index, "MIN_BYTES", 0)


def base(fake_server, data, out, **kw):
    return dict(dataset=str(data), model=MODEL, output_dir=out, base_url=fake_server.openai_base_url,
                api_key="sk-test", quiet=True, concurrency=4, **kw)


def keep_first_records(results, n):
    lines = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(b"".join(lines[:n]))


# ------------------------------------------------------------------------------- the dataset index


def test_resume_reads_back_only_the_pending_rows(small_caches, fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 30)
    first = run_experiment(RunConfig(**base(fake_server, data, tmp_path / "out")))
    assert first.exit_code == 0 and index_path(first.run_dir / ".cache").exists()
    results = first.run_dir / "results.jsonl"
    done = [json.loads(line)["sample_id"] for line in results.read_text().splitlines()]
    keep_first_records(results, 20)  # the last 10 results lost: their samples are pending again
    shutil.rmtree(first.run_dir / ".cache" / ledger_index.SUBDIR, ignore_errors=True)

    prepared = prepare_run(RunConfig(**base(fake_server, data, tmp_path / "out")))
    assert isinstance(prepared.selection, LazySamples)  # from the index: no row held
    assert prepared.new_index is None and dataset_index.load_index(prepared.run_dir / ".cache", prepared.index_key) is not None
    # validate always checks every row (it makes an index of its own, and saves none)
    checked = prepare_run(RunConfig(**base(fake_server, data, tmp_path / "out")), check_output_dir=False,
                          use_index=False)
    assert checked.new_index is not None and checked.run_dir == prepared.run_dir
    # cache=False: the pending rows go on the wire again (the response cache would answer them)
    again = run_experiment(RunConfig(**base(fake_server, data, tmp_path / "out", cache=False)))
    assert again.exit_code == 0 and again.requests == 10 and again.skipped_completed == 20
    # The rows read back are the rows a full load gives (same fields, hence the same input hash).
    from evalledger.datasets import load_dataset

    full = {s.id: s for s in load_dataset(str(data)).samples}
    for line in results.read_text().splitlines()[20:]:
        rec = json.loads(line)
        assert rec["sample_id"] in done[20:] and rec["input_hash"] == input_hash(full[rec["sample_id"]])
        i = int(rec["sample_id"][1:])
        assert fake_server.count_for(f"[[ANSWER:{i}]]") == 2
    for sid in done[:20]:
        assert fake_server.count_for(f"[[ANSWER:{int(sid[1:])}]]") == 1


def test_an_index_for_other_settings_torn_or_deleted_is_ignored(small_caches, fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    out = tmp_path / "out"
    s = run_experiment(RunConfig(**base(fake_server, data, out, limit=4)))
    path = index_path(s.run_dir / ".cache")
    key_limit_4 = path.read_bytes().split(b"\n", 1)[0]
    # Another --limit: another key, so the whole file is validated again and a new index written.
    s = run_experiment(RunConfig(**base(fake_server, data, out)))
    assert s.exit_code == 0 and s.requests == 8 and path.read_bytes().split(b"\n", 1)[0] != key_limit_4
    for damage in ("torn", "deleted", "garbage"):
        if damage == "torn":
            path.write_bytes(path.read_bytes()[:-7])
        elif damage == "deleted":
            shutil.rmtree(s.run_dir / ".cache")
        else:
            path.write_bytes(b'{"format": 1}\n' + os.urandom(64))
        s = run_experiment(RunConfig(**base(fake_server, data, out)))
        assert s.exit_code == 0 and s.requests == 0 and s.skipped_completed == 12
    assert fake_server.request_count == 12


def test_a_bad_row_still_fails_fast_with_the_index_enabled(small_caches, fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    with open(data, "a") as f:
        f.write(json.dumps({"id": "bad", "question": "q", "answer": "no number here"}) + "\n")
    with pytest.raises(DatasetError, match=r"row 6 \(id bad\)"):
        run_experiment(RunConfig(**base(fake_server, data, tmp_path / "out")))
    assert fake_server.request_count == 0
    assert not list((tmp_path / "out").glob("*/.cache"))


def test_rows_are_not_read_back_from_a_file_that_changed(small_caches, fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    prepared = prepare_run(RunConfig(**base(fake_server, data, tmp_path / "out")))
    assert isinstance(prepared.selection, LazySamples) and prepared.selection[2].id == "s00002"
    text = data.read_text()
    data.write_text(text.replace("Question 3", "Question 9"))  # same size, new mtime
    os.utime(data, ns=(1, 1))
    with pytest.raises(DatasetError, match="changed since it was validated"):
        list(prepared.selection)


# ------------------------------------------------------------------------------- the ledger index


def test_ledger_index_is_used_for_the_bytes_it_covers_and_only_they(small_caches, tmp_path):
    run = tmp_path / "run"
    write(run, [record(i) for i in range(50)] + [record(50, "error", None), record(3, correct=False)])
    assert_agrees(run)
    idx = ledger_index.index_path(run / "results.jsonl")
    assert idx.exists()
    # Appended since: a retried error, a sample whose last ok flips back to correct, new samples.
    write(run, [record(50), record(3, correct=True), record(60, "error", None)] + [record(i) for i in range(70, 90)])
    results = run / "results.jsonl"
    with open(results, "rb") as f:
        loaded = ledger_index.load(results, f, os.fstat(f.fileno()))
    assert loaded is not None and loaded[0].records == 52 and 0 < loaded[1] < results.stat().st_size
    scan = assert_agrees(run)
    assert "s00050" in scan.completed and "s00060" in scan.errored and "s00003" in scan.correct
    # Stale: the file rewritten in place (same inode) with other records, or replaced by a new file.
    with open(run / "results.jsonl", "r+b") as f:
        f.write(b"".join(json.dumps(record(i + 100)).encode() + b"\n" for i in range(5)))
    assert_agrees(run)
    (run / "results.jsonl").unlink()
    write(run, [record(i) for i in range(200, 210)])
    assert assert_agrees(run).completed == {f"s{i:05d}" for i in range(200, 210)}
    shutil.rmtree(run / ".cache")
    assert_agrees(run)


def test_ledger_index_counts_foreign_ids_and_ignores_a_torn_copy(small_caches, tmp_path, monkeypatch):
    run = tmp_path / "run"
    write(run, [record(i) for i in range(10)] + [record(99, "error", None), record(99, "error", None), record(98)])
    known = {f"s{i:05d}" for i in range(10)}
    cold = scan_ledger(run, known)
    warm = scan_ledger(run, known)
    assert warm.foreign == cold.foreign == {"s00099": 2, "s00098": 1} and warm.in_dataset == cold.in_dataset == 10
    assert warm.files == cold.files and warm.records == cold.records == 13
    idx = ledger_index.index_path(run / "results.jsonl")
    idx.write_bytes(idx.read_bytes()[:-3])
    assert scan_ledger(run, known).completed == cold.completed
    monkeypatch.setenv("EVALLEDGER_SCAN_CACHE", "off")
    shutil.rmtree(run / ".cache")
    assert scan_ledger(run, known).foreign == cold.foreign and not (run / ".cache").exists()


def test_the_writer_indexes_what_it_appended_when_it_stops(small_caches, fake_server, tmp_path):
    from evalledger.fsio import cachefile

    data = write_qa_dataset(tmp_path / "qa.jsonl", 40)
    out = tmp_path / "out"
    first = run_experiment(RunConfig(**base(fake_server, data, out, limit=25)))
    results = first.run_dir / "results.jsonl"
    header, _ = cachefile.read(ledger_index.index_path(results))
    assert header["end"] == results.stat().st_size and header["records"] == 25
    scan = assert_agrees(first.run_dir)
    assert len(scan.completed) == 25 and scan.files[results].ok_records == 25
    # A resume that sends the other 15: its index again covers the whole file, and agrees.
    again = run_experiment(RunConfig(**base(fake_server, data, out)))
    assert again.requests == 15 and again.skipped_completed == 25
    header, _ = cachefile.read(ledger_index.index_path(results))
    assert header["end"] == results.stat().st_size and header["records"] == 40
    with open(results, "rb") as f:
        loaded = ledger_index.load(results, f, os.fstat(f.fileno()))
    assert loaded is not None and loaded[1] == results.stat().st_size and len(loaded[0].ok_lists[0]) == 40
    assert len(assert_agrees(first.run_dir).completed) == 40
    last = run_experiment(RunConfig(**base(fake_server, data, out)))
    assert last.requests == 0 and last.skipped_completed == 40 and fake_server.request_count == 40


@pytest.mark.parametrize("fsync", ["batch", "always", "off"])
def test_the_writer_also_indexes_while_it_runs(small_caches, fake_server, tmp_path, monkeypatch, fsync):
    """During a run (so that a kill -9 leaves an index too), each index covers exactly the
    acknowledged records: the first ``end`` bytes of the file are those records and nothing else."""
    from evalledger.fsio import cachefile
    from evalledger.run import acknowledged, session

    monkeypatch.setattr(acknowledged, "INDEX_EVERY_S", 0.0)
    saves: list[tuple[int, bool]] = []
    real = session.save_own_index

    def checking(path, part, end, indexed_end):
        head = path.read_bytes()[:end]
        assert head.endswith(b"\n")
        recs = [json.loads(line) for line in head.splitlines()]
        correct, other = map(list, part.ok_ids())  # each iterable once
        assert part.records == len(recs)
        assert set(correct) | set(other) == {r["sample_id"] for r in recs if r["status"] == "ok"}
        assert set(correct) == {r["sample_id"] for r in recs if r["status"] == "ok" and r["correct"]}
        saved = real(path, part, end, indexed_end)
        saves.append((end, saved))
        return saved

    monkeypatch.setattr(session, "save_own_index", checking)  # when the writer stops
    monkeypatch.setattr(acknowledged, "save_own_index", checking)  # while it runs
    fake_server.latency = 0.02
    fake_server.fail_when(marker(7), status=400, times=1)  # an error record among them
    data = write_qa_dataset(tmp_path / "qa.jsonl", 120)
    s = run_experiment(RunConfig(**base(fake_server, data, tmp_path / "out", fsync=fsync)))
    assert s.ok == 119 and s.errors == 1
    results = s.run_dir / "results.jsonl"
    during = [end for end, saved in saves[:-1] if saved]
    # Several saves while the run went on (the last of them may already cover the last batch).
    assert len(during) >= 3 and during == sorted(during) and during[0] < results.stat().st_size, saves
    # When the writer stops it offers the whole file; written only if the index is well behind.
    assert saves[-1][0] == results.stat().st_size
    header, _ = cachefile.read(ledger_index.index_path(results))
    assert header["end"] == max(end for end, saved in saves if saved)
    assert results.stat().st_size - header["end"] < ledger_index.REWRITE_FRACTION * header["end"]
    assert len(assert_agrees(s.run_dir).completed) == 119
