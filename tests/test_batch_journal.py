"""The batch journal (``batches<sfx>.jsonl``): what a ``--batch`` run submitted, read back after any stop."""

from __future__ import annotations

import json
from pathlib import Path

from evalledger.ledger import BatchJournal, JournalItem, batch_summary, read_journal
from evalledger.ledger.batches import ABANDONED, COLLECTED, OPEN
from evalledger.ledger.layout import RunPaths, batch_journal_files
from evalledger.records import unit_key


def items(n: int) -> list[JournalItem]:
    return [JournalItem(f"el-{i:04d}", f"s{i}", 1, f"k{i}") for i in range(n)]


def test_a_batch_goes_from_intent_to_collected_and_reads_back(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path)
    batch = journal.intend("openai", items(3), 0.25)
    journal.created(batch, "batch_abc")
    journal.state(batch, "in_progress", {"total": 3, "succeeded": 1, "failed": 0})
    journal.state(batch, "in_progress", {"total": 3, "succeeded": 1, "failed": 0})  # unchanged: not written
    journal.close()
    lines = (tmp_path / "batches.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["intent", "created", "state"]

    again = BatchJournal(tmp_path)
    [read] = again.open_batches()
    assert (read.intent, read.batch_id, read.api, read.worst_cost) == (batch.intent, "batch_abc", "openai", 0.25)
    assert read.items == items(3) and read.status == "in_progress" and read.counts["succeeded"] == 1
    again.collected(read)
    again.close()
    assert read_journal(tmp_path / "batches.jsonl")[batch.intent].phase == COLLECTED
    assert BatchJournal(tmp_path).open_batches() == []


def test_an_intent_without_an_id_stays_open_and_abandoned_closes_it(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path)
    batch = journal.intend("anthropic", items(2), None)
    journal.close()
    [read] = BatchJournal(tmp_path).open_batches()
    assert read.batch_id is None and read.phase == OPEN
    journal = BatchJournal(tmp_path)
    journal.abandoned(journal.batches[batch.intent], "not created")
    journal.close()
    assert read_journal(tmp_path / "batches.jsonl")[batch.intent].phase == ABANDONED


def test_a_torn_or_damaged_line_is_skipped_and_the_next_line_starts_fresh(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path)
    first = journal.intend("openai", items(1), None)
    journal.close()
    path = tmp_path / "batches.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"event": "created", "intent": "' + first.intent.encode() + b'", "batch_id": "batch_tor')  # torn by a kill
    journal = BatchJournal(tmp_path)
    assert journal.batches[first.intent].batch_id is None  # the torn line is never trusted
    journal.created(journal.batches[first.intent], "batch_real")
    journal.close()
    with open(path, "ab") as f:
        f.write(b"\x00\x00 not json\n[1, 2]\n")
    assert read_journal(path)[first.intent].batch_id == "batch_real"


def test_each_shard_has_its_own_journal_and_the_summary_counts_them(tmp_path: Path) -> None:
    for k in (1, 2):
        journal = BatchJournal(tmp_path, (k, 2))
        batch = journal.intend("openai", items(4), None)
        journal.created(batch, f"batch_{k}")
        journal.state(batch, "in_progress", {"total": 4, "succeeded": k, "failed": 0})
        if k == 2:
            journal.collected(batch)
        journal.close()
    assert batch_journal_files(tmp_path) == [RunPaths(tmp_path, (1, 2)).batches, RunPaths(tmp_path, (2, 2)).batches]
    summary = batch_summary(tmp_path)
    assert (summary["open"], summary["collected"], summary["abandoned"]) == (1, 1, 0)
    assert summary["line"] == "2 batches: 1 open, 1 collected (in_progress 1/4)"
    assert batch_summary(tmp_path / "nothing") == {}


def test_collect_completed_closes_only_batches_whose_units_all_have_records(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path)
    done = journal.intend("openai", items(2), None)
    half = journal.intend("openai", items(3), None)
    journal.intend("openai", items(1), None)  # never created
    journal.created(done, "batch_done")
    journal.created(half, "batch_half")
    completed = {unit_key(f"s{i}") for i in range(2)}  # s0, s1: all of `done`, two of `half`, and `unsent`'s s0
    journal.collect_completed(completed)
    journal.close()
    phases = {b.batch_id: b.phase for b in read_journal(tmp_path / "batches.jsonl").values()}
    assert phases == {"batch_done": COLLECTED, "batch_half": OPEN, None: OPEN}  # an intent without id: never
