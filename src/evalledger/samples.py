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

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def sample_rng(seed: int, sample_id: str) -> random.Random:
    """A ``random.Random`` seeded by (run seed, sample id).

    Any randomness a task uses must come from here, so results do not depend on concurrency,
    shard count or resume points.
    """
    digest = hashlib.sha256(f"{seed}\x00{sample_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
