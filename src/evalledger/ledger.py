"""The ledger: one run directory, append-only JSONL results, lock, resume state, stats.

Durability rules (DESIGN promises 1 and 3):

* A record is one JSON object on one line, written with a single ``write`` of whole lines and
  fsynced before :meth:`CheckpointManager.append_records` returns; only then does a sample count as
  done. Several records may share one write and one fsync (group commit).
* If a write fails half-way, the file is truncated back to its last acknowledged size, so earlier
  records stay intact and the partial line is never read as data.
* If the process dies mid-write, the next writer moves the torn tail aside to
  ``results….jsonl.corrupt-<timestamp>`` (never deleting it) before appending.
* Readers never take the lock; they ignore a last line without its newline (it may be being
  written right now) and skip lines that do not parse.

The ledger knows nothing about models or tasks: records are plain dicts.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import filelock

from .errors import LedgerCorruptError, LockHeldError
from .fsutil import (
    canonical_json,
    file_timestamp,
    fsync_dir,
    hostname,
    utc_now,
    write_json_atomic,
)

MANIFEST = "manifest.json"
RESULTS_GLOB = "results*.jsonl"
_RESULTS_RE = re.compile(r"^results(?:\.shard-(\d+)-of-(\d+))?\.jsonl$")
STATE_VERSION = 1


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """``""`` for an unsharded run, ``.shard-K-of-N`` for shard K/N."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


def results_files(run_dir: Path) -> list[Path]:
    """Every results file of a run (all shards), in a stable order."""
    return sorted(p for p in Path(run_dir).glob(RESULTS_GLOB) if _RESULTS_RE.match(p.name))


def shard_of_file(path: Path) -> tuple[int, int] | None:
    m = _RESULTS_RE.match(path.name)
    if not m or m.group(1) is None:
        return None
    return int(m.group(1)), int(m.group(2))


@dataclass
class ReadReport:
    """What a streaming read saw besides records."""

    lines: int = 0
    skipped_lines: int = 0  # complete lines that are not valid JSON objects
    partial_tail_bytes: int = 0  # bytes after the last newline (a write in progress or torn)


def iter_file_records(path: Path, report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
    """Yield each complete, parseable record line of one results file, streaming."""
    report = report if report is not None else ReadReport()
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                # The last line without its newline: a concurrent append or a torn tail.
                report.partial_tail_bytes += len(raw)
                break
            report.lines += 1
            try:
                rec = json.loads(raw)
            except ValueError:
                report.skipped_lines += 1
                continue
            if not isinstance(rec, dict) or "sample_id" not in rec:
                report.skipped_lines += 1
                continue
            yield rec


def iter_run_records(run_dir: Path, report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
    """Yield records from every results file of the run (all shards)."""
    for path in results_files(run_dir):
        yield from iter_file_records(path, report)


def latest_records(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per sample: the latest ``ok`` record, or the latest error record if it has no ``ok``.

    The merged ledger view (DESIGN promise 3): each sample at most once, the last ``ok`` wins.
    """
    view: dict[str, dict[str, Any]] = {}
    for rec in records:
        sid = rec["sample_id"]
        cur = view.get(sid)
        if cur is None or rec.get("status") == "ok" or cur.get("status") != "ok":
            view[sid] = rec
    return view


class CheckpointManager:
    """One run directory: the writer side (with the lock) and the reader side (without).

    ``CheckpointManager(run_dir)`` alone is a reader. :meth:`open_writer` takes the lock for
    this run (or shard), repairs a torn tail and opens the results file for appending; use it as a
    context manager or call :meth:`close`.
    """

    def __init__(self, run_dir: str | Path, shard: tuple[int, int] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.shard = shard
        sfx = shard_suffix(shard)
        self.results_path = self.run_dir / f"results{sfx}.jsonl"
        self.state_path = self.run_dir / f"resume_state{sfx}.json"
        # Per shard, so shards on different machines never contend for one file.
        self.errors_path = self.run_dir / (f"errors{sfx}.log")
        self.lock_path = self.run_dir / f".lock{sfx}"
        self.owner_path = self.run_dir / f".lock{sfx}.owner"
        self.manifest_path = self.run_dir / MANIFEST
        # Shared by shard writers, exclusive for an unsharded writer: the two would overlap.
        self.run_lock_path = self.run_dir / ".lock.run"
        self._run_lock_fd: int | None = None
        self._lock: filelock.BaseFileLock | None = None
        self._fd: int | None = None
        self._size = 0
        self.repaired_tail: Path | None = None

    # ----------------------------------------------------------------- lock + writer
    def open_writer(self) -> "CheckpointManager":
        """Take the lock (at once or :class:`LockHeldError`), repair a torn tail, open for append."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockHeldError(self._lock_held_message()) from None
        try:
            self._take_run_lock()
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        try:
            owner = {"pid": os.getpid(), "host": hostname(), "since": utc_now(), "shard": self.shard}
            write_json_atomic(self.owner_path, owner)
            self.repaired_tail = repair_torn_tail(self.results_path)
            self._fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            fsync_dir(self.run_dir)
        except BaseException:
            self.close()
            raise
        return self

    def _take_run_lock(self) -> None:
        fd = os.open(self.run_lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self.shard is not None else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if self.shard is not None:
                who = _describe_owner(self.run_dir / ".lock.owner")
                raise LockHeldError(
                    f"an unsharded run is writing {self.run_dir} right now ({who}); a shard would pay again "
                    "for the samples it is sending. Wait for it to finish or stop it."
                ) from None
            owners = [_describe_owner(p) for p in sorted(self.run_dir.glob(".lock.shard-*.owner"))]
            raise LockHeldError(
                f"shards of this run are being written right now ({'; '.join(owners) or 'another process'}): "
                f"{self.run_dir}. An unsharded run would pay again for their samples; wait for them or stop them."
            ) from None
        self._run_lock_fd = fd

    def _release_run_lock(self) -> None:
        if self._run_lock_fd is not None:
            os.close(self._run_lock_fd)  # closing the descriptor drops the flock
            self._run_lock_fd = None

    def _lock_held_message(self) -> str:
        who = _describe_owner(self.owner_path)
        what = "this run" if self.shard is None else f"shard {self.shard[0]}/{self.shard[1]} of this run"
        return (
            f"{what} is already being written by {who}: {self.run_dir}\n"
            "Wait for it to finish or stop it; two writers would pay twice for the same samples."
        )

    @property
    def is_writer(self) -> bool:
        return self._fd is not None

    def append_records(self, records: list[dict[str, Any]], *, fsync: bool = True) -> None:
        """Append records as whole lines with one write, then fsync (group commit).

        On any failure the file is truncated back to its size before this call, so no partial
        line remains and nothing of this batch is acknowledged; the error propagates.
        """
        if self._fd is None:
            raise RuntimeError("CheckpointManager.append_records needs open_writer() first")
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()
        start = self._size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if fsync:
                os.fsync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            except OSError:
                pass  # the torn tail is then repaired on the next open
            raise
        self._size = start + len(data)
        errors = [r for r in records if r.get("status") == "error"]
        if errors:
            self._append_error_log(errors)

    def _append_error_log(self, records: list[dict[str, Any]]) -> None:
        # Human-readable only; the JSONL is the source of truth, so no fsync here.
        blocks = []
        for r in records:
            err = r.get("error") or {}
            blocks.append(
                f"[{r.get('finished_at')}] sample {r.get('sample_id')} (attempts {r.get('attempts')})\n"
                f"  {err.get('type')}: {err.get('message')}\n"
                f"  status_code={err.get('status_code')} retryable={err.get('retryable')}\n\n"
            )
        with open(self.errors_path, "a", encoding="utf-8") as f:
            f.write("".join(blocks))

    def close(self) -> None:
        """Close the results file and release the lock (idempotent)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            try:
                self.owner_path.unlink()
            except FileNotFoundError:
                pass
            self._lock.release()
            self._lock = None
        self._release_run_lock()

    def __enter__(self) -> "CheckpointManager":
        if not self.is_writer:
            self.open_writer()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None if the run has none yet."""
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except ValueError as e:
            raise LedgerCorruptError(f"{self.manifest_path}: not valid JSON ({e}); the run cannot be identified") from None

    # ----------------------------------------------------------------- resume state
    def write_resume_state(self, counters: dict[str, Any], config_hash: str) -> None:
        """Atomically write RNG states, counters and a checksum of the state itself."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "run_id": self.run_dir.name,
            "shard": list(self.shard) if self.shard else None,
            "config_hash": config_hash,
            "counters": counters,
            "python_random_state": _encode_random_state(random.getstate()),
            "last_checkpoint": utc_now(),
        }
        np_state = _numpy_state()
        if np_state is not None:
            state["numpy_random_state"] = np_state
        state["sha256"] = _state_checksum(state)
        write_json_atomic(self.state_path, state)

    def read_resume_state(self) -> tuple[dict[str, Any] | None, str | None]:
        """``(state, None)`` if valid; ``(None, problem)`` if missing or corrupt."""
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, f"{self.state_path.name} is missing"
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return None, f"{self.state_path.name} is not valid JSON ({e})"
        if state.get("sha256") != _state_checksum(state):
            return None, f"{self.state_path.name} fails its checksum"
        return state, None

    def restore_random_state(self, state: dict[str, Any]) -> None:
        """Restore Python's (and numpy's, if recorded) global RNG from a resume state."""
        random.setstate(_decode_random_state(state["python_random_state"]))
        if "numpy_random_state" in state:
            _set_numpy_state(state["numpy_random_state"])

    # ----------------------------------------------------------------- reading
    def iter_records(self, report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
        """Every parseable record of the run, all shards, file by file."""
        return iter_run_records(self.run_dir, report)

    def completed_ids(self, report: ReadReport | None = None) -> set[str]:
        """Sample IDs with an ``ok`` record in any results file of the run."""
        done: set[str] = set()
        for rec in self.iter_records(report):
            if rec.get("status") == "ok":
                done.add(rec["sample_id"])
        return done

    def latest_records(self) -> dict[str, dict[str, Any]]:
        """The merged view: per sample the latest ok record, else the latest error."""
        return latest_records(self.iter_records())

    def get_stats(self) -> dict[str, Any]:
        """Counts, accuracy, tokens and cost over every shard file of the run.

        Errors are counted apart from wrong answers: accuracy is over ``ok`` records only.
        Tokens and cost sum over *all* records (every record stands for paid requests).
        """
        report = ReadReport()
        view: dict[str, dict[str, Any]] = {}
        input_tokens = output_tokens = 0
        cost = 0.0
        cost_known = True
        last_finished: str | None = None
        per_file: dict[str, dict[str, int]] = {}
        for path in results_files(self.run_dir):
            file_ok: set[str] = set()
            for rec in iter_file_records(path, report):
                usage = rec.get("usage") or {}
                input_tokens += int(usage.get("input_tokens") or 0)
                output_tokens += int(usage.get("output_tokens") or 0)
                if rec.get("cost_usd") is None:
                    cost_known = cost_known and not usage  # a paid record without a price
                else:
                    cost += float(rec["cost_usd"])
                fin = rec.get("finished_at")
                if fin and (last_finished is None or fin > last_finished):
                    last_finished = fin
                if rec.get("status") == "ok":
                    file_ok.add(rec["sample_id"])
                sid = rec["sample_id"]
                cur = view.get(sid)
                if cur is None or rec.get("status") == "ok" or cur.get("status") != "ok":
                    view[sid] = rec
            per_file[path.name] = {"completed": len(file_ok)}
        ok = [r for r in view.values() if r.get("status") == "ok"]
        errors = [r for r in view.values() if r.get("status") != "ok"]
        correct = sum(1 for r in ok if r.get("correct") is True)
        manifest = self.read_manifest() or {}
        total = manifest.get("sample_count")
        completed = len(ok)
        state_times = []
        for p in self.run_dir.glob("resume_state*.json"):
            try:
                state_times.append(json.loads(p.read_text()).get("last_checkpoint"))
            except (OSError, ValueError):
                pass
        checkpoints = [t for t in [*state_times, last_finished] if t]
        return {
            "run_id": self.run_dir.name,
            "run_dir": str(self.run_dir),
            "total_samples": total,
            "completed_samples": completed,
            "error_count": len(errors),
            "pending_samples": None if total is None else max(total - completed, 0),
            "correct_count": correct,
            "accuracy": (correct / completed) if completed else None,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost if cost_known else None,
            "last_checkpoint": max(checkpoints) if checkpoints else None,
            "records_read": report.lines,
            "unparseable_lines": report.skipped_lines,
            "partial_tail_bytes": report.partial_tail_bytes,
            "files": per_file,
            "model": manifest.get("config", {}).get("model"),
            "task": manifest.get("task"),
            "dataset": manifest.get("dataset", {}).get("name"),
        }


def _describe_owner(owner_path: Path) -> str:
    """``pid P on host H (since T)`` from a lock's owner file, for messages."""
    try:
        owner = json.loads(owner_path.read_text())
        return f"pid {owner.get('pid')} on host {owner.get('host')} (since {owner.get('since')})"
    except (OSError, ValueError):
        return "another process"


def repair_torn_tail(path: Path) -> Path | None:
    """Move bytes after the last newline to ``<path>.corrupt-<timestamp>``; truncate. Returns the aside file.

    The aside copy is fsynced before the truncate, so a crash during repair loses nothing (at
    worst the next open makes a second copy of the same bytes).
    """
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return None
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        cut = _last_newline_end(f, size)
        if cut == size:
            return None
        f.seek(cut)
        tail = f.read()
        aside = path.with_name(f"{path.name}.corrupt-{file_timestamp()}")
        with open(aside, "xb") as out:
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
        fsync_dir(path.parent)
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return aside


def _last_newline_end(f: Any, size: int, chunk: int = 1 << 16) -> int:
    """Offset just after the last b'\\n' in the file (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        block = f.read(pos - start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def move_run_aside(run_dir: Path) -> Path:
    """Rename a run directory to ``<run_id>.old-<timestamp>`` (for ``--overwrite``).

    Refuses while any process holds a lock on the run or one of its shards.
    """
    run_dir = Path(run_dir)
    held = []
    for lock_path in run_dir.glob(".lock*"):
        if lock_path.name.endswith(".owner"):
            continue
        probe = filelock.FileLock(str(lock_path), timeout=0)
        try:
            probe.acquire()
        except filelock.Timeout:
            held.append(lock_path.name)
        else:
            probe.release()
    if held:
        raise LockHeldError(
            f"cannot --overwrite {run_dir}: a process is writing it right now ({', '.join(held)} held); stop it first"
        )
    aside = run_dir.with_name(f"{run_dir.name}.old-{file_timestamp()}")
    os.rename(run_dir, aside)
    fsync_dir(run_dir.parent)
    return aside


def _state_checksum(state: dict[str, Any]) -> str:
    import hashlib

    body = {k: v for k, v in state.items() if k != "sha256"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _encode_random_state(st: tuple) -> list:
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _decode_random_state(obj: list) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)


def _numpy_state() -> dict[str, Any] | None:
    import sys

    np = sys.modules.get("numpy")  # only if the user's task imported it; never import it ourselves
    if np is None:
        return None
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(obj: dict[str, Any]) -> None:
    import numpy as np

    np.random.set_state((obj["name"], np.array(obj["keys"], dtype=np.uint32), obj["pos"], obj["has_gauss"], obj["cached_gaussian"]))
