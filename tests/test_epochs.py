"""Repeats (``--epochs K``) on the writing side: the run, the ledger and the tools work per unit of
work, (sample, epoch).

Every (sample, epoch) is asked exactly once with its own seed (seen in the fake server's request
log), whatever the order, the shards or the resumes; a kill -9 mid-run loses nothing acknowledged
and pays nothing twice; raising K extends the run; verify, merge, status and prune count units;
old run directories (no ``epoch`` anywhere) read and resume as before. Real CLI subprocesses and
real SDKs against the loopback fake server.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fakeserver import answer_from_marker
from helpers import (
    all_records,
    cli_env,
    kill_9_when,
    line_count,
    read_lines,
    run_cli,
    run_config,
    settle_requests,
    write_qa_dataset,
)

from evalledger.datasets import shard_of
from evalledger.ledger import iter_file_records, scan_ledger
from evalledger.ledger.lines import iter_blocks
from evalledger.ops import merge_run, plan_prune, run_status, verify_run
from evalledger.providers import ChatRequest
from evalledger.readers import CheckpointManager
from evalledger.records import epoch_of, unit_key
from evalledger.run import estimate_experiment, prepare_run, run_experiment
from evalledger.run.replay import call_key
from evalledger.samples import epoch_seed

MODEL = "openai/test-model"
_MARK = re.compile(r"\[\[ANSWER:(\d+)\]\]")


def sid(i: int) -> str:
    return f"s{i:05d}"


def wire_units(server: Any) -> Counter:
    """(sample id, seed) of every request the fake server got (the marker names the sample)."""
    out: Counter = Counter()
    for r in server.requests:
        m = _MARK.search(r.text)
        assert m is not None, r.text
        out[(sid(int(m.group(1))), r.body.get("seed"))] += 1
    return out


def expected_wire(ids: list[str], seed: int, epochs: range) -> Counter:
    return Counter({(s, epoch_seed(seed, s, e)): 1 for s in ids for e in epochs})


def ok_units(records: list[dict[str, Any]]) -> Counter:
    return Counter((r["sample_id"], epoch_of(r)) for r in records if r["status"] == "ok")


def cli_run(data: Path, out: Path, run_id: str, *extra: str) -> list[str]:
    return ["run", "--dataset", str(data), "--model", MODEL, "--output-dir", str(out), "--run-id", run_id, *extra]


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def write_reversed(src: Path, dst: Path) -> Path:
    """The same rows in the opposite order (another file: another run, the same sample ids)."""
    dst.write_text("".join(reversed(src.read_text().splitlines(keepends=True))))
    return dst


# ------------------------------------------------------------------------------------ the run


def test_three_epochs_send_every_unit_once_with_its_own_seed(fake_server, tmp_path):
    n, seed = 6, 11
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    r = run_cli(cli_run(data, out, "k3", "--epochs", "3", "--seed", str(seed), "--json"), cli_env(fake_server),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["epochs"], summary["total_samples"], summary["ok"], summary["remaining"]) == (3, 18, 18, 0)
    assert summary["stats"]["completed_samples"] == 18 and summary["stats"]["epochs"] == 3
    assert "6 samples × 3 epochs = 18 units" in r.stderr, r.stderr

    ids = [sid(i) for i in range(n)]
    recs = all_records(out / "k3")
    assert ok_units(recs) == Counter({(s, e): 1 for s in ids for e in (1, 2, 3)}) and len(recs) == 18
    assert all(type(rec["epoch"]) is int and rec["seed"] == epoch_seed(seed, rec["sample_id"], rec["epoch"])
               for rec in recs)
    assert all(len({rec["seed"] for rec in recs if rec["sample_id"] == s}) == 3 for s in ids)
    assert [k for k in json.loads((out / "k3" / "results.jsonl").read_bytes().splitlines()[0])][:3] == [
        "sample_id", "epoch", "status"]
    # On the wire: each (sample, epoch) once, with the seed its record names; epoch 1 the run's own seed.
    assert wire_units(fake_server) == expected_wire(ids, seed, range(1, 4))
    assert epoch_seed(seed, ids[0], 1) == seed
    assert manifest(out / "k3")["epochs"] == 3

    # Resume: nothing left, nothing sent.
    before = fake_server.request_count
    again = run_cli(cli_run(data, out, "k3", "--epochs", "3", "--seed", str(seed), "--quiet"), cli_env(fake_server),
                    cwd=tmp_path)
    assert again.returncode == 0 and fake_server.request_count == before, again.stderr


def seeds_of(run_dir: Path) -> dict[tuple[str, int], int]:
    """(sample, epoch) -> seed of every ok record, each unit once."""
    recs = all_records(run_dir)
    assert all(c == 1 for c in ok_units(recs).values())
    return {(rec["sample_id"], rec["epoch"]): rec["seed"] for rec in recs if rec["status"] == "ok"}


def test_a_unit_gets_the_same_seed_in_any_order_shard_or_resume(fake_server, tmp_path):
    n, seed = 12, 5
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    # One order: the whole dataset, one request at a time, three epochs at once (the Python API).
    a = run_experiment(run_config(fake_server, data, tmp_path / "a", epochs=3, seed=seed, concurrency=1))
    assert a.exit_code == 0 and a.total_samples == 3 * n and a.epochs == 3
    wire_a = wire_units(fake_server)
    fake_server.clear_requests()

    # Another: the rows reversed, two shards, concurrency 3, two epochs first and the third on a resume.
    rev = write_reversed(data, tmp_path / "rev.jsonl")
    for k in (1, 2):
        for epochs in (2, 3):
            # cache=False: the same requests go on the wire again (the response cache would answer them all)
            s = run_experiment(run_config(fake_server, rev, tmp_path / "b", run_id="b", shard=(k, 2), epochs=epochs,
                                          seed=seed, concurrency=3, cache=False))
            assert s.exit_code == 0 and s.remaining == 0
    seeds_b = seeds_of(tmp_path / "b" / "b")
    assert seeds_of(a.run_dir) == seeds_b and len(seeds_b) == 3 * n
    assert seeds_b == {(s, e): epoch_seed(seed, s, e) for s in (sid(i) for i in range(n)) for e in (1, 2, 3)}
    assert wire_units(fake_server) == wire_a  # every (sample, seed) once, in both
    # A sample's epochs all went to the sample's shard.
    for k in (1, 2):
        recs = list(iter_file_records(tmp_path / "b" / "b" / f"results.shard-{k}-of-2.jsonl"))
        assert recs and all(shard_of(rec["sample_id"], 2) == k for rec in recs)
        assert Counter(rec["sample_id"] for rec in recs) == Counter({s: 3 for s in {rec["sample_id"] for rec in recs}})


def test_raising_epochs_extends_and_sends_only_the_new_epoch_lowering_removes_nothing(fake_server, tmp_path):
    n, seed = 8, 3
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    ids = [sid(i) for i in range(n)]
    r = run_cli(cli_run(data, out, "ext", "--epochs", "2", "--seed", str(seed), "--quiet"), env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert wire_units(fake_server) == expected_wire(ids, seed, range(1, 3)) and manifest(out / "ext")["epochs"] == 2
    fake_server.clear_requests()

    r = run_cli(cli_run(data, out, "ext", "--epochs", "3", "--seed", str(seed), "--json"), env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert wire_units(fake_server) == expected_wire(ids, seed, range(3, 4))  # epoch 3 only
    summary = json.loads(r.stdout)
    assert (summary["ok"], summary["skipped_completed"], summary["total_samples"]) == (n, 2 * n, 3 * n)
    assert manifest(out / "ext")["epochs"] == 3
    fake_server.clear_requests()

    # Fewer epochs: nothing sent, nothing removed, the run says what it holds, the manifest keeps 3.
    r = run_cli(cli_run(data, out, "ext", "--epochs", "1", "--seed", str(seed)), env, cwd=tmp_path)
    assert r.returncode == 0 and fake_server.request_count == 0, r.stderr
    assert "holds 3 epochs" in r.stderr and "keeps every record" in r.stderr, r.stderr
    assert manifest(out / "ext")["epochs"] == 3 and len(all_records(out / "ext")) == 3 * n
    st = run_status(out / "ext")
    assert (st.epochs, st.total, st.done, st.complete) == (3, 3 * n, 3 * n, True)


def test_kill_9_in_a_repeated_run_then_resume_every_unit_once_nothing_paid_twice(fake_server, tmp_path):
    n, epochs, seed = 50, 3, 9
    fake_server.latency = 0.05
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = cli_run(data, out, "kill", "--epochs", str(epochs), "--seed", str(seed), "--concurrency", "4", "--quiet",
                   "--checkpoint-every", "1")
    results = out / "kill" / "results.jsonl"
    for at in (15, 60):
        kill_9_when(args, env, tmp_path, lambda: line_count(results) >= at, 60, f"{at} records were written", 0.05)
        recs, tail = read_lines(results)
        assert all(c == 1 for c in ok_units(recs).values()), "a unit recorded twice"
        if tail:
            assert tail.startswith(b'{"sample_id":"')
    recorded = {(r["sample_id"], r["seed"]) for r in read_lines(results)[0] if r["status"] == "ok"}
    assert 0 < len(recorded) < n * epochs

    settle_requests(fake_server)  # what the killed process sent is not the resume's
    paid_before = set(wire_units(fake_server))
    fake_server.clear_requests()
    final = run_cli(args, env, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    recs = all_records(out / "kill")
    ids = [sid(i) for i in range(n)]
    assert ok_units(recs) == Counter({(s, e): 1 for s in ids for e in range(1, epochs + 1)})
    assert all(r["status"] == "ok" and r["seed"] == epoch_seed(seed, r["sample_id"], r["epoch"]) for r in recs)
    sent = wire_units(fake_server)
    assert not recorded & set(sent), "a unit recorded before the resume was paid again"
    # A unit answered before a kill but not yet recorded comes back from the response cache, unpaid:
    # it was paid once, by the killed process.
    from_cache = {(r["sample_id"], r["seed"]) for r in recs if r.get("cached")}
    assert from_cache <= paid_before - recorded
    assert set(sent) == set(expected_wire(ids, seed, range(1, epochs + 1))) - recorded - from_cache
    assert all(c == 1 for c in sent.values())


def test_the_budget_and_the_estimate_count_units(fake_server, tmp_path):
    n = 6
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    price = dict(price_input=1000.0, price_output=1000.0)
    est = estimate_experiment(run_config(fake_server, data, out, epochs=3, **price))
    assert est.pending == 3 * n and est.epochs == 3 and "18 pending (sample, epoch) units" in est.line()
    probe = run_experiment(run_config(fake_server, data, tmp_path / "probe", limit=1, cache=False, **price))
    per_unit = all_records(probe.run_dir)[0]["cost_usd"]
    fake_server.clear_requests()

    s = run_experiment(run_config(fake_server, data, out, epochs=3, max_cost=per_unit * 10.5, **price))
    assert s.exit_code == 5 and 7 <= s.ok <= 10 and s.remaining == 3 * n - s.ok, (s.ok, s.message)
    assert f"{s.remaining} (sample, epoch) unit(s) left" in s.message
    assert estimate_experiment(run_config(fake_server, data, out, epochs=3, **price)).pending == s.remaining
    s2 = run_experiment(run_config(fake_server, data, out, epochs=3, max_cost=per_unit * 100, **price))
    assert s2.exit_code == 0 and s2.ok == s.remaining
    assert sorted(wire_units(fake_server).values()) == [1] * (3 * n)  # nothing paid twice


def test_the_circuit_breaker_counts_units_and_errors_are_retried_per_unit(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    fake_server.fail_always(status=400)
    s = run_experiment(run_config(fake_server, data, out, epochs=3, concurrency=1, max_consecutive_errors=5))
    assert s.exit_code == 3 and s.status == "outage" and 5 <= s.errors <= 6, s.errors  # (+ one in flight)
    fake_server.clear_faults()
    s2 = run_experiment(run_config(fake_server, data, out, epochs=3))
    assert s2.exit_code == 0 and s2.ok == 12 and s2.skipped_completed == 0 and s2.total_samples == 12
    assert ok_units(all_records(s.run_dir)) == Counter({(sid(i), e): 1 for i in range(4) for e in (1, 2, 3)})


# ------------------------------------------------------------------------------------ the turn cache


def _seed_in_reply(body: dict[str, Any]) -> str:
    return f"(seed {body.get('seed')})\n{answer_from_marker(body)}"


def test_self_correction_with_two_epochs_keeps_a_turn_cache_per_unit(fake_server, tmp_path):
    n, seed = 4, 21
    fake_server.responder = _seed_in_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    config = run_config(fake_server, data, out, task="self-correct", epochs=2, seed=seed)
    prepared = prepare_run(config)
    # A call recorded for (s00000, epoch 1) whose request is exactly what epoch 2's first turn sends:
    # were the cache keyed by sample, epoch 2 would replay it.
    sample = prepared.selection[0]
    request = ChatRequest(messages=prepared.task.build_messages(sample), model=MODEL, temperature=config.temperature,
                          max_tokens=config.max_tokens, seed=epoch_seed(seed, sample.id, 2), top_p=config.top_p)
    prepared.run_dir.mkdir(parents=True)
    (prepared.run_dir / "calls.jsonl").write_text(json.dumps(
        {"sample_id": sample.id, "epoch": 1, "call_key": call_key(request), "turn": 0, "shard": None, "model": MODEL,
         "response": "POISON #### 0", "request_id": "x", "usage": {"input_tokens": 1, "output_tokens": 1},
         "cost_usd": None, "finished_at": "2026-01-01T00:00:00.000Z"}) + "\n")
    # Two review turns are refused: those units end in errors that carry their first turn.
    fake_server.fail_when("Review your previous answer", status=400, times=2)
    s1 = run_experiment(config)
    assert s1.ok == 2 * n - 2 and s1.errors == 2
    assert fake_server.request_count == 2 * n * 2  # every unit's first turn paid, the poison never replayed
    calls = [json.loads(x) for x in (s1.run_dir / "calls.jsonl").read_text().splitlines()]
    assert all(type(c["epoch"]) is int for c in calls)
    assert Counter((c["sample_id"], c["epoch"]) for c in calls[1:]) == Counter(
        {(sid(i), e): 2 for i in range(n) for e in (1, 2)}) - Counter(
        {(r["sample_id"], r["epoch"]): 1 for r in all_records(s1.run_dir) if r["status"] == "error"})

    # Resume: the two units' first turns come from their own unit's calls, only the reviews are sent.
    before = fake_server.request_count
    s2 = run_experiment(config)
    assert s2.exit_code == 0 and s2.ok == 2 and fake_server.request_count - before == 2
    recs = [r for r in all_records(s2.run_dir) if r["status"] == "ok"]
    assert ok_units(recs) == Counter({(sid(i), e): 1 for i in range(n) for e in (1, 2)})
    for r in recs:
        first = r["response"][0]
        assert "POISON" not in first and f"(seed {epoch_seed(seed, r['sample_id'], r['epoch'])})" in first, r
    assert sum(1 for r in recs if r.get("turn_usage", [{}])[0].get("replayed")) == 2


# ------------------------------------------------------------------------------------ the tools


def test_verify_merge_and_status_of_a_repeated_sharded_run(fake_server, tmp_path):
    n = 16
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    ids = [sid(i) for i in range(n)]
    two = [s for s in ids if shard_of(s, 2) == 2]
    r = run_cli(cli_run(data, out, "r", "--epochs", "2", "--shard", "1/2", "--quiet"), env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = out / "r"

    rep = verify_run(run_dir)
    assert rep.exit_code == 1
    (uncovered,) = [f for f in rep.findings if f.kind == "uncovered"]
    assert f"{2 * len(two)} of {2 * n} (sample, epoch) unit(s) have no ok record" in uncovered.message
    assert f"{two[0]} epoch 1, {two[0]} epoch 2" in uncovered.message and "(shard 2 never ran)" in uncovered.message
    assert rep.checked["missing"] == [{"sample_id": s, "epoch": e} for s in two for e in (1, 2)]
    assert rep.checked["epochs"] == 2 and rep.checked["dataset_units"] == 2 * n
    assert rep.checked["units_with_ok"] == 2 * (n - len(two)) and rep.checked["samples_with_ok"] == n - len(two)

    st = json.loads(run_cli(["status", "r", "--output-dir", str(out), "--json"], env).stdout)
    assert (st["epochs"], st["total"], st["done"], st["pending"]) == (2, 2 * n, 2 * (n - len(two)), 2 * len(two))
    rows = {row["shard"]: row for row in st["shard_status"]}
    assert rows[1]["state"] == "done" and rows[1]["total"] == rows[1]["done"] == 2 * (n - len(two))
    assert rows[2]["state"] == "missing" and rows[2]["total"] == 2 * len(two) and rows[2]["done"] == 0

    merged = tmp_path / "merged.jsonl"
    refused = merge_run(run_dir, merged)
    assert not refused.exact and refused.output is None and refused.expected == 2 * n
    assert refused.missing == [f"{s} epoch {e}" for s in two for e in (1, 2)]

    r = run_cli(cli_run(data, out, "r", "--epochs", "2", "--shard", "2/2", "--quiet"), env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert run_cli(["verify", "r", "--output-dir", str(out)], env).returncode == 0
    st = run_status(run_dir)
    assert st.complete and st.done == st.total == 2 * n
    rep = merge_run(run_dir, merged)
    assert rep.exact and rep.written == 2 * n and rep.duplicates_dropped == 0
    lines = [json.loads(x) for x in merged.read_text().splitlines()]
    assert [(x["sample_id"], x["epoch"]) for x in lines] == [(s, e) for s in ids for e in (1, 2)]

    # A second ok record of one unit (epoch 2), finished later: verify names the unit, merge keeps the later one.
    shard = run_dir / f"results.shard-{shard_of(ids[0], 2)}-of-2.jsonl"
    rec = next(x for x in iter_file_records(shard) if x["sample_id"] == ids[0] and x["epoch"] == 2)
    with CheckpointManager(run_dir, (shard_of(ids[0], 2), 2)) as m:
        m.append_records([dict(rec, finished_at="2999-01-01T00:00:00.000Z", latency_s=99.0)])
    (dup,) = [f for f in verify_run(run_dir).findings if f.kind == "duplicate_ok"]
    assert "1 (sample, epoch) unit(s) have more than one ok record" in dup.message and f"{ids[0]} epoch 2" in dup.message
    rep = merge_run(run_dir, merged)
    assert rep.exact and rep.written == 2 * n and rep.duplicates_dropped == 1
    kept = [json.loads(x) for x in merged.read_text().splitlines()][1]
    assert (kept["sample_id"], kept["epoch"], kept["latency_s"]) == (ids[0], 2, 99.0)


def test_prune_keeps_an_old_copy_holding_the_only_ok_record_of_an_epoch(fake_server, tmp_path):
    n = 3
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    assert run_experiment(run_config(fake_server, data, out, run_id="p", epochs=2)).exit_code == 0
    # --overwrite moves the two-epoch run aside; the new one only has epoch 1 of every sample.
    assert run_experiment(run_config(fake_server, data, out, run_id="p", overwrite=True)).exit_code == 0
    plan = plan_prune(out, keep=0)
    assert not plan.remove
    (kept,) = [k for k in plan.kept if k.kind == "old run"]
    assert f"holds the only ok record of {n} (sample, epoch) unit(s) (e.g. {sid(0)} epoch 2)" in kept.reason
    # Once the new run has epoch 2 too, the old copy is redundant.
    assert run_experiment(run_config(fake_server, data, out, run_id="p", epochs=2)).exit_code == 0
    assert [i.kind for i in plan_prune(out, keep=0).remove] == ["old run"]


# ------------------------------------------------------------------------------------ the ledger


def _record(i: int, epoch: int | None, status: str = "ok", correct: bool = True) -> dict[str, Any]:
    rec: dict[str, Any] = {"sample_id": sid(i), "status": status, "attempts": 1, "correct": correct if status == "ok"
                           else None, "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": 0.001,
                           "paid": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.001}, "model": MODEL,
                           "task": "qa", "response": "x" * 200, "finished_at": "t"}
    if epoch is not None:
        rec["epoch"] = epoch
    return rec


def _reference(run_dir: Path) -> tuple[set[str], set[str], set[str]]:
    """Completed, correct and errored units by a full parse of every record."""
    done, correct, errored = set(), set(), set()
    for rec in CheckpointManager(run_dir).iter_records():
        key = unit_key(rec["sample_id"], epoch_of(rec))
        if rec.get("status") == "ok":
            done.add(key)
            (correct.add if rec.get("correct") is True else correct.discard)(key)
        else:
            errored.add(key)
    return done, correct, errored - done


def test_the_resume_pass_reads_epochs_from_the_prefix_and_agrees_with_a_full_parse(tmp_path):
    run = tmp_path / "run"
    recs = [_record(0, 1), _record(0, 2, correct=False), _record(0, 3), _record(1, 2, "error"), _record(1, None),
            _record(2, 2), _record(2, 2, correct=False), _record(3, 0)]  # epoch 0 reads as 1, as epoch_of says
    with CheckpointManager(run) as m:
        m.append_records(recs)
    (block,) = iter_blocks(run / "results.jsonl")
    assert block.fast and len(block.records) == len(recs)  # the fast path
    scan = scan_ledger(run)
    done, correct, errored = _reference(run)
    assert (scan.completed, scan.correct, scan.errored) == (done, correct, errored)
    assert done == {sid(0), unit_key(sid(0), 2), unit_key(sid(0), 3), sid(1), unit_key(sid(2), 2), sid(3)}
    assert errored == {unit_key(sid(1), 2)} and unit_key(sid(2), 2) not in correct

    # Another tool's line: its epoch comes after other keys. The record is epoch 2 as epoch_of
    # says, not epoch 1.
    with open(run / "results.jsonl", "ab") as f:
        f.write(json.dumps({**_record(4, None), "epoch": 2}, separators=(",", ":")).encode() + b"\n")
    (block,) = iter_blocks(run / "results.jsonl")
    assert block.fast and len(block.records) == len(recs) + 1
    scan = scan_ledger(run)
    assert (scan.completed, scan.correct, scan.errored) == _reference(run)
    assert unit_key(sid(4), 2) in scan.completed and sid(4) not in scan.completed
    # An epoch of another type is no epoch (epoch 1), read in full as well.
    with open(run / "results.jsonl", "ab") as f:
        f.write(b'{"sample_id":"s00005","epoch":"3","status":"ok","attempts":1,"correct":true}\n')
    scan = scan_ledger(run)
    assert (scan.completed, scan.correct, scan.errored) == _reference(run) and sid(5) in scan.completed


def test_the_resume_index_holds_units(tmp_path):
    run = tmp_path / "run"
    n = 1200
    with CheckpointManager(run) as m:
        m.append_records([_record(i, e) for i in range(n) for e in (1, 2, 3)], fsync=False)
    assert (run / "results.jsonl").stat().st_size > 1 << 20
    first = scan_ledger(run, own=run / "results.jsonl")
    assert first.own_indexed_end > 0 and list((run / ".cache" / "resume-v1").glob("*.idx"))
    second = scan_ledger(run)  # from the index
    assert second.completed == first.completed == {unit_key(sid(i), e) for i in range(n) for e in (1, 2, 3)}
    assert second.ok_records == 3 * n


# ------------------------------------------------------------------------------------ old run directories


def test_an_old_format_run_resumes_verifies_and_merges_unchanged(fake_server, tmp_path):
    """Results written before repeats (no ``epoch``, no ``seed``), a manifest without ``epochs``:
    a resume sends nothing, the tools read it as one epoch, and --epochs 2 sends only epoch 2."""
    n, seed = 10, 0
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    s = run_experiment(run_config(fake_server, data, out, run_id="old"))
    assert s.exit_code == 0
    results = s.run_dir / "results.jsonl"
    old = [{k: v for k, v in rec.items() if k not in ("epoch", "seed")} for rec in read_lines(results)[0]]
    results.write_text("".join(json.dumps(rec, separators=(",", ":")) + "\n" for rec in old))
    m = manifest(s.run_dir)
    m.pop("epochs", None)
    m["config"].pop("epochs", None)
    (s.run_dir / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(s.run_dir / ".cache", ignore_errors=True)
    (block,) = iter_blocks(results)
    assert block.fast and len(block.records) == n  # old lines still take the fast path
    fake_server.clear_requests()

    again = run_experiment(run_config(fake_server, data, out, run_id="old"))
    assert again.exit_code == 0 and again.skipped_completed == n and fake_server.request_count == 0
    assert verify_run(s.run_dir).exit_code == 0
    rep = merge_run(s.run_dir, tmp_path / "merged.jsonl")
    assert rep.exact and rep.written == n and rep.missing == [] and rep.expected == n
    st = run_status(s.run_dir)
    assert st.complete and (st.total, st.done, st.epochs) == (n, n, 1)
    assert read_lines(results)[0] == old  # nothing rewritten

    more = run_experiment(run_config(fake_server, data, out, run_id="old", epochs=2))
    assert more.exit_code == 0 and more.ok == n and more.skipped_completed == n
    assert wire_units(fake_server) == expected_wire([sid(i) for i in range(n)], seed, range(2, 3))
    assert manifest(s.run_dir)["epochs"] == 2


@pytest.mark.parametrize("epochs", [1, 2])
def test_the_error_log_names_the_epoch(fake_server, tmp_path, epochs):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 1)
    fake_server.fail_always(status=400)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", epochs=epochs))
    assert s.exit_code == 1 and s.errors == epochs
    log = (s.run_dir / "errors.log").read_text()
    assert ("sample s00000 epoch 2 (attempts" in log) == (epochs == 2) and "sample s00000 (attempts" in log


def test_a_manifest_recreated_beside_repeated_results_keeps_their_epochs(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    s = run_experiment(run_config(fake_server, data, out, epochs=3))
    assert s.exit_code == 0
    (s.run_dir / "manifest.json").unlink()
    before = fake_server.request_count
    again = run_experiment(run_config(fake_server, data, out))  # --epochs 1 now: the results say 3
    assert again.exit_code == 0 and fake_server.request_count == before
    assert manifest(s.run_dir)["epochs"] == 3 and verify_run(s.run_dir).exit_code == 0
