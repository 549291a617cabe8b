"""``evalledger study`` (and ``run_full_scale_study.py``, which is the same command): the model × dataset grid."""

from __future__ import annotations

import sys
from typing import Any

import click

from evalledger.cli.options import fail, output_dir_option, show_warnings
from evalledger.datasets import parse_shard
from evalledger.errors import EvalLedgerError
from evalledger.study import StudyConfig, run_study


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--models a,b --models c`` → ``(a, b, c)``."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


@click.command("study", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", "-m", multiple=True, default=("local/smollm2",), show_default=True,
              help="Comma-separated models (or repeat the flag): openai/…, anthropic/…, local/smollm2, …")
@click.option("--datasets", "-d", multiple=True, default=("gsm8k", "mmlu-elementary-math"), show_default=True,
              help="Comma-separated datasets (or repeat the flag).")
@click.option("--task", "-t", default=None, help="e.g. self-correct. Default: each dataset's own task.")
@click.option("--limit", type=int, default=None, help="First N samples of every dataset.")
@output_dir_option(legacy_o=True)
@click.option("--shard", default=None, metavar="K/N", help="Run shard K of N of every pair.")
@click.option("--concurrency", "-c", type=int, default=8, show_default=True)
@click.option("--max-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-cost", type=float, default=None, metavar="USD", help="Budget for the whole grid, across invocations.")
@click.option("--prices", "prices_file", default=None, metavar="FILE", help="A price table replacing the shipped one.")
@click.option("--review-prompt", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Replace the self-correct review prompt with this file's text (part of every run ID).")
@click.option("--allow-code-execution", is_flag=True, help="Allow tasks that run model-written code (humaneval).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation after the estimate.")
@click.option("--quiet", "-q", is_flag=True, help="No per-run progress output.")
def study(models: tuple[str, ...], datasets: tuple[str, ...], task: str | None, max_cost: float | None,
          yes: bool, **opts: Any) -> None:
    """Run every MODEL × DATASET pair as its own resumable run; print a summary table.

    Rerunning the same command resumes the grid and sends nothing for finished pairs.
    """
    show_warnings()  # also when run on its own, as run_full_scale_study.py does

    def confirm(plan: list[Any]) -> bool:
        return yes or click.confirm("start the study?", default=True, err=True)

    try:
        if opts.get("shard"):
            opts["shard"] = parse_shard(opts["shard"])
        if not opts.get("allow_code_execution"):
            opts.pop("allow_code_execution", None)
        cfg = StudyConfig(models=_split(models), datasets=_split(datasets), task=task, max_cost=max_cost,
                          run_options={k: v for k, v in opts.items() if v is not None})
        summary = run_study(cfg, confirm=confirm, echo=lambda m: click.echo(m, err=True))
    except EvalLedgerError as e:
        fail(e)
    click.echo(summary.table())
    sys.exit(summary.exit_code)
