"""How a run ended: its exit code, status and the message that says what to do next.

The exit codes are part of the CLI's contract (README): 0 complete, 1 samples ended with
errors, 2 fatal (bad key, unknown model, unreachable endpoint), 3 the circuit breaker (the
API looks down), 4 the disk, 5 the budget, 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalledger.errors import DiskSpaceError
from evalledger.fsio import describe_free, disk_failure_message, is_disk_error
from evalledger.ledger import unit_noun
from evalledger.providers import NetworkFault, endpoint_for
from evalledger.run.batch_items import BATCH_UNREADABLE

if TYPE_CHECKING:
    from evalledger.config import RunConfig
    from evalledger.ledger import LedgerScan, RunLedger
    from evalledger.providers import ErrorInfo, Provider
    from evalledger.run.budget import Budget
    from evalledger.run.context import RunState

EXIT_OK = 0
EXIT_ERRORS_LEFT = 1
EXIT_FATAL = 2
EXIT_OUTAGE = 3
EXIT_DISK = 4
EXIT_BUDGET = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


@dataclass
class RunSummary:
    """What one ``run`` did. ``exit_code`` is what the CLI exits with.

    The counts are of units of work, (sample, epoch): with ``epochs`` 1 (no ``--epochs``) a unit
    is a sample; with ``--epochs K`` the selection holds samples × K units.
    """

    run_id: str
    run_dir: Path
    exit_code: int
    status: str  # complete | errors | batches-pending | interrupted | fatal | outage | disk | budget
    total_samples: int  # units in this invocation's selection (the shard, after --limit, × epochs)
    skipped_completed: int  # already ok in the ledger: no request sent
    attempted: int
    ok: int  # acknowledged ok records written by this invocation
    errors: int  # acknowledged error records written by this invocation
    requests: int  # HTTP requests sent (every attempt)
    remaining: int  # units of the selection still without an ok record
    duration_s: float
    epochs: int = 1  # --epochs: each sample asked this many times
    message: str = ""
    resume_command: str | None = None
    moved_aside: Path | None = None
    # light summary of the run (or shard): counts, accuracy, cost; get_stats() has the full dict
    stats: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)  # 429s seen, limit decreases, pause/throttle seconds


def set_outcome(summary: RunSummary, run: "RunState", config: "RunConfig", provider: "Provider | None",
                budget: "Budget | None", write_failure: BaseException | None, ledger: "RunLedger",
                remaining: int) -> None:
    """Set ``summary``'s exit code, status and message from how the run stopped (first cause wins:
    the disk, a fatal provider error, the budget, the circuit breaker, a signal, errors left)."""
    if write_failure is not None:
        summary.exit_code, summary.status = EXIT_DISK, "disk"
        summary.message = disk_failure_message(ledger.results_path, write_failure)
    elif run.fatal is not None:
        summary.exit_code, summary.status = EXIT_FATAL, "fatal"
        summary.message = _fatal_message(run.fatal, config, provider)
    elif run.budget_hit and budget is not None:
        summary.exit_code, summary.status = EXIT_BUDGET, "budget"
        summary.message = budget.message(remaining, unit_noun(config.epochs))
    elif run.outage is not None:
        summary.exit_code, summary.status = EXIT_OUTAGE, "outage"
        summary.message = (
            f"stopped: {config.max_consecutive_errors} samples in a row ended in errors, so the API looks down "
            f"(last: {run.outage.get('type')}: {run.outage.get('message')}). Everything finished so far is saved; "
            "resume later with the command below (--max-consecutive-errors changes the threshold)."
        )
    elif run.signal_received is not None and remaining:
        # (A signal that lands after the last sample was committed interrupted nothing: complete, exit 0.)
        summary.exit_code = EXIT_SIGINT if run.signal_received == signal.SIGINT else EXIT_SIGTERM
        summary.status = "interrupted"
        summary.message = (f"interrupted by {signal.Signals(run.signal_received).name}: {remaining} "
                           f"{unit_noun(config.epochs)} left")
        if run.hard_stop:
            summary.message += "\n" + _hard_stop_message(run)
    elif remaining:
        summary.exit_code, summary.status = EXIT_ERRORS_LEFT, "errors"
        summary.message = (f"{remaining} {unit_noun(config.epochs)} ended with errors (see {ledger.errors_path}); "
                           "run again to retry them")
    if run.answered_unrecorded and not run.hard_stop:  # e.g. a failed write: the lost answers are paid again
        lost = f"{run.answered_unrecorded} answered request(s) could not be recorded; the next run pays for them again"
        summary.message = f"{summary.message}\n  {lost}" if summary.message else lost


def note_pending_batches(summary: RunSummary, pending: int) -> None:
    """A ``--batch`` run that leaves batches at the provider: with nothing else wrong (``--no-wait``)
    it ends ``batches-pending``, exit 0; otherwise its message says the same command collects them."""
    if not pending:
        return
    what = f"{pending} batch{'es' if pending != 1 else ''} pending; run the same command to collect"
    if summary.status in ("complete", "errors"):
        summary.exit_code, summary.status = EXIT_OK, "batches-pending"
        summary.message = what + (f"\n  {summary.message}" if summary.message else "")
    else:
        summary.message = (f"{summary.message}\n  " if summary.message else "") + (
            f"{what} (the journal holds them: nothing is submitted twice)")


def _hard_stop_message(run: "RunState") -> str:
    """What the hard stop (second Ctrl-C, grace period over) cut short, in requests: the ones
    still waiting for an answer, and the answered ones whose records were never written."""
    lost = run.answered_unrecorded
    lost_text = (f"{lost} answered request(s) were not recorded and will be paid again on resume" if lost
                 else "no answered request was lost")
    return (f"  the stop cancelled {run.cancelled_requests} request(s) still waiting for an answer (the provider "
            f"may bill those it had started; resume sends them again); {lost_text}")


def disk_space_error(e: BaseException, run_dir: Path) -> BaseException:
    """A full disk while setting up (nothing was sent yet) as a clear DiskSpaceError; others as they are."""
    if isinstance(e, OSError) and is_disk_error(e):
        return DiskSpaceError(f"cannot write to {run_dir}: {e}; {describe_free(run_dir)}")
    return e


def light_stats(summary: RunSummary, shard: tuple[int, int] | None, selection: Set[str], seen: "LedgerScan",
                cost_usd: float | None) -> dict[str, Any]:
    """The light summary of a run (or shard) for ``summary.stats``, from the unit keys the runner
    holds (see :mod:`evalledger.run.units`; with one epoch, the sample ids), counting units.

    ``selection``: the unit keys of the invocation's selection; ``seen``: the ledger scan, kept up to date with the records this invocation acknowledged. The
    full get_stats() re-reads every file, ~35 s on a million records, too slow for a Slurm
    pre-emption window.
    """
    remaining = summary.remaining
    n_done = len(selection) - remaining  # the selection's units with an ok record
    # Of those, the correct ones: all but the (usually few) whose last ok record is not correct.
    wrong = seen.incorrect
    n_correct = n_done - (len(wrong.intersection(selection)) if isinstance(selection, (set, frozenset))
                          else sum(1 for key in wrong if key in selection))
    return {
        "run_id": summary.run_id, "run_dir": str(summary.run_dir), "shard": shard,
        "total_samples": len(selection), "completed_samples": n_done,
        "error_count": len(selection & seen.errored), "pending_samples": remaining,
        "correct_count": n_correct, "accuracy": n_correct / n_done if n_done else None,
        "cost_usd": cost_usd, "epochs": summary.epochs,
    }


def _fatal_message(info: ErrorInfo, config: RunConfig, provider: Provider | None) -> str:
    base = getattr(provider, "base_url", None) or endpoint_for(config.model, config.base_url)
    if info.type == BATCH_UNREADABLE:
        fix = f"a batch this run submitted cannot be read at {base}"
    elif info.status_code == 401:
        fix = "the API key was refused: check OPENAI_API_KEY / ANTHROPIC_API_KEY (or --api-key-env)"
    elif info.status_code == 403:
        fix = "the key has no permission for this model or endpoint"
    elif info.status_code == 404:
        fix = f"model '{config.model}' or the endpoint was not found at {base}: check --model and --base-url"
    elif info.network is NetworkFault.REFUSED:
        fix = f"nothing is listening at {base} (connection refused): check --base-url and that the server is up"
    elif info.network is NetworkFault.DNS:
        fix = f"the host name of {base} does not resolve (DNS lookup failed): check --base-url and the network"
    elif info.network is NetworkFault.CONNECT_TIMEOUT:
        fix = (f"timed out connecting to {base} (no answer to the connection attempt): check --base-url, "
               "the network and any firewall")
    elif info.status_code is None:
        fix = f"could not reach {base}: check --base-url and that the server is up"
    else:
        fix = "the provider refused the request in a way no retry fixes"
    return f"stopped: {fix}\n  provider said: {info.message}"
