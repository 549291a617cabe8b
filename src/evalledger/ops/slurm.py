"""Slurm job arrays: the sbatch script that runs a run's shards, and its submission.

``evalledger slurm … --shards N`` writes a script that runs ``evalledger run … --shard auto`` as an
N-task job array (task K runs shard K/N, see :func:`evalledger.datasets.sharding.parse_shard`). Pre-emption
is handled by the run itself: SIGTERM/SIGUSR1 make it stop dispatching, finish in-flight samples,
save and exit 143, and the requeued task resumes from the ledger without paying twice.

How a task stops and comes back:

* ``--signal=B:USR1@60``: Slurm signals the *batch shell* 60 s before the time limit. The shell
  passes USR1 on to evalledger, waits for it to save, and requeues its own task
  (``scontrol requeue``), so a run longer than the partition's time limit finishes in instalments.
* Preemption, ``scontrol requeue`` and ``scancel`` signal every process of the job with SIGTERM
  (then SIGKILL after ``KillWait``, 30 s by default). evalledger saves within its grace period
  (the generated script sets ``--grace-seconds 20``, below KillWait, unless you chose one) and
  Slurm requeues the task (``--requeue``) or not (``scancel``).
* A requeued task whose shard is already complete sends nothing and exits 0 at once.

Logs: one file per array task, ``<run_dir>/slurm/logs/shard-K-of-N.log``, opened with
``--open-mode=append`` so a requeued task adds to its log instead of truncating it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from evalledger._version import __version__
from evalledger.errors import EvalLedgerError, UsageError
from evalledger.fsio import utc_now, write_bytes_atomic

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "SlurmError",
    "SlurmOptions",
    "Submission",
    "array_spec",
    "log_path_pattern",
    "read_submissions",
    "record_submission",
    "render_script",
    "slurm_dir",
    "submit_script",
    "write_script",
]

SLURM_SUBDIR = "slurm"
SUBMISSIONS_FILE = "submissions.jsonl"

#: Grace period the generated script gives evalledger on SIGTERM/SIGUSR1 unless the user set one:
#: below Slurm's default KillWait (30 s), after which a preempted job gets SIGKILL.
DEFAULT_GRACE_SECONDS = 20.0

#: Seconds before the time limit at which Slurm sends USR1 to the batch shell.
SIGNAL_LEAD_SECONDS = 60

# Slurm's own syntax for these values, checked here so a typo fails before sbatch is called.
_TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|infinite|unlimited|UNLIMITED|INFINITE)$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9._,-]+$")


class SlurmError(EvalLedgerError):
    """sbatch is missing or refused the job."""


@dataclass(frozen=True)
class SlurmOptions:
    """What the job array asks of Slurm (none of it changes the run ID)."""

    shards: int
    partition: str | None = None
    time: str | None = None  # Slurm's time format: "MM", "HH:MM:SS", "D-HH:MM" …
    cpus: int = 1
    mem: str | None = None  # "4G", "500M"
    max_parallel: int | None = None  # the "%K" throttle: at most K tasks at once
    job_name: str | None = None
    extra_sbatch: tuple[str, ...] = field(default=())  # verbatim "--account=x"-style lines

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the flag for any value Slurm would refuse."""
        if self.shards < 1:
            raise UsageError(f"--shards {self.shards}: must be at least 1")
        if self.cpus < 1:
            raise UsageError(f"--cpus {self.cpus}: must be at least 1")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise UsageError(f"--max-parallel {self.max_parallel}: must be at least 1")
        if self.time is not None and not _TIME_RE.match(self.time):
            raise UsageError(f"--time {self.time!r}: use Slurm's format, e.g. 30, 4:00:00 or 1-12:00:00")
        if self.mem is not None and not _MEM_RE.match(self.mem):
            raise UsageError(f"--mem {self.mem!r}: use Slurm's format, e.g. 4G or 500M")
        for flag, value in (("--partition", self.partition), ("--job-name", self.job_name)):
            if value is not None and not _NAME_RE.match(value):
                raise UsageError(f"{flag} {value!r}: use letters, digits, '.', '_', ',' and '-'")
        for extra in self.extra_sbatch:
            if not extra.startswith("-") or "\n" in extra:
                raise UsageError(f"--sbatch-arg {extra!r}: give one sbatch option such as --account=proj")

    @property
    def tasks_at_once(self) -> int:
        """Tasks that may run at the same time (what a per-key rate limit is shared between)."""
        return self.shards if self.max_parallel is None else min(self.shards, self.max_parallel)


def array_spec(shards: int, max_parallel: int | None = None) -> str:
    """``--array`` value: tasks 1..N (task K runs shard K/N), throttled with ``%K`` if asked."""
    spec = f"1-{shards}"
    if max_parallel is not None and max_parallel < shards:
        spec += f"%{max_parallel}"
    return spec


def slurm_dir(run_dir: Path) -> Path:
    """Where the script, the logs and the submission history of a run live."""
    return Path(run_dir) / SLURM_SUBDIR


def log_path_pattern(run_dir: Path, shards: int) -> Path:
    """The ``--output`` pattern: one log per array task (``%a`` is the task id, i.e. the shard)."""
    return slurm_dir(run_dir) / "logs" / f"shard-%a-of-{shards}.log"


def render_script(run_command: list[str], options: SlurmOptions, *, run_id: str, run_dir: Path,
                  workdir: Path, sample_count: int | None = None, script_path: Path | None = None) -> str:
    """The sbatch script (text) for ``run_command`` (which must end in ``--shard auto``).

    ``run_dir`` and ``workdir`` should be absolute: the job may start on another machine, from
    another directory.
    """
    options.validate()
    if run_command[-2:] != ["--shard", "auto"]:
        raise ValueError("run_command must end with --shard auto")
    directives = _directives(options, run_id=run_id, run_dir=run_dir, workdir=workdir)
    samples = f", {sample_count} samples" if sample_count is not None else ""
    header = f"""#!/bin/bash
# Generated by evalledger {__version__} at {utc_now()}.
# Run {run_id}{samples}: {options.shards} shards as a Slurm job array; task K runs shard K/{options.shards}.
# Submit (again) with `sbatch {shlex.quote(str(script_path)) if script_path else 'THIS-FILE'}`: every task resumes from the ledger, so tasks whose
# shard is complete exit 0 at once and nothing is paid twice.
# Progress: evalledger status {shlex.quote(str(run_dir))}
# The tasks inherit the environment sbatch is called from (API keys included); none is written here.
"""
    return header + "".join(f"#SBATCH {d}\n" for d in directives) + _script_body(run_command)


def _directives(options: SlurmOptions, *, run_id: str, run_dir: Path, workdir: Path) -> list[str]:
    """The ``#SBATCH`` options of the job array, one per line."""
    job_name = options.job_name or f"evalledger-{run_id}"[:120]
    log = log_path_pattern(run_dir, options.shards)
    directives = [
        f"--job-name={job_name}",
        f"--array={array_spec(options.shards, options.max_parallel)}",
        # Requeued tasks (pre-emption, node failure, our own USR1 handler) start again and resume.
        "--requeue",
        # USR1 to the batch shell (B:) a minute before the time limit: save and requeue ourselves.
        f"--signal=B:USR1@{SIGNAL_LEAD_SECONDS}",
        # A requeued task appends to its log instead of truncating what it said before.
        "--open-mode=append",
        f"--output={log}",
        f"--chdir={workdir}",
        "--ntasks=1",
        f"--cpus-per-task={options.cpus}",
    ]
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.time:
        directives.append(f"--time={options.time}")
    if options.mem:
        directives.append(f"--mem={options.mem}")
    directives.extend(options.extra_sbatch)
    return directives


def _script_body(run_command: list[str]) -> str:
    """The shell that runs evalledger, passes Slurm's signals on to it and requeues its own task."""
    cmd_lines = "\n  ".join(_command_lines(run_command))
    return f"""
set -u
export PYTHONUNBUFFERED=1

run_cmd=(
  {cmd_lines}
)

stamp() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}
child=""
requeue=0
# USR1 comes to this shell only ({'B:'} in --signal), {SIGNAL_LEAD_SECONDS} s before the time limit. Pass it on: evalledger stops
# dispatching, lets in-flight samples finish and saves. Then requeue this task so it resumes.
on_usr1() {{ requeue=1; echo "[$(stamp)] USR1: asking evalledger to save"; [ -n "$child" ] && kill -USR1 "$child" 2>/dev/null; }}
# SIGTERM (pre-emption, scontrol requeue, scancel) reaches evalledger directly; Slurm decides
# whether the task comes back. Forward it anyway in case only this shell was signalled.
on_term() {{ echo "[$(stamp)] TERM: asking evalledger to save"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; }}
trap on_usr1 USR1
trap on_term TERM

echo "[$(stamp)] task ${{SLURM_ARRAY_TASK_ID:-?}} of job ${{SLURM_ARRAY_JOB_ID:-?}} (Slurm job ${{SLURM_JOB_ID:-?}}, restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname)"
"${{run_cmd[@]}}" &
child=$!
# `wait` returns early whenever a trapped signal arrives: keep waiting until evalledger is gone,
# then ask once more for its exit status (bash remembers it).
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
done
wait "$child"
rc=$?
echo "[$(stamp)] evalledger exited with $rc"
if [ "$requeue" = 1 ] && [ "$rc" -eq 143 ]; then
  # JOBID_TASKID names this task alone; the last task's SLURM_JOB_ID equals the array's job ID,
  # which scontrol would take as the whole array and requeue every running sibling too.
  echo "[$(stamp)] requeueing ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} to resume it"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$rc"
"""


def _command_lines(argv: list[str]) -> list[str]:
    """The bash array's lines: the program, then one ``--flag value`` pair per line, for reading."""
    lines: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--") and lines:
            lines.append(f"{shlex.quote(a)} {shlex.quote(argv[i + 1])}")
            i += 2
            continue
        if lines and not a.startswith("--") and not lines[-1].startswith("--"):
            lines[-1] += " " + shlex.quote(a)  # "python -m evalledger run" stays on one line
        else:
            lines.append(shlex.quote(a))
        i += 1
    return lines


def write_script(path: Path, text: str) -> Path:
    """Write the script atomically, executable, creating its log directory (Slurm will not)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, text.encode())
    os.chmod(path, 0o755)
    for line in text.splitlines():
        if line.startswith("#SBATCH --output="):
            Path(line.split("=", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    return path


def _sbatch_path(environ: Mapping[str, str] | None = None) -> str:
    path = (environ or os.environ).get("PATH")
    found = shutil.which("sbatch", path=path)
    if found is None:
        raise SlurmError(
            "sbatch not found on PATH: run this on a Slurm login node, or drop --submit and copy the "
            "script there (submit it with `sbatch SCRIPT`)"
        )
    return found


def submit_script(script: Path, *, environ: Mapping[str, str] | None = None, timeout: float = 60.0) -> str:
    """``sbatch --parsable SCRIPT``; returns the job ID. Raises :class:`SlurmError` with sbatch's words."""
    sbatch = _sbatch_path(environ)
    env = dict(os.environ if environ is None else environ)
    try:
        done = subprocess.run([sbatch, "--parsable", str(script)], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"sbatch did not answer within {timeout:.0f}s; is slurmctld reachable? (script: {script})") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
        raise SlurmError(f"sbatch refused {script}: {said}")
    # --parsable prints "JOBID" or "JOBID;CLUSTER".
    job_id = done.stdout.strip().splitlines()[-1].split(";")[0] if done.stdout.strip() else ""
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job ID for {script}: {done.stdout!r}")
    return job_id


@dataclass(frozen=True)
class Submission:
    """One submitted job array of a run, as kept in ``slurm/submissions.jsonl``."""

    job_id: str
    shards: int
    script: str
    submitted_at: str
    max_parallel: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def record_submission(run_dir: Path, job_id: str, options: SlurmOptions, script: Path) -> Submission:
    """Append a submission to the run's history (read by ``evalledger status``)."""
    sub = Submission(job_id=job_id, shards=options.shards, script=str(script), submitted_at=utc_now(),
                     max_parallel=options.max_parallel, options=asdict(options))
    path = slurm_dir(run_dir) / SUBMISSIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(sub), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return sub


def read_submissions(run_dir: Path) -> list[Submission]:
    """Every recorded submission of a run, oldest first (unreadable lines are skipped)."""
    path = slurm_dir(run_dir) / SUBMISSIONS_FILE
    out: list[Submission] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            d = json.loads(line)
            out.append(Submission(**{k: d[k] for k in ("job_id", "shards", "script", "submitted_at")},
                                  max_parallel=d.get("max_parallel"), options=d.get("options") or {}))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def python_command() -> list[str]:
    """How the job starts evalledger: this very interpreter, so the job uses the same install."""
    return [sys.executable, "-m", "evalledger"]
