"""The record: what one line of a results file (or of a calls file) holds, and what it adds to the
run's bill. One definition for the writer, the line readers, the Arrow schema, the DataFrames, the
stats, the resume scan behind ``--max-cost`` and the study's grid budget.

Records
-------
A results record is one JSON object per line. Its fields (:data:`RECORD_FIELDS`; all optional to a
reader, which must tolerate records written by older versions and by other tools):

``sample_id`` (str), ``status`` (``"ok"`` or ``"error"``), ``attempts`` (int), ``correct`` (bool or
None), ``usage`` ({``input_tokens``, ``output_tokens``}: the sample's tokens), ``cost_usd`` (float
or None: the sample's cost), ``paid`` (what the record adds to the run's bill: {``input_tokens``,
``output_tokens``, ``cost_usd``}), ``shard`` ("K/N" or None), ``model``, ``task``, ``input_hash``,
``prompt`` (a list of {``role``, ``content``}), ``response``, ``prediction``, ``target``, ``score``,
``latency_s``, ``request_ids``, ``error`` ({``type``, ``message``, ``retryable``, ``status_code``}),
``started_at``, ``finished_at`` (ISO 8601 UTC), ``extra`` (a task's own fields), ``epoch`` (which
repeat of its sample, 1..K), ``seed`` (the seed that repeat sent), ``fewshot_ids``, ``cached`` and
``saved`` (below). Any other field
(a multi-turn task's ``turn_usage``, a self-correction task's :data:`SELF_CORRECTION_KEYS`) passes
through to the readers as a column of its own. The writer puts :data:`LEAD_KEYS` first, in that
order, so that resuming can read them from the start of a line without parsing it all.

A calls file (``calls*.jsonl``, multi-turn tasks) holds one record per paid model call
(:data:`CALL_FIELDS`): its ``usage`` and ``cost_usd`` are that call's.

Answers from the response cache
-------------------------------
A model call answered from the response cache shared across runs sent nothing and costs nothing.
A record with such a call has ``cached`` true (absent otherwise) and ``saved`` ({``input_tokens``,
``output_tokens``, ``cost_usd``}): the tokens of the calls the cache answered and what they would
have cost at the run's price (``cost_usd`` None when the model has no known price). Its ``usage``
and ``cost_usd`` still describe the whole answer, as for any record (the sample's tokens and their
cost, cached calls included), while ``paid`` leaves the cached calls out: a record answered wholly
from the cache bills nothing. A multi-turn task lists which calls the cache answered in
``turn_usage`` (``cached`` true) and never appends them to its calls file (only paid calls go there).

The bill
--------
What one results record adds to the run's bill (:func:`bill_of`) is its ``paid`` object when it has
one (a multi-turn task's records bill nothing there: every paid call is in the calls file, once),
else, for records older than ``paid``, its ``usage`` and ``cost_usd``. Each line of a calls file
adds its ``usage`` and ``cost_usd`` (:func:`bill_of_call`). The run's bill is the sum over every
record of every results file (all shards, every retry, ids the dataset lacks included: those
requests were paid for) plus every line of every calls file (:class:`BillTotal`).

Bad values, one treatment for every reader. It is the safe one for ``--max-cost``: a known spend is
never under-counted, and a spend that cannot be known makes the total unknown, never lower.

* A cost counts only if it is a JSON number that is finite and not negative (an int too large for
  a float is not). Anything else (null, NaN, ±Infinity, a bool, a negative number, text, a list)
  is a *missing* cost. A missing cost on a record that billed something (the object it bills from,
  ``paid`` or ``usage``, is a non-empty object) makes the cost *unknown*
  (:attr:`Bill.cost_known` False), and one unknown cost makes the total unknown (None; ``--max-cost``
  then admits nothing, since it cannot tell how much is left). A record that billed nothing (no
  ``usage``, an error before any request) adds no cost, known.
* A total that overflows a float is unknown too (:func:`total_cost`).
* A token count (and an ``attempts`` count) counts only if it is an int from 0 to 2**64 - 1 (a
  bool is not an int here); anything else counts as 0 (:func:`count_of`). The bound is where JSON
  parsers stop agreeing: orjson reads a larger integer as a float, ``json`` as an int.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

# ------------------------------------------------------------------------------ field names

#: The fields the writer puts first, in this order; the rest of a record follows in its own order.
#: ``epoch`` follows the id so that the resume pass reads a record's unit (sample, epoch) from the
#: start of its line; records without it (older ones, other tools') are epoch 1 (see ``epoch_of``).
LEAD_KEYS = ("sample_id", "epoch", "status", "attempts", "correct", "usage", "cost_usd", "paid")
#: Every top-level field a results record can have that readers know (others pass through).
#: ``seed`` is the seed that the record's (sample, epoch) sent (``samples.epoch_seed``);
#: ``fewshot_ids`` (few-shot runs only) the ids of the exemplars shown before its question, a list.
#: ``cached`` and ``saved``: answers from the response cache (see the module docstring);
#: ``batch_ids``: the provider batches of a ``--batch`` run's answers.
RECORD_FIELDS = LEAD_KEYS + (
    "shard", "model", "task", "input_hash", "prompt", "response", "prediction", "target", "score", "latency_s",
    "request_ids", "error", "started_at", "finished_at", "extra", "queued_s", "seed", "fewshot_ids", "cached", "saved",
    "batch_ids",
)
CACHED_FIELD = "cached"
#: ``--batch`` runs: the provider batch each of the record's answers came in ("" for a call that
#: failed inside its batch), in the order of the calls; absent for answers sent one by one.
BATCH_IDS_FIELD = "batch_ids"
SAVED_FIELD = "saved"
#: The fields of ``usage`` and, with ``cost_usd``, of ``paid``.
TOKEN_FIELDS = ("input_tokens", "output_tokens")
PAID_FIELDS = TOKEN_FIELDS + ("cost_usd",)
#: The fields of ``error`` and of one message of ``prompt``.
ERROR_FIELDS = ("type", "message", "retryable", "status_code")
MESSAGE_FIELDS = ("role", "content")
#: One line of a calls file (one paid model call of a multi-turn task).
CALL_FIELDS = ("sample_id", "epoch", "call_key", "turn", "shard", "model", "response", "request_id", "usage",
               "cost_usd", "finished_at")

# Top-level fields by the JSON type the runner writes them with (single-turn tasks; any may be null).
STRING_FIELDS = ("sample_id", "status", "shard", "model", "task", "input_hash", "started_at", "finished_at")
INT_FIELDS = ("attempts", "epoch", "seed")
FLOAT_FIELDS = ("cost_usd", "latency_s", "queued_s")
BOOL_FIELDS = ("correct", "score", CACHED_FIELD)  # a score is a bool from the built-in tasks; others may write anything
#: Fields that may hold any JSON value; a single-turn task writes text (a multi-turn one a list of replies).
OBJECT_FIELDS = ("prediction", "target", "response")

# ------------------------------------------------------------------------------ repeats

#: ``epoch``: which repeat of its sample a record answers (``--epochs K``: 1..K). A record without
#: it (or with a value that is not an int >= 1) answers epoch 1, as every record did before repeats.
EPOCH_FIELD = "epoch"
#: Joins a sample id and an epoch into the key of one unit of work; dataset ids never contain it.
UNIT_SEPARATOR = "\x1f"


def epoch_of(record: dict[str, Any]) -> int:
    """The epoch a record answers: its ``epoch`` when that is an int >= 1 (not a bool), else 1."""
    epoch = record.get(EPOCH_FIELD)
    return epoch if type(epoch) is int and epoch >= 1 else 1


def unit_key(sample_id: str, epoch: int = 1) -> str:
    """The key of one unit of work, (sample, epoch): the bare sample id for epoch 1 (so the keys
    of a run without repeats, and of every run written before repeats, are its sample ids), else
    ``<sample_id>\\x1f<epoch>``."""
    return sample_id if epoch == 1 else f"{sample_id}{UNIT_SEPARATOR}{epoch}"


def split_unit_key(key: str) -> tuple[str, int]:
    """``(sample_id, epoch)`` of a key made by :func:`unit_key`."""
    sample_id, sep, epoch = key.rpartition(UNIT_SEPARATOR)
    return (sample_id, int(epoch)) if sep else (key, 1)


def record_unit_key(record: dict[str, Any]) -> str | None:
    """The unit key of a results record (None when its ``sample_id`` is not a string)."""
    sample_id = record.get("sample_id")
    return unit_key(sample_id, epoch_of(record)) if type(sample_id) is str else None


# ------------------------------------------------------------------------------ columns

#: Self-correction fields get unprefixed columns wherever a task puts them (top level or ``extra``).
SELF_CORRECTION_KEYS = ("correct_before", "correct_after", "transition")
CORRECT_BEFORE, CORRECT_AFTER, TRANSITION = SELF_CORRECTION_KEYS
#: The self-correct task's transition labels (tasks/self_correct.py: ``transition()``).
TRANSITIONS = ("correct→correct", "correct→incorrect", "incorrect→correct", "incorrect→incorrect")
#: A key of ``extra`` (other than the self-correction keys) becomes the column ``extra_<key>``.
EXTRA_PREFIX = "extra_"

#: The readers' columns (one row per record; ``error_*`` and the token counts come from the nested
#: objects), by type. The DataFrame's columns are :data:`BASE_COLUMNS` then :data:`TEXT_COLUMNS`.
STRING_COLUMNS = ("sample_id", "status", "model", "task", "shard", "error_type", "error_message")
TIME_COLUMNS = ("started_at", "finished_at")
#: The record's epoch as :func:`epoch_of` reads it (never null: 1 for records without one). Readers
#: keep the latest record of each (sample, epoch), so a run has one row per sample and epoch.
EPOCH_COLUMN = EPOCH_FIELD
#: The seed a (sample, epoch) sent and the ids of its few-shot exemplars (a list of strings): columns
#: of the scan, shown in the DataFrame only when some record has them (:data:`OPTIONAL_COLUMNS`).
SEED_COLUMN = "seed"
FEWSHOT_IDS_COLUMN = "fewshot_ids"
#: A record's ``cached`` (True when the response cache answered some call, else null) and its
#: ``saved`` cost (:func:`saved_cost`): columns of the scan, in the DataFrame when some record has them.
CACHED_COLUMN = CACHED_FIELD
SAVED_COST_COLUMN = "saved_cost_usd"
OPTIONAL_COLUMNS = (SEED_COLUMN, FEWSHOT_IDS_COLUMN, CACHED_COLUMN, SAVED_COST_COLUMN)
INT_COLUMNS = ("input_tokens", "output_tokens", "attempts", "error_status_code", EPOCH_COLUMN, SEED_COLUMN)
LIST_COLUMNS = (FEWSHOT_IDS_COLUMN,)  # lists of strings
FLOAT_COLUMNS = ("cost_usd", "latency_s", SAVED_COST_COLUMN)
BOOL_COLUMNS = ("correct", CACHED_COLUMN)
OBJECT_COLUMNS = OBJECT_FIELDS
SCORE_COLUMN = "score"  # a bool, a number or any JSON value
# The scan's own columns beside those (readers.scan_batch.SCHEMA): the score as a bool, a value that
# a column's type cannot hold as JSON text in a twin column (``prediction_json``, ``score_json``),
# the pass-through fields as one JSON object, what the record added to the bill, and where it is.
SCORE_BOOL_COLUMN = "score_bool"
JSON_SUFFIX = "_json"
EXTRAS_COLUMN = "extras_json"
BILLED_COST_COLUMN = "billed_cost_usd"
OFFSET_COLUMN = "offset"

BASE_COLUMNS = (
    "sample_id", EPOCH_COLUMN, "status", "correct", "score", "prediction", "target", "input_tokens", "output_tokens",
    "cost_usd", "latency_s", "attempts", "model", "task", "shard", "error_type", "error_message",
    "error_status_code", "started_at", "finished_at",
)
TEXT_COLUMNS = ("response",)
#: The DataFrame columns the stats read (plus ``sample_id``, ``in_dataset`` and the pass-through columns).
STATS_COLUMNS = (EPOCH_COLUMN, "status", "correct", "latency_s", "finished_at", "error_type")

# ------------------------------------------------------------------------------ the bill

#: Counts (tokens, attempts) from 0 to this bound (exclusive) count; see the module docstring.
COUNT_LIMIT = 1 << 64
_EMPTY: dict[str, Any] = {}


def cost_amount(value: Any) -> float | None:
    """``value`` as a cost in USD: a finite, non-negative JSON number as a float, else None (missing)."""
    if type(value) is float:
        return value if value >= 0 and value != math.inf else None  # NaN fails ``>=``
    if type(value) is int and value >= 0:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def count_of(value: Any) -> int:
    """``value`` as a count (of tokens, of attempts): an int from 0 to ``COUNT_LIMIT - 1`` (not a bool), else 0."""
    return value if type(value) is int and 0 <= value < COUNT_LIMIT else 0


@dataclass(frozen=True, slots=True)
class Bill:
    """What one record (or one call) adds to the run's bill.

    ``cost_usd`` is None when the record has no valid cost; ``cost_known`` is False when, on top of
    that, it billed something (so the run's total cost is unknown).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    cost_known: bool = True


def _bill(source: dict[str, Any], cost: Any) -> Bill:
    amount = cost_amount(cost)
    return Bill(count_of(source.get("input_tokens")), count_of(source.get("output_tokens")), amount,
                amount is not None or not source)


def bill_of(record: dict[str, Any]) -> Bill:
    """What a results record adds to the run's bill: its ``paid`` object when that is an object, else
    its ``usage`` and ``cost_usd`` (see the module docstring for values of the wrong type)."""
    return bill_from(record.get("paid"), record.get("usage"), record.get("cost_usd"))


def bill_from(paid: Any, usage: Any, cost_usd: Any) -> Bill:
    """:func:`bill_of` of a record whose ``paid``, ``usage`` and ``cost_usd`` values are these (None:
    absent), for readers that hold those values and not the record."""
    if type(paid) is dict:
        return _bill(paid, paid.get("cost_usd"))
    return _bill(usage if type(usage) is dict else _EMPTY, cost_usd)


def saved_cost(record: dict[str, Any]) -> float | None:
    """What the calls the response cache answered for a record would have cost: its ``saved``
    object's ``cost_usd`` when that is a valid cost (:func:`cost_amount`), else None."""
    saved = record.get(SAVED_FIELD)
    return cost_amount(saved.get("cost_usd")) if type(saved) is dict else None


def bill_of_call(call: dict[str, Any]) -> Bill:
    """What one line of a calls file (one paid call) adds to the run's bill: its ``usage`` and ``cost_usd``."""
    usage = call.get("usage")
    return _bill(usage if type(usage) is dict else _EMPTY, call.get("cost_usd"))


def total_cost(costs: Iterable[float]) -> float | None:
    """The correctly rounded sum of valid costs (so it does not depend on their grouping), or None
    when it overflows a float."""
    try:
        total = math.fsum(costs)
    except OverflowError:
        return None
    return total if math.isfinite(total) else None


@dataclass
class BillTotal:
    """A sum of bills: ``items`` added, their tokens, and their cost (None when unknown)."""

    items: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_known: bool = True
    costs: list[float] = field(default_factory=list)

    def add(self, bill: Bill) -> None:
        """Add one record's (or call's) bill."""
        self.items += 1
        self.input_tokens += bill.input_tokens
        self.output_tokens += bill.output_tokens
        if bill.cost_usd is not None:
            self.costs.append(bill.cost_usd)
        elif not bill.cost_known:
            self.cost_known = False

    @property
    def cost_usd(self) -> float | None:
        """The total cost, or None when it is unknown (see the module docstring)."""
        return total_cost(self.costs) if self.cost_known else None
