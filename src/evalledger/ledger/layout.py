"""The run directory's file names: one definition for the writer, the readers and the tools.

A run directory holds, per writer (the whole run, or shard K of N with the suffix
``.shard-K-of-N``): ``results<sfx>.jsonl`` (the ledger), ``calls<sfx>.jsonl`` (the turn cache of
multi-turn tasks), ``resume_state<sfx>.json``, ``status<sfx>.json`` with its reserve
``.status<sfx>.json.reserve``, the writer lock ``.lock<sfx>`` and its ``.lock<sfx>.owner``; and once
per run ``manifest.json``, the shared ``.lock.run`` and the readers' ``.cache/`` directory.
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
RESULTS, CALLS, RESUME_STATE, STATUS = ("results", "jsonl"), ("calls", "jsonl"), ("resume_state", "json"), ("status", "json")


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """``""`` for an unsharded run, ``.shard-K-of-N`` for shard K/N."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


@functools.lru_cache(maxsize=None)
def _shard_name_re(stem: str, ext: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(stem)}(?:\.shard-(\d+)-of-(\d+))?\.{re.escape(ext)}$")


def shard_in_name(name: str, stem: str, ext: str) -> tuple[int, int] | None | bool:
    """For a run file named ``<stem>.<ext>`` or ``<stem>.shard-K-of-N.<ext>``: None (unsharded) or
    (K, N). False when ``name`` is neither (e.g. ``results.jsonl.corrupt-…``)."""
    m = _shard_name_re(stem, ext).match(name)
    if not m:
        return False
    return None if m.group(1) is None else (int(m.group(1)), int(m.group(2)))


def shard_files(run_dir: Path, stem: str, ext: str) -> list[Path]:
    """Every ``<stem>[.shard-K-of-N].<ext>`` file of a run (results, calls, status, resume state), sorted."""
    return sorted(p for p in Path(run_dir).glob(f"{stem}*.{ext}") if shard_in_name(p.name, stem, ext) is not False)


def results_files(run_dir: Path) -> list[Path]:
    """Every results file of a run (all shards), in a stable order."""
    return shard_files(run_dir, *RESULTS)


def calls_files(run_dir: Path) -> list[Path]:
    """Every turn-cache file of a run (multi-turn tasks: one record per paid model call)."""
    return shard_files(run_dir, *CALLS)


def shard_of_file(path: Path) -> tuple[int, int] | None:
    """The shard of a results file (None: unsharded, or not a results file)."""
    return shard_in_name(path.name, *RESULTS) or None




@dataclass(frozen=True)
class RunPaths:
    """The files of one writer of a run directory: the whole run (``shard`` None) or one shard."""

    run_dir: Path
    shard: tuple[int, int] | None = None

    @property
    def suffix(self) -> str:
        return shard_suffix(self.shard)

    @property
    def results(self) -> Path:
        return self.run_dir / f"results{self.suffix}.jsonl"

    @property
    def calls(self) -> Path:
        return self.run_dir / f"calls{self.suffix}.jsonl"

    @property
    def resume_state(self) -> Path:
        return self.run_dir / f"resume_state{self.suffix}.json"

    @property
    def status(self) -> Path:
        return self.run_dir / f"status{self.suffix}.json"

    @property
    def lock(self) -> Path:
        return self.run_dir / lock_name(self.shard)

    @property
    def owner(self) -> Path:
        return owner_path(self.lock)

    @property
    def manifest(self) -> Path:
        return self.run_dir / MANIFEST

    @property
    def cache(self) -> Path:
        """The readers' and the dataset's derived data, shared by every writer of the run."""
        return self.run_dir / CACHE_DIR


def lock_name(shard: tuple[int, int] | None) -> str:
    """The writer lock's file name: ``.lock`` or ``.lock.shard-K-of-N``."""
    return f".lock{shard_suffix(shard)}"


def owner_path(lock: Path) -> Path:
    """The file beside a lock that names its holder."""
    return lock.with_name(lock.name + ".owner")


def writer_locks(run_dir: Path) -> list[Path]:
    """The per-writer lock files present in a run directory (not ``.lock.run``, not owner files)."""
    return [p for p in sorted(Path(run_dir).glob(".lock*")) if not p.name.endswith(".owner") and p.name != RUN_LOCK]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: it has a manifest or at least one results file."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).exists() or bool(results_files(path)))
