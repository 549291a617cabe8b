"""Units of work, (sample, epoch), as the tools over run directories name and expect them.

A run asked with ``--epochs K`` holds, for each sample of its selection, K units (its manifest's
``epochs``: :func:`evalledger.ledger.manifest_epochs`); a run without repeats holds one per
sample, keyed by the bare sample id (:func:`evalledger.records.unit_key`).
"""

from __future__ import annotations

from collections.abc import Iterable

from evalledger.records import split_unit_key, unit_key


def expected_units(sample_ids: Iterable[str], epochs: int) -> list[str]:
    """The unit keys a run of ``sample_ids`` (in dataset order) × ``epochs`` must have, in the order
    tools list them: each sample's epochs together, 1..K."""
    return [unit_key(sid, epoch) for sid in sample_ids for epoch in range(1, epochs + 1)]


def unit_label(key: str, epochs: int = 1) -> str:
    """A unit as people read it: the sample id, with ``epoch N`` when the run has repeats (or the
    unit is a later epoch's)."""
    sid, epoch = split_unit_key(key)
    return sid if epochs == 1 and epoch == 1 else f"{sid} epoch {epoch}"


def unit_dict(key: str) -> dict[str, str | int]:
    """A unit for scripts (``--json``): ``{"sample_id": …, "epoch": …}``."""
    sid, epoch = split_unit_key(key)
    return {"sample_id": sid, "epoch": epoch}


__all__ = ["expected_units", "unit_dict", "unit_label"]
