"""Turn a RunConfig into a concrete run: dataset loaded and validated, task, run ID (the manifest: :mod:`evalledger.run.manifest`).

Everything here happens before any request is sent, so bad input costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalledger._version import __version__
from evalledger.config import RunConfig, identity_hash, make_run_id
from evalledger.datasets import (
    Dataset,
    ExemplarSelector,
    LazySamples,
    ResolvedDataset,
    RowSource,
    ValidatedIndex,
    check_dataset_path,
    check_samples,
    dataset_format,
    forget_sha256,
    hashed_dataset,
    in_shard,
    index_key,
    load_dataset_bytes,
    load_exemplar_source,
    load_index,
    locate_dataset,
    max_field_chars,
    read_dataset_file,
    save_index,
    validated_index,
)
from evalledger.datasets import index as dataset_index
from evalledger.errors import UsageError
from evalledger.fsio import paused_gc, utc_now
from evalledger.ledger import Indexing, RunPaths, index_in_background
from evalledger.providers import Provider, endpoint_for, make_provider
from evalledger.samples import Sample
from evalledger.tasks import Task, load_task

log = logging.getLogger(__name__)

DEFAULT_TASK = "qa"

__all__ = ["PreparedRun", "prepare_run", "provider_for", "check_code_execution_allowed",
           "run_dir_inside", "check_output_dir_usable", "DEFAULT_TASK"]


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
    samples: Sequence[Sample]  # after --limit, before --shard (a LazySamples for a large JSON-lines file)
    selection: Sequence[Sample]  # this shard's samples
    index_key: dict[str, Any] = field(default_factory=dict)  # what the dataset's validation depended on
    new_index: ValidatedIndex | None = None  # the index this run's validation made, to save (save_dataset_index)
    # With --fewshot: what chose each sample's exemplars (every sample above already carries them).
    fewshot: ExemplarSelector | None = None

    @property
    def endpoint(self) -> str:
        """Where this run's requests go (see :func:`evalledger.providers.endpoint_for`)."""
        return endpoint_for(self.config.model, self.config.base_url)

    @property
    def config_hash(self) -> str:
        return identity_hash(self.identity)

    def save_dataset_index(self) -> None:
        """Save the validated index of a dataset this run just validated in full (see :mod:`evalledger.datasets.index`),
        so the next resume skips the validation. Call once the run directory exists and is ours."""
        if self.new_index is not None:
            save_index(RunPaths(self.run_dir).cache, self.index_key, self.new_index)
            self.new_index = None

    def manifest(self) -> dict[str, Any]:
        """The manifest content for a new run directory."""
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.config).items()}
        cfg.pop("api_key", None)  # never write secrets to disk
        # Only with --fewshot, so every other manifest keeps its fields.
        fewshot = {} if self.fewshot is None else {"fewshot": {"n": self.fewshot.n, **self.fewshot.source.describe()}}
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
            "endpoint": self.endpoint,
            "sample_count": len(self.samples),
            "limit": self.config.limit,
            "versions": _versions(),
            "created_at": utc_now(),
            **fewshot,
        }


def prepare_run(config: RunConfig, *, check_output_dir: bool = True, check_code_execution: bool = True,
                use_index: bool = True, index_ledger: bool = False) -> PreparedRun:
    """Resolve the dataset and task, validate every row, and compute the run ID.

    With ``use_index`` (what ``run`` and ``estimate`` do), a run directory holding the validated
    index of this very file for these settings (:mod:`evalledger.datasets.index`) skips the row-by-row
    validation, which that index records as passed; ``validate`` always checks every row.

    With ``check_output_dir`` (what ``run`` does), also check that ``--output-dir`` is, or can be
    created as, a writable directory and that the run directory would be inside it; ``validate``
    writes nothing and skips that. Nothing is created either way.

    With ``check_code_execution`` (what ``run`` does), a task that runs model-written code
    (``executes_code``, e.g. humaneval) is refused unless ``allow_code_execution`` is set, and
    warned about on stderr when it is; ``validate`` runs nothing and skips that.

    With ``fewshot`` > 0, the exemplar source is read and checked too, and every sample carries
    its exemplars (``Sample.fewshot``; rows read back on demand get them as they are read).

    With ``index_ledger`` (what ``run`` does), a run directory whose results files are large and
    not indexed has them indexed by a child process while the dataset is validated
    (:func:`~evalledger.ledger.index_in_background`), so the writer that opens them next reads
    only what the index does not cover.

    Raises :class:`DatasetError` / :class:`UsageError` with a message naming the file, row or flag.
    """
    located = locate_dataset(config.dataset)
    task_spec = config.task or located.default_task or DEFAULT_TASK
    # Plain "self-correct" wraps the dataset's default task (qa for a file that is not built in).
    task = load_task(task_spec, default_base=located.default_task or DEFAULT_TASK,
                     review_prompt=config.review_prompt_text())
    if check_code_execution:
        check_code_execution_allowed(task, task_spec, config)
    # The file is read and hashed once: the hash names the run, and these bytes are what is parsed.
    # A resume (use_index) of a file hashed before with the same stat reads nothing here
    # (datasets/hashcache.py); few-shot runs read it anyway, their exemplars may come from it.
    path = check_dataset_path(located.path)
    raw, st, sha256 = hashed_dataset(path, remembered=use_index and config.fewshot == 0)
    resolved = dataclasses.replace(located, sha256=sha256)
    selector = _exemplar_selector(config, resolved, raw, task, task_spec)
    # Absent without --fewshot, so every zero-shot run keeps the run ID and dataset index it had.
    fewshot = {} if selector is None else {"fewshot": selector.identity}
    task_name = task.name or task_spec
    identity = config.identity(dataset_sha256=resolved.sha256, task_name=task_name, prompt_version=task.prompt_version,
                               **fewshot)
    run_id = config.run_id or make_run_id(resolved.name, config.model, task_name, identity)
    run_dir = run_dir_inside(config.output_dir, run_id)
    # The exemplars are in the key because the index also vouches that every sample has enough of them.
    key = index_key(sha256=resolved.sha256, format=dataset_format(resolved.path), id_column=config.id_column,
                    default_id_column=resolved.default_id_column, required=list(task.required_fields),
                    task=f"{type(task).__module__}.{type(task).__qualname__}", task_spec=task_spec,
                    task_name=task_name, prompt_version=task.prompt_version, limit=config.limit,
                    max_field_chars=max_field_chars(), evalledger=__version__, **fewshot)
    # Millions of small dicts are built here and none is in a cycle: see gcpause.
    with paused_gc(), index_in_background(run_dir) if index_ledger else Indexing(None):
        index = load_index(RunPaths(run_dir).cache, key) if use_index and st.st_size >= dataset_index.MIN_BYTES else None
        loaded = _loaded_dataset(path, resolved, raw, st, index, task, task_spec, config, selector)
        del raw  # a resume of an already validated file: its rows are read back only when pending
    if loaded is None:  # the file changed under the same stat as a remembered hash: hash it afresh
        forget_sha256(path)
        return prepare_run(config, check_output_dir=check_output_dir, check_code_execution=check_code_execution,
                           use_index=False, index_ledger=index_ledger)
    dataset, new_index = loaded
    if check_output_dir:
        check_output_dir_usable(config.output_dir, run_dir)
    return PreparedRun(
        config=config,
        dataset=dataset,
        task=task,
        task_spec=task_spec,
        identity=identity,
        run_id=run_id,
        run_dir=run_dir,
        samples=dataset.samples,
        selection=in_shard(dataset.samples, config.shard),
        index_key=key,
        new_index=new_index,
        fewshot=selector,
    )


def _loaded_dataset(path: Path, resolved: ResolvedDataset, raw: bytes | None, st: os.stat_result,
                    index: ValidatedIndex | None, task: Task, task_spec: str, config: RunConfig,
                    selector: ExemplarSelector | None) -> tuple[Dataset, ValidatedIndex | None] | None:
    """The dataset from its validated ``index`` when there is one (nothing new to save), else read
    from ``path`` (when ``raw`` is None: its hash was remembered) and validated, with the index to
    save; None when the bytes read no longer have the remembered hash."""
    if index is not None:
        return _dataset_from_index(resolved, st, index, task, config.limit, selector), None
    if raw is None:  # a remembered hash, and no index to use it with: the bytes are needed after all
        raw, st = read_dataset_file(path)
        if hashlib.sha256(raw).hexdigest() != resolved.sha256:
            return None
    return _validated_dataset(resolved, raw, st, task, task_spec, config, selector)


def _validated_dataset(resolved: ResolvedDataset, raw: bytes, st: os.stat_result, task: Task, task_spec: str,
                       config: RunConfig, selector: ExemplarSelector | None) -> tuple[Dataset, ValidatedIndex | None]:
    """The dataset parsed from ``raw`` and checked (the task's check, enough exemplars), and the
    index to save for the next resume (None when the file is too small to keep one).

    A large JSON-lines file without ``--fewshot`` is checked a column at a time first
    (:func:`~evalledger.datasets.validated_index`); when that cannot vouch for it, row by row."""
    if selector is None and dataset_format(resolved.path) == ".jsonl" and st.st_size >= dataset_index.MIN_BYTES:
        index = validated_index(resolved.path, raw, id_column=config.id_column,
                                default_id_column=resolved.default_id_column, required_fields=task.required_fields,
                                limit=config.limit, rows_to_validate=task.rows_to_validate,
                                validate=task.validate_sample)
        if index is not None:
            return _dataset_from_index(resolved, st, index, task, config.limit, None), index
    dataset = load_dataset_bytes(resolved, raw, id_column=config.id_column, required_fields=task.required_fields,
                                 limit=config.limit)
    check_samples(dataset.path, dataset.samples, task.validate_sample, task_spec)
    if selector is not None:
        selector.check(dataset.samples)  # before anything is sent: every sample has enough exemplars
    dataset, new_index = _lazy_if_large(dataset, st, task, selector)
    if selector is not None and not isinstance(dataset.samples, LazySamples):
        dataset = dataclasses.replace(dataset, samples=selector.attach_all(dataset.samples))
    return dataset, new_index


def _exemplar_selector(config: RunConfig, resolved: ResolvedDataset, raw: bytes | None, task: Task,
                       task_spec: str) -> ExemplarSelector | None:
    """With ``--fewshot N``: the exemplar source, checked like a dataset, and what picks each sample's
    exemplars from it; None without. ``raw`` is the dataset's bytes (parsed, not read again, when
    the source is the dataset itself; read whenever there is ``--fewshot``)."""
    if config.fewshot == 0:
        return None
    if not task.exemplar_version:
        raise UsageError(
            f"--fewshot {config.fewshot}: task '{task_spec}' cannot show worked examples (a task shows them "
            "when it sets exemplar_version, implements exemplar_answer and builds its prompt with with_exemplars)"
        )
    source = load_exemplar_source(resolved, config.fewshot_from, n=config.fewshot, dataset_raw=raw,
                                  id_column=config.id_column, required_fields=task.required_fields,
                                  check=task.validate_exemplar, task_spec=task_spec)
    return ExemplarSelector(source, config.fewshot, config.seed, key=task.exemplar_key, layout=task.exemplar_version)


def _id_column_of(id_source: str) -> str | None:
    return id_source[len("column:"):] if id_source.startswith("column:") else None


def _dataset_from_index(resolved: ResolvedDataset, st: os.stat_result, index: ValidatedIndex, task: Task,
                        limit: int | None, selector: ExemplarSelector | None) -> Dataset:
    """The dataset of a file a previous run validated (its index matched): ids only, rows read back on demand."""
    refs = index.refs
    source = RowSource(resolved.path, resolved.sha256, st, refs, index.row_label,
                       id_column=_id_column_of(index.id_source), required=task.required_fields,
                       validate=task.validate_sample, attach=None if selector is None else selector.attach)
    n = len(refs.ids) if limit is None else min(limit, len(refs.ids))
    return Dataset(name=resolved.name, path=resolved.path, sha256=resolved.sha256,
                   samples=LazySamples(source, range(n)), total_rows=index.total_rows, id_source=index.id_source,
                   row_label=index.row_label, columns=index.columns, all_ids=frozenset(refs.ids), refs=refs)


def _lazy_if_large(dataset: Dataset, st: os.stat_result, task: Task,
                   selector: ExemplarSelector | None) -> tuple[Dataset, ValidatedIndex | None]:
    """A large JSON-lines dataset just validated: drop the rows' fields (they are read back when sent,
    with their exemplars) and return the index to save once the run directory is ours. Others are
    kept as they are."""
    refs = dataset.refs
    if refs is None or st.st_size < dataset_index.MIN_BYTES:
        return dataset, None
    index = ValidatedIndex(refs, dataset.total_rows, dataset.id_source, dataset.row_label, dataset.columns)
    if refs.starts is None:
        return dataset, index  # other formats: the rows stay in memory (no offsets to read them back by)
    source = RowSource(dataset.path, dataset.sha256, st, refs, dataset.row_label,
                       id_column=_id_column_of(dataset.id_source), required=task.required_fields,
                       validate=task.validate_sample, attach=None if selector is None else selector.attach)
    return dataclasses.replace(dataset, samples=LazySamples(source, range(len(dataset.samples)))), index


def provider_for(config: RunConfig) -> Provider:
    """The run's provider, made without importing an SDK or any network I/O (both wait for its
    ``start``), so that an unknown ``--model`` or a missing API key is refused cheaply before
    anything is estimated, written or sent."""
    return make_provider(config.model, base_url=config.base_url, api_key=config.resolved_api_key(),
                         timeout=config.request_timeout, concurrency=config.concurrency)


def check_code_execution_allowed(task: Task, task_spec: str, config: RunConfig) -> None:
    """Refuse a code-running task without ``--allow-code-execution``; warn once when allowed.

    Checked right after the task is loaded, before the dataset is read or anything is written or
    sent, so a refused run costs nothing.
    """
    if not getattr(task, "executes_code", False):
        return
    if not config.allow_code_execution:
        raise UsageError(
            f"--task {task_spec}: this task runs model-written Python code on this machine (in a child "
            "process with resource limits, which is not a security sandbox). Pass --allow-code-execution "
            "(allow_code_execution=True from Python) to run it, preferably inside a container or VM."
        )
    log.warning(
        f"--allow-code-execution: task {task_spec} will run model-written code on this machine "
        "(child process with limits and a scrubbed environment; not a security boundary)"
    )


def run_dir_inside(output_dir: Path, run_id: str) -> Path:
    """``output_dir / run_id``, refusing any run ID that would put the run anywhere else.

    ``RunConfig`` already limits ``--run-id`` to ``[A-Za-z0-9][A-Za-z0-9._-]*``, and derived
    run IDs are built from slugs; this is the last line of defence for both: the run directory
    must be exactly one level below the output directory (no ``/``, no ``.`` or ``..``).
    """
    bad = (
        run_id in ("", ".", "..")
        or "/" in run_id
        or (os.altsep is not None and os.altsep in run_id)
        or "\x00" in run_id
    )
    run_dir = Path(output_dir) / run_id
    out_abs = os.path.normpath(os.path.abspath(output_dir))
    if bad or os.path.dirname(os.path.normpath(os.path.abspath(run_dir))) != out_abs:
        raise UsageError(f"--run-id {run_id!r}: must be a single directory name inside --output-dir {output_dir}")
    return run_dir


def check_output_dir_usable(output_dir: Path, run_dir: Path) -> None:
    """Refuse (:class:`UsageError`, exit 2, naming ``--output-dir``) before any request is sent
    when the run could not write its files: the output directory (or the nearest existing
    parent it would be created in) is a file or not writable, or the run directory is a file.

    Checked without writing anything: ``os.access`` also reports a read-only filesystem or an
    immutable directory for root, who otherwise passes every permission check.
    """
    out = Path(output_dir)
    for candidate in (out, *out.absolute().parents):
        if candidate.is_symlink() and not candidate.exists():
            raise UsageError(f"--output-dir {out}: {candidate} is a broken symlink or a symlink loop")
        if not candidate.exists():
            continue
        if not candidate.is_dir():
            what = "is a file" if candidate.is_file() else "is not a directory"
            if candidate == out:
                raise UsageError(f"--output-dir {out}: {what}, not a directory")
            raise UsageError(f"--output-dir {out}: cannot create it, {candidate} {what}")
        if not os.access(candidate, os.W_OK | os.X_OK):
            where = "" if candidate == out else f" (it would be created in {candidate}, which is not writable)"
            raise UsageError(f"--output-dir {out}: not writable{where}; choose another --output-dir")
        break
    if run_dir.exists() or run_dir.is_symlink():
        if not run_dir.is_dir():
            raise UsageError(f"--output-dir {out}: the run directory {run_dir} exists but is not a directory")
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise UsageError(f"--output-dir {out}: the run directory {run_dir} is not writable")


def _versions() -> dict[str, str]:
    import importlib.metadata as md  # slow-ish to import: only when a manifest is written

    out = {"evalledger": __version__, "python": platform.python_version()}
    for pkg in ("openai", "anthropic", "tenacity", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
