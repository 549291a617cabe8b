"""The run directory's file names: one definition for the writer, the readers and the tools.

A run directory holds, per writer (the whole run, or shard K of N with the suffix
``.shard-K-of-N``): ``results<sfx>.jsonl`` (the ledger), ``calls<sfx>.jsonl`` (the turn cache of
multi-turn tasks), ``resume_state<sfx>.json``, ``errors<sfx>.log``, ``status<sfx>.json`` with its
reserve ``.status<sfx>.json.reserve``, the writer lock ``.lock<sfx>`` and its ``.lock<sfx>.owner``,
and for ``--batch`` runs the batch journal ``batches<sfx>.jsonl``;
and once per run ``manifest.json``, the shared ``.lock.run`` and the readers' ``.cache/`` directory.

A ``--workers N`` run has one writer per worker process besides: worker W of the run (or of shard
K of N) writes the same files with ``.worker-W`` after the shard suffix (``results.worker-2.jsonl``,
``results.shard-1-of-4.worker-2.jsonl``, ``.lock.worker-2``, ...). Readers read them as files of
the run (or of that shard); the run's own writer (the parent process) holds ``.lock<sfx>`` and
``.lock.run`` for all of them and writes the one ``status<sfx>.json``.

What repairs leave behind is named here too: ``<file>.corrupt-<timestamp>`` (bytes moved out of a
file, never deleted), ``.<file>.clean-<timestamp>.tmp`` (the garbage-line rewrite before its
rename), and, beside the run directory, ``<run_id>.old-<timestamp>`` (a run moved aside by
``--overwrite``). Timestamps are :func:`evalledger.fsio.file_timestamp`'s.

Changing any name here orphans the files of existing run directories: the names are a file format.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
#: Shared by shard writers, exclusive for an unsharded writer (see :mod:`evalledger.ledger.locks`).
RUN_LOCK = ".lock.run"
#: Derived data (indexes, columnar copies) that can always be rebuilt from the run's files.
CACHE_DIR = ".cache"
#: (stem, extension) of each per-writer file: ``<stem><sfx>.<ext>``.
RESULTS, CALLS, RESUME_STATE, STATUS = ("results", "jsonl"), ("calls", "jsonl"), ("resume_state", "json"), ("status", "json")
ERRORS = ("errors", "log")
#: The batch journal of a ``--batch`` run (see :mod:`evalledger.ledger.batches`).
BATCHES = ("batches", "jsonl")

_LOCK = ".lock"
_OWNER = ".owner"
#: :func:`evalledger.fsio.file_timestamp`, e.g. ``20261123T155936.123456Z``.
STAMP_PATTERN = r"\d{8}T\d{6}\.\d{6}Z"
_CORRUPT_RE = re.compile(rf"\.corrupt-{STAMP_PATTERN}$")
_MOVED_ASIDE_RE = re.compile(rf"^(?P<run_id>.+)\.old-(?P<stamp>{STAMP_PATTERN})$")
#: :func:`shard_suffix` read back: groups K and N.
_SUFFIX_PATTERN = r"\.shard-(\d+)-of-(\d+)"
#: :func:`worker_suffix` read back: group W.
_WORKER_PATTERN = r"\.worker-(\d+)"
_LOCK_RE = re.compile(rf"^{re.escape(_LOCK)}(?:{_SUFFIX_PATTERN})?(?:{_WORKER_PATTERN})?$")


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """``""`` for an unsharded run, ``.shard-K-of-N`` for shard K/N."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


def worker_suffix(worker: int | None) -> str:
    """``""`` for the run's (or shard's) own writer, ``.worker-W`` for worker process W of a ``--workers`` run."""
    return "" if worker is None else f".worker-{worker}"


def shard_name(kind: tuple[str, str], shard: tuple[int, int] | None, worker: int | None = None) -> str:
    """The file name of one writer's file of a kind (:data:`RESULTS`, :data:`CALLS`, ...)."""
    stem, ext = kind
    return f"{stem}{shard_suffix(shard)}{worker_suffix(worker)}.{ext}"


@functools.cache
def _shard_name_re(stem: str, ext: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(stem)}(?:{_SUFFIX_PATTERN})?(?:{_WORKER_PATTERN})?\.{re.escape(ext)}$")


def writer_in_name(name: str, stem: str, ext: str) -> tuple[tuple[int, int] | None, int | None] | None:
    """For a run file named ``<stem>[.shard-K-of-N][.worker-W].<ext>``: (shard, worker), each None
    when absent. None when ``name`` is no such file."""
    m = _shard_name_re(stem, ext).match(name)
    if not m:
        return None
    shard = None if m.group(1) is None else (int(m.group(1)), int(m.group(2)))
    return shard, None if m.group(3) is None else int(m.group(3))


def shard_in_name(name: str, stem: str, ext: str) -> tuple[int, int] | None | bool:
    """For a run file named ``<stem>.<ext>`` or ``<stem>.shard-K-of-N.<ext>`` (either with a worker's
    ``.worker-W``): None (unsharded) or (K, N). False when ``name`` is neither (e.g.
    ``results.jsonl.corrupt-…``)."""
    writer = writer_in_name(name, stem, ext)
    return False if writer is None else writer[0]


def writer_paths(path: Path, kind: tuple[str, str]) -> RunPaths | None:
    """The writer whose file of ``kind`` (:data:`RESULTS`, :data:`RESUME_STATE`, ...) ``path`` is; None if it is none."""
    writer = writer_in_name(path.name, *kind)
    return None if writer is None else RunPaths(path.parent, *writer)


def worker_glob(kind: tuple[str, str], shard: tuple[int, int] | None) -> str:
    """The glob pattern of the run's (or ``shard``'s) worker files of ``kind``, e.g. ``errors.worker-*.log``."""
    stem, ext = kind
    return f"{stem}{shard_suffix(shard)}.worker-*.{ext}"


def worker_files(run_dir: Path, kind: tuple[str, str], shard: tuple[int, int] | None) -> list[Path]:
    """The files of ``kind`` that worker processes of the run (or of ``shard``) wrote, sorted."""
    return sorted(p for p in Path(run_dir).glob(worker_glob(kind, shard))
                  if (w := writer_in_name(p.name, *kind)) is not None and w[0] == shard)


def shard_files(run_dir: Path, stem: str, ext: str) -> list[Path]:
    """Every ``<stem>[.shard-K-of-N].<ext>`` file of a run (results, calls, status, resume state), sorted."""
    return sorted(p for p in Path(run_dir).glob(f"{stem}*.{ext}") if shard_in_name(p.name, stem, ext) is not False)


def results_files(run_dir: Path) -> list[Path]:
    """Every results file of a run (all shards), in a stable order."""
    return shard_files(run_dir, *RESULTS)


def calls_files(run_dir: Path) -> list[Path]:
    """Every turn-cache file of a run (multi-turn tasks: one record per paid model call)."""
    return shard_files(run_dir, *CALLS)


def batch_journal_files(run_dir: Path) -> list[Path]:
    """Every batch journal of a run (``--batch`` runs: one per writer), sorted."""
    return shard_files(run_dir, *BATCHES)


def resume_state_files(run_dir: Path) -> list[Path]:
    """Every resume state of a run (one per writer that checkpointed), sorted."""
    return shard_files(run_dir, *RESUME_STATE)


def status_files(run_dir: Path) -> list[Path]:
    """Every status marker in a run directory, in a stable order."""
    return shard_files(run_dir, *STATUS)


def shard_of_file(path: Path) -> tuple[int, int] | None:
    """The shard of a results file (None: unsharded, or not a results file)."""
    return shard_in_name(path.name, *RESULTS) or None


def shard_of_status(path: Path) -> tuple[int, int] | None:
    """The shard of a status marker (None: unsharded, or not a marker)."""
    return shard_in_name(path.name, *STATUS) or None


def shard_of_resume_state(path: Path) -> tuple[int, int] | None:
    """The shard of a resume state file (None: unsharded, or not a resume state)."""
    return shard_in_name(path.name, *RESUME_STATE) or None


def is_results_name(name: str) -> bool:
    """Whether a file of this name in a run directory is read as one of its results files."""
    return shard_in_name(name, *RESULTS) is not False


@dataclass(frozen=True)
class RunPaths:
    """The files of one writer of a run directory: the whole run (``shard`` None) or one shard."""

    run_dir: Path
    shard: tuple[int, int] | None = None
    worker: int | None = None  # worker process W of a --workers run (None: the run's or shard's own writer)

    @property
    def suffix(self) -> str:
        return shard_suffix(self.shard) + worker_suffix(self.worker)

    @property
    def results(self) -> Path:
        return self.run_dir / shard_name(RESULTS, self.shard, self.worker)

    @property
    def calls(self) -> Path:
        return self.run_dir / shard_name(CALLS, self.shard, self.worker)

    @property
    def resume_state(self) -> Path:
        return self.run_dir / shard_name(RESUME_STATE, self.shard, self.worker)

    @property
    def errors(self) -> Path:
        """The human-readable error log; per writer, so shards on different machines never share one."""
        return self.run_dir / shard_name(ERRORS, self.shard, self.worker)

    @property
    def status(self) -> Path:
        return self.run_dir / shard_name(STATUS, self.shard, self.worker)

    @property
    def batches(self) -> Path:
        """The batch journal (``--batch`` runs only)."""
        return self.run_dir / shard_name(BATCHES, self.shard, self.worker)

    @property
    def status_reserve(self) -> Path:
        """The pre-allocated file the final status marker is written into (see :mod:`evalledger.ledger.status`)."""
        return self.run_dir / f".{self.status.name}.reserve"

    @property
    def lock(self) -> Path:
        return self.run_dir / lock_name(self.shard, self.worker)

    @property
    def owner(self) -> Path:
        return owner_path(self.lock)

    @property
    def run_lock(self) -> Path:
        """The run-wide lock, shared by every writer of the run."""
        return self.run_dir / RUN_LOCK

    @property
    def manifest(self) -> Path:
        return self.run_dir / MANIFEST

    @property
    def cache(self) -> Path:
        """The readers' and the dataset's derived data, shared by every writer of the run."""
        return self.run_dir / CACHE_DIR


def lock_name(shard: tuple[int, int] | None, worker: int | None = None) -> str:
    """The writer lock's file name: ``.lock`` or ``.lock.shard-K-of-N`` (either with ``.worker-W``)."""
    return f"{_LOCK}{shard_suffix(shard)}{worker_suffix(worker)}"


def writer_of_lock(name: str) -> tuple[tuple[int, int] | None, int | None] | None:
    """For a writer lock's file name: (shard, worker), each None when absent. None for anything
    else (``.lock.run``, an owner file)."""
    m = _LOCK_RE.match(name)
    if not m:
        return None
    shard = None if m.group(1) is None else (int(m.group(1)), int(m.group(2)))
    return shard, None if m.group(3) is None else int(m.group(3))


def shard_of_lock(name: str) -> tuple[int, int] | None | bool:
    """For a writer lock's file name: None (``.lock``) or (K, N) (``.lock.shard-K-of-N``), a
    worker's lock giving its run's or shard's. False for anything else (``.lock.run``, an owner file)."""
    writer = writer_of_lock(name)
    return False if writer is None else writer[0]


def owner_path(lock: Path) -> Path:
    """The file beside a lock that names its holder."""
    return lock.with_name(lock.name + _OWNER)


def writer_locks(run_dir: Path) -> list[Path]:
    """The per-writer lock files present in a run directory (not ``.lock.run``, not owner files), sorted."""
    return [p for p in sorted(Path(run_dir).glob(f"{_LOCK}*")) if shard_of_lock(p.name) is not False]


def writer_of_owner(owner: Path) -> tuple[tuple[int, int] | None, int | None] | None:
    """(shard, worker) of the writer whose lock an owner file describes (see :func:`writer_of_lock`)."""
    return writer_of_lock(owner.name.removesuffix(_OWNER)) if owner.name.endswith(_OWNER) else None


def shard_owner_files(run_dir: Path) -> list[Path]:
    """The owner files of the shard writers' and worker processes' locks present in a run directory, sorted."""
    return [p for p in sorted(Path(run_dir).glob(f"{_LOCK}*{_OWNER}"))
            if writer_of_owner(p) not in (None, (None, None))]


def corrupt_aside(path: Path, stamp: str, kind: str = "corrupt") -> Path:
    """Where bytes moved out of ``path`` go: ``<name>.corrupt-<stamp>`` (``kind`` "newer" for a
    resume state written by a newer version, kept apart from damage)."""
    return path.with_name(f"{path.name}.{kind}-{stamp}")


def is_corrupt_aside(name: str) -> bool:
    """Whether ``name`` is a ``.corrupt-<timestamp>`` file made by :func:`corrupt_aside`."""
    return _CORRUPT_RE.search(name) is not None


def clean_copy(path: Path, stamp: str) -> Path:
    """The temp file the garbage-line rewrite of ``path`` writes before renaming it over ``path``."""
    return path.with_name(f".{path.name}.clean-{stamp}.tmp")


def stale_clean_copies(path: Path) -> list[Path]:
    """:func:`clean_copy` files of ``path`` that a killed writer never renamed."""
    return sorted(path.parent.glob(f".{path.name}.clean-*.tmp"))


def moved_aside_dir(run_dir: Path, stamp: str) -> Path:
    """Where ``--overwrite`` moves a run directory: ``<run_id>.old-<stamp>`` beside it."""
    return run_dir.with_name(f"{run_dir.name}.old-{stamp}")


def moved_aside_of(name: str) -> tuple[str, str] | None:
    """``(run_id, stamp)`` of a directory named by :func:`moved_aside_dir`; None for any other name."""
    m = _MOVED_ASIDE_RE.match(name)
    return None if m is None else (m.group("run_id"), m.group("stamp"))


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: it has a manifest or at least one results file."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).exists() or bool(results_files(path)))
