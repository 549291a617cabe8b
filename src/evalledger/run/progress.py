"""Progress on stderr: a tqdm bar on a terminal, a plain status line every N seconds otherwise.

Only acknowledged (fsynced) records are counted, so what the display says is done is done.

On a terminal the bar shows done/total, rate and ETA (tqdm's own) plus ok/errors, accuracy so far,
cost so far (``?`` when the model has no known price: unknown, never zero), the concurrency limit,
rate-limit waits and requests that got no HTTP response (``conn-errors=``, while there are any).
Elsewhere (Slurm logs, CI) a daemon thread prints the same facts as one line every ``interval``
seconds, including while nothing finishes (a run stuck behind rate limits should still say so in
its log), each with the time since the start (a log has no clock of its own, and two lines taken
while nothing changed would otherwise read as one line printed twice), and a last line when the
run ends.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from evalledger.records import saved_cost


class Progress:
    """Counts acknowledged units of work (samples, or (sample, epoch) units with ``--epochs``) and shows them.

    The run's limiter (:class:`evalledger.run.limits.Limits`) reports the facts it owns through
    hooks: :meth:`set_concurrency` (the current concurrency limit), :meth:`set_paused` (requests
    waiting on a rate limit right now) and :meth:`note_rate_limit_wait` (each wait forced by a
    429's ``Retry-After``, a storm's pause or ``--rpm``/``--tpm``).
    """

    def __init__(
        self,
        total: int,
        already_done: int,
        *,
        quiet: bool = False,
        interval: float = 10.0,
        stream: TextIO | None = None,
        label: str = "",
        concurrency: int | None = None,
        priced: bool = True,
        unit: str = "sample",
    ) -> None:
        """``priced``: the model has a known price (else the cost shows as ``?`` from the start);
        ``unit``: what ``total`` counts, as the bar names it."""
        self.total = total
        self.initial = already_done
        self.ok = 0
        self.errors = 0
        self.correct = 0
        self.cost_usd = 0.0
        self.cost_known = priced
        self.concurrency = concurrency
        self.connection_errors = 0
        self.rate_limit_waits = 0
        self.rate_limit_wait_s = 0.0
        self.paused_now = 0  # requests waiting on a rate-limit pause right now (see set_paused)
        self.batches = ""  # --batch: the provider batches' states (see set_batches)
        self.quiet = quiet
        self.interval = interval
        self.stream = stream or sys.stderr
        self.label = label
        self.started = time.monotonic()
        self._bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if quiet:
            return
        if _isatty(self.stream):
            from tqdm import tqdm  # only on a terminal

            self._bar = tqdm(total=total, initial=already_done, file=self.stream, desc=label or None,
                             unit=unit, dynamic_ncols=True, leave=True)
        elif interval > 0:
            self._ticker = threading.Thread(target=self._tick, name="evalledger-progress", daemon=True)
            self._ticker.start()

    @property
    def done(self) -> int:
        """Units of the selection with a record: already done before this invocation, plus new ones."""
        return self.initial + self.ok + self.errors

    def update(self, records: list[dict[str, Any]]) -> None:
        """Count records that were just acknowledged."""
        for r in records:
            if r.get("status") == "ok":
                self.ok += 1
                self.correct += 1 if r.get("correct") is True else 0
            else:
                self.errors += 1
            cost = r.get("cost_usd")
            if cost is None:
                # Unknown, not zero: a record that used tokens without a price makes the total unknown.
                self.cost_known = self.cost_known and not any((r.get("usage") or {}).values())
            else:  # answers from the response cache cost nothing
                self.cost_usd += float(cost) - (saved_cost(r) or 0.0)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(len(records))

    def set_concurrency(self, limit: int) -> None:
        """Hook: the scheduler's current concurrency limit changed."""
        self.concurrency = limit
        self._refresh()

    def set_paused(self, waiting: int) -> None:
        """Hook: how many requests are waiting right now on a rate-limit pause (so a run never looks stuck)."""
        self.paused_now = waiting
        self._refresh()

    def note_rate_limit_wait(self, seconds: float) -> None:
        """Hook: a worker is about to sleep ``seconds`` because of a rate limit (429, Retry-After, RPM/TPM)."""
        self.rate_limit_waits += 1
        self.rate_limit_wait_s += max(0.0, seconds)
        self._refresh()

    def set_batches(self, text: str) -> None:
        """Hook: the states of the run's provider batches changed (``--batch``), e.g.
        ``batches: 1 in_progress 40/100, 1 validating``."""
        self.batches = text
        self._refresh()

    def note_connection_error(self) -> None:
        """Hook: a request got no HTTP response (refused, DNS, reset, time-out)."""
        self.connection_errors += 1
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=True)

    def _postfix(self) -> str:
        acc = f"{self.correct / self.ok:.1%}" if self.ok else "-"
        cost = f"${self.cost_usd:.4f}" if self.cost_known else "?"
        conc = "-" if self.concurrency is None else str(self.concurrency)
        waits = f"{self.rate_limit_waits} ({self.rate_limit_wait_s:.0f}s)" if self.rate_limit_waits else "0"
        pause = f" paused={self.paused_now}" if self.paused_now else ""
        conn = f" conn-errors={self.connection_errors}" if self.connection_errors else ""
        if self.batches:  # a batch run has no request slots or rate-limit waits of its own
            return f"ok={self.ok} err={self.errors} acc={acc} cost={cost} {self.batches}"
        return f"ok={self.ok} err={self.errors} acc={acc} cost={cost} conc={conc} rl_waits={waits}{pause}{conn}"

    def status_line(self) -> str:
        """The plain status line (what non-TTY mode prints)."""
        elapsed = time.monotonic() - self.started
        new = self.ok + self.errors
        rate = new / elapsed if elapsed > 0 else 0.0
        remaining = max(self.total - self.done, 0)
        eta = _duration(remaining / rate) if rate > 0 else "?"
        label = f"{self.label} " if self.label else ""
        return (f"[evalledger] {label}{self.done}/{self.total} {self._postfix()} "
                f"rate={rate * 60:.1f}/min eta={eta} elapsed={_elapsed(elapsed)}")

    def line(self) -> None:
        """Print one plain status line (non-TTY mode)."""
        if self.quiet:
            return
        print(self.status_line(), file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.line()
            except (OSError, ValueError):  # stderr closed under us: progress is not worth a crash
                return

    def close(self) -> None:
        """Stop the status thread, print the last status line, close the bar (idempotent)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            self._ticker = None
            try:
                self.line()  # where the run ended, in the same form as the lines before
            except (OSError, ValueError):
                pass
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def announce(quiet: bool, msg: str) -> None:
    """One line of information on stderr (what the run is about to do), unless ``quiet``."""
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _elapsed(seconds: float) -> str:
    """Time since the start: tenths of a second for the first minute (lines may come that often)."""
    return f"{seconds:.1f}s" if seconds < 59.95 else _duration(seconds)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
