"""The resume pass over the ledger: the block-at-a-time fast path agrees with a full parse, falls
back on anything odd, and a resume of 100,000 completed records sends nothing."""

from __future__ import annotations

import json

from helpers import write_qa_dataset

from evalledger.config import RunConfig
from evalledger.ledger import scan_ledger
from evalledger.ledger.lines import iter_blocks
from evalledger.readers import CheckpointManager
from evalledger.records import LEAD_KEYS, BillTotal, bill_of
from evalledger.run import run_experiment
from evalledger.run.units import plan_units
from evalledger.samples import Sample

MODEL = "openai/test-model"


def record(i: int, status: str = "ok", correct: bool | None = True, priced: bool = True, epoch: int = 1) -> dict:
    """A record shaped like the runner's (keys not in the ledger's order: the writer puts the lead keys first)."""
    cost = round(1e-5 * (i % 7 + 1), 10) if priced else None
    return {"sample_id": f"s{i:05d}", "status": status, "attempts": 1 + i % 3, "shard": None, "model": MODEL,
            "task": "qa", "input_hash": "x", "prompt": [{"role": "user", "content": f"q{i} \"quoted\" {{x}}"}],
            "response": "r\n#### 1 é", "prediction": "1", "target": "1", "score": correct, "correct": correct,
            "usage": {"input_tokens": 10 + i, "output_tokens": 5 + i}, "cost_usd": cost,
            "paid": {"input_tokens": 10 + i, "output_tokens": 5 + i, "cost_usd": cost},
            "latency_s": 0.1, "request_ids": ["r"], "error": None, "started_at": "t", "finished_at": "t",
            "seed": 0, "epoch": epoch}


def reference(run_dir):
    """What a full parse of every record says (the pre-fast-path runner logic)."""
    completed, correct, errored, n, tin, tout, bill = set(), set(), set(), 0, 0, 0, BillTotal()
    for rec in CheckpointManager(run_dir).iter_records():
        if rec.get("status") == "ok":
            completed.add(rec["sample_id"])
            (correct.add if rec.get("correct") is True else correct.discard)(rec["sample_id"])
            n += 1
            tin += rec["usage"]["input_tokens"]
            tout += rec["usage"]["output_tokens"]
        else:
            errored.add(rec["sample_id"])
        bill.add(bill_of(rec))
    return completed, correct, errored - completed, (n, tin, tout), bill.cost_usd


def assert_agrees(run_dir):
    scan = scan_ledger(run_dir)
    completed, correct, errored, observed, cost = reference(run_dir)
    assert scan.completed == completed and scan.correct == correct and scan.errored == errored
    assert scan.observed == observed
    assert (scan.cost_usd is None) == (cost is None) and (cost is None or abs(scan.cost_usd - cost) < 1e-9)
    return scan


def write(run_dir, records):
    with CheckpointManager(run_dir) as m:
        m.append_records(records)


def test_writer_puts_the_lead_keys_first_and_the_fast_path_reads_them(tmp_path):
    run = tmp_path / "run"
    recs = [record(0), record(1, correct=False), record(2, "error", None), record(3, priced=False),
            record(2), record(1, correct=True), record(0, correct=False)]  # retries: the last ok decides
    write(run, recs)
    first = json.loads((run / "results.jsonl").read_bytes().splitlines()[0])
    assert tuple(first)[: len(LEAD_KEYS)] == LEAD_KEYS
    blocks = list(iter_blocks(run / "results.jsonl"))
    assert len(blocks) == 1 and blocks[0].fast and len(blocks[0].records) == len(recs) and not blocks[0].garbage
    scan = assert_agrees(run)
    assert scan.completed == {"s00000", "s00001", "s00002", "s00003"} and scan.correct == {"s00001", "s00002", "s00003"}
    assert scan.files[run / "results.jsonl"].requests == sum(r["attempts"] for r in recs)


def test_a_block_with_anything_odd_is_read_in_full(tmp_path):
    run = tmp_path / "run"
    write(run, [record(0), record(1)])
    path = run / "results.jsonl"
    with open(path, "ab") as f:
        f.write(b"not json\n")
        f.write(b'{"sample_id": "s00002", "status": "ok", "correct": true}\n')  # another writer's spacing
        f.write(b"\x00" * 10 + b"\n")
        f.write(b'{"sample_id":"s00003","status":"ok"')  # a torn tail: never read
    blocks = list(iter_blocks(path))
    assert not blocks[0].fast and [r["sample_id"] for r in blocks[0].records] == ["s00000", "s00001", "s00002"]
    assert blocks[0].garbage == [3, 5]
    scan = scan_ledger(run)
    assert scan.completed == {"s00000", "s00001", "s00002"} and scan.records == 3


def test_old_records_without_the_lead_order_are_still_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    old = {k: v for k, v in record(0).items() if k not in ("paid", "epoch", "seed")}
    (run / "results.jsonl").write_text(json.dumps(dict(reversed(old.items()))) + "\n")
    assert assert_agrees(run).completed == {"s00000"}


def test_resume_of_100k_completed_records_sends_nothing(fake_server, tmp_path):
    n = 100_000
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    base = dict(dataset=str(data), model=MODEL, output_dir=out, base_url=fake_server.openai_base_url,
                api_key="sk-test", quiet=True, concurrency=4)
    first = run_experiment(RunConfig(**base, limit=1))
    assert first.exit_code == 0 and fake_server.request_count == 1
    # The other 99,999 records, written as the runner would (the first one is already there).
    with CheckpointManager(first.run_dir) as m:
        for start in range(1, n, 10_000):
            m.append_records([record(i) for i in range(start, min(n, start + 10_000))], fsync=False)
    s = run_experiment(RunConfig(**base))
    assert s.exit_code == 0 and s.requests == 0 and fake_server.request_count == 1
    assert s.skipped_completed == n and s.remaining == 0 and s.stats["completed_samples"] == n


def test_completed_ids_reads_prefixes_and_reports_like_the_full_reader(tmp_path):
    from evalledger.ledger import ReadReport, iter_file_records

    run = tmp_path / "run"
    write(run, [record(0), record(1, "error", None), record(2)])
    with open(run / "results.jsonl", "ab") as f:
        f.write(b'{"sample_id":"s00009","status":"ok"')  # being written: not done yet
    fast, full = ReadReport(), ReadReport()
    assert CheckpointManager(run).completed_ids(fast) == {"s00000", "s00002"}
    list(iter_file_records(run / "results.jsonl", full))
    assert fast == full and fast.lines == 3 and fast.partial_tail_bytes > 0


def test_within_known_says_whether_every_ok_unit_is_a_dataset_id_and_lets_a_complete_plan_skip_a_pass(tmp_path):
    ids = frozenset(f"s{i:05d}" for i in range(5))
    samples = [Sample(id=sid, fields={}, row=i + 1) for i, sid in enumerate(sorted(ids))]

    def scanned(name, records):
        write(tmp_path / name, records)
        return scan_ledger(tmp_path / name, ids)

    scan = scanned("complete", [record(i) for i in range(5)])
    assert scan.within_known and scan.completed == ids
    for within in (True, False):
        plan = plan_units(samples, ids, 1, scan.completed, scan.errored, completed_within_ids=within)
        assert not plan.not_done and not list(plan.pending) and plan.skipped == 5
    scan = scanned("foreign", [record(i) for i in range(4)] + [record(7)])  # one foreign, one missing
    assert not scan.within_known and len(scan.completed) == 5
    plan = plan_units(samples, ids, 1, scan.completed, scan.errored, completed_within_ids=scan.within_known)
    assert plan.not_done == {"s00004"}
    assert not scanned("epochs", [record(i) for i in range(5)] + [record(0, epoch=2)]).within_known
    assert not scan_ledger(tmp_path / "complete").within_known  # no dataset ids to compare with
