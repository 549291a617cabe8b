"""``evalledger rescore``: a run's stored responses scored again into a new run (:func:`evalledger.ops.rescore_run`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from evalledger.cli.options import fail, output_dir_option
from evalledger.errors import EvalLedgerError
from evalledger.ops import RescoreReport, rescore_run


def _accuracy(correct: int, of: int, accuracy: float | None) -> str:
    return "-" if accuracy is None else f"{100 * accuracy:.1f}% ({correct}/{of})"


def format_report(report: RescoreReport) -> list[str]:
    """The summary ``rescore`` prints."""
    head = (f"already done: {report.run_dir} is this rescore of {report.source_run_id} (same results, scorer and "
            "scores); nothing written" if report.already_done
            else f"rescored {report.source_run_id} with task {report.task} into {report.run_dir}")
    lines = [head]
    if report.moved_aside:
        lines.append(f"the run that was there was moved aside to {report.moved_aside}")
    new_ok = report.rescored - report.scoring_errors
    lines += [
        f"units: {report.units} ({report.rescored} rescored, {report.errors_copied} error record(s) copied as errors)"
        + (f"; {report.skipped_unknown_ids} left out (sample ids not in the dataset)" if report.skipped_unknown_ids
           else ""),
        (f"accuracy: {_accuracy(report.old_correct, report.rescored, report.old_accuracy)} → "
         f"{_accuracy(report.new_correct, new_ok, report.new_accuracy)}"),
        (f"correctness changed: {report.changed} (right→wrong {report.right_to_wrong}, "
         f"wrong→right {report.wrong_to_right})"),
        "requests sent: 0 (the bill stays with the source run)",
    ]
    if report.scoring_errors:
        lines.append(f"warning: the scorer raised for {report.scoring_errors} unit(s): written as error records "
                     f"(see `evalledger errors {report.run_id}`)")
    return lines


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--task", "-t", default=None,
              help="Score with this task (qa, mcq, humaneval, self-correct[:BASE] or package.module:ClassName). "
                   "Default: the run's own task, as its code scores now.")
@click.option("--run-id", default=None,
              help="The new run's ID. Default: <RUN>_rescored-<task>-<hash8> (the hash covers RUN's results and "
                   "the scorer's name and prompt version: the same rescore gets the same ID).")
@output_dir_option(help="Where run directories live: RUN is looked up here when it is a run ID, and the new run is "
                        "written here (when not given: beside RUN).")
@click.option("--dataset", "-d", "dataset", default=None, metavar="FILE",
              help="A copy of the run's dataset at another path (its sha256 must be the one the run recorded).")
@click.option("--allow-code-execution", is_flag=True,
              help="Let the scorer run model-written code on this machine (humaneval; required for it).")
@click.option("--overwrite", is_flag=True,
              help="If another run has the new run's ID, move it aside (<run_id>.old-<timestamp>) and write this one.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def rescore(ctx: click.Context, run_ref: str, task: str | None, run_id: str | None, output_dir: Path,
            dataset: str | None, allow_code_execution: bool, overwrite: bool, as_json: bool) -> None:
    """Score every stored response of RUN again, with its task's current scorer or --task's, sending nothing.

    Writes a new run directory (the source is never changed) whose records are RUN's latest ones
    with new predictions, scores and correctness, and whose manifest records where they came from
    (rescored_from). Its records bill nothing: the answers were paid for in RUN. stats, list,
    verify, compare and report work on it as on any run.
    """
    # Not given: RUN is found as every command finds it, and the new run goes beside it.
    given = ctx.get_parameter_source("output_dir") is ParameterSource.COMMANDLINE
    try:
        report = rescore_run(run_ref, task=task, run_id=run_id, output_dir=output_dir if given else None,
                             dataset=dataset, allow_code_execution=allow_code_execution, overwrite=overwrite)
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo("\n".join(format_report(report)))
