"""The ledger: one run directory, append-only JSONL results, locks (:mod:`evalledger.ledger.locks`), resume state.

Durability rules (nothing acknowledged is lost; never pay twice for a completed sample):

* A record is one JSON object on one line, written with a single ``write`` of whole lines and
  fsynced before :meth:`RunLedger.append_records` returns; only then does a sample count as
  done. Several records may share one write and one fsync (group commit).
* If a write fails half-way, the file is truncated back to its last acknowledged size, so earlier
  records stay intact and the partial line is never read as data.
* If the process dies mid-write, the next writer moves the torn tail aside to
  ``results….jsonl.corrupt-<timestamp>`` (never deleting it) before appending. Complete lines
  that are not records (garbage, a block of NULs left by a power loss) are moved aside the same
  way, with a crash-safe rewrite (:func:`move_garbage_lines_aside`). Both checks look only at the
  bytes that no valid resume index covers (:func:`check_results_file`).
* A resume state that cannot be trusted (truncated, not JSON, bad checksum, a newer version) is
  copied aside and rebuilt from the results; an unreadable manifest stops the writer before it
  touches anything.
* Readers never take the lock; they ignore a last line without its newline (it may be being
  written right now) and skip lines that do not parse (:mod:`evalledger.ledger.files`).

The ledger knows nothing about models or tasks: records are plain dicts.
"""

from __future__ import annotations

import contextlib
import json
import os
from itertools import compress, repeat
from operator import eq
from pathlib import Path
from typing import Any, Iterator

from evalledger.errors import LedgerCorruptError
from evalledger.fsio import file_timestamp, fsync_dir, hostname, leftover_temps, paused_gc, utc_now, write_json_atomic
from evalledger.ledger.files import ReadReport, iter_file_records, iter_run_records, latest_records
from evalledger.ledger.layout import RunPaths, calls_files, corrupt_aside, results_files, stale_clean_copies
from evalledger.ledger.lines import iter_blocks, lead_first
from evalledger.ledger.locks import WriterLocks
from evalledger.ledger.repair import check_results_file, repair_torn_tail
from evalledger.ledger.state import build_resume_state, restore_random_state, resume_state_problem
from evalledger.records import epoch_of, unit_key


class RunLedger:
    """One run directory: the writer side (with the lock) and the reader side (without).

    ``RunLedger(run_dir)`` alone is a reader (the public :class:`evalledger.CheckpointManager` is
    this class plus ``get_stats``). :meth:`open_writer` takes the lock for
    this run (or shard), repairs a torn tail and opens the results file for appending; use it as a
    context manager or call :meth:`close`.
    """

    def __init__(self, run_dir: str | Path, shard: tuple[int, int] | None = None, *, worker: int | None = None,
                 under_parent: bool = False, appends: bool = True) -> None:
        """``worker``: the files of worker process W of a ``--workers`` run; ``under_parent``: this
        process is that worker, and its parent holds the run's lock (:class:`WriterLocks`).
        ``appends`` False: :meth:`open_writer` takes the locks and repairs, but opens (and creates)
        no results file: the parent of worker processes, which writes none."""
        self.appends = appends
        self.run_dir = Path(run_dir)
        self.shard = shard
        self.worker = worker
        self.paths = RunPaths(self.run_dir, shard, worker)
        self.results_path = self.paths.results
        # The turn cache of multi-turn tasks (see run/calls.py): one line per paid model call.
        self.calls_path = self.paths.calls
        self._calls_fd: int | None = None
        self.state_path = self.paths.resume_state
        self.errors_path = self.paths.errors
        self.lock_path = self.paths.lock
        self.owner_path = self.paths.owner
        self.manifest_path = self.paths.manifest
        self.run_lock_path = self.paths.run_lock
        self._locks = WriterLocks(self.paths, under_parent=under_parent)
        self._fd: int | None = None
        self._size = 0
        self._synced_size = 0  # bytes of results.jsonl known to be on disk (fsynced)
        self.repaired_tail: Path | None = None
        # What open_writer repaired besides a torn tail, one readable line each, for the runner
        # to print as warnings: garbage lines moved aside, an untrusted resume state kept aside.
        self.repair_warnings: list[str] = []
        self.moved_lines: Path | None = None  # where open_writer put garbage lines, if any
        self.state_aside: Path | None = None  # where open_writer kept an untrusted resume state

    # ----------------------------------------------------------------- lock + writer
    def open_writer(self) -> "RunLedger":
        """Take the lock (at once or :class:`LockHeldError`), repair a torn tail, open for append."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._locks.acquire()
        try:
            # A manifest that cannot be read means we cannot tell which experiment this directory
            # holds: refuse before anything in it is touched (no repair, no new files).
            try:
                self.read_manifest()
            except LedgerCorruptError as e:
                raise LedgerCorruptError(
                    f"{e.message}. Nothing was changed. Restore the file, move the run directory aside, "
                    "or pass --overwrite to move it aside and start afresh."
                ) from None
            owner = {"pid": os.getpid(), "host": hostname(), "since": utc_now(), "shard": self.shard,
                     **({} if self.worker is None else {"worker": self.worker})}
            write_json_atomic(self.owner_path, owner)
            # Temp files of atomic writes cut short by a crash; we hold the lock, so none is live.
            for stale in leftover_temps(self.state_path):
                stale.unlink(missing_ok=True)
            self._repair_results()
            self._keep_untrusted_state()
            if not self.appends:
                self._size = self.results_path.stat().st_size if self.results_path.exists() else 0
                self._synced_size = self._size
                fsync_dir(self.run_dir)
                return self
            self._fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            self._synced_size = self._size  # what is there was either fsynced or is what a crash left
            fsync_dir(self.run_dir)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def run_lock_fd(self) -> int | None:
        """The descriptor holding ``.lock.run`` while this writer is open (what a worker process inherits)."""
        return self._locks.run_lock_fd

    @contextlib.contextmanager
    def repair_lock(self) -> Iterator[None]:
        """Hold this run's (or shard's) locks as a writer does, opening nothing else: for
        ``verify --repair``, which must repair only what no writer is appending to.
        :class:`LockHeldError` if a writer holds them."""
        self._locks.acquire()
        try:
            yield
        finally:
            self._locks.release()

    def _repair_results(self) -> None:
        """Move a torn tail and complete lines that are not records out of this writer's results
        file, in the bytes no valid resume index covers (:func:`check_results_file`), and note a
        warning naming the garbage lines."""
        # A cleaned copy that a killed writer never renamed holds a subset of the results file's
        # lines (the original is only replaced by the rename), so dropping it loses nothing. We
        # hold the lock: no live writer of this file can own one.
        for stale in stale_clean_copies(self.results_path):
            stale.unlink(missing_ok=True)
        check = check_results_file(self.results_path)
        self.repaired_tail = check.torn_tail
        aside, numbers = check.garbage_aside, check.garbage_lines
        if aside is not None:
            self.moved_lines = aside
            shown = ", ".join(map(str, numbers[:10])) + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")
            self.repair_warnings.append(
                f"{self.results_path.name}: {len(numbers)} line(s) that are not records (line{'s' if len(numbers) > 1 else ''} "
                f"{shown}) were moved to {aside.name}; every other line is kept. Samples whose only record "
                "was on those lines will be sent again."
            )

    def _keep_untrusted_state(self) -> None:
        """Copy a resume state that cannot be trusted aside before the run overwrites it."""
        state, problem = self.read_resume_state()
        if state is not None or not self.state_path.exists():
            return
        kind = "newer" if problem and "newer" in problem else "corrupt"
        aside = corrupt_aside(self.state_path, file_timestamp(), kind)
        try:
            data = self.state_path.read_bytes()
            with open(aside, "xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            fsync_dir(self.run_dir)
        except OSError:
            return  # a directory or an unreadable file: read_resume_state reports it, the run rebuilds
        self.state_aside = aside

    @property
    def is_writer(self) -> bool:
        return self._fd is not None

    @property
    def results_size(self) -> int:
        """The size of this writer's results file as it knows it: whole, acknowledged lines only
        (its size when :meth:`open_writer` repaired and opened it, plus every append since)."""
        return self._size

    def append_records(self, records: list[dict[str, Any]], *, fsync: bool = True) -> None:
        """Append records as whole lines with one write, then fsync (group commit).

        On any failure the file is truncated back to its size before this call, so no partial
        line remains and nothing of this batch is acknowledged; the error propagates.
        """
        self.write_records(records)
        if fsync:
            self.sync()
        else:
            self._synced_size = self._size  # the caller chose not to sync: nothing to roll back to

    def write_records(self, records: list[dict[str, Any]]) -> None:
        """Append records as whole lines with one ``write`` (no fsync; see :meth:`sync`).

        Written lines survive the process being killed (the kernel has them), not a power loss,
        until :meth:`sync`. On a failed write the file is truncated back to its size before this
        call (no partial line) and the error propagates.
        """
        if self._fd is None:
            raise RuntimeError("RunLedger.write_records needs open_writer() first")
        if not records:
            return
        data = encode_lines(records)
        start = self._size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except BaseException:
            self._truncate_to(start)
            raise
        self._size = start + len(data)
        errors = [r for r in records if r.get("status") == "error"]
        if errors:
            self._append_error_log(errors)

    def sync(self, *, rollback: bool = True) -> None:
        """fsync everything written so far. On failure (with ``rollback``) every line written since
        the last successful sync is truncated away, since none of it may be acknowledged, and the
        error propagates. The group committer fsyncs while it writes the next batch, so it passes
        ``rollback=False`` and calls :meth:`rollback_unsynced` itself once no write is running."""
        if self._fd is None:
            raise RuntimeError("RunLedger.sync needs open_writer() first")
        size = self._size  # everything written before the fsync starts is covered by it
        try:
            os.fsync(self._fd)
        except BaseException:
            if rollback:
                self.rollback_unsynced()
            raise
        self._synced_size = max(self._synced_size, size)

    def rollback_unsynced(self) -> None:
        """Truncate the results file back to the end of its last successful sync."""
        self._truncate_to(self._synced_size)

    def _truncate_to(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)  # type: ignore[arg-type]
            os.fsync(self._fd)  # type: ignore[arg-type]
        except OSError:
            pass  # the torn tail is then repaired on the next open
        self._size = size

    def append_calls(self, records: list[dict[str, Any]]) -> None:
        """Append model-call records to the turn cache: whole lines, one write, fsync."""
        if not self._locks.held:
            raise RuntimeError("RunLedger.append_calls needs open_writer() first")
        if self._calls_fd is None:
            repair_torn_tail(self.calls_path)  # a crash mid-append leaves at most one partial line
            self._calls_fd = os.open(self.calls_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = encode_lines(records)
        view = memoryview(data)
        while view:
            view = view[os.write(self._calls_fd, view):]
        os.fsync(self._calls_fd)

    def cached_calls(self, units: set[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Turn cache for the given units of work: unit key (:func:`evalledger.records.unit_key`;
        a call record without ``epoch`` is epoch 1's) → call key → the call record (latest wins).
        Two epochs of a sample never share a call."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for path in calls_files(self.run_dir):
            for rec in iter_file_records(path):
                key = unit_key(rec["sample_id"], epoch_of(rec))
                if key in units and "call_key" in rec and "response" in rec:
                    out.setdefault(key, {})[rec["call_key"]] = rec
        return out

    def _append_error_log(self, records: list[dict[str, Any]]) -> None:
        # Human-readable only; the JSONL is the source of truth, so no fsync here.
        blocks = []
        for r in records:
            err = r.get("error") or {}
            epoch = f" epoch {r['epoch']}" if epoch_of(r) > 1 else ""
            blocks.append(
                f"[{r.get('finished_at')}] sample {r.get('sample_id')}{epoch} (attempts {r.get('attempts')})\n"
                f"  {err.get('type')}: {err.get('message')}\n"
                f"  status_code={err.get('status_code')} retryable={err.get('retryable')}\n\n"
            )
        with open(self.errors_path, "a", encoding="utf-8") as f:
            f.write("".join(blocks))

    def close(self) -> None:
        """Close the results file and release the lock (idempotent)."""
        if self._calls_fd is not None:
            os.close(self._calls_fd)
            self._calls_fd = None
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        self._locks.release(forget_owner=True)

    def __enter__(self) -> "RunLedger":
        if not self.is_writer:
            self.open_writer()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None if the run has none yet.

        Raises :class:`LedgerCorruptError` (exit 2) naming the file if it is not a JSON object.
        """
        try:
            data = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:  # e.g. a directory named manifest.json
            raise LedgerCorruptError(
                f"{self.manifest_path}: cannot be read ({e.strerror or e}); cannot tell which experiment this run "
                "directory holds"
            ) from None
        try:
            manifest = json.loads(data)  # bytes: invalid UTF-8 is a ValueError too, not a crash
        except ValueError as e:
            raise LedgerCorruptError(
                f"{self.manifest_path}: not valid JSON ({e}); cannot tell which experiment this run directory holds"
            ) from None
        if not isinstance(manifest, dict):
            raise LedgerCorruptError(
                f"{self.manifest_path}: not a JSON object; cannot tell which experiment this run directory holds"
            )
        return manifest

    # ----------------------------------------------------------------- resume state
    def write_resume_state(self, counters: dict[str, Any], config_hash: str) -> None:
        """Atomically write RNG states, counters and a checksum of the state itself."""
        write_json_atomic(self.state_path, build_resume_state(self.run_dir.name, self.shard, config_hash, counters))

    def read_resume_state(self) -> tuple[dict[str, Any] | None, str | None]:
        """``(state, None)`` if valid; ``(None, problem)`` if missing, corrupt or untrusted.

        Never raises for what is in the file: the results file is the source of truth, so any
        doubt about the state (truncated, not JSON, bad checksum, a newer format, a malformed
        field) makes the caller rebuild it from the results instead of failing the run. If
        :meth:`open_writer` kept a copy of the bad file, the problem names it.
        """
        problem = resume_state_problem(self.state_path)
        if isinstance(problem, dict):
            return problem, None
        if self.state_aside is not None:
            problem += f"; the old file is kept as {self.state_aside.name}"
        return None, problem

    def restore_random_state(self, state: dict[str, Any]) -> None:
        """Restore Python's (and numpy's, if recorded) global RNG from a resume state."""
        restore_random_state(state)


    # ----------------------------------------------------------------- reading
    def iter_records(self, report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
        """Every parseable record of the run, all shards, file by file."""
        return iter_run_records(self.run_dir, report)

    def completed_ids(self, report: ReadReport | None = None) -> set[str]:
        """Sample IDs with an ``ok`` record (of any epoch) in any results file of the run.

        Streams each file once, a block of lines at a time (see :mod:`evalledger.ledger.lines`);
        ``report`` counts lines as :func:`iter_file_records` does.
        """
        report = report if report is not None else ReadReport()
        done: set[str] = set()
        with paused_gc():  # a block of parsed records at a time, none in a cycle
            for path in results_files(self.run_dir):
                tail: list[int] = []
                for block in iter_blocks(path, tail):
                    report.lines += block.lines
                    report.skipped_lines += len(block.garbage)
                    lead = block.lead()
                    done.update(compress(lead["sample_id"], map(eq, lead["status"], repeat("ok"))))
                report.partial_tail_bytes += sum(tail)
        return done

    def latest_records(self) -> dict[str, dict[str, Any]]:
        """The merged view: per unit (sample, epoch) the latest ok record, else the latest error."""
        return latest_records(self.iter_records())


def manifest_epochs(manifest: dict[str, Any] | None) -> int:
    """How many epochs a run holds, from its manifest: its ``epochs`` (the largest ``--epochs``
    ever asked) when that is an int >= 1, else 1 (every run made before repeats). The run's
    total is its ``sample_count`` × this many units of work."""
    epochs = (manifest or {}).get("epochs")
    return epochs if type(epochs) is int and epochs >= 1 else 1


def encode_lines(records: list[dict[str, Any]]) -> bytes:
    """Records as newline-terminated JSON lines in UTF-8.

    A lone surrogate (a model reply can carry one, e.g. half an emoji decoded from "\\ud83d") cannot
    be encoded as UTF-8; it becomes "?" rather than failing the write, which the runner would have to
    treat like a full disk. Readers reject lines holding a lone-surrogate escape, so escaping it
    instead would make the record unreadable.
    """
    # records.LEAD_KEYS first: resume reads them from the start of the line without parsing the
    # whole record (see evalledger.ledger.lines).
    text = "".join(json.dumps(lead_first(r), ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")
