"""The providers' batch API adapters through the real SDKs against the loopback fake server's batch
endpoints (``tests/fakebatch.py``): a batch sends the very body an online call sends and reads back
the very response an online call reads; failures, expiry, cancelling, listing, custom ids, errors.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from fakeserver import answer_from_marker

from evalledger.providers import (
    BatchCounts,
    BatchInfo,
    BatchItem,
    BatchLimits,
    BatchResult,
    ChatRequest,
    ChatResponse,
    ErrorKind,
    make_provider,
)
from evalledger.providers import anthropic as anthropic_wire
from evalledger.providers import openai as openai_wire

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-test"]


def _provider(server, model: str):
    base_url = server.anthropic_base_url if model.startswith("anthropic/") else server.openai_base_url
    return make_provider(model, base_url=base_url, api_key="x")


def _request(answer: str, system: str | None = "Answer with ####.") -> ChatRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"What is it? [[ANSWER:{answer}]]"})
    return ChatRequest(messages=messages, model="ignored", temperature=0.0, max_tokens=32, seed=3)


def _run(server, model: str, scenario):
    """Run ``scenario(provider)`` on a fresh provider (closed after) and return what it returns."""

    async def main():
        provider = _provider(server, model)
        try:
            return await scenario(provider)
        finally:
            await provider.aclose()

    return asyncio.run(main())


async def _until(provider, batch_id: str, done, timeout: float = 15.0) -> BatchInfo:
    """Poll the batch until ``done(info)``."""

    deadline = time.monotonic() + timeout
    while True:
        info = await provider.retrieve_batch(batch_id)
        if done(info):
            return info
        assert time.monotonic() < deadline, f"batch {batch_id} still {info.status}"
        await asyncio.sleep(0.01)


def _ended(info: BatchInfo) -> bool:
    return info.ended


def _same_reply(a: ChatResponse, b: ChatResponse) -> bool:
    return (a.text, a.input_tokens, a.output_tokens, a.finish_reason, a.model) == \
        (b.text, b.input_tokens, b.output_tokens, b.finish_reason, b.model)


@pytest.mark.parametrize("model", MODELS)
def test_a_batch_sends_the_online_body_and_reads_the_online_reply(fake_server, model):
    """The bodies the batch carries are exactly the online bodies for the same requests, and each
    result is what ``complete`` reads for the same request (text, usage, finish reason, model)."""

    seen: list[dict] = []

    def recording(body: dict) -> str:
        seen.append(body)
        return answer_from_marker(body)

    fake_server.responder = recording
    fake_server.batches.step_seconds = 0.01
    requests = {"s1-t1": _request("17"), "s2-t1": _request("x y", system=None)}

    async def scenario(provider):
        online = {cid: await provider.complete(r) for cid, r in requests.items()}
        online_bodies = [r.body for r in fake_server.requests]
        created = await provider.create_batch([BatchItem(cid, r) for cid, r in requests.items()],
                                              {"evalledger_run": "run-1"})
        assert created.counts.total in (0, 2) and not created.ended  # OpenAI counts once validated
        ended = await _until(provider, created.id, _ended)
        return online, online_bodies, ended, await provider.batch_results(ended)

    online, online_bodies, ended, results = _run(fake_server, model, scenario)
    assert seen[:2] == online_bodies and len(seen) == 4
    assert seen[2:] == online_bodies  # the batch's bodies, as the fake read them from the batch
    assert (ended.status, ended.counts) == (("completed" if model.startswith("openai/") else "ended"),
                                           BatchCounts(2, 2, 0, 0))
    assert ended.metadata == ({"evalledger_run": "run-1"} if model.startswith("openai/") else {})
    assert sorted(r.custom_id for r in results) == ["s1-t1", "s2-t1"]
    for r in results:
        assert r.error is None and not r.unfinished
        assert _same_reply(r.response, online[r.custom_id]), (r.response, online[r.custom_id])
        assert r.response.text.endswith("#### 17" if r.custom_id == "s1-t1" else "#### x y")
        assert r.response.input_tokens > 0 and r.response.request_id
    assert fake_server.batches.submitted("s1-t1") == 1 and fake_server.batches.total_items() == 2


@pytest.mark.parametrize("model", MODELS)
def test_failed_requests_inside_a_batch_are_classified(fake_server, model):
    fake_server.batches.step_seconds = 0.01
    fake_server.batches.fail_items("bad", status=400)
    fake_server.batches.fail_items("busy", status=500)
    fake_server.batches.fail_items("full", status=429)

    async def scenario(provider):
        items = [BatchItem(cid, _request(cid)) for cid in ("ok", "bad", "busy", "full")]
        info = await _until(provider, (await provider.create_batch(items, {})).id, _ended)
        return info, {r.custom_id: r for r in await provider.batch_results(info)}

    info, results = _run(fake_server, model, scenario)
    assert info.counts == BatchCounts(4, 1, 3, 0)
    assert results["ok"].response is not None and results["ok"].response.text.endswith("#### ok")
    bad, busy, full = results["bad"].error, results["busy"].error, results["full"].error
    assert (bad.kind, busy.kind, full.kind) == (ErrorKind.SAMPLE, ErrorKind.TRANSIENT, ErrorKind.TRANSIENT)
    if model.startswith("openai/"):
        assert (bad.status_code, busy.status_code, full.status_code) == (400, 500, 429)
        assert bad.type == "invalid_request_error" and bad.message.startswith("HTTP 400: ")
        assert bad.request_id and bad.request_id.startswith("req_")
    else:
        assert (bad.type, busy.type, full.type) == ("invalid_request_error", "api_error", "rate_limit_error")
        assert bad.status_code is None


@pytest.mark.parametrize("model", MODELS)
def test_an_expired_batch_returns_what_was_done_and_the_rest_unfinished(fake_server, model):
    fake_server.batches.step_seconds = 0.01
    fake_server.batches.hold()

    async def scenario(provider):
        items = [BatchItem(f"s{i}", _request(str(i))) for i in range(4)]
        created = await provider.create_batch(items, {})
        await _until(provider, created.id, lambda i: i.status == "in_progress")
        assert fake_server.batches.expire(done_fraction=0.5) == [created.id]
        info = await provider.retrieve_batch(created.id)
        return info, {r.custom_id: r for r in await provider.batch_results(info)}

    info, results = _run(fake_server, model, scenario)
    assert info.ended and info.status == ("expired" if model.startswith("openai/") else "ended")
    assert info.counts == BatchCounts(4, 2, 0, 0, expired=2)
    assert [cid for cid, r in sorted(results.items()) if r.response is not None] == ["s0", "s1"]
    assert results["s2"] == BatchResult("s2", unfinished=True) and results["s3"] == BatchResult("s3", unfinished=True)


@pytest.mark.parametrize("model", MODELS)
def test_a_cancelled_batch_leaves_its_items_unfinished(fake_server, model):
    fake_server.batches.step_seconds = 0.01
    fake_server.batches.hold()

    async def scenario(provider):
        created = await provider.create_batch([BatchItem("c1", _request("1")), BatchItem("c2", _request("2"))], {})
        cancelling = await provider.cancel_batch(created.id)
        info = await _until(provider, created.id, _ended)
        return cancelling, info, await provider.batch_results(info)

    cancelling, info, results = _run(fake_server, model, scenario)
    assert cancelling.status == ("cancelling" if model.startswith("openai/") else "canceling")
    assert not cancelling.ended and info.ended
    assert info.counts == BatchCounts(2, 0, 0, 0, canceled=2)
    assert sorted(results, key=lambda r: r.custom_id) == [BatchResult("c1", unfinished=True),
                                                          BatchResult("c2", unfinished=True)]


@pytest.mark.parametrize("model", MODELS)
def test_list_batches_finds_recent_batches_newest_first_and_stops_at_older_ones(fake_server, model, monkeypatch):
    """Found by ``created_after`` (and, on OpenAI, by their metadata); paging one batch a page,
    the listing stops at the first batch older than ``created_after``."""

    wire = openai_wire if model.startswith("openai/") else anthropic_wire
    monkeypatch.setattr(wire, "LIST_PAGE", 1)
    fake_server.batches.hold()

    async def scenario(provider):
        for i in range(2):
            await provider.create_batch([BatchItem(f"old{i}", _request("o"))], {"evalledger_run": "old"})
        await asyncio.sleep(1.05)  # OpenAI stamps whole seconds
        since = time.time()
        new = [await provider.create_batch([BatchItem(f"new{i}", _request("n"))], {"evalledger_run": f"r{i}"})
               for i in range(2)]
        before = fake_server.batches.calls("list")
        found = await provider.list_batches(since)
        pages = fake_server.batches.calls("list") - before
        return new, found, pages, await provider.list_batches(time.time() + 5), await provider.list_batches(0)

    new, found, pages, future, everything = _run(fake_server, model, scenario)
    assert [b.id for b in found] == [new[1].id, new[0].id]
    assert pages == 3  # new1, new0, then old1 (older: stop), never old0
    if model.startswith("openai/"):
        assert [b.metadata for b in found] == [{"evalledger_run": "r1"}, {"evalledger_run": "r0"}]
    assert future == [] and len(everything) == 4


def test_openai_list_batches_counts_the_batch_created_in_the_same_second(fake_server):
    """``created_at`` is whole seconds: a batch created just after ``created_after`` may carry a
    stamp below it, and is still found."""

    async def scenario(provider):
        since = time.time()
        created = await provider.create_batch([BatchItem("a", _request("1"))], {})
        return created, await provider.list_batches(since)

    created, found = _run(fake_server, "openai/gpt-4o-mini", scenario)
    assert created.created_at == int(created.created_at) and [b.id for b in found] == [created.id]


@pytest.mark.parametrize("model", MODELS)
def test_batch_custom_ids(fake_server, model):
    """OpenAI's come from the input file at once; Anthropic's only once the batch has ended."""
    fake_server.batches.step_seconds = 0.01
    fake_server.batches.hold()

    async def scenario(provider):
        created = await provider.create_batch([BatchItem(c, _request(c)) for c in ("k1", "k2", "k3")], {})
        while_open = await provider.batch_custom_ids(created)
        fake_server.batches.release()
        info = await _until(provider, created.id, _ended)
        return while_open, await provider.batch_custom_ids(info)

    while_open, at_end = _run(fake_server, model, scenario)
    assert at_end == frozenset({"k1", "k2", "k3"})
    assert while_open == (at_end if model.startswith("openai/") else None)


@pytest.mark.parametrize("model", MODELS)
def test_results_of_an_open_batch_are_refused(fake_server, model):
    fake_server.batches.hold()

    async def scenario(provider):
        created = await provider.create_batch([BatchItem("h1", _request("1"))], {})
        with pytest.raises(ValueError, match="ended"):
            await provider.batch_results(created)
        return fake_server.batches.calls("results")

    assert _run(fake_server, model, scenario) == 0


def test_an_openai_batch_that_failed_validation_has_an_error_and_no_results(fake_server):
    fake_server.batches.step_seconds = 0.01
    fake_server.batches.openai_max_requests = 1

    async def scenario(provider):
        created = await provider.create_batch([BatchItem("v1", _request("1")), BatchItem("v2", _request("2"))], {})
        info = await _until(provider, created.id, _ended)
        return info, await provider.batch_results(info)

    info, results = _run(fake_server, "openai/gpt-4o-mini", scenario)
    assert info.status == "failed" and info.counts == BatchCounts(0, 0, 0, 0)
    assert info.error is not None and "at most 1" in info.error
    assert results == []


@pytest.mark.parametrize("model", MODELS)
def test_errors_of_the_batch_calls_are_the_sdks_and_classified(fake_server, model):
    """A failed create is the SDK's exception (transient for a 500, nothing created); an unknown
    batch id is the SDK's 404."""
    fake_server.batches.fail_create(status=500)

    async def scenario(provider):
        with pytest.raises(Exception) as failed_create:
            await provider.create_batch([BatchItem("e1", _request("1"))], {})
        with pytest.raises(Exception) as unknown:
            await provider.retrieve_batch("batch_nope")
        return provider.classify(failed_create.value), provider.classify(unknown.value)

    create_error, unknown_error = _run(fake_server, model, scenario)
    assert (create_error.kind, create_error.status_code) == (ErrorKind.TRANSIENT, 500)
    assert create_error.type == "InternalServerError"
    assert (unknown_error.status_code, unknown_error.type) == (404, "NotFoundError")
    assert fake_server.batches.created() == [] and fake_server.batches.total_items() == 0


@pytest.mark.parametrize("model", MODELS)
def test_a_batch_past_the_providers_limits_is_refused_before_any_call(fake_server, model, monkeypatch):
    provider_cls = type(_provider(fake_server, model))
    monkeypatch.setattr(provider_cls, "batch_limits", BatchLimits(max_requests=2, max_bytes=10**6))

    async def scenario(provider):
        with pytest.raises(ValueError, match="at most 2"):
            await provider.create_batch([BatchItem(f"l{i}", _request("1")) for i in range(3)], {})
        with pytest.raises(ValueError, match="twice"):
            await provider.create_batch([BatchItem("d", _request("1")), BatchItem("d", _request("2"))], {})
        return fake_server.batches.calls()

    assert _run(fake_server, model, scenario) == 0
