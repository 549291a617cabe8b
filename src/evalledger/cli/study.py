"""``evalledger study`` (and ``run_full_scale_study.py``, which is the same command): the model × dataset grid."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from evalledger.cli.options import (
    config_file_option,
    experiment_options,
    fail,
    given_on_command_line,
    print_config_option,
    run_config_fields,
    show_warnings,
)
from evalledger.configfile import load_study_config, study_config_toml
from evalledger.errors import EvalLedgerError, UsageError
from evalledger.study import PairResult, StudyConfig, run_study

# The grid names its own models, datasets and task, and --max-cost is the whole grid's budget;
# a run ID would be shared by every pair. Every other flag of `run` applies to every pair.
_GRID_OWN = frozenset({"dataset", "model", "task", "run_id", "max_cost"})


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--models a,b --models c`` → ``(a, b, c)``."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _study_config(config_file: Path | None, grid: dict[str, Any], opts: dict[str, Any]) -> StudyConfig:
    """The grid from the flags, or from ``--config FILE`` with the flags given on the command line over it."""
    if config_file is None:
        options = run_config_fields(opts)
        if not options.get("allow_code_execution"):
            options.pop("allow_code_execution", None)
        return StudyConfig(models=_split(grid["models"]), datasets=_split(grid["datasets"]), task=grid["task"],
                           max_cost=grid["max_cost"], run_options={k: v for k, v in options.items() if v is not None})
    given = given_on_command_line({**grid, **opts})
    for name in ("models", "datasets"):
        if name in given:
            given[name] = _split(given[name])
    run_options = run_config_fields({k: v for k, v in given.items() if k not in grid})
    return load_study_config(config_file, **run_options, **{k: v for k, v in given.items() if k in grid})


@click.command("study", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--models", "-m", multiple=True, default=("local/smollm2",), show_default=True,
              help="Comma-separated models (or repeat the flag): openai/…, anthropic/…, local/smollm2, …")
@click.option("--datasets", "-d", multiple=True, default=("gsm8k", "mmlu-elementary-math"), show_default=True,
              help="Comma-separated datasets (or repeat the flag).")
@click.option("--task", "-t", default=None, help="e.g. self-correct. Default: each dataset's own task.")
@click.option("--max-cost", type=float, default=None, metavar="USD", help="Budget for the whole grid, across invocations.")
@click.option("--yes", "-y", is_flag=True, help="Start without asking after the estimate (needed without a terminal).")
@config_file_option("A TOML grid file: models (each with its own base-url, api-key-env, concurrency, rpm, tpm, "
                    "prices, …), datasets, task or tasks, max-cost and [shared] run options. Flags given here "
                    "override it.")
@print_config_option("Print the TOML grid file that reproduces this study (for --config) and exit without running.")
@experiment_options(exclude=_GRID_OWN)
def study(models: tuple[str, ...], datasets: tuple[str, ...], task: str | None, max_cost: float | None,
          yes: bool, config_file: Path | None, print_config: bool, **opts: Any) -> None:
    """Run every MODEL × DATASET pair as its own resumable run; print a summary table.

    Every flag of `evalledger run` (but --dataset, --model, --task and --run-id) applies to every
    pair; --max-cost is the budget of the whole grid. Rerunning the same command resumes the grid
    and sends nothing for finished pairs. --config FILE describes the grid in TOML instead.
    """
    show_warnings()  # also when run on its own, as run_full_scale_study.py does

    def confirm(plan: list[PairResult]) -> bool:
        if yes:
            return True
        try:
            return click.confirm("start the study?", default=True, err=True)
        except click.Abort:
            if sys.stdin.isatty():
                raise  # Ctrl-C or Ctrl-D at the prompt: the user cancelled
            fail(UsageError("nothing was started: no answer to 'start the study?' (no terminal to ask on); "
                            "pass --yes to start the study without asking"))
            raise

    try:
        grid = {"models": models, "datasets": datasets, "task": task, "max_cost": max_cost}
        cfg = _study_config(config_file, grid, opts)
        if print_config:
            click.echo(study_config_toml(cfg), nl=False)
            sys.exit(0)
        summary = run_study(cfg, confirm=confirm, echo=lambda m: click.echo(m, err=True))
    except EvalLedgerError as e:
        fail(e)
    click.echo(summary.table())
    if summary.comparisons:
        click.echo("\n" + summary.comparison_table())
    sys.exit(summary.exit_code)
