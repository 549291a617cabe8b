"""The readers' columnar cache (``<run_dir>/.cache/scan-v2/``): same answers as a full parse, always.

Decisions these tests pin down:

* A reader with a valid copy gives exactly what a reader without one gives (frames and stats),
  on well-formed and on hostile ledgers.
* Appended records are always seen (only the tail is parsed); a rewritten file (the writer's
  garbage repair, a truncation back before the copy's end, an in-place edit) is parsed in full.
* A torn last line is never cached; once completed it is read as a record.
* The copy is only written into run directories the reader owns and may write, never when
  ``EVALLEDGER_SCAN_CACHE=off``, never for small files, and is never taken for results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_reader_robustness import GARBAGE, GOOD, ODD, append_lines, make_run, rec

from evalledger.ledger import lock_status, results_files
from evalledger.readers import CheckpointManager, get_stats, load_results, scan_cache
from evalledger.readers.scan import scan_run


@pytest.fixture(autouse=True)
def cache_every_file(monkeypatch):
    """Cache even tiny files (the default threshold is 8 MiB) and rewrite the copy on any growth."""
    monkeypatch.setattr(scan_cache, "MIN_BYTES", 0)
    monkeypatch.setattr(scan_cache, "REWRITE_FRACTION", 0.0)
    monkeypatch.delenv("EVALLEDGER_SCAN_CACHE", raising=False)


def copy_of(run: Path, name: str = "results.jsonl") -> Path:
    return run / ".cache" / scan_cache.SUBDIR / f"{name}.arrow"


def views(run: Path) -> tuple[list, dict]:
    """Everything a user sees: the frame (as plain values) and the stats, minus the run dir and its
    size on disk (the cache itself lives in the run dir)."""
    df = load_results(run)
    frame = [(c, str(df[c].dtype), [repr(v) for v in df[c].tolist()]) for c in df.columns]
    stats = get_stats(run)
    stats.pop("run_dir")
    stats.pop("size_bytes")
    return frame, json.loads(json.dumps(stats, default=str))


def cold(run: Path, monkeypatch) -> tuple[list, dict]:
    with monkeypatch.context() as m:
        m.setenv("EVALLEDGER_SCAN_CACHE", "off")
        return views(run)


def test_cached_and_uncached_reads_agree_on_a_hostile_ledger(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD + [rec("ghost", "error")], ids_not_in_dataset=["ghost"])
    append_lines(run, GARBAGE + ODD + [json.dumps(rec("i", score=0.5, prediction=3, response=["a", "b"],
                                                      extra={"correct_before": True, "turns": 2})).encode() + b"\n"])
    append_lines(run, [b'{"sample_id": "torn", "sta'])
    expected = cold(run, monkeypatch)
    assert not copy_of(run).exists()
    assert views(run) == expected and copy_of(run).exists()  # this read wrote the copy
    scan = scan_run(run)
    assert scan.file_summaries[0].from_cache > 0  # ... and this one used it
    assert views(run) == expected
    assert scan.unparseable_lines == len(GARBAGE) and scan.partial_tail_bytes > 0


def test_appended_records_are_seen_and_only_the_tail_is_parsed(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD)
    views(run)
    end = scan_run(run).file_summaries[0].from_cache
    assert end == (run / "results.jsonl").stat().st_size
    monkeypatch.setattr(scan_cache, "REWRITE_FRACTION", 10.0)  # keep the old copy: the tail is parsed
    with CheckpointManager(run) as ledger:
        ledger.append_records([rec("d"), rec("c", correct=False)])  # c: error, then ok
    scan = scan_run(run)
    assert scan.file_summaries[0].from_cache == end
    assert views(run) == cold(run, monkeypatch)
    df = load_results(run).set_index("sample_id")
    assert list(df.index) == ["a", "b", "c", "d"] and df.loc["c", "status"] == "ok"


def test_a_torn_tail_is_never_cached_and_is_read_once_complete(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD)
    line = json.dumps(rec("d")).encode() + b"\n"
    append_lines(run, [line[:20]])  # a write in progress
    assert "d" not in list(load_results(run)["sample_id"])
    assert scan_run(run).file_summaries[0].from_cache == (run / "results.jsonl").stat().st_size - 20
    append_lines(run, [line[20:]])  # ... finished
    assert list(load_results(run)["sample_id"]) == ["a", "b", "c", "d"]
    assert views(run) == cold(run, monkeypatch)


def test_the_writers_garbage_repair_replaces_the_file_and_the_copy_is_not_used(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD)
    append_lines(run, [GARBAGE[0]])
    append_lines(run, [json.dumps(rec("d")).encode() + b"\n"])
    assert get_stats(run)["unparseable_lines"] == 1 and copy_of(run).exists()
    CheckpointManager(run).open_writer().close()  # moves the garbage line aside (a new file, atomically)
    scan = scan_run(run)
    assert scan.file_summaries[0].from_cache == 0 and scan.unparseable_lines == 0
    assert views(run) == cold(run, monkeypatch)


@pytest.mark.parametrize("edit", ["truncate_and_rewrite", "same_size_edit"])
def test_a_file_changed_before_the_copys_end_is_parsed_in_full(tmp_path, monkeypatch, edit):
    run = make_run(tmp_path / "run", GOOD + [rec("d")])
    views(run)
    path = run / "results.jsonl"
    data = path.read_bytes()
    if edit == "truncate_and_rewrite":  # a failed write truncated back, then other records appended
        cut = data.rindex(b"\n", 0, len(data) - 1) + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.seek(cut)
            f.write(json.dumps(rec("e", correct=False)).encode() + b"\n" + json.dumps(rec("f")).encode() + b"\n")
    else:  # the same bytes count, one answer changed in place
        edited = data.replace(b'"correct":true', b'"correct":1e10', 1).replace(b'"correct": true', b'"correct": 1e10', 1)
        assert edited != data and len(edited) == len(data)
        with open(path, "r+b") as f:
            f.write(edited)
    assert os.stat(path).st_ino == json.loads(copy_meta(run))["ino"]  # the same inode: only the content tells
    assert scan_run(run).file_summaries[0].from_cache == 0
    assert views(run) == cold(run, monkeypatch)


def copy_meta(run: Path) -> bytes:
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(copy_of(run)))).schema.metadata[b"evalledger"]


def test_a_live_writer_is_undisturbed_and_every_acknowledged_record_is_read(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", [], sample_count=100)
    writer = CheckpointManager(run).open_writer()
    try:
        for k in range(4):
            writer.append_records([rec(f"s{k}-{i}") for i in range(5)])
            s = get_stats(run)
            assert s["completed_samples"] == 5 * (k + 1) and s["running"] is True
            assert lock_status(run)  # the reader took nothing: the writer still holds its lock
        assert copy_of(run).exists()
        writer.append_records([rec("last")])  # the writer goes on after readers wrote copies
    finally:
        writer.close()
    assert get_stats(run)["completed_samples"] == 21
    assert views(run) == cold(run, monkeypatch)


def test_the_copy_is_never_results_and_a_broken_copy_is_ignored(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD)
    expected = cold(run, monkeypatch)
    views(run)
    assert results_files(run) == [run / "results.jsonl"]
    assert CheckpointManager(run).completed_ids() == {"a", "b"}
    copy_of(run).write_bytes(b"not arrow at all")
    assert views(run) == expected
    copy_of(run).write_bytes(b"")
    assert views(run) == expected


def test_no_copy_when_turned_off_or_for_small_files(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD)
    monkeypatch.setenv("EVALLEDGER_SCAN_CACHE", "off")
    views(run)
    assert not (run / ".cache").exists()
    monkeypatch.delenv("EVALLEDGER_SCAN_CACHE")
    monkeypatch.setattr(scan_cache, "MIN_BYTES", 8 << 20)
    views(run)
    assert not (run / ".cache").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the run directory to another user")
def test_no_copy_in_a_run_directory_owned_by_someone_else(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD)
    expected = cold(run, monkeypatch)
    os.chown(run, 12345, 12345)
    assert views(run) == expected
    assert not (run / ".cache").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_no_copy_in_a_read_only_run_directory(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", GOOD)
    expected = cold(run, monkeypatch)
    run.chmod(0o555)
    try:
        assert views(run) == expected
        assert not (run / ".cache").exists()
    finally:
        run.chmod(0o755)
