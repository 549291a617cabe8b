"""The values and records of the fake batch endpoints.

Values: what the batch endpoints share with the online fake (``API``, ``ItemFailure``,
``ItemAnswer``, the ``OnlineAPI`` they borrow from it) and what ``FakeBatches.created`` reports
(``BatchInfo``). Records: the state of the files, batches and items the endpoints hold, and the
refusal an endpoint answers with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

API = Literal["openai", "anthropic"]
CallKind = Literal["upload", "file", "create", "retrieve", "list", "cancel", "results"]
"""Endpoint kinds ``calls`` counts: ``file`` is a file's metadata, ``results`` a download of
results (an OpenAI file's content or Anthropic's results)."""

OPENAI_OPEN = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
"""OpenAI batch statuses that still move on (every other one is final)."""


@dataclass(frozen=True)
class ItemFailure:
    """An error answer: for an item (``fail_items``) or a batch endpoint's own refusal.

    ``message`` and ``error_type`` default to what the API says for ``status``; ``code`` is
    OpenAI's ``error.code``.
    """

    status: int = 400
    message: str | None = None
    error_type: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class ItemAnswer:
    """How the online API answered one batch item."""

    status: int
    body: dict[str, Any]
    request_id: str


class OnlineAPI(Protocol):
    """What the batch endpoints borrow from the online fake (``FakeServer``)."""

    @property
    def base_url(self) -> str: ...

    def answer_item(self, api: API, body: dict[str, Any], failure: ItemFailure | None) -> ItemAnswer: ...

    def error_body(self, api: API, failure: ItemFailure, request_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BatchInfo:
    """One created batch, as ``FakeBatches.created`` reports it."""

    id: str
    api: API
    custom_ids: tuple[str, ...]
    """Every custom id submitted in it, in order (an OpenAI file's unparseable lines have none)."""
    metadata: dict[str, str] | None
    status: str
    """OpenAI's ``status`` or Anthropic's ``processing_status``."""
    created_at: float
    """Unix time of creation."""
    outcomes: dict[str, int]
    """Items per outcome: ``pending``, ``succeeded``, ``errored``, ``expired``, ``canceled``."""


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class BatchItem:
    """One request of a batch and, once answered, its answer."""

    custom_id: str
    body: dict[str, Any]
    text: str
    line_id: str
    """OpenAI's ``batch_req_…`` id of the item's result line."""
    outcome: str = "pending"
    answer: ItemAnswer | None = None


@dataclass
class StoredFile:
    """An OpenAI file: uploaded as a batch's input, or written as its output or error file."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: float


@dataclass
class Batch:
    """One batch of either API, as the endpoints hold it."""

    id: str
    api: API
    items: list[BatchItem]
    custom_ids: list[str]
    metadata: dict[str, str] | None
    step: float
    items_per_second: float | None
    created_at: float
    status: str
    since: float
    """``time.monotonic()`` when ``status`` began."""
    times: dict[str, float] = field(default_factory=dict)
    """Unix time of each transition, by the API's field name (``in_progress_at``, ``ended_at``, …)."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI: the input file's problems, found while validating (the batch then fails)."""
    input_file_id: str | None = None
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    hold_key: str = ""
    answered: int = 0
    """Items are answered in order: those before this index are, none after it is."""

    def count(self, outcome: str) -> int:
        """How many of the items have ``outcome``."""
        return sum(1 for item in self.items if item.outcome == outcome)


@dataclass
class ItemRule:
    """A ``fail_items`` rule: ``remaining`` more matching items fail (None: all)."""

    substring: str
    failure: ItemFailure
    remaining: int | None


@dataclass(frozen=True)
class CallFault:
    """A ``fail_calls`` fault: the error one call answers, with its ``Retry-After`` seconds."""

    failure: ItemFailure
    retry_after: float | None


class Refused(Exception):
    """A batch endpoint refuses the call with this error."""

    def __init__(self, status: int, message: str, error_type: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.failure = ItemFailure(status=status, message=message, error_type=error_type, code=code)
