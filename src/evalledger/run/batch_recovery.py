"""Finding a batch whose create reply never reached the journal.

A kill between the provider's reply to "create" and the journal's fsync of its id (a few
milliseconds), or a create whose reply was lost on the network, leaves an intent without a batch
id. Before anything is submitted again, the provider's recent batches are searched for it:

- OpenAI: every batch carries the intent id in its ``metadata`` (``evalledger_intent``): an exact match.
- Anthropic: batches have no metadata. A batch created since the intent (minus a clock slack) with
  the intent's number of requests, not journaled by this run, is a candidate; once a candidate has
  ended its custom ids are read back and must be exactly the intent's. A candidate still in
  progress cannot be read yet: the newest one is taken (its results are matched by custom id when
  it ends, so another's items are never taken as ours; what is not ours comes back as unfinished and
  is sent again). Two batches of the same size created on the same key within that moment is the one
  case where a request could be paid twice; the README says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from evalledger.ledger import JournaledBatch
from evalledger.providers import BatchAPI, BatchInfo

#: Seconds before the intent's own clock reading that a provider's ``created_at`` may show (skew).
CLOCK_SLACK_S = 300.0
METADATA_INTENT = "evalledger_intent"


async def find_created(provider: BatchAPI, batch: JournaledBatch, journaled: Iterable[JournaledBatch]) -> str | None:
    """The provider's id of the batch ``batch`` (an intent with no id) created, or None when the
    provider has no such batch. Raises the SDK's exception if the provider cannot be asked."""
    known = {b.batch_id for b in journaled if b.batch_id}
    listed: list[BatchInfo] = await provider.list_batches(batch.intended_at - CLOCK_SLACK_S)
    candidates = [info for info in listed if info.id not in known]
    for info in candidates:
        if info.metadata.get(METADATA_INTENT) == batch.intent:
            return info.id
    if batch.api != "anthropic":
        return None  # OpenAI batches always carry the intent: no match, no batch
    same_size = [info for info in candidates if info.counts.total == len(batch.items)]
    wanted = frozenset(batch.custom_ids)
    unreadable: list[BatchInfo] = []
    for info in same_size:
        held = await provider.batch_custom_ids(info)
        if held is None:
            unreadable.append(info)
        elif held == wanted:
            return info.id
    if unreadable:
        return max(unreadable, key=lambda info: info.created_at).id
    return None


__all__ = ["CLOCK_SLACK_S", "METADATA_INTENT", "find_created"]
