"""Reading results for people: the stats dict, the pandas DataFrames, and the public CheckpointManager.

The work is split: :mod:`.scan` reads the ledger once, :mod:`.frames` types the DataFrames,
:mod:`.stats` computes stats, :mod:`.html` renders the HTML report.

Safe while a run is writing: readers never take the lock and ignore a partial last line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalledger.ledger import RunLedger
from evalledger.readers.frames import load_results, load_runs
from evalledger.readers.locate import RunRef, resolve_run_dir
from evalledger.readers.stats import run_stats


class CheckpointManager(RunLedger):
    """One run directory (:class:`~evalledger.ledger.RunLedger`: the writer side with the lock, the
    reader side without) plus :meth:`get_stats`, the readers' view of it."""

    def get_stats(self, *, vote: bool | None = None, pass_k: bool | None = None) -> dict[str, Any]:
        """Counts, accuracy (with a Wilson interval), errors, latency, tokens, cost and progress, all
        shards: the same dict as :func:`get_stats`, so that the CLI, the report and this method never
        disagree. Errors are counted apart from wrong answers (accuracy is over ``ok`` records only);
        tokens and cost are the run's bill, as ``--max-cost`` counts it."""
        return run_stats(self.run_dir, vote=vote, pass_k=pass_k)


def get_stats(run: RunRef, output_dir: str | Path | None = None, *, vote: bool | None = None,
              pass_k: bool | None = None) -> dict[str, Any]:
    """Stats of a run, all shards, in one pass over its ledger. ``run`` is a ``RunSummary``, a run
    directory, or a run ID under ``output_dir`` (default ``outputs``; see :func:`resolve_run_dir`).

    Keys: counts (``total_samples, completed_samples, error_count, pending_samples,
    correct_count``), ``accuracy`` and its Wilson ``accuracy_ci95``, ``errors_by_type``,
    ``latency_p50_s``/``latency_p95_s`` (ok samples), ``input_tokens``/``output_tokens``/``cost_usd``:
    the run's bill (every record's ``paid`` plus the calls files, as ``--max-cost`` counts it),
    ``cost_per_correct_usd``, ``throughput_per_min``, ``running`` (a process holds a lock now),
    ``eta_s`` (while running), per-shard progress under ``shards``, and for self-correction tasks
    ``transitions`` with ``accuracy_before``/``accuracy_after``. See :mod:`evalledger.readers.stats`.

    Repeats (``--epochs K``): counts are of (sample, epoch) units, ``epochs`` is K, and with K > 1
    ``repeats`` holds the accuracy per epoch, the mean over epochs with its 95 % interval over
    samples (also ``accuracy`` / ``accuracy_ci95``), the majority vote (``qa``, ``mcq``) and pass@k
    for every k <= K (``humaneval``); ``vote=True`` / ``pass_k=True`` ask for those two for any task
    (and with one epoch), False turns them off. See :mod:`evalledger.readers.repeats`.
    """
    return run_stats(resolve_run_dir(run, output_dir), vote=vote, pass_k=pass_k)


__all__ = ["get_stats", "load_results", "load_runs", "resolve_run_dir"]
