"""Signals during a run: SIGINT/SIGTERM/SIGUSR1 stop dispatching, grant a grace period, then cancel.

SIGUSR1 is Slurm's pre-emption warning (``--signal=B:USR1@60``); it is handled like SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Callable

from evalledger.config import RunConfig
from evalledger.run.context import RunState

log = logging.getLogger(__name__)


def install_signal_handlers(run: RunState, config: RunConfig) -> Callable[[], None]:
    """SIGINT/SIGTERM/SIGUSR1: stop dispatching, grace period, then cancel. Second SIGINT: now."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be installed from the main thread
    loop = asyncio.get_running_loop()
    grace_handle: list[asyncio.TimerHandle] = []

    def cancel_in_flight(why: str) -> None:
        if run.hard_stop:
            return
        run.hard_stop = True
        log.warning(f"{why}: cancelling now: {_in_flight(run)}")
        for t in run.workers:
            t.cancel()

    def on_signal(signum: int) -> None:
        if run.signal_received is None:
            run.signal_received = signum
            run.stop.set()
            log.warning(f"received {signal.Signals(signum).name}: no new samples; waiting up to "
                        f"{config.grace_seconds:g}s for {_in_flight(run)}"
                        + (" (Ctrl-C again to stop now)" if signum == signal.SIGINT else ""))
            grace_handle.append(loop.call_later(config.grace_seconds, cancel_in_flight,
                                                f"grace period of {config.grace_seconds:g}s over"))
        elif signum == signal.SIGINT:
            cancel_in_flight("second SIGINT")

    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]
    for s in sigs:
        loop.add_signal_handler(s, on_signal, s)

    def restore() -> None:
        for h in grace_handle:
            h.cancel()
        for s in sigs:
            loop.remove_signal_handler(s)

    return restore


def _in_flight(run: RunState) -> str:
    """What a stop now would cut short: the requests sent and not answered yet, and the answers
    received whose records are not written yet (samples waiting for a request slot send nothing
    more once the run is stopping, so they are not counted)."""
    text = f"{run.requests_in_flight} request(s) in flight"
    if run.answered_unrecorded:
        text += f" and {run.answered_unrecorded} answered request(s) not recorded yet"
    return text

