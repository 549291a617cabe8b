"""Reclaim disk without risking a result: ``evalledger prune`` and ``run --overwrite --keep-old N``.

Two kinds of leftovers are candidates:

* **old runs**: ``<run_id>.old-<timestamp>`` directories made by ``--overwrite``, beyond the newest
  ``keep`` per run ID;
* **corrupt leftovers**: ``*.corrupt-<timestamp>`` files (torn tails and garbage lines moved aside
  by ``run``/``verify --repair``, untrusted resume states) in any run directory.

``older_than_days`` limits both to things at least that old. Whatever the flags, nothing is removed
that

* is a live run directory (only ``.corrupt-*`` files inside one can go),
* belongs to a run whose lock a process holds right now (checked again just before removal),
* holds the only ``ok`` record of a unit of work (a sample, or with ``--epochs`` one epoch of a
  sample): an old run goes only if every unit it has an ok record for also has one in a copy
  that stays (the live run or a kept old copy); a corrupt leftover goes only if no line in it is
  an ok record of a unit missing from the run's results.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalledger.errors import UsageError
from evalledger.fsio import dir_size, file_timestamp, fsync_dir
from evalledger.ledger import (
    STAMP_PATTERN,
    is_corrupt_aside,
    is_run_dir,
    iter_file_records,
    locks_held,
    moved_aside_of,
    parse_record_line,
    results_files,
    unit_noun,
)
from evalledger.ops.units import unit_label
from evalledger.records import epoch_of, split_unit_key, unit_key

# A directory execute_prune renamed before deleting it (only prune makes and reads these).
_PRUNING_RE = re.compile(rf"^\.(?P<name>.+)\.pruning-{STAMP_PATTERN}$")


@dataclass
class PruneItem:
    """One thing ``prune`` will remove (or would, with ``--dry-run``)."""

    path: Path
    kind: str  # "old run" | "corrupt leftover" | "interrupted prune"
    run_id: str
    bytes: int
    age_days: float


@dataclass
class KeptItem:
    """A candidate that stays, and why."""

    path: Path
    kind: str
    reason: str
    by_keep: bool = False  # one of the newest --keep copies: kept by choice, not for safety


@dataclass
class PrunePlan:
    """What :func:`plan_prune` found: what goes, what stays (with reasons) and the bytes freed."""

    output_dir: Path
    remove: list[PruneItem] = field(default_factory=list)
    kept: list[KeptItem] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(i.bytes for i in self.remove)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


@dataclass
class PruneResult:
    """What :func:`execute_prune` did."""

    removed: list[PruneItem] = field(default_factory=list)
    freed_bytes: int = 0
    skipped: list[KeptItem] = field(default_factory=list)  # changed since the plan (e.g. a lock taken)
    failed: list[KeptItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ok_ids(run_dir: Path) -> set[str]:
    """Unit keys (:func:`evalledger.records.unit_key`) with an ok record in any results file of
    ``run_dir`` (streaming, all shards): two epochs of a sample are two results to keep.

    Every line parsed with ``parse_record_line`` (the one rule for what a line is), so a damaged line
    never counts as the copy that lets another one be deleted.
    """
    return {unit_key(r["sample_id"], epoch_of(r)) for p in results_files(run_dir) for r in iter_file_records(p)
            if r.get("status") == "ok"}


def _ok_ids_in_leftover(path: Path) -> set[str]:
    """Unit keys of complete ok record lines inside a moved-aside file (usually none)."""
    ids: set[str] = set()
    try:
        with open(path, "rb") as f:
            for raw in f:
                rec = parse_record_line(raw if raw.endswith(b"\n") else raw + b"\n")
                if rec is not None and rec.get("status") == "ok":
                    ids.add(unit_key(rec["sample_id"], epoch_of(rec)))
    except OSError:
        pass
    return ids


def _count(keys: set[str]) -> str:
    """``keys`` (unit keys) for a reason: "3 sample(s) (e.g. s1)", or in units when some is a later epoch's."""
    epochs = 1 if all(split_unit_key(k)[1] == 1 for k in keys) else 2
    return f"{len(keys)} {unit_noun(epochs)} (e.g. {unit_label(min(keys), epochs)})"


def _age_days(path: Path, now: float) -> float:
    try:
        return max(0.0, (now - os.lstat(path).st_mtime) / 86400)
    except OSError:
        return 0.0


def _is_copy_of(name: str, run_id: str) -> bool:
    """Whether ``name`` is a moved-aside copy of run ``run_id``."""
    aside = moved_aside_of(name)
    return aside is not None and aside[0] == run_id


def plan_prune(output_dir: str | Path, *, keep: int = 1, older_than_days: float | None = None,
               run_id: str | None = None, corrupt: bool = True, now: float | None = None) -> PrunePlan:
    """Decide what :func:`execute_prune` would remove under ``output_dir`` (changes nothing).

    ``keep``: moved-aside copies kept per run ID, newest first. ``older_than_days``: only remove
    things at least this old (by mtime). ``run_id``: only that run's leftovers (what
    ``run --overwrite --keep-old`` uses). ``corrupt``: include ``.corrupt-*`` leftovers.
    """
    root = Path(output_dir)
    if keep < 0:
        raise UsageError(f"--keep {keep}: must be 0 or more")
    if older_than_days is not None and older_than_days < 0:
        raise UsageError(f"--older-than {older_than_days}: must not be negative")
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory (give the output dir that holds the runs)")
    planner = _Planner(PrunePlan(root), keep, older_than_days, run_id, time.time() if now is None else now)
    live, old = planner.find_runs()
    for rid, copies in sorted(old.items()):
        planner.plan_old_copies(rid, copies, live.get(rid))
    if corrupt:
        going = {i.path for i in planner.plan.remove}
        for d in [*live.values(), *(c for copies in old.values() for c in copies if c not in going)]:
            planner.plan_corrupt_leftovers(d)
    return planner.plan


@dataclass
class _Planner:
    """The state of one :func:`plan_prune`: the plan it fills and the flags it was given."""

    plan: PrunePlan
    keep: int
    older_than_days: float | None
    run_id: str | None
    now: float

    def young(self, path: Path) -> bool:
        """Younger than ``--older-than``: kept whatever else holds."""
        return self.older_than_days is not None and _age_days(path, self.now) < self.older_than_days

    def find_runs(self) -> tuple[dict[str, Path], dict[str, list[Path]]]:
        """The live run directories and the moved-aside copies per run ID (of ``run_id`` only, if
        given); directories a killed prune had started to delete go straight into the plan."""
        live: dict[str, Path] = {}
        old: dict[str, list[Path]] = {}
        run_id = self.run_id
        for d in sorted(self.plan.output_dir.iterdir()):
            if d.is_symlink() or not d.is_dir():
                continue
            aside = moved_aside_of(d.name)
            if aside:
                if run_id is None or aside[0] == run_id:
                    old.setdefault(aside[0], []).append(d)
            elif (pm := _PRUNING_RE.match(d.name)) and (run_id is None or _is_copy_of(pm.group("name"), run_id)):
                # A directory a killed prune had already started to delete: finish the job.
                self.plan.remove.append(PruneItem(d, "interrupted prune", pm.group("name"), dir_size(d),
                                                  _age_days(d, self.now)))
            elif is_run_dir(d) and (run_id is None or d.name == run_id):
                live[d.name] = d
        return live, old

    def plan_old_copies(self, rid: str, copies: list[Path], live_dir: Path | None) -> None:
        """Keep the newest ``keep`` copies, locked and young ones; remove the others, oldest first,
        as long as every ok record each holds survives in a copy that stays or in the live run."""
        plan, keep = self.plan, self.keep
        copies.sort(key=lambda p: moved_aside_of(p.name)[1], reverse=True)  # newest first
        stays = copies[:keep]
        for c in stays:
            plan.kept.append(KeptItem(c, "old run", f"one of the newest {keep} old cop{'y' if keep == 1 else 'ies'} of {rid}",
                                      by_keep=True))
        candidates = []
        for c in copies[keep:]:
            held = locks_held(c)
            if held:
                plan.kept.append(KeptItem(c, "old run", f"a process holds its lock ({', '.join(held)})"))
                stays.append(c)
            elif self.young(c):
                plan.kept.append(KeptItem(c, "old run", f"younger than {self.older_than_days:g} days"))
                stays.append(c)
            else:
                candidates.append(c)
        # Oldest first: an older copy goes when what it holds survives elsewhere, newer ones last.
        ok_of = {c: _ok_ids(c) for c in [*stays, *candidates]}
        live_ok = _ok_ids(live_dir) if live_dir is not None else set()
        removed: set[Path] = set()
        for c in reversed(candidates):
            others = set(live_ok)
            for o in [*stays, *candidates]:
                if o is not c and o not in removed:
                    others |= ok_of[o]
            only_here = ok_of[c] - others
            if only_here:
                plan.kept.append(KeptItem(c, "old run", f"holds the only ok record of {_count(only_here)}"))
                continue
            removed.add(c)
            plan.remove.append(PruneItem(c, "old run", rid, dir_size(c), _age_days(c, self.now)))

    def plan_corrupt_leftovers(self, d: Path) -> None:
        """The ``.corrupt-*`` files of run directory ``d``: removed unless its run is being written,
        they are young, or one holds an ok record the run's results lack."""
        plan = self.plan
        leftovers = sorted(p for p in d.iterdir() if is_corrupt_aside(p.name) and not p.is_symlink())
        if not leftovers:
            return
        held = locks_held(d)
        ok_here: set[str] | None = None
        for p in leftovers:
            if held:
                plan.kept.append(KeptItem(p, "corrupt leftover", f"its run is being written ({', '.join(held)})"))
                continue
            if self.young(p):
                plan.kept.append(KeptItem(p, "corrupt leftover", f"younger than {self.older_than_days:g} days"))
                continue
            # Every leftover is read, whatever file it came from: an ok record line in one must not be lost.
            lost = _ok_ids_in_leftover(p)
            if lost:
                ok_here = _ok_ids(d) if ok_here is None else ok_here
                lost -= ok_here
            if lost:
                plan.kept.append(KeptItem(p, "corrupt leftover", f"holds an ok record found nowhere else "
                                                                 f"({_count(lost)})"))
                continue
            rid = aside[0] if (aside := moved_aside_of(d.name)) else d.name
            plan.remove.append(PruneItem(p, "corrupt leftover", rid, dir_size(p), _age_days(p, self.now)))


def execute_prune(plan: PrunePlan) -> PruneResult:
    """Remove what ``plan`` lists, re-checking each item's run lock right before it goes.

    A directory is first renamed to ``.<name>.pruning-<timestamp>`` and then deleted, so one cut
    short by a crash never looks like a valid old run (the next prune finishes it).
    """
    result = PruneResult()
    for item in plan.remove:
        run_dir = item.path if item.path.is_dir() else item.path.parent
        held = locks_held(run_dir) if item.kind != "interrupted prune" else {}
        if held:
            result.skipped.append(KeptItem(item.path, item.kind, f"a process took its lock since ({', '.join(held)})"))
            continue
        try:
            if item.path.is_dir() and not item.path.is_symlink():
                target = item.path
                if item.kind != "interrupted prune":
                    target = item.path.with_name(f".{item.path.name}.pruning-{file_timestamp()}")
                    os.rename(item.path, target)
                    fsync_dir(target.parent)
                shutil.rmtree(target)
            else:
                item.path.unlink()
            fsync_dir(item.path.parent)
        except OSError as e:
            result.failed.append(KeptItem(item.path, item.kind, str(e)))
            continue
        result.removed.append(item)
        result.freed_bytes += item.bytes
    return result


def prune_runs(output_dir: str | Path = "outputs", *, keep: int = 1, older_than_days: float | None = None,
               dry_run: bool = False) -> tuple[PrunePlan, PruneResult | None]:
    """``evalledger prune`` from Python: the plan, and what was removed (None with ``dry_run``).

    There is no confirmation here: call :func:`plan_prune` first to look at what would go.
    """
    plan = plan_prune(output_dir, keep=keep, older_than_days=older_than_days)
    return plan, None if dry_run else execute_prune(plan)


__all__ = ["KeptItem", "PruneItem", "PrunePlan", "PruneResult", "execute_prune",
           "plan_prune", "prune_runs"]
