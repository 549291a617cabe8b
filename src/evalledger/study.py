"""The full-scale study: a model × dataset grid of ordinary, resumable runs.

Each pair is its own run with its own stable run ID, so rerunning the study resumes every pair
and sends nothing for finished ones. A pair that fails (bad key, provider down, bad dataset) is
reported and the grid goes on. ``max_cost`` is a budget for the whole grid, counting what every
pair has spent before (earlier invocations included). Each model and dataset may carry options of
its own (a model's base URL, key variable, concurrency, rate limits and prices; a dataset's task
and limit), which is what a grid file (:mod:`evalledger.configfile`) describes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evalledger.config import RunConfig
from evalledger.errors import EvalLedgerError, UsageError
from evalledger.ledger import RunLedger, scan_ledger
from evalledger.readers import DEFAULT_RESAMPLES, Comparison, compare_runs
from evalledger.records import TRANSITIONS
from evalledger.run import Estimate, RunSummary, estimate_experiment, prepare_run, provider_for, run_experiment

#: The RunConfig fields each pair sets itself, so no model, dataset or shared option may: its
#: dataset, model and task, and its own run ID.
PAIR_FIELDS = frozenset({"dataset", "model", "task", "run_id"})
_RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunConfig))


@dataclass(frozen=True)
class StudyModel:
    """One model of the grid, with the RunConfig fields only its runs use (``base_url``,
    ``api_key_env``, ``concurrency``, ``rpm``, ``tpm``, ``price_input``, ``prices_file``, …)."""

    model: str
    name: str | None = None  # its label in the summary; default: the model
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.model


@dataclass(frozen=True)
class StudyDataset:
    """One dataset of the grid, with its own tasks (empty: the grid's) and RunConfig fields (``limit``, …)."""

    dataset: str
    tasks: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyConfig:
    """A grid: every model × every dataset (× every task), with settings shared by all runs (see RunConfig).

    ``models`` and ``datasets`` hold names, or :class:`StudyModel` / :class:`StudyDataset` entries
    with options of their own. A pair's RunConfig takes ``run_options``, then its dataset's
    options, then its model's (the later wins). ``tasks`` runs each pair once per task; ``task``
    is the one task of every pair (None: each dataset's own).
    """

    models: tuple[str | StudyModel, ...]
    datasets: tuple[str | StudyDataset, ...]
    task: str | None = None  # e.g. "self-correct"; None: each dataset's own task
    max_cost: float | None = None  # USD for the whole grid, across invocations
    run_options: dict[str, Any] = field(default_factory=dict)  # any other RunConfig field
    tasks: tuple[str, ...] = ()  # several tasks: every pair runs with each (instead of ``task``)

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("--models: give at least one model")
        if not self.datasets:
            raise UsageError("--datasets: give at least one dataset")
        if self.max_cost is not None and self.max_cost <= 0:
            raise UsageError(f"--max-cost {self.max_cost}: must be a positive amount of USD")
        if self.task is not None and self.tasks:
            raise UsageError(f"task {self.task!r} and tasks {list(self.tasks)}: give one or the other")
        _check_options("run_options", self.run_options)
        for m in self.model_entries():
            _check_options(f"model {m.label}", m.options)
        for d in self.dataset_entries():
            _check_options(f"dataset {d.dataset}", d.options)
        labels = [m.label for m in self.model_entries()]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise UsageError(f"models: {', '.join(twice)} listed twice; a model × dataset pair is one run (its run "
                             "ID does not depend on the base URL or other execution options): list each model once")
        cells = [(p.model, p.dataset, p.task) for p in self.pairs()]
        same = sorted({c for c in cells if cells.count(c) > 1}, key=str)
        if same:
            model, dataset, task = same[0]
            raise UsageError(f"the grid holds {model} × {dataset} (task {task or 'default'}) twice; "
                             "a pair is one run: list each model, and each dataset with each task, once")

    def model_entries(self) -> tuple[StudyModel, ...]:
        return tuple(m if isinstance(m, StudyModel) else StudyModel(m) for m in self.models)

    def dataset_entries(self) -> tuple[StudyDataset, ...]:
        return tuple(d if isinstance(d, StudyDataset) else StudyDataset(d) for d in self.datasets)

    def grid_tasks(self) -> tuple[str | None, ...]:
        """The tasks of a dataset without its own: ``tasks``, else ``(task,)``."""
        return self.tasks or (self.task,)

    def option_layers(self, model: StudyModel, dataset: StudyDataset) -> tuple[tuple[str, Mapping[str, Any]], ...]:
        """Where a pair's options come from, the one that wins first: the model's, the dataset's, the shared."""
        return (("model", model.options), ("dataset", dataset.options), ("shared", self.run_options))

    def pairs(self) -> list[PairResult]:
        """Every cell of the grid, in order (models, then datasets, then tasks), not yet planned."""
        return [self.pair(m, d, task) for m in self.model_entries() for d in self.dataset_entries()
                for task in d.tasks or self.grid_tasks()]

    def pair(self, model: StudyModel, dataset: StudyDataset, task: str | None) -> PairResult:
        """One cell, its options merged from :meth:`option_layers`."""
        options: dict[str, Any] = {}
        for _, layer in reversed(self.option_layers(model, dataset)):
            options.update(layer)
        return PairResult(model.model, dataset.dataset, task=task, name=model.name, options=options)

    def run_config(self, model: str, dataset: str, **extra: Any) -> RunConfig:
        """The RunConfig of the (first) pair of ``model`` and ``dataset``, with ``extra`` fields over it."""
        for pair in self.pairs():
            if pair.model == model and pair.dataset == dataset:
                return pair.config(**extra)
        raise UsageError(f"{model} × {dataset} is not a pair of this grid")


def _check_options(where: str, options: Mapping[str, Any]) -> None:
    """Options name RunConfig fields, and none that the grid sets itself."""
    for name in options:
        if name not in _RUN_FIELDS:
            raise UsageError(f"{where}: {name!r} is not a RunConfig field")
        if name in PAIR_FIELDS:
            raise UsageError(f"{where}: {name!r} is set by the grid for each pair (models, datasets, task or tasks)")


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
    task: str | None = None  # None: the dataset's own
    name: str | None = None  # the model's label, when it has one
    options: dict[str, Any] = field(default_factory=dict)  # the pair's other RunConfig fields

    @property
    def label(self) -> str:
        """The model's name in the summary; with several tasks in a grid, the table adds a task column."""
        return self.name or self.model

    def config(self, **extra: Any) -> RunConfig:
        """The pair's RunConfig, with ``extra`` fields over it."""
        return RunConfig(dataset=self.dataset, model=self.model, task=self.task, **{**self.options, **extra})

    def run_dir(self) -> Path | None:
        return None if self.run_id is None else Path(self.options.get("output_dir", "outputs")) / self.run_id

    def title(self) -> str:
        """``model × dataset`` (and the task when it is not the dataset's own) for progress lines."""
        return f"{self.label} × {self.dataset}" + (f" ({self.task})" if self.task else "")


@dataclass
class PairComparison:
    """A pair against the grid's first model on the same dataset and task (paired by sample):
    ``comparison`` when both ran and share scored samples, else ``reason`` says why not."""

    baseline: PairResult
    pair: PairResult
    comparison: Comparison | None = None
    reason: str | None = None


def compare_to_first(plan: list[PairResult]) -> list[PairComparison]:
    """Each model's pair against the first model's pair on the same dataset and task."""
    groups: dict[tuple[str, str | None], list[PairResult]] = {}
    for pair in plan:
        groups.setdefault((pair.dataset, pair.task), []).append(pair)
    found: list[PairComparison] = []
    for baseline, *others in groups.values():
        for pair in others:
            a, b = baseline.run_dir(), pair.run_dir()
            if a is None or b is None or not a.is_dir() or not b.is_dir():
                found.append(PairComparison(baseline, pair, reason="not run"))
                continue
            try:
                found.append(PairComparison(baseline, pair, compare_runs(a, b).comparisons[0]))
            except EvalLedgerError as e:
                found.append(PairComparison(baseline, pair, reason=str(e).splitlines()[0]))
    return found


def _comparison_cells(c: Comparison) -> list[str]:
    lo, hi = c.difference_ci95
    cells = [str(c.n), f"{c.accuracy_a:.1%}", f"{c.accuracy_b:.1%}",
             f"{c.difference * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]", f"{c.p_value:.3g}",
             f"{c.a_right_b_wrong}/{c.a_wrong_b_right}"]
    sc = c.self_correction
    if sc is not None and sc.difference is not None and sc.difference_ci95 is not None:
        dlo, dhi = sc.difference_ci95
        cells.append(f"{sc.difference * 100:+.1f} [{dlo * 100:+.1f}, {dhi * 100:+.1f}]")
    else:
        cells.append("-")
    return cells


@dataclass
class StudySummary:
    pairs: list[PairResult]
    exit_code: int
    comparisons: list[PairComparison] = field(default_factory=list)

    def comparison_table(self) -> str:
        """Each model against the first one on the same dataset (and task): n paired samples, both
        accuracies, Δ in points with its paired-bootstrap 95 % CI, McNemar's p, the discordant
        counts, and for self-correction the difference in Δ(turn 2 − turn 1). Empty with one model."""
        if not self.comparisons:
            return ""
        heads = ["dataset", "model", "vs", "n", "acc vs", "acc model", "Δ pp [95% CI]", "p (McNemar)",
                 "vs✓/model✓", "Δ(t2−t1) diff pp [95% CI]"]
        rows = []
        for pc in self.comparisons:
            head = [pc.pair.dataset + (f" ({pc.pair.task})" if pc.pair.task else ""), pc.pair.label,
                    pc.baseline.label]
            tail = (_comparison_cells(pc.comparison) if pc.comparison is not None
                    else [f"not compared: {pc.reason}"] + [""] * (len(heads) - 4))
            rows.append(head + tail)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
        lines = ["each model against the first one, on the samples both scored (paired bootstrap CI, "
                 f"{DEFAULT_RESAMPLES} resamples, seed 0; vs✓/model✓: samples only that one got right):",
                 "  ".join(h.ljust(w) for h, w in zip(heads, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)

    def table(self) -> str:
        """The summary table, one line per pair (fixed-width text); a task column when the pairs'
        tasks differ."""
        with_task = len({p.task for p in self.pairs}) > 1
        cols = ["model", "dataset", *(["task"] if with_task else []), "n", "acc_t1", "acc_t2", "delta", *TRANSITIONS,
                "errors", "cost_usd", "status"]
        rows = [[_fmt(c, p.row.get(c), "n" in p.row) for c in cols] for p in self.pairs]
        heads = ["model", "dataset", *(["task"] if with_task else []), "n", "acc turn1", "acc turn2", "Δ", "c→c",
                 "c→i", "i→c", "i→i", "errors", "cost USD", "status"]
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


def plan_study(study: StudyConfig) -> list[PairResult]:
    """Validate every pair and estimate it; nothing is sent. Pairs that cannot run carry ``error``."""
    plan = study.pairs()
    for pair in plan:
        try:
            config = pair.config()
            provider_for(config)  # a missing key or an unknown model is found before any estimate
            pair.estimate = estimate_experiment(config)
            pair.run_id = prepare_run(config).run_id
        except EvalLedgerError as e:
            pair.error = str(e)
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
        echo(f"{p.title()}: {what}")
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
            spent = _grid_spent(plan)
            if spent is None or study.max_cost - spent <= 0:
                pair.error = (f"grid budget --max-cost {study.max_cost} reached before this pair" if spent is not None
                              else f"grid budget --max-cost {study.max_cost}: what the grid spent is unknown (a run "
                                   "holds a record billed without a valid cost; see `evalledger stats`)")
                exit_code = exit_code or 5
                continue
            # A run's --max-cost counts its own earlier spend, so give it that plus the grid's remainder.
            extra["max_cost"] = (_pair_spent(pair) or 0.0) + (study.max_cost - spent)
        try:
            pair.summary = run_experiment(pair.config(**extra))
        except EvalLedgerError as e:
            pair.error = str(e)
            exit_code = exit_code or e.exit_code
            echo(f"{pair.title()}: failed: {pair.error.splitlines()[0]}")
            continue
        code = pair.summary.exit_code
        echo(f"{pair.title()}: {pair.summary.run_id} exit {code}"
             + (f": {pair.summary.message.splitlines()[0]}" if pair.summary.message else ""))
        if code:
            exit_code = exit_code or code
        if code in (5, 130, 143):
            break  # budget or an interrupt: do not start the next pair
    for pair in plan:
        pair.row = pair_row(pair)
    return StudySummary(plan, exit_code, compare_to_first(plan))


def _pair_spent(pair: PairResult) -> float | None:
    run_dir = pair.run_dir()
    return 0.0 if run_dir is None else spent_usd(run_dir)


def _grid_spent(plan: list[PairResult]) -> float | None:
    """What every pair spent so far; None when one pair's spend is unknown."""
    total = 0.0
    for p in plan:
        spent = _pair_spent(p)
        if spent is None:
            return None
        total += spent
    return total


def spent_usd(run_dir: Path) -> float | None:
    """What a run has been billed so far, exactly as its ``--max-cost`` counts it (the resume scan:
    results records' ``paid`` plus the calls files, see :mod:`evalledger.records`); None when
    unknown (something was billed without a valid cost)."""
    return scan_ledger(run_dir).cost_usd


def pair_row(pair: PairResult) -> dict[str, Any]:
    """Summary-table row: accuracy before/after review, Δ, transition rates, errors, cost."""
    row: dict[str, Any] = {"model": pair.label, "dataset": pair.dataset, "task": pair.task}
    run_dir = pair.run_dir()
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
    # The run's own word: complete, errors, batches-pending (exit 0 too), budget, …
    row["status"] = "failed" if pair.error else (pair.summary.status if pair.summary else "-")
    return row


def _priced(view: dict[str, dict[str, Any]]) -> bool:
    return any(r.get("cost_usd") is not None for r in view.values())


__all__ = ["PAIR_FIELDS", "PairComparison", "PairResult", "compare_to_first", "StudyConfig", "StudyDataset", "StudyModel", "StudySummary", "plan_study",
           "run_study", "spent_usd"]
