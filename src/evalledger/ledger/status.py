"""Run status markers: ``status.json`` (or ``status.shard-K-of-N.json``) in the run directory.

A writer records what it is doing, atomically, while it holds the run's (or shard's) lock:

* ``running``: pid, host, started_at, shard; written right after the lock is taken.
* ``complete``: every sample of the selection has an ok record. Written only after the last
  record's fsync, with counts and the sha256 (plus size and mtime) of each results file, so a
  later edit of a file can be told apart.
* ``incomplete``: the run ended on its own but some samples ended with errors (exit 1).
* ``interrupted``: stopped before the end, with the ``reason`` (``signal``, ``budget``,
  ``outage``, ``disk``, ``fatal``, ``error``) and the exit code.

Readers never trust ``running`` alone: a marker that says ``running`` while no process holds the
lock is shown as ``interrupted (process gone)`` (a kill -9, an OOM kill, a node that died), and the
next ``run`` of that run or shard corrects it.

A full disk must not leave a stale ``running`` behind either. So next to the marker the writer
keeps a pre-allocated reserve file (``.status.json.reserve``): the final status is written over
the reserve's existing bytes (no new blocks needed), truncated, fsynced and renamed over the marker.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalledger.errors import DiskSpaceError, EvalLedgerError
from evalledger.fsio import fsync_dir, hostname, sha256_file, utc_now, write_bytes_atomic
from evalledger.ledger.layout import RunPaths, lock_name, shard_of_status, status_files
from evalledger.ledger.probe import lock_status

log = logging.getLogger(__name__)

STATUS_VERSION = 1
RUNNING, COMPLETE, INCOMPLETE, INTERRUPTED = "running", "complete", "incomplete", "interrupted"
#: What readers show for a ``running`` marker whose writer no longer holds the lock.
PROCESS_GONE = "interrupted (process gone)"
#: A run (or shard) with no marker at all: made before markers existed, or never started.
UNKNOWN = "unknown"
_RESERVE_BYTES = 16384  # ample for a marker; the reserve is what a final write uses on a full disk

# RunSummary.status → (marker state, reason)
_FROM_SUMMARY = {
    "complete": (COMPLETE, None),
    "errors": (INCOMPLETE, "errors"),
    "batches-pending": (INCOMPLETE, "batches pending"),
    "interrupted": (INTERRUPTED, "signal"),
    "budget": (INTERRUPTED, "budget"),
    "outage": (INTERRUPTED, "outage"),
    "disk": (INTERRUPTED, "disk"),
    "fatal": (INTERRUPTED, "fatal"),
}


def file_fingerprint(path: Path, *, sync: bool = False, reuse: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{sha256, bytes, mtime_ns}`` of a file. ``sync`` fsyncs it first (the completion marker
    must never vouch for bytes that are not on disk). ``reuse`` is an earlier fingerprint whose
    sha256 is kept when size and mtime are unchanged, so a resume that finds nothing to do does not
    re-hash gigabytes; ``verify`` always hashes afresh."""
    with open(path, "rb") as f:
        if sync:
            os.fsync(f.fileno())
        st = os.fstat(f.fileno())
    size_time = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if reuse and all(reuse.get(k) == v for k, v in size_time.items()) and isinstance(reuse.get("sha256"), str):
        return {"sha256": reuse["sha256"], **size_time}
    return {"sha256": sha256_file(path), **size_time}


def read_status(path: Path) -> dict[str, Any] | None:
    """A marker's content; None if absent. A marker that cannot be read or parsed comes back as
    ``{"state": "unknown", "problem": ...}``: it must not stop a reader or a run."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        return {"state": UNKNOWN, "problem": f"{path.name} cannot be read ({e.strerror or e})"}
    try:
        doc = json.loads(data)
    except ValueError:
        return {"state": UNKNOWN, "problem": f"{path.name} is not valid JSON"}
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
        return {"state": UNKNOWN, "problem": f"{path.name} is not a status marker"}
    return doc


class StatusWriter:
    """Writes one run's (or shard's) marker. Used by the runner while it holds the lock.

    Writing a marker never stops a run: on failure it warns once and the run goes on (the results
    files stay the source of truth; readers fall back to the lock to tell a live run).
    """

    def __init__(self, run_dir: Path, shard: tuple[int, int] | None, run_id: str) -> None:
        self.run_dir = Path(run_dir)
        self.shard = shard
        self.run_id = run_id
        paths = RunPaths(self.run_dir, shard)
        self.path = paths.status
        self.reserve = paths.status_reserve
        self.previous: dict[str, Any] | None = None
        self._started_at: str | None = None
        self._warned = False
        self.begun = False  # begin() was called: a final marker is owed

    def begin(self, *, total: int, pending: int, command: str | None = None, epochs: int = 1) -> dict[str, Any] | None:
        """Write ``running``; returns the previous marker (with a stale ``running`` already
        read as :data:`PROCESS_GONE`, since we hold the lock now), or None. ``total`` and
        ``pending`` count units of work: samples × ``epochs``."""
        prev = read_status(self.path)
        if prev is not None and prev.get("state") == RUNNING:
            prev = {**prev, "state": INTERRUPTED, "reason": "process gone",
                    "note": "the previous writer stopped without writing a final status (killed, or its host died)"}
        self.previous = prev
        self.begun = True
        self._started_at = utc_now()
        doc = self._base(RUNNING)
        doc.update(total_samples=total, pending_at_start=pending, command=command)
        if epochs > 1:
            doc["epochs"] = epochs
        self._make_reserve()
        self._write(doc)
        return prev

    def finish(self, state: str, *, reason: str | None, exit_code: int, message: str = "",
               counts: dict[str, Any] | None = None, files: list[Path] | None = None) -> None:
        """Write the final marker. For ``complete``, ``files`` are fsynced and fingerprinted first."""
        doc = self._base(state)
        doc.update(reason=reason, exit_code=exit_code, message=message or None, finished_at=utc_now(),
                   counts=counts or {})
        if state == COMPLETE:
            old = (self.previous or {}).get("files") or {}
            try:
                doc["files"] = {p.name: file_fingerprint(p, sync=True, reuse=old.get(p.name))
                                for p in files or [] if p.exists()}
            except OSError as e:
                # Could not read back (or sync) a results file: do not vouch for it.
                doc.update(state=INTERRUPTED, reason="disk", message=f"could not fingerprint the results: {e}")
        self._write(doc, final=True)

    def finish_from_summary(self, summary: Any, files: list[Path]) -> None:
        """The final marker for a :class:`~evalledger.run.runner.RunSummary`."""
        state, reason = _FROM_SUMMARY.get(summary.status, (INTERRUPTED, summary.status))
        st = summary.stats or {}
        counts = {"total_samples": summary.total_samples, "completed_samples": st.get("completed_samples"),
                  "error_samples": st.get("error_count"), "pending_samples": summary.remaining,
                  "correct_samples": st.get("correct_count"), "requests_this_run": summary.requests}
        if getattr(summary, "epochs", 1) > 1:
            counts["epochs"] = summary.epochs  # the counts are of units of work: samples × epochs
        self.finish(state, reason=reason, exit_code=summary.exit_code, message=summary.message, counts=counts,
                    files=files)

    def finish_failed(self, exc: BaseException) -> None:
        """The final marker when the run raised instead of returning a summary."""
        if isinstance(exc, DiskSpaceError):
            reason, code = "disk", 4
        elif isinstance(exc, KeyboardInterrupt):
            reason, code = "signal", 130
        elif isinstance(exc, EvalLedgerError):
            reason, code = "error", exc.exit_code
        else:
            reason, code = "error", 1
        self.finish(INTERRUPTED, reason=reason, exit_code=code, message=f"{type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------- internals
    def _base(self, state: str) -> dict[str, Any]:
        return {"version": STATUS_VERSION, "state": state, "run_id": self.run_id,
                "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
                "pid": os.getpid(), "host": hostname(), "started_at": self._started_at, "updated_at": utc_now()}

    def _make_reserve(self) -> None:
        """Pre-allocate the reserve file (ignored if the disk is already too full)."""
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < _RESERVE_BYTES:
                    os.pwrite(fd, b" " * _RESERVE_BYTES, 0)  # real blocks, not a sparse hole
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self.reserve.unlink(missing_ok=True)

    def _write(self, doc: dict[str, Any], final: bool = False) -> None:
        data = (json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n").encode()
        try:
            if len(data) <= _RESERVE_BYTES and self._reserve_ready():
                # Overwrite blocks the reserve already owns, cut it to size, then rename it over
                # the marker: atomic, and needs no new space.
                fd = os.open(self.reserve, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, 0)
                    os.ftruncate(fd, len(data))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(self.reserve, self.path)
                fsync_dir(self.run_dir)
                if not final:
                    self._make_reserve()  # for the next write (begin() makes one for the next run)
            else:
                write_bytes_atomic(self.path, data)
                if final:
                    self.reserve.unlink(missing_ok=True)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning(f"could not write {self.path}: {e} (readers will use the lock to tell whether "
                            "the run is live)")

    def _reserve_ready(self) -> bool:
        try:
            return self.reserve.stat().st_size >= _RESERVE_BYTES
        except OSError:
            return False


# ============================================================================================
# Reading


@dataclass
class MarkerState:
    """One marker as a reader sees it, with a stale ``running`` already corrected."""

    shard: tuple[int, int] | None
    state: str  # running | complete | incomplete | interrupted | unknown
    label: str  # what to show: e.g. "interrupted (SIGTERM, exit 143)", "interrupted (process gone)"
    reason: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    host: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    changed_files: list[str] = field(default_factory=list)  # results files that differ from a complete marker
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunLifecycle:
    """A run's overall status from all its markers (and its locks)."""

    state: str  # running | complete | incomplete | interrupted | unknown
    label: str
    shards: int | None  # the shard count of the latest layout, None when unsharded
    markers: list[MarkerState]
    missing_shards: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for m in d["markers"]:
            m.pop("doc", None)
        return d


_SIGNAL_EXITS = {130: "SIGINT", 143: "SIGTERM"}


def _label(doc: dict[str, Any], state: str) -> str:
    reason, code = doc.get("reason"), doc.get("exit_code")
    if state == INTERRUPTED:
        if reason == "process gone":
            return PROCESS_GONE
        what = _SIGNAL_EXITS.get(code, "signal") if reason == "signal" else (reason or "unknown reason")
        what = {"disk": "disk full", "fatal": "fatal provider error", "outage": "API outage",
                "budget": "budget reached"}.get(what, what)
        return f"interrupted ({what}{'' if code is None else f', exit {code}'})"
    if state == INCOMPLETE:
        counts = doc.get("counts") or {}
        n = counts.get("pending_samples")
        epochs = counts.get("epochs")
        what = unit_noun(epochs if type(epochs) is int else 1)
        return f"incomplete ({n} {what} with errors)" if n is not None else "incomplete (samples with errors)"
    if state == UNKNOWN and doc.get("problem"):
        return f"unknown ({doc['problem']})"
    return state


def unit_noun(epochs: int) -> str:
    """What a run counts, for messages: samples, or units of work when each is asked several times
    (``--epochs K``: (sample, epoch) units)."""
    return "sample(s)" if epochs == 1 else "(sample, epoch) unit(s)"


def _changed_files(run_dir: Path, doc: dict[str, Any]) -> list[str]:
    """Files a complete marker vouches for whose size or mtime is no longer what it recorded (cheap:
    a stat each; ``verify`` compares the hashes)."""
    changed = []
    for name, fp in (doc.get("files") or {}).items():
        try:
            st = os.stat(Path(run_dir) / name)
        except OSError:
            changed.append(name)
            continue
        if not isinstance(fp, dict) or fp.get("bytes") != st.st_size or fp.get("mtime_ns") != st.st_mtime_ns:
            changed.append(name)
    return changed


def _changed_label(changed: list[str]) -> str:
    return f"complete, but {', '.join(changed)} changed since (run `evalledger verify`)"


def marker_state(run_dir: Path, path: Path, held: dict[str, dict[str, Any]] | None = None) -> MarkerState | None:
    """The marker at ``path`` as readers must show it (None if there is none).

    ``held`` is :func:`~evalledger.readers.stats.lock_status` of the run (read once per run by callers
    that look at several markers).
    """

    shard = shard_of_status(path)
    doc = read_status(path)
    if doc is None:
        return None
    state = doc["state"]
    if state == RUNNING:
        held = lock_status(run_dir) if held is None else held
        if lock_name(shard) not in held:
            # Re-read: the writer may have finished between our two reads.
            again = read_status(path)
            if again is not None and again.get("state") != RUNNING:
                doc, state = again, again["state"]
            else:
                doc = {**doc, "reason": "process gone"}
                state = INTERRUPTED
    if state not in (RUNNING, COMPLETE, INCOMPLETE, INTERRUPTED):
        state = UNKNOWN
    label = _label(doc, state)
    changed = _changed_files(run_dir, doc) if state == COMPLETE else []
    if changed:
        label = _changed_label(changed)

    def _int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def _str(v: Any) -> str | None:
        return v if isinstance(v, str) else None

    return MarkerState(shard=shard, state=state, label=label, reason=_str(doc.get("reason")),
                       exit_code=_int(doc.get("exit_code")), pid=_int(doc.get("pid")), host=_str(doc.get("host")),
                       started_at=_str(doc.get("started_at")), updated_at=_str(doc.get("updated_at")),
                       finished_at=_str(doc.get("finished_at")), changed_files=changed, doc=doc)


def run_lifecycle(run_dir: str | Path, held: dict[str, dict[str, Any]] | None = None) -> RunLifecycle:
    """The run's status for every reader (``stats``, ``list``, ``status``, ``get_stats``).

    ``running`` if any writer holds its lock; otherwise, for the latest layout (unsharded, or N
    shards): ``complete`` when every marker of it is complete (for shards: all N present),
    else ``interrupted`` if any marker is, else ``incomplete``. No markers at all: ``running``
    if a lock is held, else ``unknown``. ``held``: the run's :func:`~evalledger.readers.stats.lock_status`,
    if the caller has just read it.
    """

    run_dir = Path(run_dir)
    held = lock_status(run_dir) if held is None else held
    markers = [m for p in status_files(run_dir) if (m := marker_state(run_dir, p, held)) is not None]
    # The latest layout decides: a run resumed unsharded after shards (or the reverse) is judged by it.
    latest = max(markers, key=lambda m: m.updated_at or "") if markers else None
    n = latest.shard[1] if latest is not None and latest.shard else None
    if any(m.state == RUNNING for m in markers) or (held and not markers):
        running = [m for m in markers if m.state == RUNNING]
        who = ", ".join(f"pid {m.pid} on {m.host}" + (f" (shard {m.shard[0]}/{m.shard[1]})" if m.shard else "")
                        for m in running) or ", ".join(f"pid {o.get('pid')} on {o.get('host')}" for o in held.values())
        return RunLifecycle(RUNNING, f"running ({who})" if who else RUNNING, n, markers)
    if latest is None:
        return RunLifecycle(UNKNOWN, "unknown (no status marker)", None, [])
    group = [m for m in markers if (m.shard[1] if m.shard else None) == n]
    missing = [] if n is None else sorted(set(range(1, n + 1)) - {m.shard[0] for m in group if m.shard})
    if all(m.state == COMPLETE for m in group) and not missing:
        changed = sorted({f for m in group for f in m.changed_files})
        label = _changed_label(changed) if changed else COMPLETE
        return RunLifecycle(COMPLETE, label, n, markers)
    bad = [m for m in group if m.state in (INTERRUPTED, UNKNOWN)] or [m for m in group if m.state == INCOMPLETE]
    if n is None:
        return RunLifecycle(latest.state, latest.label, None, markers)
    parts = [f"shard {m.shard[0]}/{n}: {m.label}" for m in bad if m.shard]
    if missing:
        parts.append(f"shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {n} never ran")
    state = bad[0].state if bad else INCOMPLETE
    if state == UNKNOWN:
        state = INTERRUPTED
    return RunLifecycle(state, f"{state} ({'; '.join(parts)})", n, markers, missing)


__all__ = [
    "COMPLETE", "INCOMPLETE", "INTERRUPTED", "PROCESS_GONE", "RUNNING", "UNKNOWN",
    "MarkerState", "RunLifecycle", "StatusWriter", "file_fingerprint", "marker_state", "read_status",
    "run_lifecycle",
]
