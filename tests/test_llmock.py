"""End to end against llmock, a third-party fake LLM API that judges a client's retries.

``llmock serve`` injects faults and journals every attempt; ``llmock report --strict`` then groups the
attempts of one logical request by their body (a retry resends the same body) and flags, among
others, ``no_backoff``: a request retried at least twice after errors without ``Retry-After`` whose
waits (server-side: end of one attempt to the start of the next) never grow by more than 1.1×, and
``retry_storm``: more than 10 attempts at one request.

llmock sends ``Retry-After: 1`` with its 429s and 503s and none with its 500s, so the waits after
500s are the ones no_backoff judges: the 500 rate here is high enough that the 20 runs hold ~50
requests with two such waits (at 5 %, a handful). 429s do not use up ``--max-attempts``, so the 429
rate is kept at 10 %: at 15 %, about one test in fifty would have a request reach 11 attempts by
chance. ``--max-retry-wait 2`` makes some requests reach the cap (and keeps the test short).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import write_qa_dataset

LLMOCK = shutil.which("llmock")
pytestmark = pytest.mark.skipif(
    LLMOCK is None, reason="the `llmock` command is not installed (pip install llmock==0.2.2; it is in the dev extra)")

RUNS = 20
LANES = 5  # llmock servers side by side, each serving RUNS / LANES runs in turn (the runs mostly sleep)
SAMPLES = 80
SERVE_ARGS = ["--error-rate", "429=0.10", "--error-rate", "500=0.15", "--error-rate", "503=0.05",
              "--rpm", "1200", "--latency-ms", "30"]
# --no-cache: every run sends its requests (the response cache would answer a lane's later runs)
RUN_ARGS = ["-m", "gpt-4o-mini", "--concurrency", "16", "--max-retry-wait", "2", "--quiet", "--no-cache"]
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class Mock:
    """One ``llmock serve`` process on a loopback port the OS picked."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not (found := _LISTENING.search(self.log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"llmock serve did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_llmock(log: Path) -> Mock:
    with open(log, "wb") as out:
        proc = subprocess.Popen([LLMOCK, "serve", "--host", "127.0.0.1", "--port", "0", *SERVE_ARGS],
                                stdout=out, stderr=subprocess.STDOUT)
    return Mock(proc, log)


@dataclass
class Outcome:
    """One evalledger run against its own llmock server, and llmock's verdict on it."""

    run: subprocess.CompletedProcess[str]
    report: subprocess.CompletedProcess[str]
    attempts: list[list[dict[str, Any]]]  # per logical request (body), its attempts in order

    @property
    def retried_twice(self) -> int:
        return sum(len(a) >= 3 for a in self.attempts)

    @property
    def judged_for_backoff(self) -> int:
        """Requests with at least two waits after an error without Retry-After (what no_backoff judges)."""
        return sum(sum(r["status"] >= 400 and r["retry_after"] is None for r in a[:-1]) >= 2
                   for a in self.attempts)


def journal(url: str) -> list[list[dict[str, Any]]]:
    """llmock's journal, grouped by request body: one sample = one body here (single-turn, distinct questions)."""
    with urllib.request.urlopen(f"{url}/_llmock/requests", timeout=30) as r:
        records = json.load(r)["requests"]
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in sorted(records, key=lambda rec: rec["seq"]):
        calls[rec["fingerprint"]].append(rec)
    return list(calls.values())


def run_lane(tmp_path: Path, lane: int, data: Path) -> list[Outcome]:
    """One llmock server, and evalledger runs against it one after the other; between two runs the
    server forgets every request and its spent quota (POST /_llmock/reset), as if fresh."""
    mock = start_llmock(tmp_path / f"llmock-{lane}.log")
    env = {**os.environ, "OPENAI_API_KEY": "sk-llmock", "PYTHONUNBUFFERED": "1"}
    outcomes = []
    try:
        mock.wait_listening()
        for k in range(lane, RUNS, LANES):
            run = subprocess.run([sys.executable, "-m", "evalledger", "run", "-d", str(data), *RUN_ARGS,
                                  "--base-url", f"{mock.url}/v1", "--output-dir", str(tmp_path / f"out-{k}")],
                                 env=env, capture_output=True, text=True, timeout=120)
            report = subprocess.run([LLMOCK, "report", "--strict", "--url", mock.url],
                                    capture_output=True, text=True, timeout=60)
            outcomes.append(Outcome(run, report, journal(mock.url)))
            urllib.request.urlopen(urllib.request.Request(f"{mock.url}/_llmock/reset", method="POST"), timeout=30).close()
    finally:
        mock.stop()
    return outcomes


def test_llmock_finds_nothing_to_fault_in_twenty_runs(tmp_path):
    """20 runs, each against a fresh (or freshly reset) llmock throwing 429s, 500s and 503s: every
    verdict passes (``--strict``: warnings such as no_backoff fail it too)."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", SAMPLES)
    with ThreadPoolExecutor(LANES) as pool:
        outcomes = [o for lane in pool.map(lambda lane: run_lane(tmp_path, lane, data), range(LANES)) for o in lane]

    for i, o in enumerate(outcomes):
        # 1: a sample whose 500s/503s outlasted --max-attempts is an error record; llmock accepts that
        assert o.run.returncode in (0, 1), f"run {i}: evalledger exited {o.run.returncode}:\n{o.run.stderr}"
        assert len(o.attempts) == SAMPLES, f"run {i}: {len(o.attempts)} requests, not {SAMPLES}"
    failed = [(i, o.report.stdout + o.report.stderr) for i, o in enumerate(outcomes) if o.report.returncode != 0]
    assert not failed, f"{len(failed)}/{RUNS} llmock verdicts failed:\n" + "\n".join(
        f"run {i}:\n{text}" for i, text in failed)
    # and the runs had what the verdicts judge: requests retried twice or more (~7 a run: 30 % of
    # attempts fail), among them some with two waits after 500s, what no_backoff judges (~2.5 a run)
    assert sum(o.retried_twice for o in outcomes) >= 5 * RUNS, [o.retried_twice for o in outcomes]
    assert sum(o.judged_for_backoff for o in outcomes) >= RUNS, [o.judged_for_backoff for o in outcomes]
