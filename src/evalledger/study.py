"""The full-scale study: a model × dataset grid of ordinary, resumable runs.

Each pair is its own run with its own stable run ID, so rerunning the study resumes every pair
and sends nothing for finished ones. A pair that fails (bad key, provider down, bad dataset) is
reported and the grid goes on. ``max_cost`` is a budget for the whole grid, counting what every
pair has spent before (earlier invocations included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evalledger.config import RunConfig
from evalledger.errors import EvalLedgerError, UsageError
from evalledger.ledger import RunLedger, scan_ledger
from evalledger.records import TRANSITIONS
from evalledger.run import Estimate, RunSummary, estimate_experiment, prepare_run, provider_for, run_experiment


@dataclass(frozen=True)
class StudyConfig:
    """A grid: every model × every dataset, with settings shared by all runs (see RunConfig)."""

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    task: str | None = None  # e.g. "self-correct"; None: each dataset's own task
    max_cost: float | None = None  # USD for the whole grid, across invocations
    run_options: dict[str, Any] = field(default_factory=dict)  # any other RunConfig field

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("--models: give at least one model")
        if not self.datasets:
            raise UsageError("--datasets: give at least one dataset")
        if self.max_cost is not None and self.max_cost <= 0:
            raise UsageError(f"--max-cost {self.max_cost}: must be a positive amount of USD")

    def run_config(self, model: str, dataset: str, **extra: Any) -> RunConfig:
        return RunConfig(dataset=dataset, model=model, task=self.task, **{**self.run_options, **extra})


@dataclass
class PairResult:
    """One cell of the grid."""

    model: str
    dataset: str
    run_id: str | None = None
    estimate: Estimate | None = None
    summary: RunSummary | None = None
    error: str | None = None  # why the pair could not run at all
    row: dict[str, Any] = field(default_factory=dict)  # the summary-table row


@dataclass
class StudySummary:
    pairs: list[PairResult]
    exit_code: int

    def table(self) -> str:
        """The summary table, one line per pair (fixed-width text)."""
        cols = ["model", "dataset", "n", "acc_t1", "acc_t2", "delta", *TRANSITIONS, "errors", "cost_usd", "status"]
        rows = [[_fmt(c, p.row.get(c), "n" in p.row) for c in cols] for p in self.pairs]
        heads = ["model", "dataset", "n", "acc turn1", "acc turn2", "Δ", "c→c", "c→i", "i→c", "i→i", "errors",
                 "cost USD", "status"]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        return "\n".join(lines)


_RATES = ("acc_t1", "acc_t2", *TRANSITIONS)


def _fmt(column: str, v: Any, ran: bool) -> str:
    """One cell: accuracies and transition rates as percentages, Δ in percentage points, cost in
    USD with the same decimals in every row; '-' where there is nothing, '?' for the unknown cost
    of a pair that ran (``ran``)."""
    if v is None:
        return "?" if column == "cost_usd" and ran else "-"
    if column in _RATES:
        return f"{v:.1%}"
    if column == "delta":
        return f"{v * 100:+.1f} pp"
    if column == "cost_usd":
        return f"{v:.4f}"
    return str(v)


def grid(study: StudyConfig) -> list[tuple[str, str]]:
    return [(m, d) for m in study.models for d in study.datasets]


def plan_study(study: StudyConfig) -> list[PairResult]:
    """Validate every pair and estimate it; nothing is sent. Pairs that cannot run carry ``error``."""
    plan = []
    for model, dataset in grid(study):
        pair = PairResult(model, dataset)
        try:
            config = study.run_config(model, dataset)
            provider_for(config)  # a missing key or an unknown model is found before any estimate
            pair.estimate = estimate_experiment(config)
            pair.run_id = prepare_run(config).run_id
        except EvalLedgerError as e:
            pair.error = str(e)
        plan.append(pair)
    return plan


def run_study(study: StudyConfig, *, confirm: Callable[[list[PairResult]], bool] | None = None,
              echo: Callable[[str], None] = print) -> StudySummary:
    """Run the grid: plan, optionally confirm, run each pair in turn, summarise.

    ``confirm`` receives the plan (with estimates) and returns False to cancel before anything is
    sent. Exit code: 0 when every pair completed, else the first non-zero code among the pairs
    (a budget stop, 5, or an interrupt, 130/143, ends the grid at once).
    """
    plan = plan_study(study)
    total = sum((p.estimate.cost_usd or 0.0) for p in plan if p.estimate)
    unknown = any(p.estimate is not None and p.estimate.cost_usd is None for p in plan)
    for p in plan:
        what = p.error.splitlines()[0] if p.error else (p.estimate.line() if p.estimate else "")
        echo(f"{p.model} × {p.dataset}: {what}")
    echo(f"grid estimate: ~${total:,.4f}" + (" plus pairs of unknown price" if unknown else ""))
    if confirm is not None and not confirm(plan):
        return StudySummary(plan, exit_code=1)

    exit_code = 0
    for pair in plan:
        if pair.error is not None:
            exit_code = exit_code or 2
            continue
        extra: dict[str, Any] = {}
        if study.max_cost is not None:
            spent = _grid_spent(study, plan)
            if spent is None or study.max_cost - spent <= 0:
                pair.error = (f"grid budget --max-cost {study.max_cost} reached before this pair" if spent is not None
                              else f"grid budget --max-cost {study.max_cost}: what the grid spent is unknown (a run "
                                   "holds a record billed without a valid cost; see `evalledger stats`)")
                exit_code = exit_code or 5
                continue
            # A run's --max-cost counts its own earlier spend, so give it that plus the grid's remainder.
            extra["max_cost"] = (_pair_spent(study, pair) or 0.0) + (study.max_cost - spent)
        try:
            pair.summary = run_experiment(study.run_config(pair.model, pair.dataset, **extra))
        except EvalLedgerError as e:
            pair.error = str(e)
            exit_code = exit_code or e.exit_code
            echo(f"{pair.model} × {pair.dataset}: failed: {pair.error.splitlines()[0]}")
            continue
        code = pair.summary.exit_code
        echo(f"{pair.model} × {pair.dataset}: {pair.summary.run_id} exit {code}"
             + (f": {pair.summary.message.splitlines()[0]}" if pair.summary.message else ""))
        if code:
            exit_code = exit_code or code
        if code in (5, 130, 143):
            break  # budget or an interrupt: do not start the next pair
    for pair in plan:
        pair.row = pair_row(study, pair)
    return StudySummary(plan, exit_code)


def _run_dir(study: StudyConfig, pair: PairResult) -> Path | None:
    if pair.run_id is None:
        return None
    return Path(study.run_options.get("output_dir", "outputs")) / pair.run_id


def _pair_spent(study: StudyConfig, pair: PairResult) -> float | None:
    run_dir = _run_dir(study, pair)
    return 0.0 if run_dir is None else spent_usd(run_dir)


def _grid_spent(study: StudyConfig, plan: list[PairResult]) -> float | None:
    """What every pair spent so far; None when one pair's spend is unknown."""
    total = 0.0
    for p in plan:
        spent = _pair_spent(study, p)
        if spent is None:
            return None
        total += spent
    return total


def spent_usd(run_dir: Path) -> float | None:
    """What a run has been billed so far, exactly as its ``--max-cost`` counts it (the resume scan:
    results records' ``paid`` plus the calls files, see :mod:`evalledger.records`); None when
    unknown (something was billed without a valid cost)."""
    return scan_ledger(run_dir).cost_usd


def pair_row(study: StudyConfig, pair: PairResult) -> dict[str, Any]:
    """Summary-table row: accuracy before/after review, Δ, transition rates, errors, cost."""
    row: dict[str, Any] = {"model": pair.model, "dataset": pair.dataset}
    run_dir = _run_dir(study, pair)
    if pair.error and (run_dir is None or not run_dir.exists()):
        row["status"] = "failed"
        return row
    assert run_dir is not None
    view = RunLedger(run_dir).latest_records()
    ok = [r for r in view.values() if r.get("status") == "ok"]
    row["n"] = len(ok)
    row["errors"] = sum(1 for r in view.values() if r.get("status") != "ok")
    before = [r for r in ok if isinstance(r.get("extra"), dict) and "correct_before" in r["extra"]]
    if before:
        t1 = sum(1 for r in before if r["extra"]["correct_before"]) / len(before)
        t2 = sum(1 for r in before if r["extra"].get("correct_after")) / len(before)
        row.update(acc_t1=t1, acc_t2=t2, delta=t2 - t1)
        for t in TRANSITIONS:
            row[t] = sum(1 for r in before if r["extra"].get("transition") == t) / len(before)
    elif ok:
        row["acc_t1"] = sum(1 for r in ok if r.get("correct")) / len(ok)
    row["cost_usd"] = spent_usd(run_dir) if _priced(view) else None
    code = pair.summary.exit_code if pair.summary else None
    row["status"] = "failed" if pair.error else ("complete" if code == 0 else (pair.summary.status if pair.summary else "-"))
    return row


def _priced(view: dict[str, dict[str, Any]]) -> bool:
    return any(r.get("cost_usd") is not None for r in view.values())


__all__ = ["PairResult", "StudyConfig", "StudySummary", "plan_study", "run_study", "spent_usd"]
