#!/usr/bin/env python3
"""Run a model × dataset grid through evalledger (the full-scale study).

Each cell is an ordinary evalledger run with its own stable run ID, so the whole study resumes:
run this script again and every completed sample of every cell is skipped. A cell that ends with
errors does not stop the grid; the script exits with the worst exit code of its cells.

This is the thin first version (a sequential grid over the library API); the self-correction
study, budgets and cost estimates come with the study issue.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from evalledger import EvalLedgerError, RunConfig, run_experiment


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", "-m", multiple=True, default=["local/smollm2"], show_default=True,
              help="Model to include (repeat the flag for several).")
@click.option("--datasets", "-d", multiple=True, default=["gsm8k", "mmlu-elementary-math"], show_default=True,
              help="Dataset to include (repeat the flag for several).")
@click.option("--limit", type=int, default=None, help="First N samples of every dataset.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs"), show_default=True)
@click.option("--concurrency", "-c", type=int, default=8, show_default=True)
@click.option("--max-tokens", type=int, default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def main(models: tuple[str, ...], datasets: tuple[str, ...], limit: int | None, output_dir: Path,
         concurrency: int, max_tokens: int, seed: int, quiet: bool) -> None:
    """Run every MODEL × DATASET cell; resumable like `evalledger run`."""
    worst = 0
    for model in models:
        for dataset in datasets:
            try:
                s = run_experiment(RunConfig(dataset=dataset, model=model, limit=limit, output_dir=output_dir,
                                             concurrency=concurrency, max_tokens=max_tokens, seed=seed, quiet=quiet))
            except EvalLedgerError as e:
                click.echo(f"{model} × {dataset}: error: {e}", err=True)
                worst = max(worst, e.exit_code)
                continue
            acc = s.stats.get("accuracy")
            click.echo(f"{model} × {dataset}: {s.run_id} {s.stats.get('completed_samples')}/{s.stats.get('total_samples')} ok, "
                       f"accuracy {'-' if acc is None else f'{acc:.1%}'} (exit {s.exit_code})")
            worst = max(worst, s.exit_code)
            if s.status in ("interrupted", "fatal", "disk"):
                sys.exit(s.exit_code)  # do not start the next cell after a stop request or a fatal error
    sys.exit(worst)


if __name__ == "__main__":
    main()
