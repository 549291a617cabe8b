"""Metrics of a run that asked each sample several times (``--epochs K``): the per-sample view,
accuracy per epoch, the mean over epochs with its confidence interval, the majority vote and pass@k.

Definitions (``n`` is a sample's scored epochs, those whose latest record is ``ok``; ``c`` the
correct ones among them; errors are never wrong answers, so they are not scored):

* **Accuracy per epoch**: over the samples whose epoch ``e`` is scored, correct / scored, with a
  Wilson interval.
* **Mean over epochs**: the sample is the unit. Each scored sample's mean correctness ``c / n`` is
  averaged over the scored samples; the 95 % interval is that mean ± 1.96 standard errors, the
  standard error being the standard deviation of the per-sample means (``ddof=1``) over √(samples),
  clipped to [0, 1]. Repeats of one sample are not independent draws, so they never narrow the
  interval as extra samples would. With one epoch the mean is the plain accuracy, whose interval
  stays the Wilson one (:func:`evalledger.readers.stats.wilson_interval`).
* **Majority vote** (self-consistency; ``qa`` and ``mcq``): each scored epoch's prediction,
  normalised (:func:`vote_key`: ``qa`` numbers as :func:`evalledger.tasks.normalize_number` writes
  them, ``mcq`` letters in upper case), is one vote; an epoch without a prediction abstains. The
  prediction with the most votes wins; among tied ones, the one given at the lowest epoch. The
  sample's vote is correct when the winning prediction's record (at that lowest epoch) is correct;
  a sample whose scored epochs all abstained votes for nothing and counts as not correct.
* **pass@k** (``humaneval``, or any task when asked), for every k ≤ K: the unbiased estimator of
  Chen et al. (2021), the mean over samples of ``1 - C(n - c, k) / C(n, k)``, computed as the
  product ``1 - ∏_{i = n-c+1}^{n} (1 - k / i)`` (no huge binomials). Samples with ``n < k`` cannot
  estimate it: they are left out of that k and counted (``excluded``).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from evalledger.readers.intervals import mean_interval, wilson_interval
from evalledger.records import EPOCH_COLUMN
from evalledger.tasks import normalize_number

if TYPE_CHECKING:
    import pandas as pd

VOTE_TASKS = ("qa", "mcq")  # tasks whose predictions are answers that can be voted on
PASS_AT_K_TASKS = ("humaneval",)  # tasks where a sample is solved if any of k tries is
PASS_PREFIX = "pass@"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate for one sample with ``n`` scored tries, ``c`` of them correct:
    ``1 - C(n - c, k) / C(n, k)`` (Chen et al., 2021), as a product. Needs ``1 <= k <= n`` and
    ``0 <= c <= n``."""
    if not (1 <= k <= n and 0 <= c <= n):
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:  # every choice of k tries holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def vote_key(prediction: Any, task: str | None) -> str | None:
    """A prediction as one vote: None for no prediction (an abstention); ``qa`` numbers normalised,
    ``mcq`` letters in upper case, other text stripped, other values as sorted-key JSON."""
    if prediction is None or (isinstance(prediction, float) and math.isnan(prediction)):
        return None
    if not isinstance(prediction, str):
        if task == "qa" and type(prediction) in (int, float):
            prediction = str(prediction)
        else:
            return json.dumps(prediction, sort_keys=True, ensure_ascii=False, default=str)
    text = prediction.strip()
    if not text:
        return None
    if task == "qa":
        return normalize_number(text) or text
    return text.upper() if task == "mcq" else text


def default_metrics(task: str | None, epochs: int, vote: bool | None, pass_k: bool | None,
                    *, single: bool) -> tuple[bool, bool]:
    """Whether to compute (the majority vote, pass@k). None means the default: the vote for
    :data:`VOTE_TASKS`, pass@k for :data:`PASS_AT_K_TASKS`, and with ``single`` False (the stats)
    only when the run has more than one epoch."""
    repeated = epochs > 1 or single
    return (task in VOTE_TASKS and repeated if vote is None else vote,
            task in PASS_AT_K_TASKS and repeated if pass_k is None else pass_k)


def per_sample_frame(df: "pd.DataFrame", task: str | None, epochs: int, *, vote: bool | None = None,
                     pass_k: bool | None = None) -> "pd.DataFrame":
    """One row per sample of a (sample, epoch) frame (``load_results``), sorted by ``sample_id``.

    Columns: ``sample_id``; ``epochs`` (epochs with a record), ``ok_epochs`` (scored: ``n``),
    ``correct_epochs`` (``c``), ``mean_correct`` (``c / n``, NA when nothing is scored); with the
    vote (``qa``/``mcq`` by default, see :func:`default_metrics`) ``majority_prediction``,
    ``majority_correct`` and ``majority_tied`` (the winner shared the most votes with another
    prediction); with pass@k (``humaneval`` by default) ``pass@1`` … ``pass@K``, NA where ``n < k``;
    and ``in_dataset``. ``df`` needs ``sample_id``, ``status``, ``correct`` (and ``epoch`` and
    ``prediction`` for the vote).
    """
    import pandas as pd  # slow to import (~0.5 s): only when a run is read

    vote, pass_k = default_metrics(task, epochs, vote, pass_k, single=True)
    ok = (df["status"] == "ok").fillna(False).astype(bool)
    correct = df["correct"].fillna(False).astype(bool) & ok
    g = pd.DataFrame({"sample_id": df["sample_id"].astype(str), "ok": ok, "correct": correct}).groupby(
        "sample_id", sort=True)
    out = pd.DataFrame({"epochs": g.size(), "ok_epochs": g["ok"].sum(), "correct_epochs": g["correct"].sum()})
    out = out.astype("int64")
    scored = out["ok_epochs"] > 0
    out["mean_correct"] = pd.array((out["correct_epochs"] / out["ok_epochs"]).where(scored), dtype="Float64")
    if vote:
        out = out.join(_majority(df[ok], task, out.index))
        out["majority_correct"] = out["majority_correct"].where(scored, pd.NA).astype("boolean")
    if pass_k:
        pairs = list(zip(out["ok_epochs"], out["correct_epochs"]))
        for k in range(1, epochs + 1):
            # Computed once per distinct (n, c): there are at most (K + 1)² of them.
            once = {(n, c): pass_at_k(n, c, k) for n, c in set(pairs) if n >= k}
            out[f"{PASS_PREFIX}{k}"] = pd.array([once.get(pair) for pair in pairs], dtype="Float64")
    inside = df["in_dataset"] if "in_dataset" in df.columns else pd.Series(True, index=df.index)
    out["in_dataset"] = inside.fillna(True).astype(bool).groupby(df["sample_id"].astype(str)).all().astype("boolean")
    out = out.rename_axis("sample_id").reset_index()
    out["sample_id"] = out["sample_id"].astype("string")
    return out


def _vote_keys(predictions: "pd.Series", task: str | None) -> Any:
    """:func:`vote_key` of every prediction, computed once per distinct value (a million rows hold
    a few thousand answers)."""
    import numpy as np  # slow to import: only when a run is read
    import pandas as pd  # slow to import (~0.5 s): only when a run is read

    try:
        codes, uniques = pd.factorize(predictions)
    except TypeError:  # lists or dicts (a task's own predictions): not hashable
        return [vote_key(p, task) for p in predictions]
    keys = np.array([vote_key(u, task) for u in uniques] + [None], dtype=object)
    return keys[codes]  # code -1 (a missing prediction) picks the None at the end


def _majority(ok: "pd.DataFrame", task: str | None, samples: "pd.Index") -> "pd.DataFrame":
    """Per sample (index ``samples``): the majority prediction of its ok rows, whether it is correct
    and whether it was tied (see the module docstring for the rule)."""
    import pandas as pd  # slow to import (~0.5 s): only when a run is read

    votes = pd.DataFrame({"sample_id": ok["sample_id"].astype(str), "epoch": ok[EPOCH_COLUMN].astype("int64"),
                          "key": _vote_keys(ok["prediction"], task),
                          "correct": ok["correct"].fillna(False).astype(bool)})
    votes = votes[votes["key"].notna()]
    tally = (votes.groupby(["sample_id", "key"], sort=False)
             .agg(count=("epoch", "size"), first=("epoch", "min")).reset_index())
    tally = tally.sort_values(["sample_id", "count", "first"], ascending=[True, False, True], kind="stable")
    top = tally.groupby("sample_id", sort=False)["count"].transform("max")
    tied = (tally["count"] == top).groupby(tally["sample_id"]).sum() > 1
    winners = tally.drop_duplicates("sample_id").set_index("sample_id")
    right = votes.set_index(["sample_id", "epoch"])["correct"]
    wins = pd.MultiIndex.from_arrays([winners.index, winners["first"]])
    out = pd.DataFrame(index=samples)
    out["majority_prediction"] = pd.Series(winners["key"], dtype="string").reindex(samples)
    out["majority_correct"] = pd.Series(right.reindex(wins).to_numpy(), index=winners.index,
                                        dtype="boolean").reindex(samples).fillna(False)
    out["majority_tied"] = tied.reindex(samples).fillna(False).astype("boolean")
    return out


def repeat_stats(units: "pd.DataFrame", task: str | None, epochs: int, *, vote: bool | None = None,
                 pass_k: bool | None = None) -> dict[str, Any]:
    """The ``repeats`` entry of the stats dict: per-epoch accuracy, the mean over epochs with its
    interval, and the vote and pass@k where they apply (see the module docstring). ``units`` is the
    run's (sample, epoch) frame, samples outside the dataset left out."""
    vote, pass_k = default_metrics(task, epochs, vote, pass_k, single=False)
    samples = per_sample_frame(units, task, epochs, vote=vote, pass_k=pass_k)
    scored = samples[samples["ok_epochs"] > 0]
    ok = (units["status"] == "ok").fillna(False).astype(bool)
    right = (units["correct"].fillna(False).astype(bool) & ok).groupby(units[EPOCH_COLUMN]).sum()
    scored_by_epoch = ok.groupby(units[EPOCH_COLUMN]).sum()
    per_epoch = []
    for e in range(1, epochs + 1):  # epochs_of: K covers every epoch a record answers
        n, c = int(scored_by_epoch.get(e, 0)), int(right.get(e, 0))
        ci = wilson_interval(c, n)
        per_epoch.append({"epoch": e, "completed": n, "correct": c, "accuracy": c / n if n else None,
                          "accuracy_ci95": list(ci) if ci else None})
    mean, se, ci = mean_interval(scored["mean_correct"].astype(float).tolist())
    out: dict[str, Any] = {"epochs": epochs, "scored_samples": len(scored), "accuracy_by_epoch": per_epoch,
                           "mean_accuracy": mean, "mean_accuracy_se": se,
                           "mean_accuracy_ci95": list(ci) if ci else None}
    if vote:
        right = int(scored["majority_correct"].fillna(False).astype(bool).sum())
        out["majority_vote"] = {"accuracy": right / len(scored) if len(scored) else None, "correct": right,
                                "samples": len(scored), "ties": int(scored["majority_tied"].fillna(False).sum())}
    if pass_k:
        out["pass_at_k"] = []
        for k in range(1, epochs + 1):
            col = samples[f"{PASS_PREFIX}{k}"].dropna()
            out["pass_at_k"].append({"k": k, "value": float(col.mean()) if len(col) else None,
                                     "samples": len(col), "excluded": len(samples) - len(col)})
    return out


__all__ = ["pass_at_k", "per_sample_frame", "repeat_stats", "vote_key", "VOTE_TASKS", "PASS_AT_K_TASKS"]
