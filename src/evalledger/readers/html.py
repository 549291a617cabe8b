"""The HTML report: one self-contained file (inline CSS, inline PNG plots, no external URLs).

Works on one run or on a whole output directory (a study). Each run's ledger is read once
(:func:`scan_run`); the stats shown are computed from that same scan, so they are exactly what
``get_stats`` says. The sample browser seeks to the few records it shows instead of keeping a
million prompts in memory.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalledger._version import __version__
from evalledger.errors import UsageError
from evalledger.fsio import utc_now
from evalledger.readers.frames import frame_from_scan
from evalledger.readers.locate import resolve_run_dir, run_dirs
from evalledger.readers.scan import RunScan, fetch_records, scan_run
from evalledger.readers.stats import add_lifecycle, stats_from_scan

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

TEXT_LIMIT = 1500  # characters of prompt/response per cell: enough to judge, small enough at N rows


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


def _load(run_dir: Path) -> RunView:
    scan = scan_run(run_dir, text=True)
    df = frame_from_scan(scan, keep_row=True)
    stats = stats_from_scan(scan, df)
    add_lifecycle(stats, run_dir)  # the same dict as get_stats, status marker included
    return RunView(scan=scan, df=df, stats=stats)


def resolve_targets(target: str | Path, output_dir: str | Path = "outputs") -> list[Path]:
    """Run directories a report covers: one run (ID or directory), or every run in a directory."""
    try:
        return [resolve_run_dir(target, output_dir)]
    except UsageError:
        dirs = run_dirs(target)
        if dirs:
            return dirs
        raise UsageError(f"{target!r} is neither a run (ID under {output_dir} or run directory) "
                         "nor a directory holding runs") from None


def write_report(target: str | Path, out_path: str | Path, *, output_dir: str | Path = "outputs",
                 n_samples: int = 100) -> int:
    """Write the HTML report for a run or a directory of runs to ``out_path``; returns the run count."""
    runs = [_load(d) for d in resolve_targets(target, output_dir)]
    doc = render_report(runs, title=str(target), n_samples=n_samples)
    Path(out_path).write_text(doc, encoding="utf-8")
    return len(runs)


# ----------------------------------------------------------------------------- plots
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
    """Horizontal bars of accuracy per model × dataset with 95 % Wilson error bars."""
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
    ax.set_xlabel("accuracy (ok samples), 95% Wilson interval")
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


# ----------------------------------------------------------------------------- HTML
def _e(v: Any) -> str:
    return "–" if v is None else html.escape(str(v))


def _num(key: str, value: Any, shown: str) -> str:
    """A table cell that also carries the exact value, so tests and scripts can read it back."""
    raw = "" if value is None else json.dumps(value)
    return f'<td class="num" data-key="{key}" data-value="{html.escape(raw)}">{html.escape(shown)}</td>'


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def run_table(runs: list[RunView]) -> str:
    """The run table: one row per run, with its numbers as in get_stats."""
    head = ("<tr><th>run</th><th>model</th><th>dataset</th><th>task</th><th>done / total</th><th>errors</th>"
            "<th>accuracy</th><th>95% CI</th><th>p50 / p95 latency</th><th>tokens in / out</th><th>cost (USD)</th>"
            "<th>per correct</th><th>status</th></tr>")
    rows = []
    for r in runs:
        s = r.stats
        ci = s["accuracy_ci95"]
        lat = "–" if s["latency_p50_s"] is None else f"{s['latency_p50_s']:.2f}s / {s['latency_p95_s']:.2f}s"
        rows.append(
            f'<tr data-run="{_e(s["run_id"])}"><td>{_e(s["run_id"])}</td><td>{_e(s["model"])}</td>'
            f"<td>{_e(s['dataset'])}</td><td>{_e(s['task'])}</td>"
            + _num("completed_samples", s["completed_samples"], f"{s['completed_samples']} / {s['total_samples'] or '?'}")
            + _num("error_count", s["error_count"], str(s["error_count"]))
            + _num("accuracy", s["accuracy"], _pct(s["accuracy"]))
            + _num("accuracy_ci95", ci, "–" if ci is None else f"{ci[0]:.1%} – {ci[1]:.1%}")
            + f"<td class='num'>{lat}</td>"
            + _num("input_tokens", s["input_tokens"], f"{s['input_tokens']:,} / {s['output_tokens']:,}")
            + _num("cost_usd", s["cost_usd"], "unknown" if s["cost_usd"] is None else f"{s['cost_usd']:.4f}")
            + _num("cost_per_correct_usd", s["cost_per_correct_usd"],
                   "–" if s["cost_per_correct_usd"] is None else f"{s['cost_per_correct_usd']:.5f}")
            + f'<td data-key="state" data-value="{_e(json.dumps(s["state"]))}">{_e(s["state_label"])}</td></tr>')
    return f"<table class='runs'>{head}{''.join(rows)}</table>"


def error_table(runs: list[RunView]) -> str:
    """Error types per run with counts and one example message."""
    import pandas as pd  # slow to import (~0.5 s): only when a run is read

    rows = []
    for r in runs:
        df = r.df[r.df["in_dataset"].fillna(True).astype(bool)]  # as in the stats: the run's samples only
        errs = df[(df["status"] != "ok").fillna(True).astype(bool)]
        for etype, g in errs.groupby(errs["error_type"].fillna("unknown"), sort=False):
            first = g.iloc[0]
            msg = first["error_message"]
            rows.append((r.stats["run_id"], str(etype), len(g), str(first["sample_id"]), None if msg is pd.NA else msg))
    if not rows:
        return ""
    rows.sort(key=lambda x: -x[2])
    body = "".join(f"<tr><td>{_e(a)}</td><td>{_e(b)}</td><td class='num'>{c}</td><td>{_e(d)}</td>"
                   f"<td class='text'>{_e(None if m is None else str(m)[:300])}</td></tr>" for a, b, c, d, m in rows)
    return ("<table><tr><th>run</th><th>error type</th><th>samples</th><th>example sample</th><th>message</th></tr>"
            f"{body}</table>")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # prompt messages, or one response per turn
        value = "\n\n".join(f"[{m.get('role')}] {m.get('content')}" if isinstance(m, dict) else str(m) for m in value)
    value = str(value)
    return value if len(value) <= TEXT_LIMIT else value[:TEXT_LIMIT] + f" … [{len(value) - TEXT_LIMIT} more chars]"


def sample_browser(runs: list[RunView], n: int) -> str:
    """The first ``n`` samples of each group (all, incorrect, errors) per run, with a filter."""
    picked: dict[tuple[int, int], set[str]] = {}
    for ri, r in enumerate(runs):
        df = r.df[r.df["in_dataset"].fillna(True).astype(bool)]  # as in the stats: the run's samples only
        is_ok = (df["status"] == "ok").fillna(False).astype(bool)
        groups = {"all": df, "incorrect": df[is_ok & (df["correct"] == False).fillna(False).astype(bool)],  # noqa: E712
                  "error": df[~is_ok]}
        for kind, g in groups.items():
            for row in g["_row"].head(n):
                picked.setdefault((ri, int(row)), set()).add(kind)
    rows_html = []
    for ri, r in enumerate(runs):
        mine = sorted(row for (i, row) in picked if i == ri)
        records = fetch_records(r.scan, mine)
        for row, rec in sorted(zip(mine, records), key=lambda x: str(x[1].get("sample_id"))):
            kinds = picked[(ri, row)]
            status = rec.get("status")
            verdict = ("error" if status != "ok" else "correct" if rec.get("correct") else "incorrect")
            err = rec.get("error") if isinstance(rec.get("error"), dict) else {}
            rows_html.append(
                f'<tr class="{verdict}" data-kinds="{" ".join(sorted(kinds))}"><td>{_e(r.stats["run_id"])}</td>'
                f"<td>{_e(rec.get('sample_id'))}</td><td>{verdict}</td><td>{_e(rec.get('prediction'))}</td>"
                f"<td>{_e(rec.get('target'))}</td><td>{_e(json.dumps(rec.get('score')))}</td>"
                f"<td class='text'>{_e(_text(rec.get('prompt')))}</td>"
                f"<td class='text'>{_e(_text(rec.get('response')))}</td>"
                f"<td class='text'>{_e(err.get('type'))} {_e(err.get('message')) if err else ''}</td></tr>")
    buttons = "".join(f'<button onclick="show(\'{k}\')" id="b-{k}">{k}</button>' for k in ("all", "incorrect", "error"))
    return (f"<div class='filters'>Show: {buttons} <span class='muted'>(first {n} per group and run)</span></div>"
            "<table class='samples'><tr><th>run</th><th>sample</th><th>verdict</th><th>prediction</th><th>target</th>"
            "<th>score</th><th>prompt</th><th>response</th><th>error</th></tr>" + "".join(rows_html) + "</table>")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #e3e3e3;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f5f5f7}td.num{text-align:right;white-space:nowrap}
td.text{white-space:pre-wrap;max-width:380px;font-family:ui-monospace,Menlo,monospace;font-size:11.5px}
tr.error td{background:#fff1f0}tr.incorrect td{background:#fffbe6}
img.plot{max-width:100%;display:block;margin:8px 0}.muted{color:#777}
.filters button{margin-right:6px;padding:3px 10px;border:1px solid #bbb;background:#fff;border-radius:4px;cursor:pointer}
.filters button.on{background:#4c78a8;color:#fff;border-color:#4c78a8}
"""

JS = """
function show(kind){document.querySelectorAll('table.samples tr[data-kinds]').forEach(function(tr){
tr.style.display=tr.dataset.kinds.split(' ').indexOf(kind)>=0?'':'none';});
document.querySelectorAll('.filters button').forEach(function(b){b.className=b.id==='b-'+kind?'on':'';});}
show('all');
"""


def render_report(runs: list[RunView], *, title: str, n_samples: int = 100) -> str:
    """The report as one HTML string (everything inline)."""
    unique_labels(runs)
    sections = [
        f"<h1>evalledger report: {_e(title)}</h1>",
        f"<p class='muted'>{len(runs)} run(s) · generated {utc_now()} by evalledger {__version__} · "
        "accuracy is over ok samples; errors are counted apart, never as wrong answers</p>",
        "<h2>Runs</h2>", run_table(runs),
        "<h2>Accuracy per model × dataset</h2>", plot_accuracy(runs),
    ]
    sc = [r for r in runs if "transitions" in r.stats]
    if sc:
        sections.append("<h2>Self-correction</h2>")
        for r in sc:
            sections += [f"<h3>{_e(r.stats['run_id'])}</h3>", plot_self_correction(r)]
    sections += [
        "<h2>Cost</h2>", plot_cost(runs),
        "<h2>Latency</h2>", plot_latency(runs),
        "<h2>Errors</h2>", plot_errors(runs), error_table(runs),
        "<h2>Samples</h2>", sample_browser(runs, n_samples),
    ]
    stats_json = json.dumps([r.stats for r in runs], default=str).replace("</", "<\\/")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>evalledger report: {_e(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(sections)
            + f"<script type='application/json' id='stats'>{stats_json}</script><script>{JS}</script></body></html>")
