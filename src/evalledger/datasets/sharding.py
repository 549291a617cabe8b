"""Shards: ``--shard K/N`` (or Slurm's array variables) and which shard a sample id belongs to."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

from evalledger.errors import UsageError
from evalledger.samples import Sample


def parse_shard(
    text: str | None, *, environ: Mapping[str, str] | None = None
) -> tuple[int, int] | None:
    """Parse ``--shard``: ``"K/N"`` (1-based, 1 <= K <= N), ``"none"``/``""``, or ``"auto"``.

    Returns ``(k, n)``, or None for no sharding. ``"auto"`` reads Slurm's
    ``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN`` and ``SLURM_ARRAY_TASK_COUNT`` from
    ``environ`` (default ``os.environ``). Raises :class:`UsageError` naming ``--shard``.
    """
    value = (text or "").strip()
    if value.lower() in ("", "none"):
        return None
    if value.lower() == "auto":
        return _slurm_shard(os.environ if environ is None else environ)
    parts = value.split("/")
    if len(parts) != 2:
        raise UsageError(f"--shard {value}: expected K/N such as 1/4 (or 'auto' or 'none')")
    try:
        k, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageError(
            f"--shard {value}: K and N must be whole numbers, as in 1/4"
        ) from None
    if n < 1:
        raise UsageError(f"--shard {value}: N must be at least 1 (got N={n})")
    if not 1 <= k <= n:
        raise UsageError(f"--shard {value}: K must be between 1 and N (got K={k}, N={n})")
    return k, n


def _slurm_shard(environ: Mapping[str, str]) -> tuple[int, int]:
    """Shard ``(k, n)`` of this Slurm array task: the task's position in the array, 1-based.

    ``--array=1-8``, ``--array=0-7`` and ``--array=0-7%4`` (at most 4 at once) all give N=8 and
    K = position + 1, so an array may start at 0 or 1 and be throttled. A stepped array
    (``--array=0-14:2``) counts by its step. An array with holes (``--array=1,3,8``) is refused:
    its positions are not the task ids, and a shard would silently never run.
    """
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    unset = [name for name in names if not environ.get(name, "").strip()]
    if unset:
        in_job = bool(environ.get("SLURM_JOB_ID", "").strip())
        where = ("in a Slurm job that is not an array (submit with --array=1-N)" if in_job
                 else "not running in a Slurm job array")
        raise UsageError(
            f"--shard auto: {where} ({', '.join(unset)} not set); give --shard K/N, "
            "or let `evalledger slurm --shards N` write the job array for you"
        )
    optional = ("SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")
    present = [*names, *(name for name in optional if environ.get(name, "").strip())]
    try:
        values = {name: int(environ[name]) for name in present}
    except ValueError:
        shown = ", ".join(f"{name}={environ[name]!r}" for name in present)
        raise UsageError(f"--shard auto: Slurm array variables are not integers: {shown}") from None
    task_id = values["SLURM_ARRAY_TASK_ID"]
    task_min = values["SLURM_ARRAY_TASK_MIN"]
    count = values["SLURM_ARRAY_TASK_COUNT"]
    step = values.get("SLURM_ARRAY_TASK_STEP", 1)
    task_max = values.get("SLURM_ARRAY_TASK_MAX")
    shown = ", ".join(f"{name}={values[name]}" for name in present)
    if step < 1 or count < 1:
        raise UsageError(f"--shard auto: unusable Slurm array variables ({shown})")
    # Slurm sets MAX for every array; only an evenly spaced array has MIN + (COUNT-1)*STEP == MAX.
    # A list like --array=1,3,8 has COUNT=3, MIN=1, MAX=8, STEP=1: task 8 would be "shard 8/3".
    if task_max is not None and task_min + (count - 1) * step != task_max:
        raise UsageError(
            f"--shard auto: the Slurm array has holes ({shown}); use a contiguous array such as "
            f"--array=1-{count} (a throttle like --array=1-{count}%4 is fine)"
        )
    offset = task_id - task_min
    k = offset // step + 1
    if offset % step or not 1 <= k <= count:
        raise UsageError(
            f"--shard auto: task {task_id} is not in the array ({shown}); use a contiguous array such as "
            f"--array=1-{count}"
        )
    return k, count


def shard_of(sample_id: str, n: int) -> int:
    """The 1-based shard (of ``n``) that ``sample_id`` belongs to.

    The result depends only on the id: ``int(sha256(id)[:16], 16) % n + 1``. With ``--epochs K``
    every epoch of a sample belongs to the sample's shard (give this the sample id, never a unit
    key), so raising K keeps each sample, and all its repeats, in one shard.
    """
    if n < 1:
        raise UsageError(f"number of shards must be at least 1 (got {n})")
    digest = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest[:16], 16) % n + 1


def filter_shard(samples: Iterable[Sample], shard: tuple[int, int] | None) -> list[Sample]:
    """The samples in ``shard`` (``(k, n)``, 1-based), in their original order; all if None."""
    if shard is None:
        return list(samples)
    k, n = shard
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {k}/{n}: K must be between 1 and N (got K={k}, N={n})")
    return [s for s in samples if shard_of(s.id, n) == k]
