"""``evalledger compare``: paired comparisons of runs on the same dataset (``compare_runs``)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import click

from evalledger.cli.options import fail, output_dir_option
from evalledger.errors import EvalLedgerError
from evalledger.readers import DEFAULT_RESAMPLES, Comparison, ComparisonReport, compare_runs


def _points(x: float | None, *, sign: bool = True) -> str:
    """A fraction as percentage points (``+4.5``)."""
    return "-" if x is None else (f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}")


def _interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{_points(ci[0])}, {_points(ci[1])}]"


def _p(p: float) -> str:
    return "<1e-300" if p == 0 else f"{p:.3g}"


def _names(report: ComparisonReport) -> list[str]:
    """Run ids, or the directories when two runs share a run id."""
    ids = [r.run_id for r in report.runs]
    return ids if len(set(ids)) == len(ids) else [r.run_dir for r in report.runs]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _delta(name: str, delta: float | None) -> str:
    return f"{name} {_points(delta)}" if delta is not None else f"{name} none (not a self-correction run)"


def _notes(c: Comparison, name_b: str) -> list[str]:
    """What the row does not show: samples left out, and the self-correction Δs."""
    lines = []
    if c.only_a or c.only_b:
        lines.append(f"  {name_b}: not compared: {c.only_a} sample(s) scored by A only, {c.only_b} by B only")
    sc = c.self_correction
    if sc is not None and sc.n == 0:
        lines.append(f"  {name_b}: self-correction Δ: no paired sample holds both turns")
    elif sc is not None:
        lines.append(f"  {name_b}: self-correction Δ (turn 2 − turn 1, points) on {sc.n} samples: "
                     f"{_delta('A', sc.delta_a)}, {_delta('B', sc.delta_b)}"
                     + ("" if sc.difference is None else
                        f"; B − A {_points(sc.difference)}{_interval(sc.difference_ci95)}"))
    return lines


def format_report(report: ComparisonReport) -> str:
    """The readable table: one row per run compared against A, then notes and what the columns mean."""
    names = _names(report)
    a = report.runs[0]
    out = [f"A = {names[0]}: {a.model or '?'}, task {a.task or '?'}, dataset {a.dataset or '?'}"
           + (f", {a.epochs} epochs" if a.epochs > 1 else ""), ""]
    rows = [["B", "MODEL", "TASK", "N", "ACC A", "ACC B", "Δ B−A (points) [95% CI]", "p (McNemar)", "A✓B✗", "A✗B✓"]]
    notes: list[str] = []
    for name, c in zip(names[1:], report.comparisons):
        rows.append([name, c.b.model or "?", (c.b.task or "?") + (f" ×{c.b.epochs}" if c.b.epochs > 1 else ""),
                     str(c.n), f"{_points(c.accuracy_a, sign=False)}%", f"{_points(c.accuracy_b, sign=False)}%",
                     _points(c.difference) + _interval(c.difference_ci95), _p(c.p_value),
                     str(c.a_right_b_wrong), str(c.a_wrong_b_right)])
        notes += _notes(c, name)
    out += _table(rows)
    if notes:
        out += [""] + notes
    legend = (f"N: samples both runs scored, the only ones compared. Δ: accuracy of B minus A on them; 95% CI: "
              f"paired bootstrap, {report.resamples} resamples, seed {report.seed}. p: McNemar's exact test on the "
              "discordant samples, A✓B✗ (A right, B wrong) and A✗B✓.")
    if any(r.epochs > 1 for r in report.runs):
        legend += (" With repeats, a sample's score is its mean over its scored epochs (accuracy, Δ, CI); McNemar "
                   "counts it right when it was right in more than half of them.")
    out += [""] + textwrap.wrap(legend, width=100)
    return "\n".join(out)


@click.command()
@click.argument("runs", nargs=-1, metavar="RUN_A RUN_B [RUN_C ...]")
@output_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print the comparisons as JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired bootstrap (>= 0).")
@click.option("--resamples", type=int, default=DEFAULT_RESAMPLES, show_default=True,
              help="Resamples of the paired bootstrap.")
def compare(runs: tuple[str, ...], output_dir: Path, as_json: bool, seed: int, resamples: int) -> None:
    """Compare runs on the same dataset, each against RUN_A, on the samples both scored.

    Shows each run's accuracy, the difference with a paired bootstrap 95% CI, McNemar's exact
    p-value and the discordant samples, and for self-correction runs the change from turn 1 to
    turn 2. A RUN is a run ID under --output-dir or a run directory. Runs on different datasets
    are refused.
    """
    if len(runs) < 2:
        raise click.UsageError("compare needs at least two runs: RUN_A RUN_B [RUN_C ...]")
    try:
        report = compare_runs(*runs, output_dir=output_dir, seed=seed, resamples=resamples)
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(format_report(report))
