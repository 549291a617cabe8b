"""The ledger on real files: appends, torn tails, failed writes, locks, resume state, group commit."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from evalledger.errors import LockHeldError
from evalledger.ledger import GroupCommitter, ReadReport, iter_file_records, latest_records, repair_torn_tail
from evalledger.readers import CheckpointManager


def rec(sid: str, status: str = "ok", **kw):
    return {"sample_id": sid, "status": status, "correct": kw.pop("correct", True), **kw}


def test_append_and_read_back(tmp_path):
    with CheckpointManager(tmp_path / "run") as m:
        m.append_records([rec("a"), rec("b", correct=False)])
        m.append_records([rec("c", "error", error={"type": "X", "message": "boom"})])
    lines = (tmp_path / "run" / "results.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 3 and all(line.endswith(b"\n") for line in lines)
    m = CheckpointManager(tmp_path / "run")
    assert m.completed_ids() == {"a", "b"}
    assert "boom" in (tmp_path / "run" / "errors.log").read_text()


def test_latest_view_last_ok_wins_and_ok_beats_error():
    view = latest_records([
        rec("a", "ok", v=1), rec("a", "error"),          # a later error does not hide an ok
        rec("b", "error", v=1), rec("b", "ok", v=2),     # an ok supersedes an error
        rec("c", "ok", v=1), rec("c", "ok", v=2),        # the last ok wins
        rec("d", "error", v=1), rec("d", "error", v=2),  # the latest error if no ok
    ])
    assert view["a"]["status"] == "ok" and view["a"]["v"] == 1
    assert view["b"]["v"] == 2 and view["c"]["v"] == 2 and view["d"]["v"] == 2


def test_reader_skips_garbage_and_partial_tail(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_bytes(b'{"sample_id":"a","status":"ok"}\nnot json\n[1,2]\n{"no_id":1}\n{"sample_id":"b","status":"ok"}\n{"sample_id":"c","sta')
    report = ReadReport()
    ids = [r["sample_id"] for r in iter_file_records(p, report)]
    assert ids == ["a", "b"]
    assert report.skipped_lines == 3 and report.partial_tail_bytes == len(b'{"sample_id":"c","sta')


@pytest.mark.parametrize("tail", [b"x", b'{"sample_id": "z"', b"\x00" * 70000, b"no newline at all " * 5000])
def test_repair_torn_tail_moves_exact_bytes_aside(tmp_path, tail):
    p = tmp_path / "results.jsonl"
    good = b"".join(json.dumps(rec(f"s{i}")).encode() + b"\n" for i in range(100))
    p.write_bytes(good + tail)
    aside = repair_torn_tail(p)
    assert aside is not None and aside.read_bytes() == tail
    assert p.read_bytes() == good
    assert repair_torn_tail(p) is None  # idempotent


def test_repair_file_that_is_all_tail(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_bytes(b'{"sample_id":')
    aside = repair_torn_tail(p)
    assert aside.read_bytes() == b'{"sample_id":' and p.read_bytes() == b""


def test_second_writer_is_refused_naming_pid_and_host(tmp_path):
    first = CheckpointManager(tmp_path / "run").open_writer()
    try:
        with pytest.raises(LockHeldError) as ei:
            CheckpointManager(tmp_path / "run").open_writer()
        msg = str(ei.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
        # a shard would overlap the unsharded writer
        with pytest.raises(LockHeldError, match="unsharded"):
            CheckpointManager(tmp_path / "run", shard=(1, 2)).open_writer()
    finally:
        first.close()
    CheckpointManager(tmp_path / "run").open_writer().close()  # free again


def test_lock_is_released_when_the_holder_dies(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys, time
        from evalledger import CheckpointManager
        held = CheckpointManager({str(tmp_path / 'run')!r}).open_writer()
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError, match=f"pid {child.pid}"):
            CheckpointManager(tmp_path / "run").open_writer()
        child.kill()
        child.wait()
        CheckpointManager(tmp_path / "run").open_writer().close()  # kill -9 released the lock
    finally:
        child.kill()


def test_failed_write_rolls_back_to_last_acknowledged_size(tmp_path):
    """A real failed write: RLIMIT_FSIZE makes the kernel refuse it part-way (EFBIG)."""
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import errno, resource, signal
        from evalledger import CheckpointManager
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        m = CheckpointManager({str(run)!r}).open_writer()
        m.append_records([{{"sample_id": "a", "status": "ok", "pad": "x" * 100}}])
        size = (m.results_path).stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 150, size + 150))
        try:
            m.append_records([{{"sample_id": "b", "status": "ok", "pad": "y" * 100}},
                              {{"sample_id": "c", "status": "ok", "pad": "z" * 100}}])
        except OSError as e:
            print("failed", errno.errorcode[e.errno], flush=True)
        print("size", m.results_path.stat().st_size, size, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "failed EFBIG" in out.stdout, out.stdout + out.stderr
    sizes = [line for line in out.stdout.splitlines() if line.startswith("size")][0].split()
    assert sizes[1] == sizes[2]  # cut back: no partial line of the failed batch remains
    data = (run / "results.jsonl").read_bytes()
    assert data.endswith(b"\n") and [json.loads(x)["sample_id"] for x in data.splitlines()] == ["a"]


def test_resume_state_roundtrip_and_checksum(tmp_path):
    with CheckpointManager(tmp_path / "run") as m:
        m.write_resume_state({"ok": 5}, "abc")
        state, problem = m.read_resume_state()
        assert problem is None and state["counters"] == {"ok": 5} and state["config_hash"] == "abc"
        m.state_path.write_text(m.state_path.read_text().replace('"ok": 5', '"ok": 6'))
        state, problem = m.read_resume_state()
        assert state is None and "checksum" in problem
        m.state_path.write_text("{trunc")
        assert "not valid JSON" in m.read_resume_state()[1]
        m.state_path.unlink()
        assert "missing" in m.read_resume_state()[1]
    assert not list((tmp_path / "run").glob(".resume_state*.tmp"))  # atomic writes leave no temp files


class _RecordingLedger(CheckpointManager):
    """A real ledger that also logs when each append finished, to check acknowledgement order."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.events: list[tuple[str, tuple[str, ...]]] = []
        self.written: list[str] = []

    def write_records(self, records):
        super().write_records(records)
        self.written.extend(r["sample_id"] for r in records)

    def sync(self, *, rollback=True):
        covered = tuple(self.written)  # everything written before the fsync starts
        super().sync(rollback=rollback)
        self.events.append(("fsynced", covered))


def test_group_commit_batches_and_acknowledges_only_after_fsync(tmp_path):
    ledger = _RecordingLedger(tmp_path / "run").open_writer()

    async def main():
        committer = GroupCommitter(ledger)
        committer.start()

        async def one(i):
            await committer.commit(rec(f"s{i}"))
            # at acknowledgement time the record must already be in an fsynced batch
            assert any(f"s{i}" in ids for _, ids in ledger.events)
            ledger.events.append(("acked", (f"s{i}",)))

        await asyncio.gather(*(one(i) for i in range(200)))
        await committer.close()
        return committer

    committer = asyncio.run(main())
    ledger.close()
    assert committer.committed == 200
    assert committer.batches < 200  # records that finished together shared a write + fsync
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["sample_id"] for x in lines) == sorted(f"s{i}" for i in range(200))


def test_a_lone_surrogate_in_a_response_is_written_not_fatal(tmp_path):
    with CheckpointManager(tmp_path / "run") as m:
        m.append_records([rec("a", response="half an emoji \ud83d here"), rec("b")])
    m = CheckpointManager(tmp_path / "run")
    assert m.completed_ids() == {"a", "b"}
    assert m.latest_records()["a"]["response"] == "half an emoji ? here"


class _SlowSyncLedger(CheckpointManager):
    """fsync takes ``delay`` seconds and can be told to fail once (EIO), like a sick disk."""

    def __init__(self, *a, delay: float = 0.2, fail_after: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.delay, self.fail_after, self.syncs = delay, fail_after, 0

    def sync(self, *, rollback=True):
        import errno
        import time

        time.sleep(self.delay)
        self.syncs += 1
        if self.fail_after is not None and self.syncs > self.fail_after:
            if rollback:
                self.rollback_unsynced()
            raise OSError(errno.EIO, "Input/output error (injected)")
        super().sync(rollback=rollback)


def test_workers_go_on_after_the_write_but_acknowledgement_waits_for_the_fsync(tmp_path):
    ledger = _SlowSyncLedger(tmp_path / "run", delay=0.3).open_writer()
    acked: list[str] = []

    async def main():
        committer = GroupCommitter(ledger, on_commit=lambda recs: acked.extend(r["sample_id"] for r in recs))
        committer.start()
        h = committer.submit(rec("a"))
        await h.written
        # written (a kill can no longer lose it) but not yet fsynced: not acknowledged
        assert b'"a"' in (tmp_path / "run" / "results.jsonl").read_bytes()
        assert not h.synced.done() and acked == [] and committer.committed == 0
        await h.synced
        assert acked == ["a"] and committer.committed == 1
        await committer.close()

    asyncio.run(main())
    ledger.close()


def test_a_failed_fsync_cuts_the_unsynced_lines_and_fails_their_records(tmp_path):
    ledger = _SlowSyncLedger(tmp_path / "run", delay=0.05, fail_after=1).open_writer()
    acked: list[str] = []

    async def main():
        committer = GroupCommitter(ledger, on_commit=lambda recs: acked.extend(r["sample_id"] for r in recs))
        committer.start()
        await committer.commit(rec("first"))  # fsync 1 succeeds
        handed = [committer.submit(rec(f"s{i}")) for i in range(5)]
        outcomes = await asyncio.gather(*(h.synced for h in handed), return_exceptions=True)
        assert all(isinstance(o, OSError) for o in outcomes), outcomes
        with pytest.raises(OSError):
            committer.submit(rec("late"))  # nothing more is taken after a failure
        await committer.close()
        return committer

    committer = asyncio.run(main())
    ledger.close()
    assert acked == ["first"] and committer.committed == 1 and isinstance(committer.failure, OSError)
    lines = (tmp_path / "run" / "results.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["sample_id"] for x in lines] == ["first"]  # no unacknowledged line is left


def test_backpressure_when_fsyncs_fall_behind(tmp_path):
    ledger = _SlowSyncLedger(tmp_path / "run", delay=0.2).open_writer()

    async def main():
        committer = GroupCommitter(ledger, max_unsynced=3)
        committer.start()
        for i in range(3):
            await committer.submit(rec(f"s{i}")).written
        assert committer.unsynced == 3
        waiter = asyncio.create_task(committer.room())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # three records wait for their fsync: the next worker waits too
        await asyncio.wait_for(waiter, 2)
        assert committer.unsynced < 3
        await committer.close()
        assert committer.committed == 3

    asyncio.run(main())
    ledger.close()
