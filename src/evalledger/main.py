"""The ``evalledger`` command line (click). Thin: parse flags, call the library, print, exit.

Exit codes: 0 all samples ok · 1 finished with error records left · 2 usage, config, dataset,
lock or fatal provider error · 4 the disk refused a write · 130 SIGINT · 143 SIGTERM/SIGUSR1.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, RunConfig
from .errors import EvalLedgerError


def _fail(exc: EvalLedgerError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


class _EarlyStop(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _stop_on_early_signals() -> None:
    """Turn SIGTERM/SIGUSR1 during start-up (dataset checks, model load) into a clean exit 143.

    Once samples are dispatched, the runner's own handlers replace these (grace period, flush).
    """

    def handler(signum: int, frame: object) -> None:
        raise _EarlyStop(signal.Signals(signum).name)

    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, handler)


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    from .datasets import parse_shard

    return parse_shard(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="evalledger")
def cli() -> None:
    """Resumable runner for LLM evaluation experiments over paid APIs.

    Every result is appended to a locked, fsynced JSONL ledger under a stable run ID; running the
    same command again resumes and sends nothing for completed samples.
    """


@cli.command()
@click.option("--dataset", "-d", required=True, help="Built-in name (gsm8k, mmlu-elementary-math) or a .jsonl/.json/.csv/.parquet file.")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
              help="openai/<model>, anthropic/<model>, local/smollm2, vllm/<model>, ollama/<model>, or <model> with --base-url.")
@click.option("--task", "-t", default=None, help="qa, mcq, or package.module:ClassName. Default: the dataset's own task, else qa.")
@click.option("--limit", type=int, default=None, help="Only the first N samples in file order (not part of the run ID: raise it later to extend the run).")
@click.option("--id-column", default=None, help="Column holding sample IDs. Default: 'id' if present, else a hash of the row's content.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs"), show_default=True, help="Where run directories live.")
@click.option("--run-id", default=None, help="Name the run explicitly instead of <dataset>_<model>_<task>_<hash8>.")
@click.option("--shard", default=None, metavar="K/N", help="Run only shard K of N (1-based; stable hash of the sample ID).")
@click.option("--concurrency", "-c", type=int, default=8, show_default=True, help="Requests in flight at once.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue an existing run. --no-resume refuses if the run has results.")
@click.option("--overwrite", is_flag=True, help="Move an existing run directory aside (<run_id>.old-<timestamp>) and start afresh.")
@click.option("--retry-errors/--no-retry-errors", default=True, show_default=True, help="On resume, send samples whose last record is an error again.")
@click.option("--checkpoint-every", type=int, default=50, show_default=True, help="Write resume_state.json every N records (records themselves are always appended as they finish).")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed: per-sample RNGs and the API seed where supported.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True)
@click.option("--top-p", type=float, default=None)
@click.option("--base-url", default=None, help="API base URL (e.g. http://127.0.0.1:8000/v1 for vLLM). Default: the SDK's, or OPENAI_BASE_URL / ANTHROPIC_BASE_URL.")
@click.option("--api-key-env", default=None, metavar="VAR", help="Read the API key from this environment variable instead of OPENAI_API_KEY / ANTHROPIC_API_KEY.")
@click.option("--max-attempts", type=int, default=6, show_default=True, help="Attempts per request for transient errors (429, 5xx, timeouts).")
@click.option("--max-retry-wait", type=float, default=120.0, show_default=True, help="Cap in seconds on one backoff sleep between retries.")
@click.option("--request-timeout", type=float, default=600.0, show_default=True, help="Seconds before one HTTP request times out (then retried).")
@click.option("--grace-seconds", type=float, default=30.0, show_default=True, help="On SIGINT/SIGTERM/SIGUSR1, wait this long for in-flight samples before cancelling them.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def run(**opts: Any) -> None:
    """Run (or resume) an experiment: every sample of DATASET through MODEL, scored, into the ledger."""
    from .runner import run_experiment

    as_json = opts.pop("as_json")
    _stop_on_early_signals()
    try:
        config = RunConfig(
            dataset=opts["dataset"], model=opts["model"], task=opts["task"], limit=opts["limit"],
            id_column=opts["id_column"], output_dir=opts["output_dir"], run_id=opts["run_id"],
            shard=_parse_shard(opts["shard"]), concurrency=opts["concurrency"], resume=opts["resume"],
            overwrite=opts["overwrite"], retry_errors=opts["retry_errors"],
            checkpoint_every=opts["checkpoint_every"], seed=opts["seed"], temperature=opts["temperature"],
            max_tokens=opts["max_tokens"], top_p=opts["top_p"], base_url=opts["base_url"],
            api_key_env=opts["api_key_env"], max_attempts=opts["max_attempts"],
            max_retry_wait=opts["max_retry_wait"], request_timeout=opts["request_timeout"],
            grace_seconds=opts["grace_seconds"], quiet=opts["quiet"],
        )
        summary = run_experiment(config)
    except EvalLedgerError as e:
        _fail(e)
    except KeyboardInterrupt:
        # Ctrl-C before the run's own handler was installed (e.g. while the local model loads).
        click.echo("interrupted before any sample was sent; run the same command again to start", err=True)
        sys.exit(130)
    except _EarlyStop as e:
        click.echo(f"{e.name} before any sample was sent; run the same command again to start", err=True)
        sys.exit(143)
    stats = summary.stats
    acc = stats.get("accuracy")
    click.echo(
        f"run {summary.run_id}: {stats.get('completed_samples')}/{stats.get('total_samples')} ok, "
        f"{stats.get('error_count')} with errors, accuracy {'-' if acc is None else f'{acc:.1%}'}; "
        f"this invocation: {summary.ok} ok, {summary.errors} errors, {summary.requests} requests, "
        f"{summary.skipped_completed} skipped as done, {summary.duration_s:.1f}s → {summary.run_dir}",
        err=True,
    )
    if summary.message:
        click.echo(summary.message, err=True)
    if summary.resume_command:
        click.echo(f"resume with: {summary.resume_command}", err=True)
    if as_json:
        out = {k: v for k, v in summary.__dict__.items() if k != "stats"}
        out["stats"] = stats
        click.echo(json.dumps(out, default=str, indent=2))
    sys.exit(summary.exit_code)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print get_stats() as JSON.")
def stats(run_ref: str, output_dir: Path, as_json: bool) -> None:
    """Show a run's progress and results (RUN is a run ID under --output-dir or a run directory)."""
    from .report import get_stats

    try:
        s = get_stats(run_ref, output_dir)
    except EvalLedgerError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(s, indent=2, default=str))
        return
    acc = s["accuracy"]
    rows = [
        ("run", s["run_id"]),
        ("model", s["model"]),
        ("dataset", s["dataset"]),
        ("task", s["task"]),
        ("samples", s["total_samples"]),
        ("completed (ok)", s["completed_samples"]),
        ("with errors", s["error_count"]),
        ("pending", s["pending_samples"]),
        ("correct", s["correct_count"]),
        ("accuracy", "-" if acc is None else f"{acc:.2%}"),
        ("input tokens", s["input_tokens"]),
        ("output tokens", s["output_tokens"]),
        ("cost (USD)", "unknown" if s["cost_usd"] is None else f"{s['cost_usd']:.4f}"),
        ("last checkpoint", s["last_checkpoint"]),
    ]
    if s["unparseable_lines"] or s["partial_tail_bytes"]:
        rows.append(("unreadable", f"{s['unparseable_lines']} lines, {s['partial_tail_bytes']} bytes of partial tail"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


@cli.command()
@click.option("--dataset", "-d", required=True, help="Built-in name or a dataset file.")
@click.option("--task", "-t", default=None, help="Task whose required fields to check.")
@click.option("--id-column", default=None)
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Only used to show the run ID.")
def validate(dataset: str, task: str | None, id_column: str | None, model: str) -> None:
    """Check a dataset for a task without sending anything; print the sample count and run ID."""
    from .prepare import prepare_run

    try:
        p = prepare_run(RunConfig(dataset=dataset, task=task, id_column=id_column, model=model))
    except EvalLedgerError as e:
        _fail(e)
    click.echo(f"{p.dataset.path}: {len(p.samples)} samples OK for task '{p.task_spec}' "
               f"(ids: {p.dataset.id_source}); run ID with --model {model}: {p.run_id}")


if __name__ == "__main__":
    cli()
