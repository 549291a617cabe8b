"""RunConfig (frozen) and the stable run ID.

The run ID is ``<dataset-stem>_<model-slug>_<task>_<hash8>`` where the hash covers only the
*identity* fields: what makes two runs the same experiment (dataset content, task and its prompt
version, model, generation parameters, seed). Execution knobs (concurrency, shard, output dir,
limit, retries) never change it, and neither does the date: the same command on another day or
machine resumes the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalledger.errors import UsageError
from evalledger.pricing import Price, price_for

DEFAULT_MODEL = "local/smollm2"
DEFAULT_MAX_TOKENS = 512

#: Bump when the way identity fields are canonicalised changes (it would change every run ID).
IDENTITY_SCHEMA = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``evalledger run`` needs.

    Identity fields (part of the run ID): ``dataset`` content (through its sha256), ``task`` (and
    its prompt version), ``model``, ``temperature``, ``max_tokens``, ``top_p``, ``seed``, and when
    set ``id_column`` and the sha256 of the ``review_prompt`` file's text. Everything else is an
    execution knob (``allow_code_execution`` too: it permits running a task, it does not change
    what the task computes; and the response cache's ``cache``, ``cache_dir`` and ``cache_ttl``:
    a cached answer is the answer to the very same request).
    """

    dataset: str
    model: str = DEFAULT_MODEL
    task: str | None = None  # None: the built-in dataset's default task, else "qa"
    # generation parameters (identity)
    temperature: float = 0.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    top_p: float | None = None
    seed: int = 0
    id_column: str | None = None
    review_prompt: str | None = None  # file replacing self-correct's review prompt (identity: its text's sha256)
    # worked examples before each question (identity when > 0: N, the source's sha256, the selection rule)
    fewshot: int = 0
    fewshot_from: str | None = None  # a dataset file of exemplars; None: the dataset's shipped source
    # execution knobs (not identity)
    output_dir: Path = Path("outputs")
    run_id: str | None = None
    limit: int | None = None
    epochs: int = 1  # each sample asked this many times (not identity: raising it extends the run)
    shard: tuple[int, int] | None = None
    concurrency: int = 8
    resume: bool = True
    overwrite: bool = False
    keep_old: int | None = None  # with overwrite: prune moved-aside copies of this run beyond the newest N
    allow_code_execution: bool = False  # tasks that run model-written code (humaneval) refuse without it
    retry_errors: bool = True
    checkpoint_every: int = 50
    max_attempts: int = 6
    max_retry_wait: float = 120.0  # seconds, cap on one backoff sleep
    request_timeout: float = 600.0
    grace_seconds: float = 30.0
    base_url: str | None = None
    # the run's endpoint may differ from the one recorded (the same model behind a proxy, say)
    allow_endpoint_change: bool = False
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None  # read the key from this variable instead of the SDK's default
    rpm: float | None = None  # requests per minute, shared by all workers (None: no limit)
    tpm: float | None = None  # tokens per minute (prompt estimate + max_tokens, corrected by usage)
    adaptive_concurrency: bool = True  # halve in-flight requests on 429/529, grow back on success
    fsync: str = "batch"  # always | batch | off
    max_cost: float | None = None  # USD budget for the whole run, across resumes
    prices_file: str | None = None  # a price table replacing the shipped prices.toml
    price_input: float | None = None  # USD per 1M input tokens, overrides the table
    price_output: float | None = None  # USD per 1M output tokens, overrides the table
    # the response cache shared across runs (not identity: a cached answer is the answer to the same request)
    cache: bool = True  # look identical requests up before sending them, store answers (False: neither)
    cache_dir: str | None = None  # None: $EVALLEDGER_CACHE_DIR, else under $XDG_CACHE_HOME or ~/.cache
    cache_ttl: float | None = None  # days: older entries are not used (None: no limit)
    batch: bool = False  # send through the provider's batch API (openai/, anthropic/): half the price, results within 24 h
    batch_size: int | None = None  # requests per provider batch (None: the provider's own limit)
    no_wait: bool = False  # with batch: submit, journal and exit; the same command later collects
    workers: int = 1  # processes on this host sharing the run's pending units and its rate limits
    max_consecutive_errors: int = 20  # circuit breaker; 0 turns it off
    min_free_mb: float = 100.0  # free space to keep beyond the run's estimated output
    quiet: bool = False
    progress_interval: float = 10.0  # seconds between plain status lines when not on a TTY

    def __post_init__(self) -> None:
        # Normalise so equal configs compare and hash equal whatever the caller passed: Python
        # callers naturally hand over pathlib.Path objects for the file options.
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name in ("dataset", "review_prompt", "prices_file", "fewshot_from", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the flag for any invalid value."""
        if not self.dataset:
            raise UsageError("--dataset is required")
        if not self.model or self.model.strip() != self.model:
            raise UsageError(f"--model {self.model!r}: give a model such as openai/gpt-4o-mini")
        if not 0.0 <= self.temperature <= 2.0:
            raise UsageError(f"--temperature {self.temperature}: must be between 0 and 2")
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens {self.max_tokens}: must be at least 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.model.startswith("anthropic/") and (self.temperature != 0.0 or self.top_p is not None):
            raise UsageError(
                f"--temperature/--top-p with --model {self.model}: the Anthropic Messages API (version "
                "2026-10-21, SDK 2.x) no longer accepts sampling parameters; leave them at their defaults"
            )
        if type(self.epochs) is not int or self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs}: must be a whole number, at least 1")
        if type(self.fewshot) is not int or self.fewshot < 0:
            raise UsageError(f"--fewshot {self.fewshot}: must be a whole number, 0 (zero-shot) or more")
        if self.fewshot_from is not None and self.fewshot == 0:
            raise UsageError(f"--fewshot-from {self.fewshot_from}: pass --fewshot N too (how many exemplars to show)")
        if self.concurrency < 1:
            raise UsageError(f"--concurrency {self.concurrency}: must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit {self.limit}: must be at least 1")
        if self.checkpoint_every < 1:
            raise UsageError(f"--checkpoint-every {self.checkpoint_every}: must be at least 1")
        if self.max_attempts < 1:
            raise UsageError(f"--max-attempts {self.max_attempts}: must be at least 1")
        if self.rpm is not None and self.rpm <= 0:
            raise UsageError(f"--rpm {self.rpm}: must be positive")
        if self.tpm is not None and self.tpm <= 0:
            raise UsageError(f"--tpm {self.tpm}: must be positive")
        if self.fsync not in ("always", "batch", "off"):
            raise UsageError(f"--fsync {self.fsync!r}: choose always, batch or off")
        if self.max_cost is not None and self.max_cost <= 0:
            raise UsageError(f"--max-cost {self.max_cost}: must be a positive amount of USD")
        if self.cache_ttl is not None and not 0 < self.cache_ttl < float("inf"):
            raise UsageError(f"--cache-ttl {self.cache_ttl}: must be a positive number of days")
        if self.batch and not self.model.startswith(("openai/", "anthropic/")):
            raise UsageError(f"--batch with --model {self.model}: only openai/<model> and anthropic/<model> have a "
                             "batch API (OpenAI's Batch API, Anthropic's Message Batches)")
        if self.batch_size is not None and (type(self.batch_size) is not int or self.batch_size < 1):
            raise UsageError(f"--batch-size {self.batch_size}: must be a whole number, at least 1")
        if self.batch_size is not None and not self.batch:
            raise UsageError(f"--batch-size {self.batch_size}: applies to --batch runs; pass --batch too")
        if self.no_wait and not self.batch:
            raise UsageError("--no-wait applies to --batch runs (submit the batches and exit); pass --batch too")
        if type(self.workers) is not int or self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be a whole number, at least 1")
        if self.workers > 1 and self.batch:
            raise UsageError(f"--workers {self.workers} with --batch: a batch run sends few requests and waits for the "
                             "provider; one process is enough (leave --workers at 1)")
        if self.max_consecutive_errors < 0:
            raise UsageError(f"--max-consecutive-errors {self.max_consecutive_errors}: must be 0 (off) or more")
        if self.keep_old is not None:
            if self.keep_old < 0:
                raise UsageError(f"--keep-old {self.keep_old}: must be 0 or more")
            if not self.overwrite:
                raise UsageError("--keep-old applies to the copies --overwrite moves aside: pass it with "
                                 "--overwrite (or use `evalledger prune OUTPUT_DIR --keep N`)")
        if self.min_free_mb < 0:
            raise UsageError(f"--min-free-mb {self.min_free_mb}: must not be negative")
        if not 0 <= self.progress_interval < float("inf"):
            raise UsageError(f"--progress-interval {self.progress_interval}: must be 0 (no status lines) or more seconds")
        if self.grace_seconds < 0:
            raise UsageError(f"--grace-seconds {self.grace_seconds}: must not be negative")
        if self.shard is not None:
            k, n = self.shard
            if not (n >= 1 and 1 <= k <= n):
                raise UsageError(f"--shard {k}/{n}: K must be between 1 and N")
        if self.run_id is not None:
            check_run_id(self.run_id)

    def resolved_api_key(self) -> str | None:
        """The explicit key, or the one in ``api_key_env``; None lets the SDK read its default variable."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise UsageError(f"--api-key-env {self.api_key_env}: that environment variable is not set")
            return key
        return None

    def price(self) -> "Price | None":
        """The price for this run's model: --price-input/--price-output, else the (--prices) table (its
        batch price with --batch); None if unknown."""
        return price_for(self.model, prices_file=self.prices_file, price_input=self.price_input,
                         price_output=self.price_output, batch=self.batch)

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def identity(self, *, dataset_sha256: str, task_name: str, prompt_version: str,
                 fewshot: dict[str, Any] | None = None) -> dict[str, Any]:
        """The identity fields, canonicalised. Two runs are the same experiment iff these match.

        ``fewshot`` (with ``--fewshot N``): what identifies the exemplars, ``{"n", "source_sha256",
        "rule"}``, made by the datasets part, which knows the source and the selection rule."""
        ident: dict[str, Any] = {
            "schema": IDENTITY_SCHEMA,
            "dataset_sha256": dataset_sha256,
            "task": task_name,
            "prompt_version": prompt_version,
            "model": self.model,
            "temperature": float(self.temperature),
            "max_tokens": int(self.max_tokens),
            "top_p": None if self.top_p is None else float(self.top_p),
            "seed": int(self.seed),
        }
        # Only present when set, so the common case keeps the documented field list.
        if self.id_column is not None:
            ident["id_column"] = self.id_column
        if self.review_prompt is not None:
            # The text, not the path: the same prompt from another path is the same experiment.
            text = self.review_prompt_text() or ""
            ident["review_prompt_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if self.fewshot > 0:
            if fewshot is None:
                raise ValueError("identity(): --fewshot N needs the exemplars' identity")
            ident["fewshot"] = dict(fewshot)
        return ident

    def review_prompt_text(self) -> str | None:
        """The text of the ``--review-prompt`` file (None when not set); :class:`UsageError` if unreadable."""
        if self.review_prompt is None:
            return None
        path = Path(self.review_prompt).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UsageError(f"--review-prompt {self.review_prompt}: cannot read it ({reason})") from None
        if not text.strip():
            raise UsageError(f"--review-prompt {self.review_prompt}: the file is empty")
        return text

    def to_cli_args(self) -> list[str]:
        """The ``evalledger run`` arguments that reproduce this config (used for resume hints)."""
        args = ["--dataset", self.dataset, "--model", self.model]
        if self.task is not None:
            args += ["--task", self.task]
        defaults = RunConfig(dataset=self.dataset)
        pairs: list[tuple[str, Any, Any]] = [
            ("--temperature", self.temperature, defaults.temperature),
            ("--max-tokens", self.max_tokens, defaults.max_tokens),
            ("--top-p", self.top_p, defaults.top_p),
            ("--seed", self.seed, defaults.seed),
            ("--id-column", self.id_column, defaults.id_column),
            ("--review-prompt", self.review_prompt, defaults.review_prompt),
            ("--fewshot", self.fewshot, defaults.fewshot),
            ("--fewshot-from", self.fewshot_from, defaults.fewshot_from),
            ("--output-dir", str(self.output_dir), str(defaults.output_dir)),
            ("--run-id", self.run_id, defaults.run_id),
            ("--limit", self.limit, defaults.limit),
            ("--epochs", self.epochs, defaults.epochs),
            ("--concurrency", self.concurrency, defaults.concurrency),
            ("--checkpoint-every", self.checkpoint_every, defaults.checkpoint_every),
            ("--max-attempts", self.max_attempts, defaults.max_attempts),
            ("--grace-seconds", self.grace_seconds, defaults.grace_seconds),
            ("--base-url", self.base_url, defaults.base_url),
            ("--api-key-env", self.api_key_env, defaults.api_key_env),
            ("--request-timeout", self.request_timeout, defaults.request_timeout),
            ("--max-retry-wait", self.max_retry_wait, defaults.max_retry_wait),
            ("--rpm", self.rpm, defaults.rpm),
            ("--tpm", self.tpm, defaults.tpm),
            ("--fsync", self.fsync, defaults.fsync),
            ("--max-cost", self.max_cost, defaults.max_cost),
            ("--prices", self.prices_file, defaults.prices_file),
            ("--price-input", self.price_input, defaults.price_input),
            ("--price-output", self.price_output, defaults.price_output),
            ("--cache-dir", self.cache_dir, defaults.cache_dir),
            ("--cache-ttl", self.cache_ttl, defaults.cache_ttl),
            ("--batch-size", self.batch_size, defaults.batch_size),
            ("--workers", self.workers, defaults.workers),
            ("--max-consecutive-errors", self.max_consecutive_errors, defaults.max_consecutive_errors),
            ("--min-free-mb", self.min_free_mb, defaults.min_free_mb),
            ("--progress-interval", self.progress_interval, defaults.progress_interval),
        ]
        for flag, value, default in pairs:
            if value != default and value is not None:
                args += [flag, str(value)]
        if self.shard is not None:
            args += ["--shard", f"{self.shard[0]}/{self.shard[1]}"]
        if not self.retry_errors:
            args.append("--no-retry-errors")
        if not self.adaptive_concurrency:
            args.append("--no-adaptive-concurrency")
        if self.allow_code_execution:
            args.append("--allow-code-execution")
        if not self.cache:
            args.append("--no-cache")
        if self.batch:
            args.append("--batch")
        if self.no_wait:
            args.append("--no-wait")
        return args

    def resume_command(self) -> str:
        """The exact shell command that resumes this run."""
        return shlex.join(["evalledger", "run", *self.to_cli_args()])


#: One plain directory name: no '/', and a letter or digit first, so never '.', '..', a hidden
#: directory or something that reads as a flag (prepare.run_dir_inside checks the path again).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_run_id(run_id: str) -> None:
    """Raise :class:`UsageError` naming ``--run-id`` unless ``run_id`` is a plain directory name."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise UsageError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' (max 200 chars)")


def identity_hash(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the identity fields."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def slug(text: str, max_len: int = 48) -> str:
    """A file-name-safe slug: ``openai/gpt-4o-mini`` → ``openai-gpt-4o-mini``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return (s or "x")[:max_len].rstrip("-._") or "x"


def make_run_id(dataset_stem: str, model: str, task_name: str, identity: dict[str, Any]) -> str:
    """``<dataset-stem>_<model-slug>_<task>_<hash8>``."""
    return f"{slug(dataset_stem)}_{slug(model)}_{slug(task_name)}_{identity_hash(identity)[:8]}"


def diff_identity(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Field-by-field differences, one readable line each (empty if identical)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            lines.append(f"  {key}: run has {old.get(key, '<absent>')!r}, this command has {new.get(key, '<absent>')!r}")
    return lines
