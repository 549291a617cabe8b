"""The ``evalledger`` command line (click). Thin: parse flags, call the library, print, exit.

Exit codes: 0 all samples ok · 1 finished with error records left · 2 usage, config, dataset,
lock or fatal provider error · 3 circuit breaker (the API looks down) · 4 not enough disk space or
the disk refused a write · 130 SIGINT · 143 SIGTERM/SIGUSR1.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click

from . import __version__
from .cli_options import config_from_options, experiment_options, fail
from .config import DEFAULT_MODEL, RunConfig
from .errors import EvalLedgerError


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
@experiment_options
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def run(**opts: Any) -> None:
    """Run (or resume) an experiment: every sample of DATASET through MODEL, scored, into the ledger."""
    from .runner import run_experiment

    as_json = opts.pop("as_json")
    _stop_on_early_signals()
    try:
        config = config_from_options(opts)
        summary = run_experiment(config)
    except EvalLedgerError as e:
        fail(e)
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
@experiment_options
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON on stdout.")
def estimate(**opts: Any) -> None:
    """Project tokens and cost for the samples `run` would send now, with the same flags as `run`."""
    from .runner import estimate_experiment

    as_json = opts.pop("as_json")
    try:
        est = estimate_experiment(config_from_options(opts))
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(est.__dict__, indent=2))
    else:
        click.echo(est.line())


@cli.command()
@click.option("--dataset", "-d", required=True, help="Built-in name or a dataset file.")
@click.option("--task", "-t", default=None, help="Task whose required fields to check.")
@click.option("--id-column", default=None)
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Only used to show the run ID.")
def validate(dataset: str, task: str | None, id_column: str | None, model: str) -> None:
    """Check a dataset for a task without sending anything; print the sample count and run ID."""
    from .prepare import prepare_run

    try:
        # validate writes nothing and runs nothing: where outputs would go, and whether the task may
        # execute code, are not its business.
        p = prepare_run(RunConfig(dataset=dataset, task=task, id_column=id_column, model=model),
                        check_output_dir=False, check_code_execution=False, use_index=False)
    except EvalLedgerError as e:
        fail(e)
    click.echo(f"{p.dataset.path}: {len(p.samples)} samples OK for task '{p.task_spec}' "
               f"(ids: {p.dataset.id_source}); run ID with --model {model}: {p.run_id}")


# Commands that look at results live in commands_results.py.
from . import commands_results  # noqa: E402

cli.add_command(commands_results.stats)
cli.add_command(commands_results.list_cmd)
cli.add_command(commands_results.export)
cli.add_command(commands_results.errors)
cli.add_command(commands_results.report)

# Running on a cluster (Slurm job arrays, per-shard status, merge) lives in commands_cluster.py.
from . import commands_cluster  # noqa: E402

cli.add_command(commands_cluster.slurm)
cli.add_command(commands_cluster.status)
cli.add_command(commands_cluster.merge)

# A run's integrity and the disk (verify, prune) live in commands_lifecycle.py.
from . import commands_lifecycle  # noqa: E402

cli.add_command(commands_lifecycle.verify)
cli.add_command(commands_lifecycle.prune)


if __name__ == "__main__":
    cli()

# The model × dataset grid (run_full_scale_study.py is the same command).
from .commands_study import study as _study  # noqa: E402

cli.add_command(_study)
