"""Reading runs, never writing them: the streaming scan, its Arrow fast path and columnar cache,
the pandas DataFrames, the stats dict, the HTML report, and finding runs by ID.

Safe while a run is writing: readers never take a lock and ignore a partial last line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalledger.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first use (see evalledger.lazy)
    from evalledger.readers.api import CheckpointManager, get_stats
    from evalledger.readers.compare import DEFAULT_RESAMPLES, Comparison, ComparisonReport, compare_runs
    from evalledger.readers.frames import jsonable, load_results, load_runs
    from evalledger.readers.html import write_report
    from evalledger.readers.intervals import mean_interval, wilson_interval
    from evalledger.readers.listing import error_groups, export_results, list_runs
    from evalledger.readers.locate import RunRef, note_run_dir, resolve_run_dir, run_dirs
    from evalledger.readers.repeats import pass_at_k, per_sample_frame, vote_key
    from evalledger.readers.stats import run_stats

__all__ = [
    "CheckpointManager",
    "DEFAULT_RESAMPLES",
    "Comparison",
    "ComparisonReport",
    "compare_runs",
    "error_groups",
    "export_results",
    "get_stats",
    "jsonable",
    "load_results",
    "load_runs",
    "mean_interval",
    "pass_at_k",
    "per_sample_frame",
    "list_runs",
    "RunRef",
    "note_run_dir",
    "resolve_run_dir",
    "run_dirs",
    "run_stats",
    "vote_key",
    "wilson_interval",
    "write_report",
]

__getattr__, __dir__ = lazy_exports(__name__, __all__, {
    "evalledger.readers.api": ("CheckpointManager", "get_stats"),
    "evalledger.readers.compare": ("DEFAULT_RESAMPLES", "Comparison", "ComparisonReport", "compare_runs"),
    "evalledger.readers.frames": ("jsonable", "load_results", "load_runs"),
    "evalledger.readers.html": ("write_report",),
    "evalledger.readers.intervals": ("mean_interval", "wilson_interval"),
    "evalledger.readers.listing": ("error_groups", "export_results", "list_runs"),
    "evalledger.readers.locate": ("RunRef", "note_run_dir", "resolve_run_dir", "run_dirs"),
    "evalledger.readers.repeats": ("pass_at_k", "per_sample_frame", "vote_key"),
    "evalledger.readers.stats": ("run_stats",),
})
