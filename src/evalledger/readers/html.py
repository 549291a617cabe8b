"""The HTML report: one self-contained file (inline CSS, inline PNG plots, no external URLs).

Works on one run or on a whole output directory (a study). Each run's ledger is read once
(:func:`scan_run`); the stats shown are computed from that same scan, so they are exactly what
``get_stats`` says. The sample browser seeks to the few records it shows instead of keeping a
million prompts in memory.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from evalledger._version import __version__
from evalledger.errors import UsageError
from evalledger.fsio import utc_now
from evalledger.readers.compare import DEFAULT_RESAMPLES, compare_scored, dataset_key, scored_samples
from evalledger.readers.frames import frame_from_scan
from evalledger.readers.locate import resolve_run_dir, run_dirs
from evalledger.readers.plots import (
    RunView,
    plot_accuracy,
    plot_cost,
    plot_errors,
    plot_latency,
    plot_self_correction,
    unique_labels,
)
from evalledger.readers.scan import fetch_records, scan_run
from evalledger.readers.stats import add_lifecycle, stats_from_scan
from evalledger.records import epoch_of

TEXT_LIMIT = 1500  # characters of prompt/response per cell: enough to judge, small enough at N rows


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
            "<th>per correct</th><th>from the cache (saved USD)</th><th>status</th></tr>")
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
            + _cache_cell(s)
            + f'<td data-key="state" data-value="{_e(json.dumps(s["state"]))}">{_e(s["state_label"])}</td></tr>')
    return f"<table class='runs'>{head}{''.join(rows)}</table>"


def _cache_cell(s: dict[str, Any]) -> str:
    """Units answered from the response cache and what they would have cost (get_stats' ``cache_*``)."""
    hits, saved = s.get("cache_hits", 0), s.get("cache_saved_usd")
    shown = "–" if not hits else f"{hits:,} ({'unknown' if saved is None else f'{saved:.4f}'})"
    return _num("cache", {"cache_hits": hits, "cache_saved_usd": saved}, shown)


def _points(x: float) -> str:
    return f"{x * 100:+.1f}"


def comparison_table(runs: list[RunView]) -> str:
    """Each run against the first run on the same dataset (the same sha256 and ids), paired by
    sample, as ``evalledger compare`` computes it; empty when no two runs share a dataset."""
    groups: dict[tuple[str, str | None], list[RunView]] = {}
    for r in runs:
        key = dataset_key(r.scan.run_dir)
        if key is not None:
            groups.setdefault(key, []).append(r)
    rows = []
    for base, *others in (g for g in groups.values() if len(g) > 1):
        first = scored_samples(base.df)
        for r in others:
            paired = compare_scored(first, scored_samples(r.df)) if len(first.table) else None
            cells = f"<td>{_e(r.label)}</td><td>{_e(base.label)}</td>"
            if paired is None:
                rows.append(f"<tr>{cells}<td colspan='7'>not compared: no sample scored by both</td></tr>")
                continue
            lo, hi = paired.difference_ci95
            sc = paired.self_correction
            sc_cell = ("–" if sc is None or sc.difference is None or sc.difference_ci95 is None else
                       f"{_points(sc.difference)} [{_points(sc.difference_ci95[0])}, {_points(sc.difference_ci95[1])}]")
            rows.append(
                f"<tr data-compare='{_e(r.stats['run_id'])}'>{cells}" + _num("n", paired.n, str(paired.n))
                + _num("accuracy_a", paired.accuracy_a, _pct(paired.accuracy_a))
                + _num("accuracy_b", paired.accuracy_b, _pct(paired.accuracy_b))
                + _num("difference", paired.difference, f"{_points(paired.difference)} [{_points(lo)}, {_points(hi)}]")
                + _num("p_value", paired.p_value, f"{paired.p_value:.3g}")
                + _num("discordant", [paired.a_right_b_wrong, paired.a_wrong_b_right],
                       f"{paired.a_right_b_wrong} / {paired.a_wrong_b_right}")
                + f"<td class='num'>{sc_cell}</td></tr>")
    if not rows:
        return ""
    head = ("<tr><th>run</th><th>against</th><th>n</th><th>accuracy (against)</th><th>accuracy (run)</th>"
            "<th>Δ points [95% CI]</th><th>p (McNemar)</th><th>only against ✓ / only run ✓</th>"
            "<th>Δ(turn 2 − turn 1) difference</th></tr>")
    return ("<h2>Paired comparisons</h2><p class='muted'>Each run against the first run on the same dataset, on "
            f"the samples both scored: paired bootstrap 95% CI ({DEFAULT_RESAMPLES} resamples, seed 0) and McNemar's "
            "exact test, as <code>evalledger compare</code> gives them.</p>"
            f"<table class='compare'>{head}{''.join(rows)}</table>")


def _pct_list(items: list[dict[str, Any]], key: str, value: str) -> str:
    return ", ".join(f"{x[key]}: {_pct(x[value])}" for x in items)


def repeats_table(runs: list[RunView]) -> str:
    """Runs with repeats: accuracy per epoch, the mean over epochs with its interval over samples,
    the majority vote and pass@k (the ``repeats`` entry of get_stats)."""
    rows = []
    for r in runs:
        rep = r.stats.get("repeats")
        if rep is None:
            continue
        ci = rep["mean_accuracy_ci95"]
        vote = rep.get("majority_vote")
        passes = rep.get("pass_at_k")
        rows.append(
            f'<tr data-run="{_e(r.stats["run_id"])}"><td>{_e(r.stats["run_id"])}</td>'
            + _num("epochs", rep["epochs"], str(rep["epochs"]))
            + _num("scored_samples", rep["scored_samples"], str(rep["scored_samples"]))
            + _num("accuracy_by_epoch", [e["accuracy"] for e in rep["accuracy_by_epoch"]],
                   _pct_list(rep["accuracy_by_epoch"], "epoch", "accuracy"))
            + _num("mean_accuracy", rep["mean_accuracy"], _pct(rep["mean_accuracy"]))
            + _num("mean_accuracy_ci95", ci, "–" if ci is None else f"{ci[0]:.1%} – {ci[1]:.1%}")
            + _num("majority_vote", None if vote is None else vote["accuracy"],
                   "–" if vote is None else f"{_pct(vote['accuracy'])} ({vote['ties']} ties)")
            + _num("pass_at_k", None if passes is None else [p["value"] for p in passes],
                   "–" if passes is None else ", ".join(f"pass@{p['k']} {_pct(p['value'])}" for p in passes))
            + "</tr>")
    if not rows:
        return ""
    return ("<h2>Repeats</h2><p class='muted'>Each sample asked K times. The mean over epochs averages each "
            "sample's accuracy; its 95% interval is ± 1.96 standard errors over samples. The majority vote "
            "takes the most frequent prediction (ties: the one given at the lowest epoch); pass@k is the "
            "unbiased estimator of Chen et al. (2021).</p>"
            "<table class='repeats'><tr><th>run</th><th>epochs</th><th>samples</th><th>accuracy by epoch</th>"
            "<th>mean over epochs</th><th>95% CI (samples)</th><th>majority vote</th><th>pass@k</th></tr>"
            + "".join(rows) + "</table>")


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


def _epoch_note(run: RunView, rec: dict[str, Any]) -> str:
    """`` · epoch e`` in a run with repeats (nothing in a run without)."""
    return f" · epoch {epoch_of(rec)}" if run.stats.get("epochs", 1) > 1 else ""


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
        for row, rec in sorted(zip(mine, records), key=lambda x: (str(x[1].get("sample_id")), epoch_of(x[1]))):
            kinds = picked[(ri, row)]
            status = rec.get("status")
            verdict = ("error" if status != "ok" else "correct" if rec.get("correct") else "incorrect")
            err = rec.get("error") if isinstance(rec.get("error"), dict) else {}
            rows_html.append(
                f'<tr class="{verdict}" data-kinds="{" ".join(sorted(kinds))}"><td>{_e(r.stats["run_id"])}</td>'
                f"<td>{_e(rec.get('sample_id'))}{_epoch_note(r, rec)}</td><td>{verdict}</td>"
                f"<td>{_e(rec.get('prediction'))}</td>"
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
        repeats_table(runs),
        comparison_table(runs),
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
