"""Rate limits (--rpm/--tpm), adaptive concurrency on 429s, and --fsync modes, through the real SDKs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from helpers import all_records, marker, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.errors import UsageError
from evalledger.ledger import GroupCommitter
from evalledger.readers import CheckpointManager
from evalledger.run import run_experiment
from evalledger.run.limits import Limits, TokenBucket


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    base = dict(dataset=str(data), model="openai/test-model", output_dir=out, base_url=server.openai_base_url,
                api_key="sk-test", quiet=True, concurrency=8, max_retry_wait=2.0)
    base.update(kw)
    return RunConfig(**base)


def test_token_bucket_refills_continuously():
    now = [0.0]
    bucket = TokenBucket(per_minute=600, capacity=10, clock=lambda: now[0])  # 10 per second
    assert bucket.wait_time(10) == 0
    bucket.tokens -= 10
    assert bucket.wait_time(5) == pytest.approx(0.5)
    now[0] += 0.2
    assert bucket.wait_time(5) == pytest.approx(0.3)  # 2 tokens came back in 0.2 s
    bucket.adjust(+100)
    assert bucket.tokens == 10  # never above capacity
    assert bucket.wait_time(50) == 0  # larger than capacity: waits for a full bucket, then goes into debt


def test_rpm_spaces_requests_after_the_burst(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 14)
    t0 = time.monotonic()
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", rpm=60))  # 1/s, a 10-request burst
    took = time.monotonic() - t0
    assert s.exit_code == 0 and fake_server.request_count == 14
    arrivals = sorted(r.received_at for r in fake_server.requests)
    # the first 10 go at once; the other 4 come one per second
    assert arrivals[9] - arrivals[0] < 1.0
    assert arrivals[13] - arrivals[9] >= 3.5, [round(a - arrivals[0], 2) for a in arrivals]
    assert took >= 3.5 and s.limits["throttled_s"] >= 3.0


def test_tpm_limits_tokens_and_is_corrected_by_usage(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    # each request is estimated at ~40 prompt tokens + max_tokens 200 = ~240; capacity 600 (tpm/6)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", tpm=3600, max_tokens=200))
    assert s.exit_code == 0
    arrivals = sorted(r.received_at for r in fake_server.requests)
    # only ~2-3 fit in the first burst; the real usage (~50 tokens) is given back after each response,
    # so the run is far faster than 12 × 240 tokens at 60 tokens/s (48 s) would be
    assert arrivals[3] - arrivals[0] > 0.5
    assert arrivals[-1] - arrivals[0] < 25


def test_429_halves_concurrency_pauses_everyone_and_recovers(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 120)
    fake_server.latency = 0.05
    # A storm: 12 of the opening 16 requests are refused (a lone 429 does not pause everyone, see
    # test_a_lone_429_among_successes_pauses_only_its_own_request).
    fake_server.fail_next(12, status=429, retry_after=1.0)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=16))
    assert s.exit_code == 0 and s.ok == 120
    lim = s.limits
    assert lim["rate_limited"] == 12 and lim["storms"] >= 1
    assert lim["decreases"] == 1  # one episode, one cut, however many 429s it held
    assert lim["min_limit"] == 8
    assert lim["final_limit"] > lim["min_limit"]  # grew back on success
    assert lim["paused_s"] > 0
    reqs = sorted(fake_server.requests, key=lambda r: r.received_at)
    first_429 = next(r.received_at for r in reqs if r.status == 429)
    # The pause applied to every worker: apart from the opening burst (sent together, before any
    # answer could come back), nothing arrived until Retry-After had passed.
    later = [r.received_at - first_429 for r in reqs if r.received_at > first_429 + 0.1]
    assert later and min(later) >= 0.9, min(later)


def test_adaptive_concurrency_can_be_turned_off(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 20)
    fake_server.fail_next(6, status=429, retry_after=0.2)  # 6 of the opening 8: a storm
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=8, adaptive_concurrency=False))
    assert s.exit_code == 0 and s.limits["decreases"] == 0 and s.limits["final_limit"] == 8
    assert s.limits["rate_limited"] == 6 and s.limits["paused_s"] > 0  # the pause still applies


def test_limits_concurrency_slots_are_respected():
    async def main():
        lim = Limits(max_concurrency=4)
        for _ in range(4):  # a storm (every recent response a 429): one cut per episode, 4 → 2
            lim.rate_limited(0.0)
        peak = 0
        active = 0

        async def one():
            nonlocal peak, active
            async with lim.request(10):
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= 1

        await asyncio.gather(*(one() for _ in range(20)))
        return peak, lim.limit

    peak, limit = asyncio.run(main())
    assert peak == 2 and limit == 2


# batch: records written together share an fsync; always: one write + fsync each; off: no fsync to
# share, so each record is written (and acknowledged) the moment it is handed in.
@pytest.mark.parametrize("mode,expect_batches", [("always", "per-record"), ("batch", "fewer"), ("off", "per-record")])
def test_fsync_modes(tmp_path, mode, expect_batches):
    ledger = CheckpointManager(tmp_path / "run").open_writer()

    async def main():
        c = GroupCommitter(ledger, fsync=mode)
        c.start()
        await asyncio.gather(*(c.commit({"sample_id": f"s{i}", "status": "ok"}) for i in range(50)))
        await c.close()
        return c

    c = asyncio.run(main())
    ledger.close()
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["sample_id"] for x in lines) == sorted(f"s{i}" for i in range(50))
    if expect_batches == "per-record":
        assert c.batches == 50
    else:
        assert c.batches < 50


def test_bad_limit_flags_are_refused():
    for kw, flag in (({"rpm": 0}, "--rpm"), ({"tpm": -5}, "--tpm"), ({"fsync": "sometimes"}, "--fsync")):
        with pytest.raises(UsageError, match=flag):
            RunConfig(dataset="gsm8k", **kw)


def test_fsync_always_end_to_end_and_in_resume_command(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", fsync="always", rpm=6000))
    assert s.exit_code == 0 and len(all_records(s.run_dir)) == 5
    assert "--fsync always" in cfg(fake_server, data, tmp_path, fsync="always", rpm=6000).resume_command()


@pytest.mark.parametrize("style", ["openai", "anthropic"])
def test_rate_limit_headers_pace_before_the_wall(fake_server, tmp_path, style):
    """When the provider says its window is nearly used up, everyone waits for the reset: no 429 needed."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    fake_server.latency = 0.02

    def headers(seq: int) -> dict[str, str]:
        if seq != 4:
            return {}
        if style == "openai":
            return {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.2s"}
        from datetime import datetime, timedelta, timezone

        reset = (datetime.now(timezone.utc) + timedelta(seconds=1.2)).isoformat().replace("+00:00", "Z")
        return {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}

    fake_server.success_headers = headers
    model = "openai/test-model" if style == "openai" else "anthropic/claude-test"
    base = fake_server.openai_base_url if style == "openai" else fake_server.anthropic_base_url
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", model=model, base_url=base, concurrency=2))
    assert s.exit_code == 0 and s.limits["paced"] >= 1 and s.limits["rate_limited"] == 0
    reqs = sorted(fake_server.requests, key=lambda r: r.received_at)
    fourth = next(r for r in reqs if r.seq == 4)
    # requests sent after the 4th's answer arrived waited for the window to reset (~1.2 s)
    later = [r.received_at - fourth.received_at for r in reqs if r.seq > 5]
    assert later and min(later) >= 1.0, min(later)


def test_a_lone_429_among_successes_pauses_only_its_own_request():
    """A provider shedding a few requests at random is not a storm: no pause for everyone, no cut."""
    async def main():
        lim = Limits(max_concurrency=16)
        for _ in range(12):
            lim.succeeded()
        lim.rate_limited(1.0)
        assert (lim.pause_until, lim.limit, lim.stats.storms, lim.stats.rate_limited) == (0.0, 16, 0, 1)
        for _ in range(12):  # now most recent responses are 429s: a storm
            lim.rate_limited(1.0)
        assert lim.stats.storms >= 1 and lim.limit == 8 and lim.pause_until > 0
        assert lim.stats.decreases == 1  # one cut per episode

    asyncio.run(main())


def test_retry_after_of_a_lone_429_is_still_honoured(fake_server, tmp_path):
    """The request that got the 429 waits its Retry-After before it is sent again."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 30)
    fake_server.fail_when(marker(7), status=429, retry_after=0.6, times=1)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=4))
    assert s.exit_code == 0 and s.ok == 30 and s.limits["rate_limited"] == 1 and s.limits["storms"] == 0
    hits = sorted(r.received_at for r in fake_server.requests if marker(7) in r.text)
    assert len(hits) == 2 and hits[1] - hits[0] >= 0.6, hits


def test_progress_shows_requests_waiting_out_a_retry_after(fake_server, tmp_path, capfd):
    """A lone 429's Retry-After is a rate-limit wait too: the plain status line counts it and,
    while it lasts, says how many requests are waiting (a run whose requests all wait never looks stuck)."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    fake_server.fail_when(marker(2), status=429, retry_after=1.2, times=1)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", concurrency=1, quiet=False, progress_interval=0.1))
    assert s.exit_code == 0 and s.ok == 6 and s.limits["rate_limited"] == 1 and s.limits["storms"] == 0
    assert s.limits["paused_s"] >= 1.2
    status = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("[evalledger]")]
    during = [ln for ln in status if " paused=1" in ln]
    assert during and all("rl_waits=1 (1s)" in ln for ln in during), status
    # the other samples went on meanwhile (several per request slot), and only one request waited
    assert any(" 5/6 " in ln for ln in during) and not any("paused=2" in ln for ln in status), status


def test_rpm_waits_are_reported_and_counted_while_they_last():
    async def main():
        changes: list[tuple[int, int]] = []
        waits: list[float] = []
        lim = Limits(max_concurrency=4, rpm=120, on_change=lambda limit, n: changes.append((limit, n)),
                     on_wait=waits.append)  # 2 a second, a burst of 20

        async def one() -> None:
            async with lim.request(10):
                pass

        await asyncio.gather(*(one() for _ in range(20)))
        assert waits == [] and changes == []  # the burst: no wait, nothing to report
        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(2)))
        assert time.monotonic() - t0 >= 0.7  # 2 more at 2 a second (less what came back meanwhile)
        assert len(waits) == 2 and all(0 < w <= 0.5 for w in waits), waits
        assert max(n for _, n in changes) >= 1 and changes[-1] == (4, 0)  # waiting shown, then none
        assert lim.stats.throttled_s >= 0.7

    asyncio.run(main())
