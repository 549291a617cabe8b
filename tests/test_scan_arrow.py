"""The cold scan's fast path (pyarrow's JSON reader, :mod:`evalledger.readers.scan_arrow`) against the
Python path (:func:`evalledger.readers.scan_batch.parse_batch`): the same rows, the same sums, always.

Decisions these tests pin down:

* A block the fast path takes gives exactly the table and sums parse_batch gives for it.
* A block it cannot read exactly (a garbage line, a blank line, a ``null`` line, a lone surrogate,
  a field of another type, a pass-through field, a list response) is left to parse_batch whole.
* Whole runs (shards, errors, retries, self-correction fields, unicode, huge ints, NaN, a torn
  tail, a garbage line) read the same with the fast path on and off: frames, stats and the scan.
"""

from __future__ import annotations

import json
import math
from io import BytesIO
from itertools import accumulate
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from evalledger.fsio import write_json_atomic
from evalledger.ledger import encode_lines
from evalledger.readers import get_stats, load_results, scan
from evalledger.readers.scan import scan_run
from evalledger.readers.scan_arrow import parse_block
from evalledger.readers.scan_batch import SCHEMA, parse_batch


def runner_record(i: int, status: str = "ok", **fields: Any) -> dict[str, Any]:
    """A record shaped like the runner's (single-turn task), ``paid`` included."""
    ok = status == "ok"
    r: dict[str, Any] = {
        "sample_id": f"s{i:05d}", "status": status, "attempts": 1 + i % 3, "correct": (i % 2 == 0) if ok else None,
        "usage": {"input_tokens": 100 + i, "output_tokens": 10 + i % 7}, "cost_usd": 1e-6 * (130 + i) / 3,
        "paid": {"input_tokens": 100 + i, "output_tokens": 10 + i % 7, "cost_usd": 1e-6 * (130 + i) / 3},
        "shard": f"{1 + i % 2}/2", "model": "openai/m", "task": "qa", "input_hash": f"{i:016x}",
        "latency_s": 0.1 + i / 7, "request_ids": [f"req_{i}", None],
        "started_at": "2026-11-01T12:00:00.000Z", "finished_at": f"2026-11-01T12:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        "prompt": [{"role": "system", "content": "Answer."}, {"role": "user", "content": f"Q{i} — ünïcødé 数 😀"}],
        "response": f"R{i}\n#### {i} \"quoted\" \\ back\tslash" if ok else None,
        "prediction": str(i) if ok else None, "target": str(i if i % 2 == 0 else i + 1), "score": (i % 2 == 0) if ok else None,
        "error": None if ok else {"type": "RateLimitError", "message": "HTTP 429: ✗", "retryable": True, "status_code": 429},
    }
    r.update(fields)
    return r


def lines_of(records: list[dict[str, Any]]) -> list[bytes]:
    return BytesIO(encode_lines(records)).readlines()


# Lines each of which the fast path must either read exactly like parse_batch or leave to it.
HOSTILE = [
    b"garbage\n", b"\n", b"   \n", b"null\n", b"[1, 2]\n", b"5\n", b'"text"\n', b"{}\n",
    b'{"sample_id": 5}\n', b'{"sample_id": "x", "status": 5}\n', b'{"sample_id": "x\\ud800", "status": "ok"}\n',
    b'{"sample_id": "x\\ud83d\\ude00", "status": "ok"}\n', b'{"sample_id": "x\xff"}\n', b'{"sample_id": "a\x01"}\n',
    b'{"sample_id": "a"}{"sample_id": "b"}\n', b'{"sample_id": "a"} x\n', b'{"sample_id": "a"}\r\n',
    b'{"sample_id": "a", "sample_id": "b"}\n', b'{"\\u0073ample_id": "esc", "status": "ok"}\n',
    b' {"sample_id": "lead"}\n',
    json.dumps(runner_record(1, cost_usd=float("nan"), latency_s=float("inf"))).encode() + b"\n",
    json.dumps(runner_record(2, cost_usd=10**30, usage={"input_tokens": 10**30, "output_tokens": -3})).encode() + b"\n",
    json.dumps(runner_record(3, usage={"input_tokens": 1.5}, attempts=True)).encode() + b"\n",
    json.dumps(runner_record(4, usage=[1], cost_usd="x", finished_at=5)).encode() + b"\n",
    json.dumps(runner_record(5, score=0.5, response=["a", "b"], prediction=7)).encode() + b"\n",
    json.dumps(runner_record(6, extra={"correct_before": True, "correct_after": False, "transition": "t"},
                             turn_usage=[{"input_tokens": 1}])).encode() + b"\n",
    json.dumps(runner_record(7, paid={}, cost_usd=None)).encode() + b"\n",
    json.dumps(runner_record(8, paid={"cost_usd": None}, cost_usd=None)).encode() + b"\n",
    json.dumps(runner_record(9, paid=5)).encode() + b"\n",
    json.dumps(runner_record(10, usage={}, cost_usd=None, paid=None)).encode() + b"\n",
    json.dumps(runner_record(11, usage={"input_tokens": None}, cost_usd=None, paid=None)).encode() + b"\n",
    json.dumps(runner_record(12, error={"type": "E", "extra_key": 1})).encode() + b"\n",
    json.dumps(runner_record(13, usage={"input_tokens": 2**62, "output_tokens": 2**62})).encode() + b"\n",
    json.dumps(runner_record(14, finished_at="")).encode() + b"\n",
    json.dumps(runner_record(15, status=None)).encode() + b"\n",
    # repeats: epochs, seeds and few-shot ids of a type the runner never writes
    json.dumps(runner_record(16, epoch=True)).encode() + b"\n",
    json.dumps(runner_record(17, epoch=2.0)).encode() + b"\n",
    json.dumps(runner_record(18, epoch="2")).encode() + b"\n",
    json.dumps(runner_record(19, epoch=2**70)).encode() + b"\n",
    json.dumps(runner_record(20, seed=True, fewshot_ids=["a", 1])).encode() + b"\n",
    json.dumps(runner_record(21, seed=1.5, fewshot_ids=["a", None])).encode() + b"\n",
    json.dumps(runner_record(22, seed=2**64, fewshot_ids="a")).encode() + b"\n",
]


# Lines the fast path must take (runner-shaped records with values it reads as parse_batch does).
def _line(r: dict[str, Any]) -> bytes:
    return json.dumps(r, ensure_ascii=False).encode() + b"\n"


ACCEPTED = [
    _line(runner_record(20, cost_usd=float("nan"))),  # Python's json writes NaN
    _line(runner_record(21, cost_usd=None, paid={"input_tokens": 1, "output_tokens": 0, "cost_usd": None})),
    _line(runner_record(22, paid=None, cost_usd=3)),  # an int cost, billed by usage
    _line({"sample_id": "minimal"}),
    _line(runner_record(23, "error", usage={"input_tokens": -5, "output_tokens": 0})),
    _line(runner_record(24, paid={"input_tokens": 1, "output_tokens": 2, "cost_usd": -0.5})),  # no cost: unknown
    _line(runner_record(25, paid=None, cost_usd=float("-inf"))),
    _line(runner_record(26, epoch=2, seed=2**31 - 1, fewshot_ids=["a", "b"])),
    _line(runner_record(27, epoch=0, seed=-5, fewshot_ids=[])),  # epoch 0 reads as epoch 1
    _line(runner_record(28, epoch=-3)),
    _line(runner_record(29, epoch=None, seed=None, fewshot_ids=None)),
    _line({"sample_id": "no-status", "epoch": 3}),
]


def both(lines: list[bytes], start: int = 1000) -> tuple[Any, Any]:
    data = b"".join(lines)
    fast = parse_block(data, start)
    offsets = list(accumulate(map(len, lines), initial=start))[:-1]
    batch, sums = parse_batch(lines, offsets)
    return fast, (pa.Table.from_batches([batch], schema=SCHEMA), sums)


def assert_same(fast: Any, slow: Any) -> None:
    (ft, fs), (st, ss) = fast, slow
    assert ft.schema.equals(SCHEMA)
    for name in SCHEMA.names:
        a, b = ft[name].to_pylist(), st[name].to_pylist()
        assert [repr(v) for v in a] == [repr(v) for v in b], name
    assert fs == ss


def test_runner_records_take_the_fast_path_and_match() -> None:
    lines = lines_of([runner_record(i, "error" if i % 10 == 3 else "ok") for i in range(200)])
    fast, slow = both(lines)
    assert fast is not None
    assert_same(fast, slow)
    assert slow[1].input_tokens == sum(100 + i for i in range(200))


@pytest.mark.parametrize("line", ACCEPTED, ids=range(len(ACCEPTED)))
def test_odd_but_readable_values_match(line: bytes) -> None:
    fast, slow = both(lines_of([runner_record(i) for i in range(5)]) + [line])
    assert fast is not None
    assert_same(fast, slow)


def test_a_block_without_any_status_matches() -> None:
    """Every record without a status (hand-written ones): all count as error records, no crash."""
    fast, slow = both([_line({"sample_id": f"m{i}", "epoch": 1 + i % 3}) for i in range(4)])
    assert fast is not None
    assert_same(fast, slow)
    assert slow[1].error_records == 4 and slow[0]["epoch"].to_pylist() == [1, 2, 3, 1]


@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_lines_are_read_the_same_or_left_to_parse_batch(line: bytes) -> None:
    good = lines_of([runner_record(i) for i in range(5)])
    for lines in (good + [line] + good, [line] + good):
        fast, slow = both(lines)
        if fast is not None:
            assert_same(fast, slow)


@pytest.mark.parametrize("line", [b"null\n", b"\n", b"garbage\n", b'{"sample_id": "x\\ud800"}\n',
                                  b'{"sample_id": "a"}{"sample_id": "b"}\n'])
def test_lines_that_are_not_one_record_always_go_to_parse_batch(line: bytes) -> None:
    """pyarrow skips blank lines, reads ``null`` as a row of nulls (and crashes on a first one)."""
    good = lines_of([runner_record(i) for i in range(3)])
    assert parse_block(b"".join([line] + good), 0) is None
    assert parse_block(b"".join(good + [line]), 0) is None


def _varied_run(root: Path) -> Path:
    """Two shards of runner records plus errors, retries, self-correction records, hostile lines,
    a garbage line and a torn tail; an unsharded file of clean records."""
    run = root / "run"
    run.mkdir(parents=True)
    write_json_atomic(run / "manifest.json", {"run_id": "run", "config": {"model": "openai/m"}, "task": "qa",
                                              "dataset": {"name": "qa"}, "sample_count": 400})
    for k in (1, 2):
        recs = [runner_record(i, "error" if i % 17 == 0 else "ok") for i in range(k, 400, 2)]
        recs += [runner_record(i) for i in range(k, 60, 6)]  # retried: a later ok record
        recs += [runner_record(i, "error" if i % 3 else "ok", epoch=2, seed=i) for i in range(k, 80, 4)]
        recs += [runner_record(i, epoch=2, seed=i, fewshot_ids=[f"x{i}"]) for i in range(k, 80, 8)]  # epoch 2 retried
        sc = [runner_record(1000 + i, response=["first", "second"], score={"before": True, "after": False},
                            extra={"correct_before": True, "correct_after": i % 2 == 0, "transition": "x",
                                   "note": "ü"}, turn_usage=[{"input_tokens": 1, "replayed": True}],
                            paid={"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}) for i in range(k, 9, 2)]
        data = encode_lines(recs[:150]) + b"".join(HOSTILE) + encode_lines(sc) + encode_lines(recs[150:])
        data += b"".join(ACCEPTED) + b'{"sample_id": "torn", "sta'
        (run / f"results.shard-{k}-of-2.jsonl").write_bytes(data)
    (run / "results.jsonl").write_bytes(encode_lines([runner_record(i) for i in range(2000, 2100)]))
    return run


def test_whole_runs_read_the_same_with_and_without_the_fast_path(tmp_path, monkeypatch) -> None:
    run = _varied_run(tmp_path)
    monkeypatch.setenv("EVALLEDGER_SCAN_CACHE", "off")
    monkeypatch.setattr(scan, "CHUNK_BYTES", 4096)  # many blocks: clean ones fast, hostile ones not
    import evalledger.readers.scan_arrow as scan_arrow

    taken = []
    real = scan_arrow.parse_block

    def counting(data: bytes, start: int) -> Any:
        out = real(data, start)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(scan_arrow, "parse_block", counting)

    def everything() -> tuple[Any, ...]:
        s = scan_run(run)
        df = load_results(run)
        frame = [(c, str(df[c].dtype), [repr(v) for v in df[c].tolist()]) for c in df.columns]
        stats = get_stats(run)
        stats.pop("size_bytes")
        sums = (s.records_read, s.unparseable_lines, s.partial_tail_bytes, s.input_tokens, s.output_tokens,
                s.cost_known, s.last_finished, [(f.records, f.error_records, f.last_finished) for f in s.file_summaries])
        return s.rows.to_pylist(), s.cost_usd, sums, frame, json.loads(json.dumps(stats, default=str))

    fast = everything()
    assert any(taken) and not all(taken)
    monkeypatch.setenv("EVALLEDGER_SCAN_ARROW", "off")
    taken.clear()
    slow = everything()
    assert not taken
    assert fast[0] == slow[0] or [repr(r) for r in fast[0]] == [repr(r) for r in slow[0]]
    assert math.isclose(fast[1], slow[1], rel_tol=0, abs_tol=0)
    assert fast[2:] == slow[2:]
    assert fast[2][2] == len(b'{"sample_id": "torn", "sta') * 2  # the torn tails were not read
