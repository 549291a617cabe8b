"""The units of work of one invocation: every (sample, epoch) of the selection for epochs 1..K.

With ``--epochs K`` each sample is asked K times; one ask is a *unit*, keyed by
:func:`evalledger.records.unit_key` (the bare sample id for epoch 1, so a run without repeats, and
every run made before them, has exactly its sample ids as keys). What is done, what is pending,
the budget, progress and the summary all count units. A unit's shard is its sample's, so raising K
keeps every sample (and all its epochs) in one shard.

Pending units are sent epoch by epoch: every pending unit of epoch 1, then of epoch 2, and so on.
A run stopped early (a budget, a signal) then holds whole epochs first, so an epoch's accuracy is
over all of its samples rather than over whichever samples happened to get all their repeats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass, field

from evalledger.datasets import sample_ids, with_ids
from evalledger.records import unit_key
from evalledger.samples import Sample


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of work: a sample asked for the ``epoch``-th time (1-based)."""

    sample: Sample
    epoch: int = 1

    @property
    def key(self) -> str:
        """Its unit key (:func:`evalledger.records.unit_key`)."""
        return unit_key(self.sample.id, self.epoch)


class PendingUnits:
    """The pending units in the order they are sent: epoch by epoch, each in selection order.

    Holds, per epoch, a sequence of samples (possibly a ``LazySamples``, whose rows are read back
    only as they are sent), so nothing is copied K times.
    """

    def __init__(self, parts: Sequence[tuple[int, Sequence[Sample]]] = ()) -> None:
        self.parts = [(epoch, samples) for epoch, samples in parts if len(samples)]

    def __len__(self) -> int:
        return sum(len(samples) for _, samples in self.parts)

    def __bool__(self) -> bool:
        return bool(self.parts)

    def __iter__(self) -> Iterator[Unit]:
        for epoch, samples in self.parts:
            for sample in samples:
                yield Unit(sample, epoch)

    def keys(self) -> set[str]:
        """The unit keys of every pending unit (nothing is read back)."""
        return {sid + unit_key("", epoch) for epoch, samples in self.parts for sid in sample_ids(samples)}

    def samples(self) -> Sequence[Sample]:
        """Samples to measure prompts on (a unit's prompt is its sample's, whatever the epoch): the
        largest epoch's pending samples."""
        return max((samples for _, samples in self.parts), key=len, default=[])


@dataclass
class UnitPlan:
    """What of an invocation's selection × epochs 1..K is done and what it sends."""

    epochs: int
    #: the unit keys of the selection × epochs (the dataset's own id set for a whole selection and one epoch)
    units: Set[str]
    not_done: Set[str]  # units without an ok record
    pending: PendingUnits = field(default_factory=PendingUnits)  # what is sent: not done, minus errors unless retried

    @property
    def skipped(self) -> int:
        """Units of the selection already done (an ok record): no request is sent for them."""
        return len(self.units) - len(self.not_done)


def plan_units(selection: Sequence[Sample], all_ids: Set[str], epochs: int, completed: Set[str],
               errored: Set[str], retry_errors: bool = True, *, completed_within_ids: bool = False) -> UnitPlan:
    """The units of ``selection`` × epochs 1..``epochs``: which have no ok record (``completed``:
    unit keys), and which to send (``errored`` units too only with ``retry_errors``).

    By ids only: the selection may be a LazySamples, whose rows are read back only when sent. Ids
    are unique, so a whole selection with one epoch uses the dataset's own id set (no copy of it).
    ``completed_within_ids``: every key of ``completed`` is known to be one of ``all_ids``
    (:attr:`evalledger.ledger.LedgerScan.within_known`); then as many of them as the dataset has
    ids means all done, without a pass over a million of them.
    """
    whole = epochs == 1 and len(selection) == len(all_ids)
    ids = None if whole else sample_ids(selection)
    units: set[str] = set()
    not_done: set[str] = set()
    parts: list[tuple[int, Sequence[Sample]]] = []
    for epoch in range(1, epochs + 1):
        suffix = unit_key("", epoch)  # "" for epoch 1: its keys are the ids themselves
        keys: Set[str] = all_ids if ids is None else {sid + suffix for sid in ids}
        if ids is None and completed_within_ids and len(completed) == len(all_ids):
            todo: Set[str] = frozenset()  # completed ⊆ all_ids and as large: every id is done
        else:
            todo = keys.difference(completed)  # the one pass over the selection (on a resume, a small set)
        retry = todo if retry_errors else todo.difference(errored)
        wanted = {key[: len(key) - len(suffix)] for key in retry} if suffix else retry
        parts.append((epoch, with_ids(selection, wanted)))
        if epochs == 1:
            return UnitPlan(1, keys, todo, PendingUnits(parts))
        units |= keys
        not_done |= todo
    return UnitPlan(epochs, units, not_done, PendingUnits(parts))


def describe_extent(samples: int, plan: UnitPlan) -> str:
    """A selection as people read it: "N samples", or "N samples × K epochs = U units"."""
    if plan.epochs == 1:
        return f"{samples} samples"
    return f"{samples} samples × {plan.epochs} epochs = {len(plan.units)} units"


def fewer_epochs_note(run_epochs: int, epochs: int) -> str:
    """What a run asked for fewer epochs than it holds does: nothing is removed."""
    return (f"the run holds {run_epochs} epochs of each sample; this invocation runs epochs 1-{epochs} "
            f"(--epochs {epochs}) and keeps every record of the others (--epochs {run_epochs} completes them)")


__all__ = ["PendingUnits", "Unit", "UnitPlan", "describe_extent", "fewer_epochs_note", "plan_units"]
