"""The ``evalledger`` command line (click). Thin: parse flags, call the library, print, exit.

Every command is registered here, when the package is imported, so ``evalledger``,
``python -m evalledger`` and ``run_full_scale_study.py`` all see the same commands.

Exit codes: 0 all samples ok · 1 finished with error records left · 2 usage, config, dataset,
lock or fatal provider error · 3 circuit breaker (the API looks down) · 4 not enough disk space or
the disk refused a write · 130 SIGINT · 143 SIGTERM/SIGUSR1.
"""

from __future__ import annotations

import click

from evalledger._version import __version__
from evalledger.cli import cluster, integrity, results
from evalledger.cli.compare import compare
from evalledger.cli.options import show_warnings
from evalledger.cli.run import estimate, run, validate
from evalledger.cli.study import study


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             invoke_without_command=True)
@click.version_option(__version__, prog_name="evalledger")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Resumable runner for LLM evaluation experiments over paid APIs.

    Every result is appended to a locked, fsynced JSONL ledger under a stable run ID; running the
    same command again resumes and sends nothing for completed samples.
    """
    show_warnings()
    if ctx.invoked_subcommand is None:  # a bare `evalledger` is a request for help, not a mistake
        click.echo(ctx.get_help())
        ctx.exit(0)


for _command in (run, estimate, validate, results.stats, results.list_cmd, results.export, results.errors,
                 results.report, cluster.slurm, cluster.status, cluster.merge, integrity.verify,
                 integrity.prune, study, compare):
    cli.add_command(_command)


def main() -> None:
    """The console script's entry point."""
    cli()


__all__ = ["cli", "main"]
