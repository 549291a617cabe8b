"""Turn a RunConfig into a concrete run: dataset loaded and validated, task, run ID, manifest.

Everything here happens before any request is sent, so bad input costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import RunConfig, diff_identity, identity_hash, make_run_id
from .datasets import Dataset, filter_shard, load_dataset, resolve_dataset
from .errors import ConfigDriftError, DatasetError
from .fsutil import create_json_exclusive, utc_now, write_json_atomic
from .ledger import MANIFEST
from .samples import Sample
from .tasks import load_task
from .tasks.base import Task

DEFAULT_TASK = "qa"


@dataclass
class PreparedRun:
    """A validated run, ready to execute: nothing has been written yet."""

    config: RunConfig
    dataset: Dataset
    task: Task
    task_spec: str
    identity: dict[str, Any]
    run_id: str
    run_dir: Path
    samples: list[Sample]  # after --limit, before --shard
    selection: list[Sample]  # this shard's samples

    @property
    def config_hash(self) -> str:
        return identity_hash(self.identity)

    def manifest(self) -> dict[str, Any]:
        """The manifest content for a new run directory."""
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.config).items()}
        cfg.pop("api_key", None)  # never write secrets to disk
        return {
            "run_id": self.run_id,
            "identity": self.identity,
            "identity_hash": self.config_hash,
            "config": cfg,
            "task": self.task.name or self.task_spec,
            "task_spec": self.task_spec,
            "prompt_version": self.task.prompt_version,
            "dataset": {
                "name": self.dataset.name,
                "path": str(self.dataset.path),
                "sha256": self.dataset.sha256,
                "total_rows": self.dataset.total_rows,
                "id_source": self.dataset.id_source,
            },
            "sample_count": len(self.samples),
            "limit": self.config.limit,
            "versions": _versions(),
            "created_at": utc_now(),
        }


def prepare_run(config: RunConfig) -> PreparedRun:
    """Resolve the dataset and task, validate every row, and compute the run ID.

    Raises :class:`DatasetError` / :class:`UsageError` with a message naming the file, row or flag.
    """
    resolved = resolve_dataset(config.dataset)
    task_spec = config.task or resolved.default_task or DEFAULT_TASK
    task = load_task(task_spec)
    dataset = load_dataset(
        resolved,
        id_column=config.id_column,
        required_fields=task.required_fields,
        limit=config.limit,
    )
    problems = []
    for sample in dataset.samples:
        problem = task.validate_sample(sample)
        if problem:
            problems.append(f"row {sample.row} (id {sample.id}): {problem}")
    if problems:
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DatasetError(
            f"{dataset.path}: {len(problems)} row(s) cannot be used by task '{task_spec}':\n  "
            + "\n  ".join(problems[:10])
            + more
        )
    task_name = task.name or task_spec
    identity = config.identity(dataset_sha256=dataset.sha256, task_name=task_name, prompt_version=task.prompt_version)
    run_id = config.run_id or make_run_id(dataset.name, config.model, task_name, identity)
    return PreparedRun(
        config=config,
        dataset=dataset,
        task=task,
        task_spec=task_spec,
        identity=identity,
        run_id=run_id,
        run_dir=config.output_dir / run_id,
        samples=dataset.samples,
        selection=filter_shard(dataset.samples, config.shard),
    )


def check_or_create_manifest(prepared: PreparedRun) -> dict[str, Any]:
    """Create the manifest, or check an existing one against this run's identity.

    A resume whose identity fields differ is refused with a field-by-field diff (it would mix
    two experiments in one ledger). A changed ``--limit`` is not identity: the sample count is
    updated.
    """
    path = prepared.run_dir / MANIFEST
    fresh = prepared.manifest()
    if create_json_exclusive(path, fresh):
        return fresh
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigDriftError(
            f"{path}: not valid JSON ({e}); cannot tell which experiment this run directory holds. "
            "Move it aside or use --overwrite."
        ) from None
    old_identity = existing.get("identity") or {}
    diff = diff_identity(old_identity, prepared.identity)
    if diff:
        raise ConfigDriftError(
            f"run {prepared.run_id} in {prepared.run_dir} was made with different settings; "
            "resuming would mix two experiments in one ledger:\n"
            + "\n".join(diff)
            + "\nUse the original settings to resume, --overwrite to start this run afresh "
            "(the old one is moved aside), or a different --run-id."
        )
    if existing.get("sample_count") != len(prepared.samples) or existing.get("limit") != prepared.config.limit:
        existing["sample_count"] = len(prepared.samples)
        existing["limit"] = prepared.config.limit
        existing["updated_at"] = utc_now()
        write_json_atomic(path, existing)
    return existing


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"evalledger": __version__, "python": platform.python_version()}
    for pkg in ("openai", "anthropic", "tenacity", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
