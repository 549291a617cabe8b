"""Reading results for people: the stats dict and the pandas DataFrames (public entry points).

The work is split: :mod:`.scan` reads the ledger once, :mod:`.frames` types the DataFrames,
:mod:`.run_stats` computes stats, :mod:`.report_html` renders the HTML report.

Safe while a run is writing: readers never take the lock and ignore a partial last line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UsageError
from .frames import load_results, load_runs
from .ledger import MANIFEST
from .run_stats import run_stats


def resolve_run_dir(run: str | Path, output_dir: str | Path = "outputs") -> Path:
    """A run directory from a path, or from a run ID under ``output_dir``.

    Raises :class:`UsageError` listing the runs that exist when it is neither.
    """
    p = Path(run)
    if (p / MANIFEST).exists() or any(p.glob("results*.jsonl")):
        return p
    q = Path(output_dir) / str(run)
    if (q / MANIFEST).exists() or any(q.glob("results*.jsonl")):
        return q
    known = sorted(d.name for d in Path(output_dir).iterdir() if (d / MANIFEST).exists()) if Path(output_dir).is_dir() else []
    hint = f"; runs in {output_dir}: {', '.join(known[:20])}" if known else f"; no runs in {output_dir}"
    raise UsageError(f"no run found at {run!r} (neither a run directory nor a run ID under {output_dir}){hint}")


def get_stats(run: str | Path, output_dir: str | Path = "outputs") -> dict[str, Any]:
    """Stats of a run (by run ID or directory), all shards, in one pass over its ledger.

    Keys: counts (``total_samples, completed_samples, error_count, pending_samples,
    correct_count``), ``accuracy`` and its Wilson ``accuracy_ci95``, ``errors_by_type``,
    ``latency_p50_s``/``latency_p95_s`` (ok samples), ``input_tokens``/``output_tokens``/``cost_usd``:
    the run's bill (every record's ``paid`` plus the calls files, as ``--max-cost`` counts it),
    ``cost_per_correct_usd``, ``throughput_per_min``, ``running`` (a process holds a lock now),
    ``eta_s`` (while running), per-shard progress under ``shards``, and for self-correction tasks
    ``transitions`` with ``accuracy_before``/``accuracy_after``. See :mod:`evalledger.run_stats`.
    """
    return run_stats(resolve_run_dir(run, output_dir))


__all__ = ["get_stats", "load_results", "load_runs", "resolve_run_dir"]
