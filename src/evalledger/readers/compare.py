"""Paired comparisons of runs on the same dataset: ``compare_runs`` and what it returns.

Two runs are compared on the samples both scored (an ``ok`` record whose ``correct`` is True or
False), so the difference is between two answers to the same questions, never between two
different subsets. Per pair: the accuracy of each, the difference B − A with a paired bootstrap
interval, McNemar's exact test and its discordant counts, and, for self-correction runs, the
change from turn 1 to turn 2 of each and the difference of those changes.

Repeats (``epoch``, K > 1): a sample's score is its mean correctness over its scored epochs (for
the accuracies, the differences and the bootstrap); for McNemar, which needs right or wrong, a
sample counts as right when it was right in more than half its scored epochs (a tie is wrong).
A frame without an ``epoch`` column holds one epoch per sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalledger.errors import UsageError
from evalledger.ledger import RunLedger, RunPaths
from evalledger.readers.frames import load_results
from evalledger.readers.locate import RunRef, resolve_run_dir
from evalledger.readers.manifest import read_manifest_facts
from evalledger.readers.paired import CONFIDENCE, mcnemar_exact_p, paired_bootstrap_ci
from evalledger.records import CORRECT_AFTER, CORRECT_BEFORE, EPOCH_FIELD

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_RESAMPLES = 10_000
#: Fewer resamples than this make the 2.5 % and 97.5 % quantiles mostly noise.
MIN_RESAMPLES = 100


@dataclass
class RunSide:
    """One run of a comparison, as the manifest and its scored samples describe it."""

    run_id: str
    run_dir: str
    model: str | None
    task: str | None
    dataset: str | None
    dataset_sha256: str
    scored_samples: int
    """Samples with at least one scored record (an ``ok`` record with ``correct`` True or False)."""
    epochs: int
    """The largest epoch among its scored records (1 for a run without repeats)."""
    self_correction: bool
    """Whether its records hold both turns (``correct_before`` and ``correct_after``)."""


@dataclass
class SelfCorrectionDiff:
    """Δ = accuracy after the second turn − accuracy after the first, on the paired samples
    whose records hold both turns; ``delta_a`` / ``delta_b`` are None for a run that is not a
    self-correction run, and the difference only exists when both are."""

    n: int
    delta_a: float | None
    delta_b: float | None
    difference: float | None
    """``delta_b − delta_a``."""
    difference_ci95: tuple[float, float] | None
    """Paired bootstrap percentile interval of ``difference``."""


@dataclass
class PairedResult:
    """The numbers of one paired comparison of run B against run A (fractions, not points)."""

    n: int
    """Samples both runs scored: the only ones compared."""
    accuracy_a: float
    accuracy_b: float
    difference: float
    """``accuracy_b − accuracy_a``."""
    difference_ci95: tuple[float, float]
    """Paired bootstrap percentile interval of ``difference`` (seeded: the same inputs give the same interval)."""
    p_value: float
    """McNemar's exact test, two-sided, on the discordant samples."""
    a_right_b_wrong: int
    a_wrong_b_right: int
    both_right: int
    both_wrong: int
    only_a: int
    """Samples A scored and B did not (not compared)."""
    only_b: int
    """Samples B scored and A did not (not compared)."""
    self_correction: SelfCorrectionDiff | None
    """Set when either run is a self-correction run."""


@dataclass
class Comparison(PairedResult):
    """Run B against run A (the first run given): :class:`PairedResult` and the two runs."""

    a: RunSide
    b: RunSide


@dataclass
class ComparisonReport:
    """What :func:`compare_runs` returns: the runs, and one comparison per run after the first,
    each against the first."""

    runs: list[RunSide]
    comparisons: list[Comparison]
    seed: int
    resamples: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what ``evalledger compare --json`` prints)."""
        return dataclasses.asdict(self)


@dataclass
class ScoredSamples:
    """Per sample of one run, what a comparison needs, indexed by sample id (sorted).

    ``table`` columns: ``correct`` and ``scored`` (epochs right, epochs scored), and for a
    self-correction run ``before``, ``after`` and ``turns`` (epochs right after turn 1, after
    turn 2, and scored epochs holding both).
    """

    table: "pd.DataFrame"
    epochs: int
    self_correction: bool
    ok_records: int
    error_records: int


def scored_samples(frame: "pd.DataFrame") -> ScoredSamples:
    """What a comparison needs of a :func:`load_results` frame: one row per sample (or per sample
    and epoch when it has an ``epoch`` column); rows the manifest marks as not in the dataset
    are left out."""
    import pandas as pd  # slow to import: only when a run is read

    df = frame
    if "in_dataset" in df.columns:
        df = df[df["in_dataset"].fillna(True).astype(bool)]
    status = df["status"].astype("string")
    ok = df[status.eq("ok").fillna(False).astype(bool)]
    errors = int(status.eq("error").fillna(False).astype(bool).sum())
    scored = ok[ok["correct"].notna()]
    ids = scored["sample_id"].astype(str).to_numpy()
    parts: dict[str, Any] = {"correct": scored["correct"].astype(bool).astype(int).to_numpy(), "scored": 1}
    sc = CORRECT_BEFORE in scored.columns and CORRECT_AFTER in scored.columns
    if sc:
        both = (scored[CORRECT_BEFORE].notna() & scored[CORRECT_AFTER].notna()).to_numpy(dtype=bool)
        sc = bool(both.any())
    if sc:
        parts["before"] = scored[CORRECT_BEFORE].fillna(False).astype(bool).to_numpy() & both
        parts["after"] = scored[CORRECT_AFTER].fillna(False).astype(bool).to_numpy() & both
        parts["turns"] = both
    rows = pd.DataFrame(parts, index=pd.Index(ids, name="sample_id")).astype(int)
    table = rows.groupby(level=0, sort=True).sum()
    # load_results gives every row its epoch (records.epoch_of); a frame without the column is epoch 1.
    top = pd.to_numeric(scored[EPOCH_FIELD], errors="coerce").max() if EPOCH_FIELD in scored.columns else None
    epochs = int(top) if top is not None and pd.notna(top) and top >= 1 else 1
    return ScoredSamples(table=table, epochs=epochs, self_correction=sc, ok_records=len(ok), error_records=errors)


def _self_correction(a: ScoredSamples, b: ScoredSamples, pair: "pd.DataFrame", *, seed: int,
                     resamples: int) -> SelfCorrectionDiff | None:
    """Each run's Δ(turn 2 − turn 1) on the paired samples holding both turns (in every
    self-correction run of the two), and the difference of the Δs with its interval."""
    if not (a.self_correction or b.self_correction):
        return None
    mask = None
    deltas: dict[str, Any] = {}
    for side, run in (("a", a), ("b", b)):
        if run.self_correction:
            turns = pair[f"turns_{side}"].to_numpy()
            deltas[side] = (pair[f"after_{side}"].to_numpy() - pair[f"before_{side}"].to_numpy()) / turns.clip(min=1)
            mask = turns > 0 if mask is None else mask & (turns > 0)
    n = int(mask.sum())
    if n == 0:
        return SelfCorrectionDiff(n=0, delta_a=None, delta_b=None, difference=None, difference_ci95=None)
    delta_a = float(deltas["a"][mask].mean()) if "a" in deltas else None
    delta_b = float(deltas["b"][mask].mean()) if "b" in deltas else None
    if delta_a is None or delta_b is None:
        return SelfCorrectionDiff(n=n, delta_a=delta_a, delta_b=delta_b, difference=None, difference_ci95=None)
    ci = paired_bootstrap_ci(deltas["b"][mask] - deltas["a"][mask], seed=seed, resamples=resamples)
    return SelfCorrectionDiff(n=n, delta_a=delta_a, delta_b=delta_b, difference=delta_b - delta_a, difference_ci95=ci)


def compare_scored(a: ScoredSamples, b: ScoredSamples, *, seed: int = 0,
                   resamples: int = DEFAULT_RESAMPLES) -> PairedResult | None:
    """The paired comparison of B against A on the samples both scored; None when they share none."""
    pair = a.table.add_suffix("_a").join(b.table.add_suffix("_b"), how="inner")
    n = len(pair)
    if n == 0:
        return None
    score_a = pair["correct_a"].to_numpy() / pair["scored_a"].to_numpy()
    score_b = pair["correct_b"].to_numpy() / pair["scored_b"].to_numpy()
    # McNemar needs right or wrong: right in more than half the scored epochs (K = 1: right).
    right_a = 2 * pair["correct_a"].to_numpy() > pair["scored_a"].to_numpy()
    right_b = 2 * pair["correct_b"].to_numpy() > pair["scored_b"].to_numpy()
    b_count, c_count = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    accuracy_a, accuracy_b = float(score_a.mean()), float(score_b.mean())
    return PairedResult(
        n=n, accuracy_a=accuracy_a, accuracy_b=accuracy_b, difference=accuracy_b - accuracy_a,
        difference_ci95=paired_bootstrap_ci(score_b - score_a, seed=seed, resamples=resamples),
        p_value=mcnemar_exact_p(b_count, c_count), a_right_b_wrong=b_count, a_wrong_b_right=c_count,
        both_right=int((right_a & right_b).sum()), both_wrong=int((~right_a & ~right_b).sum()),
        only_a=len(a.table) - n, only_b=len(b.table) - n,
        self_correction=_self_correction(a, b, pair, seed=seed, resamples=resamples),
    )


# ---------------------------------------------------------------------------------- the runs
@dataclass
class _Run:
    run_dir: Path
    label: str
    dataset: dict[str, Any]


def _dataset_facts(run_dir: Path) -> dict[str, Any]:
    """The manifest's ``dataset`` object ({} when the run has no manifest or no such object)."""
    manifest = RunLedger(run_dir).read_manifest() or {}
    dataset = manifest.get("dataset")
    return dataset if isinstance(dataset, dict) else {}


def dataset_key(run_dir: Path) -> tuple[str, str | None] | None:
    """What two runs must share to be compared: the dataset's sha256 and where its sample ids come
    from (None when the manifest does not record the sha256)."""
    facts = _dataset_facts(run_dir)
    sha, ids = facts.get("sha256"), facts.get("id_source")
    return (sha, ids if isinstance(ids, str) else None) if isinstance(sha, str) else None


def _describe_dataset(run: _Run) -> str:
    d = run.dataset
    sha = d.get("sha256")
    rows = d.get("total_rows")
    return (f"{run.label}: {d.get('name') or '?'} ({d.get('path') or 'path unknown'}), sha256 "
            f"{sha[:16] + '…' if isinstance(sha, str) else '?'}" + (f", {rows} rows" if type(rows) is int else ""))


def _check_same_dataset(a: _Run, b: _Run) -> None:
    """Refuse a pair that cannot be shown to have asked the same questions under the same ids."""
    for run in (a, b):
        if not isinstance(run.dataset.get("sha256"), str):
            raise UsageError(
                f"cannot compare {a.label} with {b.label}: the manifest of {run.label} "
                f"({RunPaths(run.run_dir).manifest}) does not record its dataset's sha256, so there is no telling "
                "whether both runs asked the same questions")
    if a.dataset["sha256"] != b.dataset["sha256"]:
        raise UsageError(
            f"cannot compare {a.label} with {b.label}: they are on different datasets ({_describe_dataset(a)}; "
            f"{_describe_dataset(b)}). A paired comparison needs both runs on the same dataset file (the same "
            "sha256): the same questions, answered by each run")
    ids_a, ids_b = a.dataset.get("id_source"), b.dataset.get("id_source")
    if isinstance(ids_a, str) and isinstance(ids_b, str) and ids_a != ids_b:
        raise UsageError(
            f"cannot compare {a.label} with {b.label}: they are on the same dataset file but name its samples "
            f"differently ({a.label}: ids from {ids_a}; {b.label}: ids from {ids_b}), so a sample id does not "
            "mean the same question in both; run both with the same --id-column")


def _labels(dirs: list[Path]) -> list[str]:
    """Run ids, or the paths when two runs share a run id (the same run in two output dirs)."""
    names = [d.name for d in dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in dirs]


def _side(run: _Run, scored: ScoredSamples) -> RunSide:
    facts = read_manifest_facts(run.run_dir)
    return RunSide(run_id=run.run_dir.name, run_dir=str(run.run_dir), model=facts.model, task=facts.task,
                   dataset=facts.dataset, dataset_sha256=run.dataset["sha256"], scored_samples=len(scored.table),
                   epochs=scored.epochs, self_correction=scored.self_correction)


def _check_options(seed: int, resamples: int) -> None:
    if type(seed) is not int or seed < 0:
        raise UsageError(f"the bootstrap seed must be a whole number >= 0, not {seed!r}")
    if type(resamples) is not int or resamples < MIN_RESAMPLES:
        raise UsageError(f"resamples must be a whole number >= {MIN_RESAMPLES} (a 95 % interval from fewer is "
                         f"mostly noise), not {resamples!r}")


def compare_runs(run_a: RunRef, run_b: RunRef, *more: RunRef, output_dir: str | Path | None = None,
                 seed: int = 0, resamples: int = DEFAULT_RESAMPLES) -> ComparisonReport:
    """Compare ``run_b`` (and each run in ``more``) against ``run_a``, paired by sample.

    Each run is a run ID under ``output_dir`` (default ``outputs``), a run directory or a
    ``RunSummary``. Only the samples both runs scored are compared; how many each scored that the
    other did not is in ``only_a`` / ``only_b``. The interval is a paired bootstrap with
    ``resamples`` resamples seeded by ``seed`` (each comparison draws from its own generator with
    that seed, so a pair gets the same interval whatever else is compared); the p-value is
    McNemar's exact test. See the module docstring for repeats (``epoch``).

    Raises :class:`UsageError` naming both runs when a pair is on different datasets (or a
    manifest does not say which), when a run has nothing scored, or when a pair has no sample in
    common. Different tasks and models on the same dataset are what comparisons are for.
    """
    _check_options(seed, resamples)
    dirs = [resolve_run_dir(r, output_dir) for r in (run_a, run_b, *more)]
    runs = [_Run(d, label, _dataset_facts(d)) for d, label in zip(dirs, _labels(dirs))]
    for other in runs[1:]:
        _check_same_dataset(runs[0], other)
    scored = [scored_samples(load_results(r.run_dir, text=False)) for r in runs]
    for i, (run, s) in enumerate(zip(runs, scored)):
        if len(s.table) == 0:
            first, second = (run, runs[1]) if i == 0 else (runs[0], run)
            raise UsageError(
                f"cannot compare {first.label} with {second.label}: {run.label} has nothing scored (no ok record "
                f"with a correct or incorrect score; {s.ok_records} ok record(s), {s.error_records} error record(s))")
    sides = [_side(r, s) for r, s in zip(runs, scored)]
    comparisons: list[Comparison] = []
    for run, s, side in zip(runs[1:], scored[1:], sides[1:]):
        paired = compare_scored(scored[0], s, seed=seed, resamples=resamples)
        if paired is None:
            raise UsageError(
                f"cannot compare {runs[0].label} with {run.label}: no sample was scored by both "
                f"({runs[0].label} scored {len(scored[0].table)}, {run.label} scored {len(s.table)}, none in common)")
        comparisons.append(Comparison(**{f.name: getattr(paired, f.name) for f in dataclasses.fields(paired)},
                                      a=sides[0], b=side))
    return ComparisonReport(runs=sides, comparisons=comparisons, seed=seed, resamples=resamples)


__all__ = [
    "Comparison",
    "ComparisonReport",
    "PairedResult",
    "RunSide",
    "ScoredSamples",
    "SelfCorrectionDiff",
    "compare_runs",
    "compare_scored",
    "dataset_key",
    "scored_samples",
]
