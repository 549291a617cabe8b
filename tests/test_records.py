"""One billing rule (:mod:`evalledger.records`) for every reader of a run's bill.

Decisions these tests pin down:

* A cost counts only if it is a finite, non-negative JSON number. NaN, ±Infinity (as Python's
  ``json`` writes them), a bool, a negative number, text, null or a number beyond a float is a
  missing cost; on a record or call that billed tokens it makes the run's cost unknown, never lower.
  A record that billed nothing (no ``usage``, an empty ``paid``) adds no cost, whatever its cost says.
* A token count counts only if it is an int from 0 to 2**64 - 1; anything else counts as 0.
* A total that overflows a float is unknown.
* ``get_stats``, the resume scan behind ``--max-cost`` (its prefix fast path and its full parse),
  the readers' Arrow fast path and Python batch path, and the study's ``spent_usd`` all give the
  same bill for the same run, and ``evalledger run --max-cost`` stops or continues accordingly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_env, run_cli, write_qa_dataset

from evalledger.fsio import write_json_atomic
from evalledger.ledger import encode_lines, scan_ledger
from evalledger.ledger.index import index_path
from evalledger.ledger.lines import iter_blocks
from evalledger.readers import get_stats, scan, scan_arrow
from evalledger.readers.scan import scan_run
from evalledger.readers.scan_arrow import READ_SCHEMA
from evalledger.readers.scan_batch import KNOWN_KEYS, SCHEMA
from evalledger.readers.stats import run_bill
from evalledger.records import (
    BASE_COLUMNS,
    BILLED_COST_COLUMN,
    BOOL_COLUMNS,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    LIST_COLUMNS,
    OBJECT_COLUMNS,
    OPTIONAL_COLUMNS,
    RECORD_FIELDS,
    SCORE_COLUMN,
    STRING_COLUMNS,
    TEXT_COLUMNS,
    TIME_COLUMNS,
    Bill,
    BillTotal,
    bill_of,
    bill_of_call,
    cost_amount,
    count_of,
    total_cost,
)
from evalledger.run.budget import Budget
from evalledger.study import spent_usd

NAN, INF = float("nan"), float("inf")
UNKNOWN = None  # expected cost of a line that makes the bill unknown


def record(i: int, *, paid: Any = "same", status: str = "ok", **fields: Any) -> dict[str, Any]:
    """A record shaped like the runner's; ``paid`` defaults to its usage and cost."""
    r: dict[str, Any] = {
        "sample_id": f"s{i:05d}", "status": status, "attempts": 1, "correct": status == "ok",
        "usage": {"input_tokens": 100 + i, "output_tokens": 10 + i}, "cost_usd": 0.25,
        "shard": None, "model": "openai/m", "task": "qa", "input_hash": f"{i:016x}",
        "prompt": [{"role": "user", "content": f"Q{i}"}], "response": f"#### {i}", "prediction": str(i),
        "target": str(i), "score": True, "latency_s": 0.5, "request_ids": [f"req_{i}"],
        "error": None, "started_at": "2026-01-01T00:00:00Z", "finished_at": f"2026-01-01T00:00:{i % 60:02d}Z",
    }
    r.update(fields)
    if paid == "same":
        r["paid"] = {**r["usage"], "cost_usd": r["cost_usd"]} if isinstance(r.get("usage"), dict) else None
    elif paid is not None:
        r["paid"] = paid
    return r


def call(i: int, **fields: Any) -> dict[str, Any]:
    """One line of a calls file (one paid model call)."""
    c = {"sample_id": f"s{i:05d}", "call_key": f"k{i}", "turn": 0, "shard": None, "model": "openai/m",
         "response": "r", "request_id": f"c{i}", "usage": {"input_tokens": 50, "output_tokens": 5},
         "cost_usd": 0.0625, "finished_at": "2026-01-01T00:00:00Z"}
    c.update(fields)
    return c


def line(rec: dict[str, Any]) -> bytes:
    """The record as our writer writes it (lead keys first; NaN and Infinity as Python's json writes them)."""
    return encode_lines([rec])


def raw_cost(rec: dict[str, Any], text: str) -> bytes:
    """The record's line with its ``paid`` cost (123.5) replaced by raw JSON text no encoder writes."""
    out = line(rec)
    assert out.count(b"123.5") == 1
    return out.replace(b"123.5", text.encode())


# Lines whose bill is known, with what each adds: (line, input tokens, output tokens, cost).
KNOWN: list[tuple[bytes, int, int, float]] = [
    (line(record(0)), 100, 10, 0.25),
    (line(record(1, paid={"input_tokens": 101, "output_tokens": 11, "cost_usd": 2})), 101, 11, 2.0),  # an int cost
    (line(record(2, paid={"input_tokens": True, "output_tokens": -5, "cost_usd": 0.5})), 0, 0, 0.5),
    (line(record(3, paid={"input_tokens": 1.5, "output_tokens": "12", "cost_usd": 0.0})), 0, 0, 0.0),
    (line(record(4, paid={"input_tokens": 2**64, "output_tokens": 2**64 - 1, "cost_usd": -0.0})), 0, 2**64 - 1, 0.0),
    (line(record(5, paid=None, usage={"input_tokens": 7, "output_tokens": 3}, cost_usd=0.125)), 7, 3, 0.125),
    (line(record(6, paid=None, usage=None, cost_usd="abc", status="error")), 0, 0, 0.0),  # billed nothing
    (line(record(7, paid=None, usage=None, cost_usd=True, status="error")), 0, 0, 0.0),
    (line(record(8, paid=None, usage=None, cost_usd=NAN, status="error")), 0, 0, 0.0),
    (line(record(9, paid=5, usage={"input_tokens": 1, "output_tokens": 1}, cost_usd=0.5)), 1, 1, 0.5),  # not an object
    (line(record(10, paid={}, cost_usd=NAN)), 0, 0, 0.0),  # an empty paid: nothing billed
]
KNOWN_CALLS: list[tuple[bytes, int, int, float]] = [
    (line(call(20)), 50, 5, 0.0625),
    (line(call(21, usage={"input_tokens": True, "output_tokens": -1}, cost_usd=0.5)), 0, 0, 0.5),
    (line(call(22, usage=None, cost_usd="x")), 0, 0, 0.0),
    (line(call(23, usage={}, cost_usd=NAN)), 0, 0, 0.0),
    (line(call(24, usage={"input_tokens": 10**30, "output_tokens": 2**63}, cost_usd=1)), 0, 2**63, 1.0),
]

# One line each that makes the run's cost unknown: (id, file, line).
UNKNOWN_LINES: list[tuple[str, str, bytes]] = [
    *[(f"paid-{name}", "results", line(record(30, paid={"input_tokens": 5, "output_tokens": 1, "cost_usd": v})))
      for name, v in [("nan", NAN), ("inf", INF), ("-inf", -INF), ("true", True), ("negative", -0.5),
                      ("text", "0.5"), ("null", None), ("list", [1])]],
    ("paid-1e400", "results", raw_cost(record(31, paid={"input_tokens": 5, "output_tokens": 1, "cost_usd": 123.5}),
                                       "1e400")),
    ("paid-int-beyond-float", "results",
     raw_cost(record(32, paid={"input_tokens": 5, "output_tokens": 1, "cost_usd": 123.5}), "1" + "0" * 400)),
    *[(f"usage-{name}", "results", line(record(33, paid=None, cost_usd=v)))
      for name, v in [("nan", NAN), ("negative", -1), ("false", False), ("text", "1")]],
    ("paid-after-other-keys", "results",
     line(record(34, paid=None, cost_usd=0.5))[:-2] + b',"paid":{"input_tokens":1,"output_tokens":1,"cost_usd":-1}}\n'),
    *[(f"call-{name}", "calls", line(call(36, cost_usd=v)))
      for name, v in [("nan", NAN), ("inf", INF), ("true", True), ("negative", -0.25), ("null", None), ("text", "0.1")]],
    ("overflow", "results", line(record(37, paid={"input_tokens": 1, "output_tokens": 1, "cost_usd": 1.5e308}))
     + line(record(38, paid={"input_tokens": 1, "output_tokens": 1, "cost_usd": 1.5e308}))),
    ("overflow-with-calls", "calls", line(call(39, cost_usd=1.7e308)) + line(call(40, cost_usd=1.7e308))),
]


def make_run(root: Path, results: list[bytes], calls: list[bytes]) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    write_json_atomic(run / "manifest.json", {"run_id": "run", "config": {"model": "openai/m"}, "task": "qa",
                                              "dataset": {"name": "qa"}, "sample_count": 100})
    (run / "results.jsonl").write_bytes(b"".join(results))
    if calls:
        (run / "calls.jsonl").write_bytes(b"".join(calls))
    return run


def every_bill(run: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int | None, int | None, float | None]]:
    """The run's bill as each reader gives it: (input tokens, output tokens, cost or None)."""
    monkeypatch.setenv("EVALLEDGER_SCAN_CACHE", "off")
    monkeypatch.setattr(scan, "CHUNK_BYTES", 600)  # about a line a block: some take the Arrow path, some not
    out: dict[str, tuple[int | None, int | None, float | None]] = {}
    stats = get_stats(run)
    out["get_stats"] = (stats["input_tokens"], stats["output_tokens"], stats["cost_usd"])
    resume = scan_ledger(run)
    # What --max-cost reads (run/runner.py hands billed_cost to the Budget): known means finite.
    out["resume"] = (None, None, resume.billed_cost if math.isfinite(resume.billed_cost) else None)
    admits = Budget(1e300, resume.billed_cost, 0.0).admits(0)
    assert admits == math.isfinite(resume.billed_cost)
    out["study"] = (None, None, spent_usd(run))
    taken: list[bool] = []
    real = scan_arrow.parse_block

    def counting(data: bytes, start: int) -> Any:
        got = real(data, start)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(scan_arrow, "parse_block", counting)
    for name, arrow in (("arrow", "on"), ("batch", "off")):  # the scan's two paths, plus the calls files
        monkeypatch.setenv("EVALLEDGER_SCAN_ARROW", arrow)
        out[name] = run_bill(scan_run(run))
        assert any(taken) == (arrow == "on"), name  # the fast path did read blocks (and only when on)
        taken.clear()
    monkeypatch.delenv("EVALLEDGER_SCAN_ARROW")
    return out


def test_every_reader_gives_the_same_known_bill(tmp_path, monkeypatch) -> None:
    run = make_run(tmp_path, [x[0] for x in KNOWN], [x[0] for x in KNOWN_CALLS])
    rows = KNOWN + KNOWN_CALLS
    want_in, want_out = sum(x[1] for x in rows), sum(x[2] for x in rows)
    want_cost = math.fsum(x[3] for x in rows)
    bills = every_bill(run, monkeypatch)
    for name, (tokens_in, tokens_out, cost) in bills.items():
        assert cost == pytest.approx(want_cost, rel=1e-12), name
        if tokens_in is not None:
            assert (tokens_in, tokens_out) == (want_in, want_out), name


@pytest.mark.parametrize("where, odd", [x[1:] for x in UNKNOWN_LINES], ids=[x[0] for x in UNKNOWN_LINES])
def test_a_cost_that_cannot_be_known_makes_every_readers_bill_unknown(tmp_path, monkeypatch, where, odd) -> None:
    good = [line(record(i)) for i in range(3)]
    run = make_run(tmp_path, good + ([odd] if where == "results" else []), [line(call(9))] + ([odd] if where == "calls" else []))
    bills = every_bill(run, monkeypatch)
    assert {name: bill[2] for name, bill in bills.items()} == dict.fromkeys(bills, UNKNOWN)
    tokens = {bill[:2] for name, bill in bills.items() if bill[0] is not None}
    assert len(tokens) == 1, bills  # the tokens still agree


def test_the_resume_fast_path_reads_odd_costs_by_the_rule(tmp_path) -> None:
    """Negative and null costs are read in one go with the rest of their block, and give the same
    bill as a full parse (see the test above); costs orjson refuses (too large for a double) send
    their block line by line; a ``paid`` after other keys and records older than ``paid`` are read
    in one go too (the reader does not depend on the order of the keys)."""
    for cost, fast in (("-0.5", True), ("null", True), ("1e400", False), ("1" + "0" * 400, False)):
        path = tmp_path / f"{len(cost)}-{cost[:3]}.jsonl"
        path.write_bytes(line(record(0)) + raw_cost(record(1, paid={"input_tokens": 1, "output_tokens": 1,
                                                                    "cost_usd": 123.5}), cost))
        assert all(b.fast == fast for b in iter_blocks(path)), cost
    odd = {name: text for name, _, text in UNKNOWN_LINES}
    path = tmp_path / "late-paid.jsonl"
    path.write_bytes(line(record(0)) + odd["paid-after-other-keys"])
    assert all(b.fast for b in iter_blocks(path))
    legacy = tmp_path / "legacy.jsonl"  # records older than ``paid``
    legacy.write_bytes(line(record(0)) + line(record(1, paid=None, cost_usd=-1)))
    assert all(b.fast for b in iter_blocks(legacy))


@pytest.mark.parametrize("name", ["paid-nan", "paid-inf", "paid--inf", "paid-negative", "paid-null", "usage-nan",
                                  "usage-negative"])
def test_the_arrow_fast_path_reads_odd_costs_by_the_rule(name: str) -> None:
    """pyarrow's reader takes these lines (it reads NaN and Infinity too), and bills them as bill_of does."""
    odd = {n: text for n, _, text in UNKNOWN_LINES}[name]
    fast = scan_arrow.parse_block(line(record(0)) + odd, 0)
    assert fast is not None
    table, sums = fast
    assert table[BILLED_COST_COLUMN].to_pylist() == [0.25, None] and sums.cost_known is False


def test_huge_but_finite_costs_count(tmp_path, monkeypatch) -> None:
    """1e300 and an int of 31 digits are costs like any other (the sum stays a float)."""
    run = make_run(tmp_path, [line(record(0, paid={"input_tokens": 0, "output_tokens": 0, "cost_usd": 1e300})),
                              line(record(1, paid={"input_tokens": 3, "output_tokens": 4, "cost_usd": 10**30}))],
                   [line(call(2, cost_usd=10**30))])
    want = math.fsum([1e300, 1e30, 1e30])
    for name, (_, _, cost) in every_bill(run, monkeypatch).items():
        assert cost == pytest.approx(want, rel=1e-12), name


def test_the_resume_index_keeps_an_unknown_bill(tmp_path) -> None:
    """A results file large enough to be indexed: the index's sums say unknown too, and the next
    resume, which reads the index instead of the lines, still does."""
    recs = [record(i) for i in range(2500)]
    recs[1000]["paid"]["cost_usd"] = -1.0
    run = make_run(tmp_path, [encode_lines(recs)], [])
    assert (run / "results.jsonl").stat().st_size > 1 << 20
    first = scan_ledger(run)
    assert index_path(run / "results.jsonl").exists()
    second = scan_ledger(run)
    assert not math.isfinite(first.billed_cost) and not math.isfinite(second.billed_cost)
    assert first.cost_usd is None and second.cost_usd is None
    assert get_stats(run)["cost_usd"] is None


@pytest.mark.parametrize("value, amount", [
    (0.5, 0.5), (3, 3.0), (0, 0.0), (-0.0, -0.0), (1e308, 1e308), (10**30, 1e30), (NAN, None), (INF, None),
    (-INF, None), (-1e-9, None), (-1, None), (True, None), (False, None), ("0.5", None), (None, None), ([1], None),
    ({}, None), (10**400, None),
])
def test_cost_amount(value: Any, amount: float | None) -> None:
    assert cost_amount(value) == amount


@pytest.mark.parametrize("value, count", [
    (5, 5), (0, 0), (2**64 - 1, 2**64 - 1), (2**64, 0), (-1, 0), (True, 0), (1.0, 0), ("5", 0), (None, 0),
])
def test_count_of(value: Any, count: int) -> None:
    assert count_of(value) == count


def test_bill_of_reads_paid_else_usage_and_cost() -> None:
    assert bill_of(record(0)) == Bill(100, 10, 0.25, True)
    assert bill_of({"usage": {"input_tokens": 2}, "cost_usd": 0.5, "paid": {"input_tokens": 1}}) == Bill(1, 0, None, False)
    assert bill_of({"usage": {"input_tokens": 2}, "cost_usd": 0.5, "paid": None}) == Bill(2, 0, 0.5, True)
    assert bill_of({"usage": [1], "cost_usd": "x"}) == Bill(0, 0, None, True)
    assert bill_of({"usage": {"input_tokens": 0}, "cost_usd": None}) == Bill(0, 0, None, False)
    assert bill_of_call({"usage": {"output_tokens": 3}, "cost_usd": 0.25}) == Bill(0, 3, 0.25, True)
    assert bill_of_call({"cost_usd": NAN}) == Bill(0, 0, None, True)


def test_bill_total_and_total_cost() -> None:
    total = BillTotal()
    for b in (Bill(1, 2, 0.1), Bill(3, 4, None), Bill(0, 0, 0.2)):
        total.add(b)
    assert (total.items, total.input_tokens, total.output_tokens) == (3, 4, 6)
    assert total.cost_usd == math.fsum([0.1, 0.2])
    total.add(Bill(1, 0, None, cost_known=False))
    assert total.cost_usd is None and total.input_tokens == 5
    assert total_cost([1e308, 1e308]) is None and total_cost([]) == 0.0 and total_cost([0.1] * 10) == 1.0


def test_the_column_groups_are_the_frame_columns_once_each() -> None:
    groups = STRING_COLUMNS + TIME_COLUMNS + INT_COLUMNS + FLOAT_COLUMNS + BOOL_COLUMNS + OBJECT_COLUMNS + LIST_COLUMNS
    assert sorted(groups + (SCORE_COLUMN,)) == sorted(BASE_COLUMNS + TEXT_COLUMNS + OPTIONAL_COLUMNS)
    assert set(groups) <= set(SCHEMA.names) and set(READ_SCHEMA.names) == set(RECORD_FIELDS) - {"extra"}
    assert KNOWN_KEYS == set(RECORD_FIELDS) and len(RECORD_FIELDS) == len(set(RECORD_FIELDS))


# ------------------------------------------------------------------------------------ --max-cost end to end

PRICE = ["--price-input", "2.0", "--price-output", "8.0"]


def _run(fake_server: Any, tmp_path: Path, data: Path, *extra: str) -> Any:
    args = ["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(tmp_path / "out"),
            "--run-id", "r", "--quiet", "--concurrency", "1", *PRICE, *extra]
    return run_cli(args, cli_env(fake_server), cwd=tmp_path)


def test_max_cost_stops_on_an_unknown_spend_as_stats_reports_it(fake_server, tmp_path) -> None:
    """The spend so far is unknown (a record that billed tokens at a negative cost, in our writer's
    own format, and one with null cost, as a run before the model had a price writes): stats say
    unknown, and the budget admits nothing, however large."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    r = _run(fake_server, tmp_path, data, "--limit", "3")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "out" / "r"
    for odd in (-0.5, None):
        results = run / "results.jsonl"
        with open(results, "ab") as f:
            f.write(line(record(3, status="error", paid={"input_tokens": 9, "output_tokens": 1, "cost_usd": odd})))
        assert get_stats(run)["cost_usd"] is None
        before = fake_server.request_count
        r = _run(fake_server, tmp_path, data, "--max-cost", "1000")
        assert r.returncode == 5, r.stderr
        assert "spent so far is unknown" in r.stderr and fake_server.request_count == before
        results.write_bytes(b"".join(results.read_bytes().splitlines(keepends=True)[:-1]))  # drop it again
    r = _run(fake_server, tmp_path, data, "--max-cost", "1000")
    assert r.returncode == 0, r.stderr
    assert get_stats(run)["completed_samples"] == 8


def test_max_cost_counts_the_spend_stats_report_despite_odd_values(fake_server, tmp_path) -> None:
    """Odd values that bill nothing (a cost of ``true`` or text on a record without usage, token
    counts that are not counts) change neither the bill stats report nor the budget's: a budget of
    exactly that spend sends nothing, half a dollar more lets the run finish."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    r = _run(fake_server, tmp_path, data, "--limit", "3")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "out" / "r"
    with open(run / "results.jsonl", "ab") as f:
        f.write(line(record(3, status="error", paid=None, usage=None, cost_usd=True)))
        f.write(line(record(4, status="error", paid=None, usage=None, cost_usd="0.5")))
        f.write(line(record(5, status="error", paid={"input_tokens": True, "output_tokens": -3, "cost_usd": 0.0})))
    stats = get_stats(run)
    spent = stats["cost_usd"]
    assert spent is not None and spent > 0
    assert spent_usd(run) == pytest.approx(spent, rel=1e-12)
    before = fake_server.request_count
    r = _run(fake_server, tmp_path, data, "--max-cost", repr(spent))
    assert r.returncode == 5 and fake_server.request_count == before, r.stderr
    r = _run(fake_server, tmp_path, data, "--max-cost", repr(spent + 0.5))
    assert r.returncode == 0, r.stderr
    after = get_stats(run)
    assert after["completed_samples"] == 8 and spent < after["cost_usd"] <= spent + 0.5
