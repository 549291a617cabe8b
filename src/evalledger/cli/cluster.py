"""Running on a cluster: ``evalledger slurm``, ``evalledger status`` and ``evalledger merge``.

The library side lives in :mod:`evalledger.ops.status` (:func:`run_status`),
:mod:`evalledger.ops.merge` (:func:`merge_run`) and here (:func:`slurm_run_command`), so everything
the commands do is reachable from Python; the click commands only parse flags, call these and print.

Rate limits across shards: every task runs its own ``evalledger run``, so a per-process limit
(``--rpm``/``--tpm``, when the run command has them) applies to each task separately. Give each
task the key's limit divided by the number of tasks that run at once (``--max-parallel``, or
``--shards`` without it). A limiter shared by the shards of one host is a separate piece of work.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from evalledger.cli.options import config_from_options, experiment_options, fail, output_dir_option, output_file_option
from evalledger.config import RunConfig
from evalledger.datasets import BUILTIN_DATASETS
from evalledger.errors import EvalLedgerError, UsageError
from evalledger.fsio import node_local_reason
from evalledger.ledger import lock_state, unit_noun
from evalledger.ops import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_STALLED_AFTER,
    MergeReport,
    RunStatus,
    ShardStatus,
    SlurmOptions,
    expected_sample_ids,
    log_path_pattern,
    merge_run,
    python_command,
    record_submission,
    render_script,
    run_status,
    slurm_dir,
    submit_script,
    write_script,
)
from evalledger.readers import resolve_run_dir
from evalledger.run import check_manifest, prepare_run

__all__ = [
    "MergeReport",
    "RunStatus",
    "ShardStatus",
    "expected_sample_ids",
    "lock_state",
    "merge_run",
    "run_status",
    "merge",
    "slurm",
    "status",
]


# ============================================================================================
# The `evalledger run` command line a job array task runs


#: Options of `evalledger run` that the slurm command does not pass on: the task picks its
#: shard itself.
_NOT_FORWARDED = ("shard",)

#: The slurm command's own options (everything else on it is an `evalledger run` option).
_SLURM_OWN = ("shards", "partition", "time_limit", "cpus", "mem", "max_parallel", "job_name", "sbatch_args",
              "script_path", "submit")


def _long_flag(opts: list[str]) -> str:
    longs = [o for o in opts if o.startswith("--")]
    return max(longs, key=len) if longs else opts[0]


def slurm_run_command(ctx: click.Context, config: RunConfig) -> list[str]:
    """The ``evalledger run … --shard auto`` argv for the job, from the run options on this command line.

    Options left at their defaults are left out (the task gets the same defaults), except that
    the dataset and output directory are made absolute (tasks may start elsewhere) and the grace
    period defaults to :data:`~evalledger.ops.slurm.DEFAULT_GRACE_SECONDS` (below Slurm's KillWait).
    Other relative paths (``--prices`` …) resolve the same way because the job starts in the
    directory it was submitted from (``--chdir``).
    """
    argv = [*python_command(), "run"]
    for p in ctx.command.params:
        if (not isinstance(p, click.Option) or p.name is None or p.name in _SLURM_OWN
                or p.name in _NOT_FORWARDED or p.name not in ctx.params):
            continue
        value = ctx.params[p.name]
        flag = _long_flag(p.opts)
        if p.name == "dataset":
            value = config.dataset
        elif p.name == "output_dir":
            value = str(config.output_dir)
        elif ctx.get_parameter_source(p.name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            if p.name == "grace_seconds":
                argv += [flag, f"{DEFAULT_GRACE_SECONDS:g}"]
            continue
        if p.is_flag and p.secondary_opts:
            argv.append(flag if value else _long_flag(p.secondary_opts))
        elif p.is_flag:
            if value:
                argv.append(flag)
        elif p.multiple:
            for v in value or ():
                argv += [flag, str(v)]
        elif value is not None:
            argv += [flag, str(value)]
    return [*argv, "--shard", "auto"]


def _config_from_params(params: dict[str, Any]) -> RunConfig:
    config = config_from_options({k: v for k, v in params.items() if k not in _NOT_FORWARDED})
    # Tasks may start on another machine or in another directory: pin these down now.
    dataset = config.dataset
    if dataset not in BUILTIN_DATASETS:
        dataset = str(Path(dataset).expanduser().resolve())
    return config.replace(dataset=dataset, output_dir=config.output_dir.expanduser().resolve())


# ============================================================================================
# Commands


@click.command(context_settings={"max_content_width": 100})
@experiment_options
@click.option("--shards", type=int, required=True, help="Number of shards = array tasks; task K runs shard K/N.")
@click.option("--partition", default=None, help="Slurm partition (sbatch --partition).")
@click.option("--time", "time_limit", default=None, metavar="TIME",
              help="Time limit per task, Slurm format (e.g. 4:00:00). 60 s before it a task saves and requeues itself.")
@click.option("--cpus", type=int, default=1, show_default=True, help="CPUs per task (sbatch --cpus-per-task).")
@click.option("--mem", default=None, help="Memory per task, Slurm format (e.g. 4G).")
@click.option("--max-parallel", type=int, default=None, metavar="K", help="Run at most K tasks at once (--array=1-N%K).")
@click.option("--job-name", default=None, help="Slurm job name. Default: evalledger-<run_id>.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="OPT",
              help="Extra sbatch option, verbatim (e.g. --sbatch-arg=--account=proj). Repeatable.")
@click.option("--script", "script_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the script. Default: <run_dir>/slurm/run-N-shards.sbatch.")
@click.option("--submit", is_flag=True, help="Submit the script with sbatch and print the job ID.")
@click.pass_context
def slurm(ctx: click.Context, **params: Any) -> None:
    """Write (and with --submit, submit) a Slurm job array that runs this experiment in N shards.

    Takes every option of `evalledger run` (see `evalledger run --help`) plus the Slurm options
    below. Each task runs `evalledger run … --shard auto`; pre-empted or time-limited tasks save,
    are requeued and resume without paying twice; a task whose shard is complete exits 0 at once.

    Rate limits: --rpm/--tpm (where the run command has them) apply to each task on its own, so
    give each task the key's limit divided by the tasks that run at once (--max-parallel, else
    --shards).
    """
    options = SlurmOptions(shards=params.pop("shards"), partition=params.pop("partition"),
                           time=params.pop("time_limit"), cpus=params.pop("cpus"), mem=params.pop("mem"),
                           max_parallel=params.pop("max_parallel"), job_name=params.pop("job_name"),
                           extra_sbatch=tuple(params.pop("sbatch_args")))
    script_path: Path | None = params.pop("script_path")
    do_submit: bool = params.pop("submit")

    try:
        options.validate()
        if params.get("shard") is not None:
            raise UsageError("--shard with slurm: each task picks its own shard (--shard auto); give --shards N")
        if params.get("overwrite"):
            raise UsageError("--overwrite with slurm: every task would move the run aside again. Run "
                             "`evalledger run … --overwrite --limit 1` once first (or move the run directory "
                             "aside yourself), then submit without --overwrite")
        if params.get("resume") is False:
            raise UsageError("--no-resume with slurm: a requeued task must resume its own shard; drop --no-resume")
        config = _config_from_params(params)
        prepared = prepare_run(config)  # the whole dataset is checked here, before anything is queued
        # Config drift is refused now, not in N tasks later; the run's own files are left as they are
        # (the tasks create the manifest when they start), so writing a script makes no phantom run.
        check_manifest(prepared)
        run_command = slurm_run_command(ctx, config)
        path = (script_path.expanduser().resolve() if script_path is not None
                else slurm_dir(prepared.run_dir) / f"run-{options.shards}-shards.sbatch")
        text = render_script(run_command, options, run_id=prepared.run_id, run_dir=prepared.run_dir,
                             workdir=Path.cwd(), sample_count=len(prepared.samples), script_path=path)
        write_script(path, text)
        # Logs go under the run directory even when the script is written elsewhere.
        log_path_pattern(prepared.run_dir, options.shards).parent.mkdir(parents=True, exist_ok=True)
    except EvalLedgerError as e:
        fail(e)
    n, m = options.shards, len(prepared.samples)
    click.echo(f"wrote {path}: {n} array tasks for run {prepared.run_id} ({m} samples)")
    _warn_node_local(config.output_dir, path)
    if n > m:
        click.echo(f"note: {n} shards for {m} samples; {n - m} or more shards have nothing to do and exit 0 at once",
                   err=True)
    for limit in ("rpm", "tpm"):
        value = params.get(limit)
        if value:
            click.echo(f"note: --{limit} {value} applies to each task; with up to {options.tasks_at_once} tasks at "
                       f"once the key sees up to {value * options.tasks_at_once:g}", err=True)
    status_cmd = shlex.join(["evalledger", "status", prepared.run_id, "--output-dir", str(config.output_dir)])
    merge_cmd = shlex.join(["evalledger", "merge", prepared.run_id, "--output-dir", str(config.output_dir),
                            "-o", f"{prepared.run_id}.merged.jsonl"])
    log_one = str(log_path_pattern(prepared.run_dir, n)).replace("%a", "1")
    if not do_submit:
        click.echo(f"submit with:  sbatch {shlex.quote(str(path))}")
        click.echo(f"then watch:   {status_cmd}")
        return
    try:
        job_id = submit_script(path)
        record_submission(prepared.run_dir, job_id, options, path)
    except EvalLedgerError as e:
        fail(e)
    throttle = f", at most {options.max_parallel} at once" if options.max_parallel and options.max_parallel < n else ""
    click.echo(f"submitted Slurm job {job_id}: tasks 1-{n}{throttle}")
    click.echo(f"watch:      squeue -j {job_id}")
    click.echo(f"            {status_cmd}")
    click.echo(f"            tail -f {shlex.quote(log_one)}")
    click.echo(f"when done:  {merge_cmd}")


def _warn_node_local(output_dir: Path, script: Path) -> None:
    """Every task of the array must see the run directory, the interpreter and the working
    directory the script names; say so when one of them looks private to this node."""
    python = Path(python_command()[0])
    for what, where in (("the output directory", output_dir), ("the script", script),
                        ("the Python the script runs", python), ("the working directory", Path.cwd())):
        reason = node_local_reason(where)
        if reason:
            click.echo(f"warning: {what}: {reason}; every node that runs a task must see it (use a shared "
                       "filesystem)", err=True)


def _resolve(run_ref: str, output_dir: Path) -> Path:
    return resolve_run_dir(run_ref, output_dir)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


@click.command()
@click.argument("run_ref", metavar="RUN")
@output_dir_option(help="Where run directories live (when RUN is a run ID).")
@click.option("--shards", type=int, default=None,
              help="Shard count to report. Default: the last `evalledger slurm --submit`, else the shard files.")
@click.option("--stalled-after", type=float, default=DEFAULT_STALLED_AFTER, show_default=True,
              help="Seconds without a new record after which a running shard counts as stalled.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(run_ref: str, output_dir: Path, shards: int | None, stalled_after: float, as_json: bool) -> None:
    """Progress of a (sharded) run: per shard done/total/errors, last activity, lock; missing and stalled shards."""
    try:
        st = run_status(_resolve(run_ref, output_dir), shards=shards, stalled_after=stalled_after)
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2, default=str))
        return
    total = "?" if st.total is None else st.total
    job = f", last Slurm job {st.last_job_id}" if st.last_job_id else ""
    click.echo(f"run {st.run_id}: {st.done}/{total} done, {st.errors} with errors, "
               f"{'?' if st.pending is None else st.pending} pending{job}")
    click.echo(f"status: {st.state_label}")
    if st.batches:
        click.echo(f"provider batches: {st.batches['line']}")
    if st.dataset_problem:
        click.echo(f"warning: per-shard totals unknown: {st.dataset_problem}", err=True)
    if st.shards is None:
        click.echo("not sharded (no shard files and no Slurm submission); see `evalledger stats` for details")
    else:
        header = f"{'shard':>7}  {'done':>11}  {'errors':>6}  {'state':<8}  {'slurm':<9}  {'lock':<14}  last activity"
        click.echo(header)
        for s in st.shard_status:
            frac = f"{s.done}/{'?' if s.total is None else s.total}"
            who = f" (pid {s.owner.get('pid')} on {s.owner.get('host')})" if s.owner and s.lock != "free" else ""
            click.echo(f"{s.label:>7}  {frac:>11}  {s.errors:>6}  {s.state:<8}  {s.slurm_state or '-':<9}  {s.lock:<14}  "
                       f"{s.last_activity or '-'} ({_ago(s.idle_seconds)}){who}"
                       + (f"  [{s.marker}]" if s.marker and s.state != "done" else ""))
        summary = [f"{sum(1 for s in st.shard_status if s.state == 'done')}/{st.shards} shards done"]
        if st.running:
            summary.append(f"running: {', '.join(map(str, st.running))}")
        if st.stalled:
            summary.append(f"STALLED (lock held, no progress for {stalled_after:g}s): {', '.join(map(str, st.stalled))}")
        queued = [s.shard for s in st.shard_status if s.state == "queued"]
        if queued:
            summary.append(f"queued: {', '.join(map(str, queued))}")
        if st.missing:
            summary.append(f"missing (never started, not queued): {', '.join(map(str, st.missing))}")
        stopped = [s.shard for s in st.shard_status if s.state == "stopped"]
        if stopped:
            summary.append(f"stopped before finishing: {', '.join(map(str, stopped))}")
        click.echo("; ".join(summary))
    if st.other_files:
        click.echo(f"also read: {', '.join(st.other_files)}")
    if st.complete:
        click.echo(f"complete: merge with  evalledger merge {shlex.quote(st.run_dir)} -o merged.jsonl")


@click.command()
@click.argument("run_ref", metavar="RUN")
@output_file_option(None, "The merged JSONL file to write.", required=True)
@output_dir_option(help="Where run directories live (when RUN is a run ID).")
@click.option("--allow-incomplete", is_flag=True,
              help="Write the samples that are done even if the shards do not cover the dataset exactly.")
@click.option("--json", "as_json", is_flag=True, help="Print the merge report as JSON on stdout.")
def merge(run_ref: str, out_path: Path, output_dir: Path, allow_incomplete: bool, as_json: bool) -> None:
    """Write one deduplicated ledger of RUN (latest ok record per sample, dataset order) to -o FILE.

    Checks that the shards cover the dataset exactly (every sample once, nothing else); if not,
    writes nothing and exits 1 unless --allow-incomplete.
    """
    try:
        rep = merge_run(_resolve(run_ref, output_dir), out_path, allow_incomplete=allow_incomplete)
    except EvalLedgerError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))

    def some(ids: list[str]) -> str:
        return ", ".join(ids[:5]) + (f" … and {len(ids) - 5} more" if len(ids) > 5 else "")

    if rep.writers:
        click.echo(f"warning: still being written: {', '.join(rep.writers)}; this merge is a snapshot", err=True)
    problems = []
    if rep.missing:
        problems.append(f"{len(rep.missing)} of {rep.expected} {unit_noun(rep.epochs)} have no ok record "
                        f"({len(rep.errors_only)} ended in errors, {len(rep.missing) - len(rep.errors_only)} never ran): "
                        f"{some(rep.missing)}")
    if rep.extra:
        problems.append(f"{len(rep.extra)} ok records are for {unit_noun(rep.epochs)} not in the run (left out): "
                        f"{some(rep.extra)}")
    if rep.misplaced:
        problems.append(f"{len(rep.misplaced)} records sit in a shard file that does not own them: {some(rep.misplaced)}")
    if rep.output is not None:
        click.echo(f"merged {rep.written} samples → {rep.output} ({rep.ok_records} ok records read from "
                   f"{len(rep.files)} files, {rep.duplicates_dropped} duplicates dropped)", err=as_json)
    if problems:
        verdict = "written anyway (--allow-incomplete)" if rep.output else "nothing written; pass --allow-incomplete to write what is done"
        click.echo("error: the shards do not cover the dataset exactly:\n  " + "\n  ".join(problems) + f"\n{verdict}",
                   err=True)
        if rep.output is None:
            sys.exit(1)
        return
    click.echo(f"coverage exact: each of the {rep.expected} dataset samples appears once", err=as_json)
