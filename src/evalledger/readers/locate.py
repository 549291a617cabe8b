"""Finding runs: a run directory from a run ID or a path, and the runs under an output directory."""

from __future__ import annotations

from pathlib import Path

from evalledger.errors import UsageError
from evalledger.ledger import is_run_dir


def run_dirs(output_dir: str | Path) -> list[Path]:
    """Every run directory directly under ``output_dir`` (has a manifest or a results file), sorted.

    Directories moved aside by ``--overwrite`` (``<run_id>.old-<timestamp>``) are left out.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if ".old-" not in d.name and is_run_dir(d)]


def resolve_run_dir(run: str | Path, output_dir: str | Path = "outputs") -> Path:
    """A run directory from a path, or from a run ID under ``output_dir``.

    Raises :class:`UsageError` listing the runs that exist when it is neither.
    """
    p = Path(run)
    if is_run_dir(p):
        return p
    q = Path(output_dir) / str(run)
    if is_run_dir(q):
        return q
    known = [d.name for d in run_dirs(output_dir)]
    hint = f"; runs in {output_dir}: {', '.join(known[:20])}" if known else f"; no runs in {output_dir}"
    raise UsageError(f"no run found at {run!r} (neither a run directory nor a run ID under {output_dir}){hint}")
