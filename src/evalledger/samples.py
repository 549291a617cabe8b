"""The sample value passed from datasets to tasks, and the per-sample RNG."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One dataset row.

    ``id`` is stable across runs and machines (an id column or a content hash, never the row
    index); ``row`` is the 1-based position in the file, only for messages; ``fields`` holds the
    row's columns as plain JSON-compatible Python values.
    """

    id: str
    row: int
    fields: dict[str, Any] = field(default_factory=dict)
    #: Worked examples shown before this sample's question (``--fewshot N``), never the sample itself.
    fewshot: tuple["Sample", ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def epoch_seed(seed: int, sample_id: str, epoch: int = 1) -> int:
    """The seed of one (sample, epoch): the run seed itself for epoch 1 (so a run keeps sending what
    it sent before it had repeats, and its turn cache still matches), else a 31-bit number derived
    from (run seed, sample id, epoch). It depends on nothing else, so any order, shard or resume
    gives every (sample, epoch) the same seed."""
    if epoch == 1:
        return seed
    digest = hashlib.sha256(f"{seed}\x00{sample_id}\x00{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def sample_rng(seed: int, sample_id: str, epoch: int = 1) -> random.Random:
    """A ``random.Random`` seeded by (run seed, sample id, epoch).

    Any randomness a task uses must come from here, so results do not depend on concurrency,
    shard count or resume points. Epoch 1 gives the generator every run had before repeats.
    """
    key = f"{seed}\x00{sample_id}" if epoch == 1 else f"{seed}\x00{sample_id}\x00{epoch}"
    digest = hashlib.sha256(key.encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
