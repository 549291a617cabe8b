"""``evalledger run``, ``estimate`` and ``validate``: one experiment from the command line."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click

from evalledger.cli.options import (
    config_file_option,
    config_from_options,
    experiment_options,
    fail,
    print_config_option,
)
from evalledger.configfile import run_config_toml
from evalledger.errors import EvalLedgerError
from evalledger.run import estimate_experiment, prepare_run, run_experiment


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


_CONFIG_HELP = ("A TOML file of run options, keys named as the long flags (max-tokens = 256, shard = \"2/4\", "
                "overwrite = true); flags given here override it. Relative paths in it are read from its directory.")


@click.command()
@experiment_options
@config_file_option(_CONFIG_HELP)
@print_config_option("Print the TOML config file that reproduces this run (for --config) and exit without running.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def run(**opts: Any) -> None:
    """Run (or resume) an experiment: every sample of DATASET through MODEL, scored, into the ledger."""
    as_json = opts.pop("as_json")
    print_config = opts.pop("print_config")
    if print_config:
        try:
            click.echo(run_config_toml(config_from_options(opts)), nl=False)
        except EvalLedgerError as e:
            fail(e)
        sys.exit(0)
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
    acc, cost = stats.get("accuracy"), stats.get("cost_usd")
    click.echo(
        f"run {summary.run_id}: {stats.get('completed_samples')}/{stats.get('total_samples')} ok, "
        f"{stats.get('error_count')} with errors, accuracy {'-' if acc is None else f'{acc:.1%}'}, "
        f"cost {'?' if cost is None else f'${cost:,.4f}'}; "
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


@click.command()
@experiment_options
@config_file_option(_CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON on stdout.")
def estimate(**opts: Any) -> None:
    """Project tokens and cost for the samples `run` would send now, with the same flags as `run`."""
    as_json = opts.pop("as_json")
    try:
        est = estimate_experiment(config_from_options(opts))
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(est.__dict__, indent=2))
    else:
        click.echo(est.line())


@click.command()
@experiment_options
@config_file_option(_CONFIG_HELP)
def validate(**opts: Any) -> None:
    """Check a dataset for a task without sending anything; print the sample count and the run ID
    that `evalledger run` with the same flags would use.

    Takes every flag of `run`; those that do not change the run ID (concurrency, limits, budget,
    ...) are accepted and ignored, so a `run` command line can be checked as it is.
    """
    try:
        config = config_from_options(opts)
        # validate writes nothing and runs nothing: where outputs would go, and whether the task may
        # execute code, are not its business.
        p = prepare_run(config, check_output_dir=False, check_code_execution=False, use_index=False)
    except EvalLedgerError as e:
        fail(e)
    click.echo(f"{p.dataset.path}: {len(p.samples)} samples OK for task '{p.task_spec}' "
               f"(ids: {p.dataset.id_source}); run ID with these flags: {p.run_id}")
