"""CLI commands for a run's integrity and the disk: ``evalledger verify`` and ``evalledger prune``.

The library side is :func:`evalledger.ops.verify.verify_run` and :func:`evalledger.ops.prune.plan_prune` /
:func:`~evalledger.ops.prune.execute_prune`; these commands parse flags, call them and print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from evalledger.cli.options import DEFAULT_OUTPUT_DIR, fail, output_dir_option
from evalledger.errors import EvalLedgerError, UsageError
from evalledger.fsio import human_bytes
from evalledger.ops import PrunePlan, execute_prune, plan_prune, verify_run


@click.command()
@click.argument("run_ref", metavar="RUN")
@output_dir_option(help="Where run directories live (when RUN is a run ID).")
@click.option("--repair", is_flag=True,
              help="First move torn tails and garbage lines aside, exactly as `run` does (needs the run's lock); "
                   "nothing else is changed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(run_ref: str, output_dir: Path, repair: bool, as_json: bool) -> None:
    """Check a run's integrity before you publish a number from it. Changes nothing (unless --repair).

    Reports unparseable lines (file, line, byte offset), samples with more than one ok record,
    sample ids not in the dataset, resume states that fail their checksum, results files edited
    after the run completed, and overlapping or uncovered shards.
    Exit 0: clean; 1: findings; 2: the run cannot be read.
    """
    report = verify_run(run_ref, output_dir, repair=repair)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        sys.exit(report.exit_code)
    if report.unreadable:
        click.echo(f"error: {report.unreadable}", err=True)
        sys.exit(report.exit_code)
    for line in report.repaired:
        click.echo(f"repaired: {line}")
    checked = report.checked
    what = (f"{len(checked.get('results_files', []))} results file(s), {checked.get('records', 0)} records, "
            f"{checked.get('samples_with_ok', 0)} samples with an ok record"
            + (f" of {checked['dataset_samples']}" if "dataset_samples" in checked else "")
            + (f" ({checked['units_with_ok']} of {checked['dataset_units']} (sample, epoch) units)"
               if checked.get("epochs", 1) > 1 and "dataset_units" in checked else ""))
    click.echo(f"verify {report.run_dir}: {what}")
    for note in report.notes:
        click.echo(f"note: {note}")
    if not report.findings:
        click.echo("clean: no findings")
    else:
        click.echo(f"{len(report.findings)} finding(s):")
        for f in report.findings:
            click.echo(f"  [{f.kind}] {f.message}")
    sys.exit(report.exit_code)


def _print_plan(plan: PrunePlan) -> None:
    if plan.remove:
        width = max(len(str(i.path)) for i in plan.remove)
        for i in plan.remove:
            click.echo(f"  {str(i.path):<{width}}  {human_bytes(i.bytes):>9}  {i.kind}, {i.age_days:.1f} days old")
    for k in plan.kept:
        click.echo(f"  keep {k.path} ({k.kind}): {k.reason}")


@click.command()
@click.argument("output_dir_arg", metavar="[OUTPUT_DIR]", type=click.Path(file_okay=False, path_type=Path), default=None,
                required=False)
@output_dir_option(help="The directory to prune (or give it as the argument).")
@click.option("--keep", type=int, default=1, show_default=True,
              help="Moved-aside copies (<run_id>.old-<timestamp>) to keep per run ID, newest first.")
@click.option("--older-than", "older_than", type=float, default=None, metavar="DAYS",
              help="Only remove old copies and .corrupt-* leftovers at least DAYS old (by modification time).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--yes", "-y", is_flag=True, help="Remove without asking.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and what was removed) as JSON.")
def prune(output_dir_arg: Path | None, output_dir: Path, keep: int, older_than: float | None, dry_run: bool, yes: bool,
          as_json: bool) -> None:
    """Free disk: remove moved-aside runs beyond the newest --keep per run ID and .corrupt-* leftovers.

    Never removes a live run directory, anything of a run whose lock a process holds, or the only
    copy of any ok record (an old copy goes only when every sample it has ok is ok in a copy that
    stays). Lists what it will remove with sizes and asks first, unless --yes.
    """
    if output_dir_arg is not None:
        if output_dir_arg != output_dir and output_dir != DEFAULT_OUTPUT_DIR:
            fail(UsageError(f"two output directories: {output_dir_arg} and --output-dir {output_dir}; give one"))
        output_dir = output_dir_arg
    try:
        plan = plan_prune(output_dir, keep=keep, older_than_days=older_than)
    except EvalLedgerError as e:
        fail(e)
    if as_json and (dry_run or not plan.remove):
        click.echo(json.dumps({"plan": plan.to_dict(), "removed": None}, indent=2, default=str))
        return
    if not as_json:
        if plan.remove:
            click.echo(f"{'would remove' if dry_run else 'will remove'} {len(plan.remove)} item(s), "
                       f"{human_bytes(plan.total_bytes)} in all:")
        else:
            click.echo(f"nothing to remove in {output_dir}")
        _print_plan(plan)
    if dry_run or not plan.remove:
        return
    if not yes:
        if not sys.stdin.isatty():
            fail(EvalLedgerError("not removing anything: stdin is not a terminal to confirm on; pass --yes "
                                 "(or --dry-run to only list)", exit_code=1))
        if not click.confirm(f"remove these {len(plan.remove)} item(s) ({human_bytes(plan.total_bytes)})?",
                             default=False, err=True):
            click.echo("nothing removed", err=True)
            sys.exit(1)
    result = execute_prune(plan)
    if as_json:
        click.echo(json.dumps({"plan": plan.to_dict(), "removed": result.to_dict()}, indent=2, default=str))
    else:
        click.echo(f"removed {len(result.removed)} item(s), freed {human_bytes(result.freed_bytes)}")
        for k in result.skipped:
            click.echo(f"  skipped {k.path}: {k.reason}")
        for k in result.failed:
            click.echo(f"  FAILED {k.path}: {k.reason}", err=True)
    if result.failed:
        sys.exit(1)
