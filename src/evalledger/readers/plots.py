"""The report's plots, drawn with matplotlib as inline PNGs, and :class:`RunView`, one run as the
report sees it (its scan, DataFrame, stats and plot label)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evalledger.readers.scan import RunScan

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass
class RunView:
    """One run as the report sees it."""

    scan: RunScan
    df: "pd.DataFrame"
    stats: dict[str, Any]

    label: str = ""  # set by unique_labels(): "model · dataset", longer where that is ambiguous


def unique_labels(runs: list[RunView]) -> None:
    """Give each run a plot label: ``model · dataset``, plus the task, then the run ID, if needed.

    Plots use labels as categories, so two runs with one label would be drawn as one bar.
    """
    def base(r: RunView) -> str:
        return f"{r.stats['model'] or '?'} · {r.stats['dataset'] or '?'}"

    for r in runs:
        r.label = base(r)
    for extend in (lambda r: f"{base(r)} · {r.stats['task']}", lambda r: r.stats["run_id"]):
        seen: dict[str, int] = {}
        for r in runs:
            seen[r.label] = seen.get(r.label, 0) + 1
        for r in runs:
            if seen[r.label] > 1:
                r.label = extend(r)


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure  # slow to import (~0.4 s): only for the report

    # Figure without pyplot: no global state, no GUI backend, safe in any thread.
    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def _png(fig: "Figure", alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def plot_accuracy(runs: list[RunView]) -> str:
    """Horizontal bars of accuracy per model × dataset with 95 % error bars (Wilson; for a run with
    repeats, the mean over epochs with its interval over samples)."""
    rows = [(r.label, r.stats["accuracy"], r.stats["accuracy_ci95"]) for r in runs if r.stats["accuracy"] is not None]
    if not rows:
        return "<p class='muted'>No completed samples yet.</p>"
    fig = _figure(8, 1.3 + 0.45 * len(rows))
    ax = fig.add_subplot()
    ys = range(len(rows))
    acc = [a for _, a, _ in rows]
    err = [[a - ci[0] for _, a, ci in rows], [ci[1] - a for _, a, ci in rows]]
    ax.barh(list(ys), acc, xerr=err, color="#4c78a8", capsize=4)
    ax.set_yticks(list(ys), [lbl for lbl, _, _ in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    repeated = any(r.stats.get("epochs", 1) > 1 for r in runs)
    ax.set_xlabel("accuracy (ok samples), 95% Wilson interval"
                  + ("; runs with repeats: mean over epochs, interval over samples" if repeated else ""))
    for y, a in zip(ys, acc):
        # Inside the bar's base so it never collides with the error bar near 100 %.
        ax.text(0.01, y, f"{a:.1%}", va="center", fontsize=8, color="white" if a > 0.08 else "black")
    return _png(fig, "accuracy per model and dataset")


def plot_cost(runs: list[RunView]) -> str:
    """Cost per run and per correct answer; tokens instead where no run has a non-zero cost (every
    price unknown, or only free models such as the embedded one), since zero-length bars say nothing."""
    known = [r for r in runs if r.stats["cost_usd"] is not None]
    if not any(r.stats["cost_usd"] > 0 for r in known):
        why = "cost $0: free models" if known and len(known) == len(runs) else (
            "cost unknown: no prices recorded" if not known else "no run has a non-zero cost")
        return _plot_tokens(runs, why)
    fig = _figure(8, 1.5 + 0.4 * len(known))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    labels = [r.label for r in known]
    costs = [r.stats["cost_usd"] for r in known]
    ax1.barh(labels, costs, color="#f58518")
    ax1.set_xlabel("cost per run (USD)")
    ax2.barh(labels, [r.stats["cost_per_correct_usd"] or 0 for r in known], color="#e45756")
    ax2.set_xlabel("cost per correct answer (USD)")
    for y, cost in enumerate(costs):
        if cost == 0:
            ax1.text(0, y, " free", va="center", fontsize=8)
    ax1.invert_yaxis()
    missing = len(runs) - len(known)
    if missing:
        fig.suptitle(f"{missing} run(s) of unknown price not shown", fontsize=8)
    return _png(fig, "cost per run and per correct answer")


def _plot_tokens(runs: list[RunView], why: str) -> str:
    fig = _figure(8, 1.5 + 0.4 * len(runs))
    ax = fig.add_subplot()
    labels = [r.label for r in runs]
    ax.barh(labels, [r.stats["input_tokens"] for r in runs], color="#72b7b2", label="input tokens")
    ax.barh(labels, [r.stats["output_tokens"] for r in runs], left=[r.stats["input_tokens"] for r in runs],
            color="#54a24b", label="output tokens")
    ax.invert_yaxis()
    ax.set_xlabel(f"tokens ({why})")
    ax.legend(fontsize=8)
    return _png(fig, f"tokens per run ({why})")


def plot_latency(runs: list[RunView]) -> str:
    """Histogram of per-sample latency of ok samples, one outline per run, clipped at the 99th percentile."""
    import numpy as np  # slow to import: only when a run is read

    series = [(r.label, r.df.loc[r.df["status"] == "ok", "latency_s"].dropna().to_numpy(dtype=float)) for r in runs]
    series = [(lbl, v) for lbl, v in series if len(v)]
    if not series:
        return "<p class='muted'>No latencies yet.</p>"
    hi = max(float(np.percentile(v, 99)) for _, v in series) or 1.0
    bins = np.linspace(0, hi, 50)
    fig = _figure(8, 3)
    ax = fig.add_subplot()
    for lbl, v in series:
        ax.hist(np.clip(v, 0, hi), bins=bins, histtype="step" if len(series) > 1 else "stepfilled",
                label=lbl, linewidth=1.5, color=None if len(series) > 1 else "#4c78a8")
    ax.set_xlabel("latency per sample (s), incl. retries; last bin holds everything above p99")
    ax.set_ylabel("samples")
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _png(fig, "latency histogram")


def plot_errors(runs: list[RunView]) -> str:
    """Stacked bars: samples whose latest record is an error, by error type, per run."""
    types = sorted({t for r in runs for t in r.stats["errors_by_type"]})
    if not types:
        return "<p class='muted'>No samples with errors.</p>"
    fig = _figure(8, 1.5 + 0.4 * len(runs))
    ax = fig.add_subplot()
    left = [0] * len(runs)
    labels = [r.label for r in runs]
    for t in types:
        vals = [r.stats["errors_by_type"].get(t, 0) for r in runs]
        ax.barh(labels, vals, left=left, label=t)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlabel("samples with an error as their latest record")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return _png(fig, "error breakdown")


def plot_self_correction(run: RunView) -> str:
    """The 2×2 transition matrix as a heat map, and accuracy before → after."""
    t = run.stats["transitions"]
    grid = [[t.get("correct→correct", 0), t.get("correct→incorrect", 0)],
            [t.get("incorrect→correct", 0), t.get("incorrect→incorrect", 0)]]
    fig = _figure(8, 3)
    ax1, ax2 = fig.subplots(1, 2)
    im = ax1.imshow(grid, cmap="Blues")
    ax1.set_xticks([0, 1], ["correct after", "incorrect after"])
    ax1.set_yticks([0, 1], ["correct before", "incorrect before"])
    peak = max(max(r) for r in grid) or 1
    for i in range(2):
        for j in range(2):
            ax1.text(j, i, str(grid[i][j]), ha="center", va="center",
                     color="white" if grid[i][j] > peak / 2 else "black")
    fig.colorbar(im, ax=ax1, shrink=0.8)
    ax1.set_title("transitions", fontsize=9)
    before, after = run.stats.get("accuracy_before"), run.stats.get("accuracy_after")
    if before is not None and after is not None:
        ax2.bar(["before", "after"], [before, after], color=["#bab0ac", "#4c78a8"])
        ax2.set_ylim(0, 1)
        for x, v in enumerate([before, after]):
            ax2.text(x, v + 0.02, f"{v:.1%}", ha="center", fontsize=8)
    ax2.set_title("accuracy before → after", fontsize=9)
    return _png(fig, f"self-correction {run.stats['run_id']}")
