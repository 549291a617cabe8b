"""The numbers and messages of a run that a researcher reads: latency, an unreachable endpoint,
what an interrupt cuts short, the cost of an unpriced model, and the plain status lines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from fakeserver import FakeServer
from helpers import (
    all_records,
    cli_env,
    line_count,
    marker,
    only_run_dir,
    popen_cli,
    run_cli,
    run_config,
    wait_for,
    write_qa_dataset,
)

from evalledger.config import RunConfig
from evalledger.providers.base import NetworkFault, network_fault
from evalledger.readers import get_stats
from evalledger.readers.scan_arrow import parse_block
from evalledger.run import run_experiment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


def _status_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("[evalledger]")]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------------------------- latency


def test_latency_counts_from_the_first_request_and_queueing_is_recorded_apart(fake_server, tmp_path):
    """8 samples on 2 request slots (several samples per slot wait for one): each record's latency
    is its request's, not that plus the time it waited in the client for a slot."""
    server_latency = 0.3
    fake_server.latency = server_latency
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", concurrency=2, max_attempts=1))
    assert s.exit_code == 0 and s.ok == 8
    recs = all_records(s.run_dir)
    latencies = sorted(r["latency_s"] for r in recs)
    # Not multiples of the server's latency: every sample's own request, plus a little overhead.
    assert all(server_latency <= lat < server_latency + 0.2 for lat in latencies), latencies
    # The waiting is recorded apart: with 2 slots, the last samples waited three rounds or so.
    assert max(r["queued_s"] for r in recs) >= 2 * server_latency, [r["queued_s"] for r in recs]
    assert all(r["queued_s"] >= 0 for r in recs)
    # started_at is when the request went out: its offset to the server's arrival time is the
    # same for every sample (one clock each side), not the run's start for the queued ones.
    arrived = {f"s{i:05d}": next(r.received_at for r in fake_server.requests if marker(i) in r.text)
               for i in range(8)}
    offsets = [_epoch(r["started_at"]) - arrived[r["sample_id"]] for r in recs]
    assert max(offsets) - min(offsets) < 0.2, offsets
    for r in recs:  # finished_at - started_at is the latency (millisecond timestamps)
        assert abs(_epoch(r["finished_at"]) - _epoch(r["started_at"]) - r["latency_s"]) < 0.01, r
    stats = get_stats(s.run_dir)
    assert server_latency <= stats["latency_p95_s"] < server_latency + 0.2, stats["latency_p95_s"]
    # The new field is one the fast (Arrow) reader knows: these records do not fall back to the slow parser.
    assert parse_block((s.run_dir / "results.jsonl").read_bytes(), 0) is not None


# ----------------------------------------------------------------------------------- unreachable


def test_nothing_listening_stops_fast_and_says_so(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    data = write_qa_dataset(tmp_path / "qa.jsonl", 40)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY="sk-test", PYTHONUNBUFFERED="1")
    t = time.monotonic()
    # The defaults a researcher gets: --concurrency 8, --max-attempts 6, --max-retry-wait 120.
    r = run_cli(["run", "--dataset", str(data), "--model", "m", "--base-url", url, "--output-dir", str(out),
                 "--json"], env, cwd=tmp_path, timeout=60)
    took = time.monotonic() - t
    assert r.returncode == 2, r.stderr
    assert took < 5.0, took
    assert f"nothing is listening at {url}" in r.stderr and "connection refused" in r.stderr, r.stderr
    assert "timed out" not in r.stderr.lower(), r.stderr  # a refusal is not a time-out
    summary = json.loads(r.stdout)
    assert summary["status"] == "fatal" and summary["ok"] == 0
    assert summary["requests"] <= 2 * 8, summary["requests"]  # not hundreds of attempts
    run_dir = only_run_dir(out)
    assert not [rec for rec in all_records(run_dir) if rec["status"] == "ok"]


def test_a_host_that_does_not_resolve_is_named_as_such(tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    url = "http://no-such-host.invalid/v1"  # .invalid never resolves (RFC 2606)
    cfg = RunConfig(dataset=str(data), model="openai/x", output_dir=tmp_path / "out", base_url=url, api_key="k",
                    quiet=True, concurrency=1, max_retry_wait=0.05)
    s = run_experiment(cfg)
    assert s.exit_code == 2 and s.status == "fatal"
    assert f"the host name of {url} does not resolve (DNS lookup failed)" in s.message, s.message
    assert s.requests <= 3


def test_network_faults_are_told_apart():
    """The SDKs report these through a few exception classes (the aiohttp transport calls most of
    them a connect time-out): the chain of causes says which it was."""
    import httpx2
    import openai

    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")

    def sdk_error(timeout: bool, *causes: BaseException) -> BaseException:
        exc: BaseException = openai.APITimeoutError(request) if timeout else openai.APIConnectionError(request=request)
        outer = exc
        for cause in causes:
            outer.__cause__ = cause
            outer = cause
        return exc

    refused = sdk_error(True, httpx2.ConnectTimeout("Cannot connect"), ConnectionRefusedError(111, "refused"))
    dns = sdk_error(False, httpx2.ConnectError("no such host"), socket.gaierror(-2, "Name or service not known"))
    connect_timeout = sdk_error(True, httpx2.ConnectTimeout("timed out"), TimeoutError())
    read_timeout = sdk_error(True, httpx2.ReadTimeout("Timeout on reading data from socket"), TimeoutError())
    reset = sdk_error(True, httpx2.ConnectTimeout("reset"), ConnectionResetError(104, "Connection reset by peer"))
    assert network_fault(refused, timed_out=True) is NetworkFault.REFUSED
    assert network_fault(dns) is NetworkFault.DNS
    assert network_fault(connect_timeout, timed_out=True) is NetworkFault.CONNECT_TIMEOUT
    assert network_fault(read_timeout, timed_out=True) is NetworkFault.TIMEOUT
    assert network_fault(reset, timed_out=True) is NetworkFault.LOST
    assert [f.cannot_connect for f in NetworkFault] == [True, True, True, False, False]


def test_a_server_that_answers_but_too_slowly_is_a_time_out_not_unreachable(tmp_path):
    """Connected, no answer in --request-timeout: retried, then an error record saying so (never
    'nothing is listening', never fatal)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
        s = run_experiment(RunConfig(dataset=str(data), model="openai/x", output_dir=tmp_path / "out", base_url=url,
                                     api_key="k", quiet=True, concurrency=2, max_attempts=1, request_timeout=0.5))
    assert s.exit_code == 1 and s.status == "errors" and s.errors == 2, s.message
    for rec in all_records(s.run_dir):
        assert rec["error"]["message"].startswith("timed out waiting for the response"), rec["error"]
        assert rec["error"]["retryable"] is True


def test_a_server_that_dies_mid_run_is_retried_as_an_outage(tmp_path, capfd):
    """Once the endpoint has answered, connection failures are an outage: retried, then error
    records and the circuit breaker (exit 3), shown in the status line meanwhile; not fatal."""
    server = FakeServer(latency=0.05).start()
    data = write_qa_dataset(tmp_path / "qa.jsonl", 60)
    results: list[Path] = []

    def kill_after_some_records() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = list((tmp_path / "out").glob("*/results.jsonl"))
            if found and line_count(found[0]) >= 5:
                results.extend(found)
                break
            time.sleep(0.01)
        server.stop()

    killer = threading.Thread(target=kill_after_some_records, daemon=True)
    killer.start()
    try:
        s = run_experiment(run_config(server, data, tmp_path / "out", concurrency=2, max_attempts=3,
                                      max_consecutive_errors=4, quiet=False, progress_interval=0.1))
    finally:
        killer.join(timeout=35)
        server.stop()
    assert results, "the run ended before the server was stopped"
    assert s.exit_code == 3 and s.status == "outage", s.message
    assert "looks down" in s.message and "connection refused" in s.message, s.message
    errors = [r for r in all_records(s.run_dir) if r["status"] == "error"]
    assert len(errors) >= 4 and all(r["attempts"] == 3 and r["error"]["retryable"] for r in errors)
    assert any(r["error"]["message"].startswith("connection refused") for r in errors), errors
    status = _status_lines(capfd.readouterr().err)
    counts = [int(m.group(1)) for ln in status if (m := re.search(r" conn-errors=(\d+)", ln))]
    assert counts and counts[-1] >= 4 * 3 - 2, status  # the failed attempts, counted as they happen


# ----------------------------------------------------------------------------------- interrupts

SLOW_SCORING_TASK = '''
import asyncio

from evalledger.tasks.qa import QATask


class SlowScoring(QATask):
    """Scores each answer slowly (a judge, a sandbox): its answer is paid for, its record not written yet."""

    name = "slow-scoring"

    async def run(self, sample, generate, rng):
        out = await super().run(sample, generate, rng)
        await asyncio.sleep(3600)
        return out
'''


@pytest.mark.parametrize("hard_stop", ["second-sigint", "grace-over"])
def test_interrupt_messages_count_requests_against_the_server_log(fake_server, tmp_path, hard_stop):
    """Two requests hang on the wire while 14 answered samples are still being scored. The first
    Ctrl-C names those numbers (not the 16 samples its workers hold); the hard stop says how many
    requests it cancelled unanswered and how many answered ones it lost (paid again on resume)."""
    (tmp_path / "slowtask.py").write_text(SLOW_SCORING_TASK)
    n, concurrency, hanging = 16, 4, 2
    fake_server.latency = 0.05
    for i in range(hanging):
        fake_server.fail_when(marker(i), kind="hang")
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    grace = "30" if hard_stop == "second-sigint" else "2"
    # --no-cache: the answered requests are in no file at all (the response cache would keep them:
    # tests/test_response_cache.py)
    proc = popen_cli(["run", "--dataset", str(data), "--task", "slowtask:SlowScoring", "--model", "openai/m",
                      "--output-dir", str(out), "--concurrency", str(concurrency), "--grace-seconds", grace,
                      "--quiet", "--no-cache"], env, cwd=tmp_path)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    answered = n - hanging
    try:
        wait_for(lambda: fake_server.status_counts().get(200, 0) == answered and fake_server.in_flight == hanging,
                 30, "14 answered requests and 2 hanging ones", proc)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: any("waiting up to" in ln for ln in err_lines), 10, "the first message", proc)
        if hard_stop == "second-sigint":
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(err_lines)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert (f"waiting up to {grace}s for {hanging} request(s) in flight and {answered} answered request(s) "
            "not recorded yet") in err, err
    statuses = fake_server.status_counts()
    run_dir = out / next(p.name for p in out.iterdir() if p.is_dir())
    ok = [r for r in all_records(run_dir) if r["status"] == "ok"]
    # The server's log: the cancelled requests got no response; the answered ones were paid for.
    assert statuses == {200: answered, None: hanging}, statuses
    assert ok == []
    lost = statuses[200] - len(ok)
    assert (f"the stop cancelled {statuses[None]} request(s) still waiting for an answer") in err, err
    assert f"{lost} answered request(s) were not recorded and will be paid again on resume" in err, err


# ----------------------------------------------------------------------------------- status lines


def _plain_run(server: FakeServer, tmp_path: Path, name: str, *extra: str) -> list[str]:
    data = write_qa_dataset(tmp_path / f"{name}.jsonl", 4)
    r = run_cli(["run", "--dataset", str(data), "--model", "m", "--base-url", server.openai_base_url,
                 "--output-dir", str(tmp_path / name), "--concurrency", "2", "--progress-interval", "0.2", *extra],
                cli_env(server), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return _status_lines(r.stderr)


def test_unknown_price_shows_as_unknown_in_every_status_line_never_zero(fake_server, tmp_path):
    fake_server.latency = 0.7  # several status lines before the first record
    lines = _plain_run(fake_server, tmp_path, "unpriced")
    assert lines and lines[0].split()[2] == "0/4", lines  # a line from before any record
    assert all(" cost=? " in ln for ln in lines) and not any("$" in ln for ln in lines), lines
    assert lines[-1].split()[2] == "4/4", lines  # the last line: where the run ended

    # With a price, zero is known (nothing spent yet) and the end shows what was spent.
    # (--no-cache: the same questions as the run above, which the response cache would answer for free)
    priced = _plain_run(fake_server, tmp_path, "priced", "--price-input", "1", "--price-output", "2", "--no-cache")
    assert " cost=$0.0000 " in priced[0] and priced[-1].split()[2] == "4/4", priced
    assert float(re.search(r" cost=\$([0-9.]+) ", priced[-1]).group(1)) > 0, priced


def test_the_first_status_line_is_printed_once(fake_server, tmp_path):
    """Nothing finishes for the first second: the lines of that time are not one line repeated."""
    fake_server.latency = 1.0
    lines = _plain_run(fake_server, tmp_path, "first")
    first = [ln for ln in lines if ln.split()[2] == "0/4"]
    assert len(first) >= 2, lines  # several lines came before the first record …
    assert lines.count(lines[0]) == 1 and len(set(lines)) == len(lines), lines  # … none printed twice
    assert [float(re.search(r" elapsed=([0-9.]+)s", ln).group(1)) for ln in first] == \
        sorted(float(re.search(r" elapsed=([0-9.]+)s", ln).group(1)) for ln in first)
