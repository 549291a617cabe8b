"""A large JSON-lines dataset checked a column at a time gives exactly the index the row-by-row
path gives, or hands the file to that path, which then words the error; and a resume's results
are indexed by a child process while the dataset is checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_resume_scan import record

from evalledger.config import RunConfig
from evalledger.datasets import ResolvedDataset, load_dataset_bytes, validated_index
from evalledger.datasets.values import MAX_FIELD_CHARS_ENV
from evalledger.errors import DatasetError
from evalledger.ledger import encode_lines, index_in_background, prefetch, scan_ledger
from evalledger.ledger import index as ledger_index
from evalledger.run.prepare import prepare_run
from evalledger.samples import Sample
from evalledger.tasks import load_task

QA = load_task("qa")


def row(i: int, **extra) -> dict:
    return {"id": f"q{i:05d}", "question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}", **extra}


def jsonl(rows: list[dict], sep: bytes = b"\n") -> bytes:
    return b"".join(json.dumps(r).encode() + sep for r in rows)


def both_ways(tmp_path: Path, raw: bytes, *, task=QA, id_column=None, limit=None):
    """(the column-at-a-time index or None, the row-by-row result: its index facts or the error message)."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(raw)
    fast = validated_index(path, raw, id_column=id_column, default_id_column=None,
                           required_fields=task.required_fields, limit=limit,
                           rows_to_validate=task.rows_to_validate, validate=task.validate_sample)
    try:
        ds = load_dataset_bytes(ResolvedDataset(name="data", path=path, sha256="x"), raw, id_column=id_column,
                                required_fields=task.required_fields, limit=limit)
        problems = [s for s in ds.samples if task.validate_sample(s)]
        slow = ("problems", len(problems)) if problems else (
            ds.refs.ids, list(ds.refs.rows), list(ds.refs.starts), ds.total_rows, ds.id_source, ds.columns)
    except DatasetError as e:
        slow = ("error", str(e))
    return fast, slow


def facts(index) -> tuple:
    return (index.refs.ids, list(index.refs.rows), list(index.refs.starts), index.total_rows, index.id_source,
            index.columns)


VALID = {
    "ids from the id column": jsonl([row(i) for i in range(50)]),
    "CRLF line ends": jsonl([row(i) for i in range(50)], b"\r\n"),
    "no final newline": jsonl([row(i) for i in range(50)])[:-1],
    "content-hash ids (no id column)": jsonl([{k: v for k, v in row(i).items() if k != "id"} for i in range(50)]),
    "extra columns, some rows only": jsonl([row(i, **({"note": "x", "n": i, "ok": True} if i % 3 else {}))
                                            for i in range(50)]),
    "a null in an extra column": jsonl([row(i, extra=None) for i in range(50)]),
    "a non-ASCII text": jsonl([row(i, question=f"Combien font {i} + 1 ? é日本") for i in range(50)]),
    "duplicate keys (the last counts)": jsonl([row(i) for i in range(49)]) + b'{"id": "d", "id": "q99999", '
                                        b'"question": "x", "answer": "#### 1"}\n',
    "an answer the fast rule does not pass but the check does": jsonl(
        [row(i) for i in range(49)] + [row(49, answer="49 + 951 = 1,000\n#### 1,000")]),
}


@pytest.mark.parametrize("name", list(VALID))
def test_a_valid_file_gives_the_index_the_row_by_row_path_gives(tmp_path, name):
    fast, slow = both_ways(tmp_path, VALID[name])
    assert fast is not None, name
    assert facts(fast) == slow


def test_limit_checks_the_task_on_the_first_rows_only_as_the_other_path(tmp_path):
    rows = [row(i) for i in range(20)] + [row(20, answer="no number here")]
    fast, slow = both_ways(tmp_path, jsonl(rows), limit=5)
    assert fast is not None and facts(fast) == slow
    fast, slow = both_ways(tmp_path, jsonl(rows))
    assert fast is None and slow == ("problems", 1)


UNUSUAL = {
    "a blank line": jsonl([row(0)]) + b"\n" + jsonl([row(1)]),
    "a whitespace line": jsonl([row(0)]) + b"   \n" + jsonl([row(1)]),
    "a byte order mark": b"\xef\xbb\xbf" + jsonl([row(0), row(1)]),
    "invalid UTF-8": jsonl([row(0)]) + jsonl([row(1, question="bad")]).replace(b"bad", b"b\xffd"),
    "invalid JSON": jsonl([row(0)]) + b'{"id": "q1", "question": \n',
    "a line that is no object": jsonl([row(0)]) + b'["q1"]\n',
    "a float value (json keeps big integers exact)": jsonl([row(0), row(1, score=0.5)]),
    "an integer past 64 bits": jsonl([row(0), row(1, big=2**70)]),
    "a list value": jsonl([row(0), row(1, choices=["a", "b"])]),
    "numeric ids": jsonl([row(0, id=1), row(1, id=2)]),
    "a duplicate id": jsonl([row(0), row(1, id="q00000")]),
    "a number and a string alike": jsonl([row(0, id=7), row(1, id="7")]),
    "an empty id": jsonl([row(0), row(1, id="")]),
    "a whitespace id": jsonl([row(0), row(1, id="  ")]),
    "a missing id": jsonl([row(0), {k: v for k, v in row(1).items() if k != "id"}]),
    "an id with U+001F": jsonl([row(0), row(1, id="a\x1fb")]),
    "a missing required field": jsonl([row(0), {k: v for k, v in row(1).items() if k != "answer"}]),
    "a null required field": jsonl([row(0), row(1, answer=None)]),
    "an empty required field": jsonl([row(0), row(1, question=" ")]),
    "a required field absent everywhere": jsonl([{"id": "a", "question": "q"}]),
    "a row the task refuses": jsonl([row(0), row(1, answer="no number")]),
    "a lone surrogate escape": jsonl([row(0)]) + b'{"id": "q1", "question": "\\ud800", "answer": "#### 1"}\n',
    "an empty file": b"",
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_anything_unusual_goes_to_the_row_by_row_path(tmp_path, name):
    fast, slow = both_ways(tmp_path, UNUSUAL[name])
    assert fast is None, slow


def test_an_id_column_that_is_no_column_is_left_to_the_other_path(tmp_path):
    fast, slow = both_ways(tmp_path, jsonl([row(i) for i in range(3)]), id_column="nope")
    assert fast is None and slow[0] == "error" and "'nope' not found" in slow[1]


def test_a_line_longer_than_the_field_limit_is_left_to_the_size_check(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_FIELD_CHARS_ENV, "60")
    fast, slow = both_ways(tmp_path, jsonl([row(i) for i in range(3)]))  # lines over 60 bytes, fields under
    assert fast is None and slow[0] != "error"
    fast, slow = both_ways(tmp_path, jsonl([row(0), row(1, question="x" * 61)]))
    assert fast is None and slow[0] == "error" and "more than the limit of 60" in slow[1]


@pytest.mark.parametrize("answer", ["#### 18", "#### 1,000", "####", "#### ١٢", "42", "no digits", " #### 7 ",
                                    "#### 3.5", "#### -2", "a #### 1 #### 2", ""])
def test_qa_names_every_row_its_check_could_refuse(answer):
    rows = [{"answer": answer}, {"answer": "#### 1"}]
    named = set(QA.rows_to_validate(rows))
    for position, fields in enumerate(rows):
        if position not in named:  # passed by the column rule: the row check must agree
            assert QA.validate_sample(Sample(id="x", row=1, fields=fields)) is None


def test_a_large_bad_dataset_is_refused_with_the_row_by_row_message(tmp_path):
    rows = [row(i) for i in range(20000)]
    rows[12345] = row(12345, answer="")
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(rows))
    assert path.stat().st_size >= 1 << 20
    config = RunConfig(dataset=str(path), model="openai/m", base_url="http://127.0.0.1:9/v1", api_key="k",
                       output_dir=tmp_path / "out")
    with pytest.raises(DatasetError, match=r"line 12346 \(answer\)"):
        prepare_run(config, use_index=False)


def test_a_large_valid_dataset_is_held_as_its_index(tmp_path):
    rows = [row(i) for i in range(20000)]
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(rows))
    config = RunConfig(dataset=str(path), model="openai/m", base_url="http://127.0.0.1:9/v1", api_key="k",
                       output_dir=tmp_path / "out")
    prepared = prepare_run(config, use_index=False)
    assert prepared.new_index is not None and len(prepared.samples) == 20000
    assert [s.id for s in prepared.samples[9998:10001]] == ["q09998", "q09999", "q10000"]
    assert prepared.samples[10000].fields == rows[10000]  # read back from the file by its offset


# ------------------------------------------------------------------------------------- prefetch
def big_run(tmp_path: Path, n: int = 6000) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    recs = [record(i, status="ok" if i % 50 else "error") for i in range(n)]
    (run / "results.jsonl").write_bytes(encode_lines(recs))
    assert (run / "results.jsonl").stat().st_size >= ledger_index.MIN_BYTES
    return run


def test_a_child_indexes_the_results_while_this_process_goes_on(tmp_path, monkeypatch):
    run = big_run(tmp_path)
    want = scan_ledger(run)  # (this scan saved an index too: start again without it)
    ledger_index.index_path(run / "results.jsonl").unlink()
    monkeypatch.setattr(prefetch, "PREFETCH_BYTES", 1)
    with index_in_background(run) as child:
        assert child.pid is not None and child.pid != os.getpid()
    assert prefetch.unindexed_bytes(run) == 0  # the child's index covers the whole file
    got = scan_ledger(run)
    assert (got.completed, got.errored, got.records, got.ok_records) == (
        want.completed, want.errored, want.records, want.ok_records)


def test_nothing_is_forked_below_the_threshold_or_with_the_index_off(tmp_path, monkeypatch):
    run = big_run(tmp_path, 4000)
    assert index_in_background(run).pid is None  # ~2 MB, under PREFETCH_BYTES
    monkeypatch.setattr(prefetch, "PREFETCH_BYTES", 1)
    monkeypatch.setenv("EVALLEDGER_SCAN_CACHE", "off")
    assert index_in_background(run).pid is None


def test_a_file_replaced_after_the_childs_index_is_read_as_it_is_now(tmp_path, monkeypatch):
    run = big_run(tmp_path)
    monkeypatch.setattr(prefetch, "PREFETCH_BYTES", 1)
    with index_in_background(run):
        pass
    # another file of the same size, renamed over it: the index no longer vouches for it
    data = (run / "results.jsonl").read_bytes().replace(b'"status":"error"', b'"status":   "ok"')
    (run / "new").write_bytes(data)
    os.replace(run / "new", run / "results.jsonl")
    assert prefetch.unindexed_bytes(run) == len(data)
    scan = scan_ledger(run)  # read again: the error records are ok records now
    assert scan.errored == set() and len(scan.completed) == scan.ok_records == 6000
