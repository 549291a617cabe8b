"""A loopback fake of the OpenAI Chat Completions and Anthropic Messages HTTP APIs.

The official SDKs talk HTTP through ``httpx2``, so transport-level mocking (respx and friends)
cannot reach them. Instead the tests and benchmarks point the real SDK clients at this server on
127.0.0.1: every request travels the real HTTP path, real status codes and headers come back, and
the SDKs raise their real exception classes.

Two ways to use it:

* In-process (tests)::

      with FakeServer(latency=0.01) as server:
          client = openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
          server.fail_next(2, status=429, retry_after=1)
          ...
          assert server.count_for("sample-7", status=200) == 1

* As a separate process (benchmarks)::

      python tests/fakeserver.py --port 0 --latency 0.05
      # prints "READY http://127.0.0.1:PORT" and serves until killed;
      # GET /_fake/stats returns the request counters as JSON.

The batch endpoints (OpenAI Files + Batches, Anthropic Message Batches) are served too, controlled
through ``server.batches`` (see fakebatch.py); their items are answered by the same responder.

Fault injection (``fail_next``, ``fail_when``, ``fail_always``, ``fail_rate``) can be changed at
any moment from the test thread while the server answers requests on its own event loop thread.

This module is the fake's public face and its command line. The parts: fakewire.py (reading
requests, success bodies), fakefaults.py (faults, error bodies, fault rules), fakeloop.py (the
background event loop), fakehttp.py (``FakeServer``), fakebatch.py (the batch endpoints).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from fakefaults import Fault, FaultKind
from fakehttp import FakeServer, RecordedRequest
from fakewire import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    Responder,
    answer_from_marker,
    estimate_tokens,
    last_user_text,
    message_texts,
    reply_payload,
    request_text,
)

__all__ = [
    "ANTHROPIC_PATH",
    "OPENAI_PATH",
    "Fault",
    "FaultKind",
    "FakeServer",
    "RecordedRequest",
    "Responder",
    "answer_from_marker",
    "estimate_tokens",
    "last_user_text",
    "message_texts",
    "reply_payload",
    "request_text",
]


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM, after printing ``READY <base_url>`` on stdout."""
    parser = argparse.ArgumentParser(description="Loopback fake OpenAI/Anthropic API server.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability each request fails")
    parser.add_argument("--fail-status", type=int, default=500, help="HTTP status of --fail-rate failures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --fail-rate RNG")
    parser.add_argument("--fault-latency", type=float, default=None,
                        help="seconds before a --fail-rate failure is answered (default: --latency)")
    parser.add_argument("--fail-retry-after", type=float, default=None,
                        help="Retry-After seconds sent with --fail-rate failures (default: none)")
    args = parser.parse_args(argv)

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    server = FakeServer(latency=args.latency, port=args.port)
    server.fault_latency = args.fault_latency
    if args.fail_rate > 0:
        server.fail_rate(args.fail_rate, status=args.fail_status, seed=args.seed, retry_after=args.fail_retry_after)
    with server:
        print(f"READY {server.base_url}", flush=True)
        # Waiting with a timeout keeps the main thread responsive to signals.
        while not stop_requested.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
