"""CLI commands that look at results: ``stats``, ``list``, ``export``, ``errors``, ``report``.

Thin like the rest of the CLI: each parses flags, calls the library and prints. None of them
takes a run's lock, so all are safe while a run is writing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from evalledger.cli.options import fail, output_dir_option, output_file_option
from evalledger.errors import EvalLedgerError
from evalledger.fsio import human_bytes
from evalledger.readers import (
    error_groups,
    export_results,
    get_stats,
    list_runs,
    resolve_run_dir,
    write_report,
)

# -o names the output file where a command writes one (export, report); elsewhere it is the old
# spelling of --output-dir.
_OUTPUT_DIR = output_dir_option(legacy_o=True)
_OUTPUT_DIR_LONG = output_dir_option()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _usd(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width table (two spaces between columns)."""
    cells = [header] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _n(count: int | None, noun: str) -> str:
    """``1 unit``, ``3 units``, ``? units``."""
    return f"{'?' if count is None else count} {noun}{'' if count == 1 else 's'}"


def _repeat_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rows of a run with repeats: K, per-epoch accuracy, the vote and pass@k (see get_stats)."""
    r = s["repeats"]
    rows: list[tuple[str, Any]] = []
    if r["epochs"] > 1:
        rows.append(("accuracy by epoch", ", ".join(
            f"{e['epoch']}: {_pct(e['accuracy'])} ({e['correct']}/{e['completed']})" for e in r["accuracy_by_epoch"])))
    vote = r.get("majority_vote")
    if vote is not None:
        ties = f"; {_n(vote['ties'], 'tie')} (lowest epoch wins)" if vote["ties"] else ""
        shown = f"{_pct(vote['accuracy'])} ({vote['correct']}/{_n(vote['samples'], 'sample')}{ties})"
        rows.append(("majority vote", shown))
    for p in r.get("pass_at_k", []):
        left_out = f", {p['excluded']} with fewer than {p['k']} scored epochs left out" if p["excluded"] else ""
        rows.append((f"pass@{p['k']}", f"{_pct(p['value'])} ({_n(p['samples'], 'sample')}{left_out})"))
    return rows


def _count_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    """Progress and accuracy rows; with repeats, counts are of (sample, epoch) units."""
    ci = s["accuracy_ci95"]
    epochs = s.get("epochs", 1)
    if epochs == 1:
        return [
            ("samples", s["total_samples"]),
            ("completed (ok)", s["completed_samples"]),
            ("with errors", s["error_count"]),
            ("pending", s["pending_samples"]),
            ("correct", s["correct_count"]),
            ("accuracy", _pct(s["accuracy"])),
            ("accuracy 95% CI", "-" if ci is None else f"{ci[0]:.2%} – {ci[1]:.2%} (Wilson)"),
        ]
    r = s["repeats"]
    samples = r.get("samples")
    return [
        ("epochs", epochs),
        ("samples × epochs", f"{'?' if samples is None else samples} × {epochs} = {_n(s['total_samples'], 'unit')}"),
        ("completed (ok)", _n(s["completed_samples"], "unit")),
        ("with errors", _n(s["error_count"], "unit")),
        ("pending", "-" if s["pending_samples"] is None else _n(s["pending_samples"], "unit")),
        ("correct", _n(s["correct_count"], "unit")),
        ("accuracy", f"{_pct(s['accuracy'])} (mean over epochs of each sample's accuracy)"),
        ("accuracy 95% CI", "-" if ci is None else
         f"{ci[0]:.2%} – {ci[1]:.2%} (± 1.96 SE over {r['scored_samples']} samples)"),
    ]


@click.command()
@click.argument("run_ref", metavar="RUN")
@_OUTPUT_DIR
@click.option("--json", "as_json", is_flag=True, help="Print get_stats() as JSON.")
@click.option("--majority-vote/--no-majority-vote", "vote", default=None,
              help="Show the majority vote over epochs for any task (default: qa and mcq runs with repeats).")
@click.option("--pass-at-k/--no-pass-at-k", "pass_k", default=None,
              help="Show pass@k for every k up to the epochs, for any task (default: humaneval runs with repeats).")
def stats(run_ref: str, output_dir: Path, as_json: bool, vote: bool | None, pass_k: bool | None) -> None:
    """Show a run's progress and results (RUN is a run ID under --output-dir or a run directory)."""
    try:
        s = get_stats(run_ref, output_dir, vote=vote, pass_k=pass_k)
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(s, indent=2, default=str))
        return
    rows: list[tuple[str, Any]] = [
        ("run", s["run_id"]),
        ("model", s["model"]),
        ("dataset", s["dataset"]),
        ("task", s["task"]),
        ("status", s["state_label"]),
        *_count_rows(s),
    ]
    if "repeats" in s:
        rows += _repeat_rows(s)
    if "transitions" in s:
        rows.append(("accuracy before→after", f"{_pct(s.get('accuracy_before'))} → {_pct(s.get('accuracy_after'))}"))
        rows.append(("transitions", ", ".join(f"{k} {v}" for k, v in s["transitions"].items())))
    for etype, n in s["errors_by_type"].items():
        rows.append((f"errors: {etype}", n))
    lat50, lat95 = s["latency_p50_s"], s["latency_p95_s"]
    rows += [
        ("latency p50/p95", "-" if lat50 is None else f"{lat50:.2f}s / {lat95:.2f}s"),
        ("input tokens", s["input_tokens"]),
        ("output tokens", s["output_tokens"]),
        ("cost (USD)", _usd(s["cost_usd"])),
        ("cost per correct", _usd(s["cost_per_correct_usd"]) if s["cost_usd"] is not None else "unknown"),
        ("response cache", f"{_n(s['cache_hits'], 'sample' if s.get('epochs', 1) == 1 else 'unit')} answered, "
                           f"saved {_usd(s['cache_saved_usd'])} USD" if s.get("cache_hits") else "no hits"),
        ("throughput", "-" if s["throughput_per_min"] is None
         else f"{s['throughput_per_min']:.1f} {'samples' if s.get('epochs', 1) == 1 else 'units'}/min"),
    ]
    if s.get("batches"):
        rows.append(("provider batches", s["batches"]["line"]))
    if s["running"]:
        rows.append(("ETA", _duration(s["eta_s"])))
    rows.append(("last checkpoint", s["last_checkpoint"]))
    if len(s["shards"]) > 1 or "all" not in s["shards"]:
        for name, sh in s["shards"].items():
            rows.append((f"shard {name}", f"{sh['ok']} ok, {sh['error_records']} error records"
                                          + (", running" if sh["running"] else "")))
    if s["unparseable_lines"] or s["partial_tail_bytes"]:
        rows.append(("unreadable", f"{s['unparseable_lines']} lines, {s['partial_tail_bytes']} bytes of partial tail"))
    if s["unknown_sample_ids"]:
        ids = s["unknown_sample_ids"]
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        rows.append(("not in dataset", f"{len(ids)} sample(s), not counted above: {shown}"))
    if s.get("manifest_problem"):
        rows.append(("manifest problem", s["manifest_problem"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {'-' if v is None else v}")


@click.command(name="list")
@_OUTPUT_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
def list_cmd(output_dir: Path, as_json: bool) -> None:
    """List every run under --output-dir: progress, errors, accuracy, cost, and whether it is running."""
    runs = list_runs(output_dir)
    if as_json:
        click.echo(json.dumps(runs, indent=2, default=str))
        return
    if not runs:
        click.echo(f"no runs in {output_dir}", err=True)
        return

    rows = [[r["run_id"], r["model"], r["dataset"], r["task"],
             f"{r['completed_samples']}/{'?' if r['total_samples'] is None else r['total_samples']}",
             r["error_count"], _pct(r["accuracy"]), _usd(r["cost_usd"]) if r["cost_usd"] is not None else "?",
             human_bytes(r["size_bytes"]), r["last_activity"], r["state"]]
            for r in runs]
    click.echo(_table(rows, ["RUN", "MODEL", "DATASET", "TASK", "DONE", "ERRORS", "ACCURACY", "COST", "SIZE",
                             "LAST ACTIVITY", "STATE"]))
    total = sum(r["size_bytes"] for r in runs)
    free = shutil.disk_usage(output_dir).free
    click.echo(f"{len(runs)} run(s), {human_bytes(total)} in {output_dir}; {human_bytes(free)} free on its filesystem")


@click.command()
@click.argument("run_ref", metavar="RUN")
@_OUTPUT_DIR_LONG
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "jsonl"]), default="csv", show_default=True)
@output_file_option(None, "File to write. Default: <run_id>.<format> in the current directory.")
@click.option("--per-sample", is_flag=True,
              help="One row per sample over its epochs (load_results(per_sample=True)), "
                   "not one per sample and epoch.")
def export(run_ref: str, output_dir: Path, fmt: str, out_path: Path | None, per_sample: bool) -> None:
    """Export one row per sample and epoch (the load_results() DataFrame) to CSV, Parquet or JSONL."""
    try:
        run_dir = resolve_run_dir(run_ref, output_dir)
        path = out_path or Path(f"{run_dir.name}.{fmt}")
        n = export_results(run_dir, path, fmt, per_sample=per_sample)
    except EvalLedgerError as e:
        fail(e)
    click.echo(f"wrote {n} rows to {path}", err=True)


@click.command()
@click.argument("run_ref", metavar="RUN")
@_OUTPUT_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
def errors(run_ref: str, output_dir: Path, as_json: bool) -> None:
    """Show samples whose latest record is an error, grouped by type, with counts and an example."""
    try:
        groups = error_groups(run_ref, output_dir)
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(groups, indent=2))
        return
    if not groups:
        click.echo("no samples with errors")
        return
    for g in groups:
        codes = f" (HTTP {', '.join(map(str, g['status_codes']))})" if g["status_codes"] else ""
        # With repeats a group counts (sample, epoch) units; say so, and how many samples they are.
        what = (f"{g['count']} sample(s)" if g["count"] == g["samples"]
                else f"{g['count']} (sample, epoch) unit(s) of {g['samples']} sample(s)")
        click.echo(f"{g['type']}{codes}: {what}")
        click.echo(f"  e.g. {g['example_sample_id']}: {g['example_message']}")


@click.command()
@click.argument("target", metavar="RUN_OR_DIR")
@_OUTPUT_DIR_LONG
@output_file_option(Path("report.html"), "The HTML file to write.")
@click.option("--samples", "n_samples", type=int, default=100, show_default=True,
              help="Rows per group (all / incorrect / errors) in the sample browser.")
def report(target: str, output_dir: Path, out_path: Path, n_samples: int) -> None:
    """Write one self-contained HTML report (plots inline) for a run, or for every run in a directory."""
    try:
        n_runs = write_report(target, out_path, output_dir=output_dir, n_samples=n_samples)
    except EvalLedgerError as e:
        fail(e)
    click.echo(f"wrote {out_path} ({n_runs} run{'s' if n_runs != 1 else ''})", err=True)
