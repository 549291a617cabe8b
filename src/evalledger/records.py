"""The record: what one line of a results file holds. One definition for the writer, the line
readers, the Arrow schema, the DataFrames and the stats.

A results record is one JSON object per line. Its fields (all optional to a reader, which must
tolerate records written by older versions and by other tools):

``sample_id`` (str), ``status`` (``"ok"`` or ``"error"``), ``attempts`` (int), ``correct`` (bool or
None), ``usage`` ({``input_tokens``, ``output_tokens``}), ``cost_usd`` (float or None), ``paid``
(what the record adds to the run's bill: {``input_tokens``, ``output_tokens``, ``cost_usd``}),
``shard`` ("K/N" or None), ``model``, ``task``, ``input_hash``, ``prompt``, ``response``,
``prediction``, ``target``, ``score``, ``latency_s``, ``request_ids``, ``error`` ({``type``,
``message``, ``retryable``, ``status_code``}), ``started_at``, ``finished_at`` (ISO 8601 UTC),
``extra`` (a task's own fields), and for self-correction tasks :data:`SELF_CORRECTION_KEYS`.
"""

from __future__ import annotations

#: Self-correction fields get unprefixed columns wherever a task puts them (top level or ``extra``).
SELF_CORRECTION_KEYS = ("correct_before", "correct_after", "transition")

BASE_COLUMNS = (
    "sample_id", "status", "correct", "score", "prediction", "target", "input_tokens", "output_tokens",
    "cost_usd", "latency_s", "attempts", "model", "task", "shard", "error_type", "error_message",
    "error_status_code", "started_at", "finished_at",
)
TEXT_COLUMNS = ("response",)
