"""What the CLI commands share: the experiment flags, their RunConfig, and the failure exit."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click
from click.core import ParameterSource

from evalledger.config import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, RunConfig
from evalledger.configfile import load_run_config
from evalledger.datasets import parse_shard
from evalledger.errors import EvalLedgerError

DEFAULT_OUTPUT_DIR = Path("outputs")
_LEGACY_DIR = "legacy -o DIR"


def _legacy_output_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.meta[_LEGACY_DIR] = value


def _output_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:
    legacy = ctx.meta.get(_LEGACY_DIR)
    if value is not None and legacy is not None and value != legacy:
        raise click.BadParameter(f"given twice: --output-dir {value} and -o {legacy}; use --output-dir")
    return value or legacy or DEFAULT_OUTPUT_DIR


def output_dir_option(*, legacy_o: bool = False, help: str = "Where run directories live.") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--output-dir DIR``, the one spelling of the directory that holds run directories in every
    command; ``-o`` always names an output *file* (``export``, ``report``, ``merge``).

    ``legacy_o``: the command writes no file, so the old spelling ``-o DIR`` is unambiguous there
    and keeps working (hidden from ``--help``)."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--output-dir", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         callback=_output_dir, help=f"{help}  [default: {DEFAULT_OUTPUT_DIR}]")(f)
        if legacy_o:
            # Declared after --output-dir so that, given on the command line, it is processed first.
            f = click.option("-o", "legacy_output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                             hidden=True, expose_value=False, callback=_legacy_output_dir)(f)
        return f

    return decorate


def output_file_option(default: Path | None, help: str, *, required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-o/--out/--output FILE``: the file a command writes."""
    return click.option("-o", "--out", "--output", "out_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=default, required=required, show_default=default is not None, help=help)


# Applied bottom-up by click, so listed here in the order --help shows them.
_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    # Not required by click: with --config FILE the file may name it (RunConfig refuses a run without one).
    click.option("--dataset", "-d", default=None, help="Built-in name (gsm8k, mmlu-elementary-math, humaneval) or a .jsonl/.json/.csv/.parquet file. Required, here or in --config FILE."),
    click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                  help="openai/<model>, anthropic/<model>, local/smollm2, vllm/<model>, ollama/<model>, or <model> with --base-url."),
    click.option("--task", "-t", default=None, help="qa, mcq, humaneval, self-correct[:BASE] or package.module:ClassName. Default: the dataset's own task, else qa; plain self-correct wraps that default."),
    click.option("--limit", type=int, default=None, help="Only the first N samples in file order (not part of the run ID: raise it later to extend the run)."),
    click.option("--epochs", type=int, default=1, show_default=True, metavar="K", help="Ask each sample K times, each with its own seed (run seed, sample id, repeat); records carry `epoch`. Not part of the run ID: raise it later to extend the run."),
    click.option("--id-column", default=None, help="Column holding sample IDs. Default: 'id' if present, else a hash of the row's content."),
    click.option("--review-prompt", default=None, metavar="FILE", help="Text file replacing the self-correct review prompt (its sha256 is part of the run ID)."),
    click.option("--fewshot", type=int, default=0, show_default=True, metavar="N", help="N worked examples before each question, chosen per sample from the run seed and the sample id (never the sample itself). Part of the run ID."),
    click.option("--fewshot-from", default=None, metavar="FILE", help="Dataset file the --fewshot exemplars come from (same formats as --dataset; its sha256 is part of the run ID). Default: the built-in dataset's shipped exemplars."),
    lambda f: output_dir_option(legacy_o=True)(f),
    click.option("--run-id", default=None, help="Name the run explicitly instead of <dataset>_<model>_<task>_<hash8>."),
    click.option("--shard", default=None, metavar="K/N", help="Run only shard K of N (1-based; stable hash of the sample ID)."),
    click.option("--concurrency", "-c", type=int, default=8, show_default=True, help="Requests in flight at once."),
    click.option("--resume/--no-resume", default=True, show_default=True, help="Continue an existing run. --no-resume refuses if the run has results."),
    click.option("--overwrite", is_flag=True, help="Move an existing run directory aside (<run_id>.old-<timestamp>) and start afresh."),
    click.option("--keep-old", type=int, default=None, metavar="N", help="With --overwrite: then remove moved-aside copies of this run beyond the newest N (never one holding the only ok record of a sample; see `evalledger prune`)."),
    click.option("--allow-code-execution", is_flag=True, help="Let tasks run model-written code on this machine (humaneval; required for them). Limited child process, not a security sandbox."),
    click.option("--retry-errors/--no-retry-errors", default=True, show_default=True, help="On resume, send samples whose last record is an error again."),
    click.option("--checkpoint-every", type=int, default=50, show_default=True, help="Write resume_state.json every N records (records themselves are always appended as they finish)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Run seed: per-sample RNGs and the API seed where supported."),
    click.option("--temperature", type=float, default=0.0, show_default=True),
    click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True),
    click.option("--top-p", type=float, default=None),
    click.option("--base-url", default=None, help="API base URL (e.g. http://127.0.0.1:8000/v1 for vLLM). Default: the SDK's, or OPENAI_BASE_URL / ANTHROPIC_BASE_URL."),
    click.option("--allow-endpoint-change", is_flag=True, help="Resume although the run was made against another endpoint (e.g. the same model behind a proxy); the new one is recorded."),
    click.option("--api-key-env", default=None, metavar="VAR", help="Read the API key from this environment variable instead of OPENAI_API_KEY / ANTHROPIC_API_KEY."),
    click.option("--max-attempts", type=int, default=6, show_default=True, help="Attempts per request for transient errors (5xx, timeouts, resets); 429/529 rate limits do not use them up (retried for up to 15 minutes)."),
    click.option("--max-retry-wait", type=float, default=120.0, show_default=True, help="Cap in seconds on one backoff sleep between retries."),
    click.option("--request-timeout", type=float, default=600.0, show_default=True, help="Seconds before one HTTP request times out (then retried)."),
    click.option("--grace-seconds", type=float, default=30.0, show_default=True, help="On SIGINT/SIGTERM/SIGUSR1, wait this long for in-flight samples before cancelling them."),
    click.option("--rpm", type=float, default=None, help="Requests per minute for this run (per shard: the key's limit ÷ shards running at once)."),
    click.option("--tpm", type=float, default=None, help="Tokens per minute (prompt estimate + max_tokens before a request, corrected from its usage)."),
    click.option("--adaptive-concurrency/--no-adaptive-concurrency", default=True, show_default=True, help="On 429/529 halve the requests in flight and pause all workers for Retry-After; grow back on success."),
    click.option("--fsync", type=click.Choice(["always", "batch", "off"]), default="batch", show_default=True, help="always: one fsync per record; batch: records finishing together share one; off: no fsync (safe against kill -9, NOT against power loss)."),
    click.option("--max-cost", type=float, default=None, metavar="USD", help="Budget for the whole run, across resumes: stop dispatching (exit 5) before the total would exceed it."),
    click.option("--prices", "prices_file", default=None, metavar="FILE", help="A price table (TOML, USD per 1M tokens) replacing the shipped one."),
    click.option("--price-input", type=float, default=None, metavar="USD", help="USD per 1M input tokens for this model (with --price-output); overrides the table."),
    click.option("--price-output", type=float, default=None, metavar="USD", help="USD per 1M output tokens for this model (with --price-input)."),
    click.option("--cache/--no-cache", default=True, show_default=True, help="Answer a request identical to one any earlier run sent (model, endpoint, messages, parameters, seed, epoch) from the response cache: no request, nothing paid (records say cached: true). --no-cache neither reads nor writes it."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None, metavar="DIR", help="The response cache's directory. Default: $EVALLEDGER_CACHE_DIR, else $XDG_CACHE_HOME/evalledger/responses, else ~/.cache/evalledger/responses."),
    click.option("--cache-ttl", type=float, default=None, metavar="DAYS", help="Do not use cache entries stored more than DAYS ago (the request is sent and the entry replaced). Default: no limit."),
    click.option("--batch", is_flag=True, help="Send through the provider's batch API (openai/, anthropic/): half the online price, results within 24 h. Crash-safe: every batch is journaled in the run directory before and after it is created, and the same command re-attaches to it."),
    click.option("--batch-size", type=int, default=None, metavar="N", help="With --batch: requests per provider batch (default: as many as the provider takes in one batch, within its byte limit)."),
    click.option("--no-wait", is_flag=True, help="With --batch: submit the batches, journal them and exit 0; run the same command later to collect what finished."),
    click.option("--workers", type=int, default=1, show_default=True, metavar="N", help="Processes on this host sharing the run's pending samples; --rpm/--tpm and the adaptive concurrency stay the key's limits, shared by all of them."),
    click.option("--max-consecutive-errors", type=int, default=20, show_default=True, help="Circuit breaker: stop (exit 3) after this many samples in a row end in errors; 0 turns it off."),
    click.option("--min-free-mb", type=float, default=100.0, show_default=True, help="Refuse to start (exit 4) unless the output filesystem holds the run's estimated output plus this much."),
    click.option("--quiet", "-q", is_flag=True, help="No progress output."),
    click.option("--progress-interval", type=float, default=10.0, show_default=True, metavar="SECONDS",
                 help="When stderr is not a terminal (Slurm logs, CI): one status line every this many seconds; 0: none."),
]


def _param_name(option: Callable[[Callable[..., Any]], Callable[..., Any]]) -> str:
    """The name of the parameter a click option decorator adds (its RunConfig field)."""

    def probe() -> None:
        """Carries the parameter so that its name can be read."""

    option(probe)
    # the first: --output-dir's decorator adds the hidden legacy -o after it
    return probe.__click_params__[0].name  # type: ignore[attr-defined]


#: Every experiment flag by its RunConfig field name, in --help order.
EXPERIMENT_OPTIONS = {_param_name(option): option for option in _OPTIONS}


def experiment_options(f: Callable[..., Any] | None = None, *, exclude: frozenset[str] = frozenset()) -> Any:
    """Decorate a click command with every experiment flag (but those named in ``exclude``):
    ``@experiment_options`` or ``@experiment_options(exclude=frozenset({"dataset"}))``."""

    def decorate(g: Callable[..., Any]) -> Callable[..., Any]:
        for name, option in reversed(EXPERIMENT_OPTIONS.items()):
            if name not in exclude:
                g = option(g)
        return g

    return decorate if f is None else decorate(f)


def run_config_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """The parsed flags that are RunConfig fields, ``--shard`` parsed."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in opts.items() if k in fields}
    if values.get("shard") is not None:
        values["shard"] = parse_shard(values["shard"])
    return values


def config_from_options(opts: dict[str, Any]) -> RunConfig:
    """Build the RunConfig from parsed flags (each flag's name is its RunConfig field); with
    ``--config FILE`` (``opts["config_file"]``), from the file, the flags given on the command line
    over it."""
    config_file = opts.get("config_file")
    if config_file is None:
        return RunConfig(**run_config_fields(opts))
    return load_run_config(config_file, **run_config_fields(given_on_command_line(opts)))


def given_on_command_line(opts: dict[str, Any]) -> dict[str, Any]:
    """The parsed flags the user typed (not those left at their defaults): what overrides a config file."""
    ctx = click.get_current_context()
    given = {k: v for k, v in opts.items() if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
    if "output_dir" in opts and _LEGACY_DIR in ctx.meta:  # the hidden -o DIR sets --output-dir's value
        given["output_dir"] = opts["output_dir"]
    return given


def config_file_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--config FILE``: a TOML file of options; flags given on the command line override it."""
    return click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        metavar="FILE", help=help)


def print_config_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--print-config``: print the config file that reproduces the command, run nothing, exit 0."""
    return click.option("--print-config", is_flag=True, help=help)


def fail(exc: EvalLedgerError) -> None:
    """Print ``error: <message>`` on stderr and exit with the error's code (2 for usage, 4 disk, ...)."""
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


class _StderrWarnings(logging.Handler):
    """The library's warnings as ``warning: <message>`` lines on the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


def show_warnings() -> None:
    """Print the library's warnings (logger ``evalledger``) on stderr, once, even with --quiet:
    they are about the user's data."""
    logger = logging.getLogger("evalledger")
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings(logging.WARNING))
        logger.propagate = False
