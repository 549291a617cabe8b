"""Provider batch APIs (OpenAI's Batch API, Anthropic's Message Batches), in neutral types.

A batch is created once from :class:`BatchItem` s, polled (:meth:`BatchAPI.retrieve_batch`) until
it has ended, then read back as one :class:`BatchResult` per item. Each item's request body is the
very body the provider's online ``complete`` sends, and each succeeded item's reply is parsed by
the very code that parses an online reply, so a batch record and an online record of the same
request cannot differ in anything but the price.

As online, providers do not retry: every call here raises the SDK's own exceptions, which
:meth:`Provider.classify` classifies. What fails *inside* a batch (one request's error) is not an
exception but a :class:`BatchResult` with an :class:`ErrorInfo` (never FATAL: the other requests
of the same batch were served).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from evalledger.providers.base import ChatRequest, ChatResponse, ErrorInfo, ErrorKind, is_transient_status

#: What a custom id may be: Anthropic's rule, which OpenAI accepts too.
CUSTOM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Error types (either API's ``error.type``, or OpenAI's ``error.code``) that waiting may clear.
TRANSIENT_ERROR_TYPES = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error",
                                   "server_error", "rate_limit_exceeded"})

# OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch; ``custom_id`` maps its result back to the run's (sample, turn)."""

    custom_id: str
    request: ChatRequest

    def __post_init__(self) -> None:
        if not isinstance(self.custom_id, str) or CUSTOM_ID_PATTERN.fullmatch(self.custom_id) is None:
            raise ValueError(f"batch custom_id {self.custom_id!r}: must be 1 to 64 of A-Z a-z 0-9 _ -")


@dataclass(frozen=True)
class BatchLimits:
    """How much one batch of a provider may hold."""

    max_requests: int
    max_bytes: int


@dataclass(frozen=True)
class BatchCounts:
    """A batch's requests by state. OpenAI counts only finished ones (``completed``, ``failed``):
    the rest is ``processing`` while it runs, and ``expired`` / ``canceled`` once it ended so."""

    total: int
    succeeded: int
    failed: int
    processing: int
    expired: int = 0
    canceled: int = 0


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the provider reports it now."""

    id: str
    #: the provider's own word: validating, in_progress, finalizing, completed, failed, expired,
    #: cancelling, cancelled (OpenAI); in_progress, canceling, ended (Anthropic)
    status: str
    #: final: no item will change any more, and the results can be read
    ended: bool
    counts: BatchCounts
    #: unix seconds
    created_at: float
    #: OpenAI's metadata; {} for Anthropic, whose batches have none
    metadata: dict[str, str]
    #: why a whole batch failed (OpenAI ``failed``: its ``errors.data`` messages, joined)
    error: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """One item's outcome: exactly one of ``response`` (succeeded), ``error`` (failed inside the
    batch: kind TRANSIENT or SAMPLE, never FATAL) or ``unfinished`` (expired or cancelled before
    it ran: nothing was paid for it, and the run sends it again)."""

    custom_id: str
    response: ChatResponse | None = None
    error: ErrorInfo | None = None
    unfinished: bool = False

    def __post_init__(self) -> None:
        if (self.response is not None) + (self.error is not None) + self.unfinished != 1:
            raise ValueError(f"batch result {self.custom_id!r}: exactly one of response, error, unfinished")


class BatchAPI(ABC):
    """A provider's batch API: create a batch, poll it, list recent ones, read it back, cancel it.

    Each method is one or a few calls of the SDK's client and raises the SDK's own exceptions.
    """

    batch_limits: BatchLimits

    @property
    def batch_available(self) -> bool:
        """Whether this provider's endpoint offers the batch API at all."""
        return True

    @abstractmethod
    def batch_item_bytes(self, item: BatchItem) -> int:
        """The bytes ``item`` adds to a batch (its JSONL line, or its entry in the JSON body)."""

    @abstractmethod
    async def create_batch(self, items: Sequence[BatchItem], metadata: Mapping[str, str]) -> BatchInfo:
        """Submit ``items`` as one batch (``metadata`` where the API keeps it). Raises ValueError,
        before any request, for an empty batch, a repeated custom id or one past the limits."""

    @abstractmethod
    async def retrieve_batch(self, batch_id: str) -> BatchInfo:
        """The batch's state now."""

    @abstractmethod
    async def list_batches(self, created_after: float) -> list[BatchInfo]:
        """The account's batches created at or after ``created_after`` (unix seconds, to the whole
        second: OpenAI stamps batches in whole seconds), newest first."""

    @abstractmethod
    async def batch_results(self, info: BatchInfo) -> list[BatchResult]:
        """One result for every item the provider reports, for an ended batch (the batch is read
        again first, so ``info`` may be old). Raises ValueError while it has not ended."""

    @abstractmethod
    async def batch_custom_ids(self, info: BatchInfo) -> frozenset[str] | None:
        """The custom ids the batch holds, or None while they cannot be known."""

    @abstractmethod
    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel the batch; its state right after."""


def supports_batch(provider: object) -> bool:
    """Whether ``provider`` can run requests through a batch API (``openai/`` and ``anthropic/``;
    not the embedded model nor other OpenAI-compatible servers)."""
    return isinstance(provider, BatchAPI) and provider.batch_available


async def created_since(batches: AsyncIterable[Any], as_info: Callable[[Any], BatchInfo],
                        created_after: float) -> list[BatchInfo]:
    """The batches of a newest-first listing (the SDK's paginator) created at or after
    ``created_after``, taken to the whole second below it (OpenAI's ``created_at`` is whole seconds,
    so a batch created 0.3 s after ``created_after`` may carry an earlier stamp). Stops paging at the
    first older one."""
    since = math.floor(created_after)
    found = []
    async for batch in batches:
        info = as_info(batch)
        if info.created_at < since:
            break
        found.append(info)
    return found


def check_batch(items: Sequence[BatchItem], sizes: Iterable[int], limits: BatchLimits, overhead: int = 0) -> None:
    """Refuse a batch the provider would refuse: empty, a custom id twice, more requests or bytes
    (``sizes`` of the items plus ``overhead``) than ``limits``. Raises ValueError."""
    if not items:
        raise ValueError("a batch needs at least one request")
    if len(items) > limits.max_requests:
        raise ValueError(f"a batch of {len(items)} requests: at most {limits.max_requests} fit in one")
    seen: set[str] = set()
    for item in items:
        if item.custom_id in seen:
            raise ValueError(f"batch custom_id {item.custom_id!r} appears twice in one batch")
        seen.add(item.custom_id)
    total = sum(sizes) + overhead
    if total > limits.max_bytes:
        raise ValueError(f"a batch of {total} bytes: at most {limits.max_bytes} fit in one")


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` as a plain dict, refused (ValueError; TypeError for a non-string) past OpenAI's rules."""
    out = dict(metadata)
    if len(out) > MAX_METADATA_PAIRS:
        raise ValueError(f"batch metadata has {len(out)} pairs: at most {MAX_METADATA_PAIRS}")
    for key, value in out.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"batch metadata {key!r}: keys and values must be strings")
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise ValueError(f"batch metadata {key!r}: keys up to {MAX_METADATA_KEY} characters, "
                             f"values up to {MAX_METADATA_VALUE}")
    return out


def jsonl_objects(content: bytes) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; blank lines, and lines that are not a JSON object, are
    skipped (without a custom id such a line cannot be matched to any item)."""
    out = []
    for line in content.splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def field_of(obj: Any, name: str) -> Any:
    """A field of an SDK model or of a dict, or None when it is absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def unix_seconds(value: Any) -> float:
    """A timestamp as unix seconds: a number, a datetime or an ISO 8601 string; else 0.0."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return 0.0
    if isinstance(value, datetime):
        return value.timestamp()
    return 0.0


def string_dict(value: Any) -> dict[str, str]:
    """The string pairs of a mapping (a batch's metadata); anything else is no metadata."""
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def item_error(error_type: str, message: str, status: int | None = None,
               request_id: str | None = None) -> ErrorInfo:
    """One failed request of a batch: TRANSIENT for a status or an error type that waiting may
    clear (429, 5xx, overloaded, api_error), SAMPLE otherwise. Never FATAL: the same credentials
    and model served the rest of the batch."""
    transient = (status is not None and is_transient_status(status)) or error_type in TRANSIENT_ERROR_TYPES
    kind = ErrorKind.TRANSIENT if transient else ErrorKind.SAMPLE
    return ErrorInfo(kind, error_type, message, status, None, request_id)
