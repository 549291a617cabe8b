"""Finding runs: a run directory from a run ID or a path, and the runs under an output directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from evalledger.errors import UsageError
from evalledger.ledger import is_run_dir, moved_aside_of


def run_dirs(output_dir: str | Path) -> list[Path]:
    """Every run directory directly under ``output_dir`` (has a manifest or a results file), sorted.

    Directories moved aside by ``--overwrite`` (``<run_id>.old-<timestamp>``) are left out.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if moved_aside_of(d.name) is None and is_run_dir(d)]


DEFAULT_OUTPUT_DIR = "outputs"

#: Run directories this process made or resumed, by run ID: ``get_stats(summary.run_id)`` after
#: ``run_experiment(RunConfig(..., output_dir="elsewhere"))`` means that run, not a namesake under
#: ``outputs/``.
_MADE_HERE: dict[str, Path] = {}


def note_run_dir(run_dir: str | Path) -> None:
    """Remember that this process ran ``run_dir`` (the run engine calls this), so that its run ID
    resolves to it when no output directory is given."""
    run_dir = Path(run_dir)
    _MADE_HERE[run_dir.name] = run_dir.resolve()


RunRef = Union[str, Path, Any]
"""A run: a run directory, a run ID, or anything with a ``run_dir`` (a ``RunSummary``)."""


def resolve_run_dir(run: RunRef, output_dir: str | Path | None = None) -> Path:
    """The run directory ``run`` means: a ``RunSummary`` (its ``run_dir``), a run directory's path,
    or a run ID under ``output_dir`` (default ``outputs``).

    With no ``output_dir``, a run ID this process ran elsewhere (another ``output_dir``) counts too.
    When the reference could mean two different runs, it is refused, naming both, rather than
    guessed. Raises :class:`UsageError` listing the runs that exist when it means none.
    """
    summary_dir = getattr(run, "run_dir", None)
    if summary_dir is not None and not isinstance(run, (str, Path)):
        if is_run_dir(Path(summary_dir)):
            return Path(summary_dir)
        raise UsageError(f"no run found at {summary_dir} (the run directory of {getattr(run, 'run_id', run)!r})")
    if not isinstance(run, (str, Path)):
        raise UsageError(f"a run is a run ID, a run directory or a RunSummary, not {type(run).__name__}")
    where = Path(DEFAULT_OUTPUT_DIR if output_dir is None else output_dir)
    candidates = [Path(run), where / str(run)]
    if output_dir is None and str(run) in _MADE_HERE:
        candidates.append(_MADE_HERE[str(run)])
    found: dict[Path, Path] = {}
    for c in candidates:
        if is_run_dir(c):
            found.setdefault(c.resolve(), c)
    if len(found) == 1:
        return next(iter(found.values()))
    if len(found) > 1:
        paths = " and ".join(str(c) for c in found.values())
        raise UsageError(f"{str(run)!r} could mean {len(found)} runs: {paths}; pass the run directory, the "
                         "RunSummary, or output_dir to say which")
    known = [d.name for d in run_dirs(where)]
    hint = f"; runs in {where}: {', '.join(known[:20])}" if known else f"; no runs in {where}"
    raise UsageError(f"no run found at {str(run)!r} (neither a run directory nor a run ID under {where}){hint}")
