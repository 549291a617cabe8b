"""The fake server's batch endpoints (tests/fakebatch.py), driven through the real OpenAI and Anthropic SDKs.

The SDKs' typed objects parsing every reply is what shows the wire formats are the official ones.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import openai
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from fakeserver import FakeServer
from openai.types import Batch, FileObject

STEP = 0.02
_T = TypeVar("_T")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A started FakeServer whose batches move on every ``STEP`` seconds."""
    with FakeServer() as fake:
        fake.batches.step_seconds = STEP
        yield fake


def openai_client(server: FakeServer, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0, timeout=timeout)


def anthropic_client(server: FakeServer, timeout: float = 10.0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="x", max_retries=0, timeout=timeout)


def chat_body(i: int, model: str = "gpt-fake") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"Question {i} [[ANSWER:{i}]]"}]}


def openai_line(i: int, *, custom_id: str | None = None, model: str = "gpt-fake",
                url: str = "/v1/chat/completions") -> dict[str, Any]:
    return {"custom_id": custom_id or f"s{i}", "method": "POST", "url": url, "body": chat_body(i, model)}


def anthropic_request(i: int, *, custom_id: str | None = None) -> Any:
    return {"custom_id": custom_id or f"s{i}",
            "params": {"model": "claude-fake", "max_tokens": 64,
                       "messages": [{"role": "user", "content": f"Question {i} [[ANSWER:{i}]]"}]}}


def upload(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes) -> FileObject:
    data = lines if isinstance(lines, bytes) else "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")


def submit(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, **kw: Any) -> Batch:
    return client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                 completion_window="24h", **kw)


def submit_anthropic(client: anthropic.Anthropic, ids: range | list[int]) -> MessageBatch:
    return client.messages.batches.create(requests=[anthropic_request(i) for i in ids])


def wait_for(fetch: Callable[[], _T], done: Callable[[_T], bool], timeout: float = 10.0) -> _T:
    """Poll ``fetch`` until ``done`` holds for what it returns."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still not done: {value}"
        time.sleep(STEP / 4)


def counts(batch: Batch) -> tuple[int, int, int]:
    """An OpenAI batch's request counts: total, completed, failed."""
    assert batch.request_counts is not None
    return batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed


def openai_done(client: openai.OpenAI, batch_id: str) -> Batch:
    return wait_for(lambda: client.batches.retrieve(batch_id),
                    lambda b: b.status in ("completed", "failed", "expired", "cancelled"))


def anthropic_done(client: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    return wait_for(lambda: client.messages.batches.retrieve(batch_id), lambda b: b.processing_status == "ended")


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def raw_json(server: FakeServer, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(server.base_url + path, timeout=10) as resp:
        return json.loads(resp.read())


# ---- OpenAI: the happy path -----------------------------------------------------------------


def test_openai_batch_goes_through_every_state_and_answers_as_online(server: FakeServer) -> None:
    client = openai_client(server)
    uploaded = upload(client, [openai_line(i) for i in range(3)])
    assert (uploaded.object, uploaded.purpose, uploaded.status) == ("file", "batch", "processed")
    assert uploaded.id.startswith("file-") and uploaded.bytes > 0 and uploaded.filename == "requests.jsonl"
    assert client.files.retrieve(uploaded.id) == uploaded
    assert json.loads(client.files.content(uploaded.id).text.splitlines()[2])["custom_id"] == "s2"

    server.batches.step_seconds = 0.15  # long enough to see every state
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h", metadata={"run": "r1"})
    assert created.status == "validating" and created.id.startswith("batch_")
    assert counts(created) == (0, 0, 0)
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.metadata == {"run": "r1"} and created.input_file_id == uploaded.id
    # Every field of the SDK's Batch is on the wire, not left to its defaults.
    assert set(raw_json(server, f"/v1/batches/{created.id}")) == set(Batch.model_fields)

    seen: list[str] = []
    final = wait_for(lambda: client.batches.retrieve(created.id),
                     lambda b: seen.append(b.status) or b.status == "completed")
    assert [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s] == [
        "validating", "in_progress", "finalizing", "completed"]
    assert counts(final) == (3, 3, 0)
    assert final.in_progress_at and final.finalizing_at and final.completed_at and final.model == "gpt-fake"
    assert final.error_file_id is None and final.errors is None

    output = client.files.retrieve(final.output_file_id or "")
    assert output.purpose == "batch_output"
    lines = file_lines(client, final.output_file_id)
    assert [line["custom_id"] for line in lines] == ["s0", "s1", "s2"]
    online = client.chat.completions.create(model="gpt-fake", messages=chat_body(1)["messages"])
    item = openai.types.chat.ChatCompletion.model_validate(lines[1]["response"]["body"])
    assert lines[1]["error"] is None and lines[1]["response"]["status_code"] == 200
    assert lines[1]["id"].startswith("batch_req_")
    assert item.choices[0].message == online.choices[0].message
    assert item.usage == online.usage and item.model == online.model
    assert online.usage is not None and final.usage is not None
    assert final.usage.total_tokens == 3 * online.usage.total_tokens
    # Ids follow the online scheme and never repeat an online request's.
    request_ids = {line["response"]["request_id"] for line in lines}
    assert len(request_ids) == 3 and all(r.startswith("req_") for r in request_ids)
    assert item.id.startswith("chatcmpl-fake") and item.id != online.id
    # The items are not online requests: only the one chat call above is.
    assert server.request_count == 1


def test_items_run_through_the_servers_responder_without_counting_as_requests() -> None:
    asked: list[str] = []

    def responder(body: dict[str, Any]) -> str:
        asked.append(body["messages"][-1]["content"])
        return "#### 7"

    with FakeServer(responder=responder) as server:
        server.batches.step_seconds = STEP
        client = openai_client(server)
        batch = openai_done(client, submit(client, [openai_line(i) for i in range(4)]).id)
        lines = file_lines(client, batch.output_file_id)
        assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in lines] == ["#### 7"] * 4
        assert len(asked) == 4 and server.request_count == 0 and server.requests == []


def test_request_counts_move_while_in_progress(server: FakeServer) -> None:
    server.batches.items_per_second = 40
    client = openai_client(server)
    batch = submit(client, [openai_line(i) for i in range(12)])
    completed: list[int] = []

    def finished(b: Batch) -> bool:
        completed.append(counts(b)[1])
        return b.status == "completed"

    wait_for(lambda: client.batches.retrieve(batch.id), finished)
    assert completed == sorted(completed) and completed[-1] == 12
    assert any(0 < n < 12 for n in completed)


# ---- Anthropic: the happy path --------------------------------------------------------------


def test_anthropic_batch_ends_and_its_results_parse_as_the_sdks_types(server: FakeServer) -> None:
    client = anthropic_client(server)
    server.batches.step_seconds = 0.1
    created = submit_anthropic(client, range(3))
    assert created.type == "message_batch" and created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 3 and created.request_counts.succeeded == 0
    assert (created.expires_at - created.created_at).total_seconds() == 24 * 3600
    raw = raw_json(server, f"/v1/messages/batches/{created.id}")
    assert set(raw) == set(MessageBatch.model_fields) and raw["created_at"].endswith("Z")

    ended = anthropic_done(client, created.id)
    assert ended.ended_at is not None and ended.cancel_initiated_at is None
    tally = ended.request_counts
    assert (tally.processing, tally.succeeded, tally.errored, tally.expired, tally.canceled) == (0, 3, 0, 0, 0)
    assert ended.results_url == f"{server.base_url}/v1/messages/batches/{created.id}/results"

    results = list(client.messages.batches.results(created.id))
    assert all(isinstance(r, MessageBatchIndividualResponse) for r in results)
    assert [r.custom_id for r in results] == ["s0", "s1", "s2"]
    online = client.messages.create(**anthropic_request(1)["params"])
    item = results[1].result
    assert item.type == "succeeded"
    assert item.message.content == online.content and item.message.usage == online.usage
    assert item.message.id.startswith("msg_fake") and item.message.id != online.id
    assert server.request_count == 1
    assert server.batches.calls("results", api="anthropic") == 1


def test_anthropic_results_are_refused_before_the_batch_ends(server: FakeServer) -> None:
    server.batches.hold()
    client = anthropic_client(server)
    batch = submit_anthropic(client, [1])
    with pytest.raises(anthropic.BadRequestError):
        client.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_nope")


def test_async_clients_reach_the_batch_endpoints(server: FakeServer) -> None:
    async def run() -> tuple[Batch, list[Any]]:
        async with (openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0, timeout=10) as oa,
                    anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="x", max_retries=0,
                                             timeout=10) as an):
            return await batch_both(oa, an)

    async def batch_both(oa: openai.AsyncOpenAI, an: anthropic.AsyncAnthropic) -> tuple[Batch, list[Any]]:
        data = "".join(json.dumps(openai_line(i)) + "\n" for i in range(2)).encode()
        uploaded = await oa.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        batch = await oa.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        message_batch = await an.messages.batches.create(requests=[anthropic_request(5)])
        while batch.status != "completed" or message_batch.processing_status != "ended":
            await asyncio.sleep(STEP / 2)
            batch = await oa.batches.retrieve(batch.id)
            message_batch = await an.messages.batches.retrieve(message_batch.id)
        return batch, [r async for r in await an.messages.batches.results(message_batch.id)]

    batch, results = asyncio.run(run())
    assert counts(batch) == (2, 2, 0)
    assert [r.result.type for r in results] == ["succeeded"]


# ---- holding, failures, expiry, cancel --------------------------------------------------------


def test_hold_keeps_batches_in_progress_until_released(server: FakeServer) -> None:
    oa, an = openai_client(server), anthropic_client(server)
    server.batches.hold("s1")
    held, free = submit(oa, [openai_line(1)]), submit(oa, [openai_line(2)])
    held_anthropic = submit_anthropic(an, [1])
    openai_done(oa, free.id)
    time.sleep(10 * STEP)
    assert oa.batches.retrieve(held.id).status == "in_progress"
    assert counts(oa.batches.retrieve(held.id)) == (1, 0, 0)
    assert an.messages.batches.retrieve(held_anthropic.id).processing_status == "in_progress"
    server.batches.release()
    assert openai_done(oa, held.id).status == "completed"
    assert anthropic_done(an, held_anthropic.id).request_counts.succeeded == 1


def test_failed_items_go_to_the_error_file(server: FakeServer) -> None:
    server.batches.fail_items("s1", status=400, message="max_tokens is too large", code="context_length_exceeded")
    server.batches.fail_items("[[ANSWER:2]]", status=500)
    server.batches.fail_items("s3", status=429, times=1)
    client = openai_client(server)
    batch = openai_done(client, submit(client, [openai_line(i) for i in range(5)]).id)
    assert batch.status == "completed"
    assert counts(batch) == (5, 2, 3)
    assert [line["custom_id"] for line in file_lines(client, batch.output_file_id)] == ["s0", "s4"]
    errors = {line["custom_id"]: line for line in file_lines(client, batch.error_file_id)}
    assert {cid: e["response"]["status_code"] for cid, e in errors.items()} == {"s1": 400, "s2": 500, "s3": 429}
    assert errors["s1"]["error"] is None and errors["s1"]["response"]["request_id"].startswith("req_")
    assert errors["s1"]["response"]["body"] == {"error": {
        "message": "max_tokens is too large", "type": "invalid_request_error", "param": None,
        "code": "context_length_exceeded"}}
    assert errors["s2"]["response"]["body"]["error"]["type"] == "server_error"
    # times=1 was used up: the same custom id succeeds in the next batch.
    again = openai_done(client, submit(client, [openai_line(3)]).id)
    assert counts(again) == (1, 1, 0)


def test_failed_items_are_errored_in_anthropic_results(server: FakeServer) -> None:
    server.batches.fail_items("s1", status=400, message="prompt is too long")
    server.batches.fail_items("s2", status=529)
    client = anthropic_client(server)
    batch = anthropic_done(client, submit_anthropic(client, range(3)).id)
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (1, 2)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["s0"].type == "succeeded"
    s1, s2 = results["s1"], results["s2"]
    assert s1.type == "errored" and s2.type == "errored"
    assert (s1.error.type, s1.error.error.type, s1.error.error.message) == (
        "error", "invalid_request_error", "prompt is too long")
    assert s2.error.error.type == "overloaded_error"


def test_expire_keeps_the_done_fraction_and_expires_the_rest(server: FakeServer) -> None:
    oa, an = openai_client(server), anthropic_client(server)
    server.batches.hold()
    batch = submit(oa, [openai_line(i) for i in range(4)])
    message_batch = submit_anthropic(an, range(4))
    wait_for(lambda: oa.batches.retrieve(batch.id), lambda b: b.status == "in_progress")
    assert sorted(server.batches.expire(done_fraction=0.5)) == sorted([batch.id, message_batch.id])

    expired = oa.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at is not None
    assert counts(expired) == (4, 2, 0)
    assert [line["custom_id"] for line in file_lines(oa, expired.output_file_id)] == ["s0", "s1"]
    unfinished = file_lines(oa, expired.error_file_id)
    assert [(line["custom_id"], line["response"], line["error"]["code"]) for line in unfinished] == [
        ("s2", None, "batch_expired"), ("s3", None, "batch_expired")]

    ended = an.messages.batches.retrieve(message_batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (2, 2)
    assert [r.result.type for r in an.messages.batches.results(message_batch.id)] == [
        "succeeded", "succeeded", "expired", "expired"]
    with pytest.raises(ValueError):
        server.batches.expire(batch.id)  # already over


def test_cancel_keeps_what_was_done(server: FakeServer) -> None:
    oa, an = openai_client(server), anthropic_client(server)
    server.batches.hold()
    server.batches.items_per_second = 100
    done_early = submit(oa, [openai_line(i) for i in range(4)])
    server.batches.items_per_second = 20
    message_batch = submit_anthropic(an, range(40))
    server.batches.items_per_second = None
    nothing_done = submit(oa, [openai_line(9)])
    wait_for(lambda: oa.batches.retrieve(done_early.id), lambda b: counts(b)[1] == 4)

    cancelling = oa.batches.cancel(nothing_done.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = openai_done(oa, nothing_done.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.output_file_id is None
    assert [line["error"]["code"] for line in file_lines(oa, cancelled.error_file_id)] == ["batch_cancelled"]
    kept = openai_done(oa, oa.batches.cancel(done_early.id).id)
    assert kept.status == "cancelled" and kept.error_file_id is None
    assert len(file_lines(oa, kept.output_file_id)) == 4

    wait_for(server.batches.created, lambda batches: batches[1].outcomes.get("succeeded", 0) >= 1)
    canceling = an.messages.batches.cancel(message_batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    ended = anthropic_done(an, message_batch.id)
    tally = ended.request_counts
    assert tally.succeeded >= 1 and tally.canceled >= 1 and tally.succeeded + tally.canceled == 40
    types = [r.result.type for r in an.messages.batches.results(message_batch.id)]
    assert types.count("succeeded") == tally.succeeded and types.count("canceled") == tally.canceled

    server.batches.release()
    finished = openai_done(oa, submit(oa, [openai_line(8)]).id)
    with pytest.raises(openai.ConflictError):
        oa.batches.cancel(finished.id)
    with pytest.raises(anthropic.APIStatusError):
        an.messages.batches.cancel(message_batch.id)


# ---- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("lines", "code", "line", "param"), [
    ([openai_line(1), openai_line(2, custom_id="s1")], "duplicate_custom_id", 2, "custom_id"),
    ([openai_line(1, url="/v1/completions")], "invalid_url", 1, "url"),
    ([openai_line(1), openai_line(2, model="other-model")], "mismatched_model", 2, "body.model"),
    (b'{"custom_id": "s1", "method": "POST"\n', "invalid_json_line", 1, None),
    ([{**openai_line(1), "method": "GET"}], "invalid_value", 1, "method"),
])
def test_a_bad_input_file_fails_the_batch_while_validating(server: FakeServer, lines: Any, code: str, line: int,
                                                          param: str | None) -> None:
    client = openai_client(server)
    batch = openai_done(client, submit(client, lines).id)
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.object == "list" and batch.errors.data
    error = batch.errors.data[0]
    assert (error.code, error.line, error.param) == (code, line, param) and error.message
    assert counts(batch) == (0, 0, 0)
    assert batch.output_file_id is None and batch.error_file_id is None


def test_openai_size_limits_and_unknown_files(server: FakeServer) -> None:
    client = openai_client(server)
    server.batches.openai_max_requests = 2
    too_many = openai_done(client, submit(client, [openai_line(i) for i in range(3)]).id)
    assert too_many.status == "failed" and too_many.errors and too_many.errors.data
    assert too_many.errors.data[0].code == "too_many_requests" and too_many.errors.data[0].line is None
    assert openai_done(client, submit(client, [openai_line(i) for i in range(2)]).id).status == "completed"
    server.batches.openai_max_bytes = 50
    too_big = openai_done(client, submit(client, [openai_line(1)]).id)
    assert too_big.errors and [e.code for e in too_big.errors.data or []] == ["file_too_large"]

    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert len(server.batches.created()) == 3  # the refused calls created nothing


@pytest.mark.parametrize(("metadata", "ok"), [
    ({f"k{i}": "v" for i in range(16)}, True),
    ({f"k{i}": "v" for i in range(17)}, False),
    ({"k" * 64: "v" * 512}, True),
    ({"k" * 65: "v"}, False),
    ({"k": "v" * 513}, False),
])
def test_metadata_limits(server: FakeServer, metadata: dict[str, str], ok: bool) -> None:
    client = openai_client(server)
    if ok:
        assert submit(client, [openai_line(1)], metadata=metadata).metadata == metadata
        assert server.batches.created()[0].metadata == metadata
    else:
        with pytest.raises(openai.BadRequestError, match="metadata"):
            submit(client, [openai_line(1)], metadata=metadata)
        assert server.batches.created() == []


@pytest.mark.parametrize(("requests", "fragment"), [
    ([anthropic_request(1), anthropic_request(2, custom_id="s1")], "Duplicate custom_id"),
    ([anthropic_request(1, custom_id="has space")], "custom_id"),
    ([anthropic_request(1, custom_id="x" * 65)], "custom_id"),
    ([{"custom_id": "s1", "params": {"model": "m", "messages": [{"role": "user", "content": "q"}]}}], "max_tokens"),
    ([{"custom_id": "s1", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}}], "model"),
    ([{"custom_id": "s1", "params": {"model": "m", "max_tokens": 5}}], "messages"),
])
def test_anthropic_refuses_bad_requests(server: FakeServer, requests: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(anthropic.BadRequestError, match=fragment) as refused:
        anthropic_client(server).messages.batches.create(requests=requests)
    assert refused.value.response.json()["error"]["type"] == "invalid_request_error"
    assert server.batches.created() == []


def test_anthropic_request_and_byte_limits(server: FakeServer) -> None:
    client = anthropic_client(server)
    server.batches.anthropic_max_requests = 2
    with pytest.raises(anthropic.BadRequestError, match="at most 2"):
        submit_anthropic(client, range(3))
    assert submit_anthropic(client, range(2)).request_counts.processing == 2
    server.batches.anthropic_max_bytes = 100
    with pytest.raises(anthropic.APIStatusError) as too_big:
        submit_anthropic(client, range(2))
    assert too_big.value.status_code == 413
    assert len(server.batches.created()) == 1


# ---- listing --------------------------------------------------------------------------------


def test_listing_is_newest_first_and_pages(server: FakeServer) -> None:
    oa, an = openai_client(server), anthropic_client(server)
    openai_ids = [submit(oa, [openai_line(i)]).id for i in range(5)]
    anthropic_ids = [submit_anthropic(an, [i]).id for i in range(5)]

    first = oa.batches.list(limit=2)
    assert [b.id for b in first.data] == openai_ids[::-1][:2] and first.has_more
    before = server.batches.calls("list", api="openai")
    assert [b.id for b in oa.batches.list(limit=2)] == openai_ids[::-1]  # the SDK follows `after` over 3 pages
    assert server.batches.calls("list", api="openai") - before == 3
    last = oa.batches.list(limit=2, after=openai_ids[1])
    assert [b.id for b in last.data] == [openai_ids[0]] and not last.has_more

    page = an.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == anthropic_ids[::-1][:2] and page.has_more
    assert (page.first_id, page.last_id) == (anthropic_ids[4], anthropic_ids[3])
    assert [b.id for b in an.messages.batches.list(limit=2)] == anthropic_ids[::-1]
    newer = an.messages.batches.list(limit=2, before_id=anthropic_ids[1])
    assert [b.id for b in newer.data] == [anthropic_ids[3], anthropic_ids[2]] and newer.has_more
    assert [b.id for b in an.messages.batches.list(limit=10, before_id=anthropic_ids[1])] == anthropic_ids[:1:-1]


# ---- faults for crash tests -------------------------------------------------------------------


def test_hang_create_records_the_batch_the_client_never_hears_of(server: FakeServer) -> None:
    server.batches.hang_create = True
    oa, an = openai_client(server, timeout=0.5), anthropic_client(server, timeout=0.5)
    uploaded = upload(oa, [openai_line(1, custom_id="lost-1")])
    with pytest.raises(openai.APITimeoutError):
        oa.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                          metadata={"run": "r7"})
    with pytest.raises(anthropic.APITimeoutError):
        an.messages.batches.create(requests=[anthropic_request(2, custom_id="lost-2")])
    created = server.batches.created()
    assert [(b.api, b.custom_ids, b.metadata) for b in created] == [
        ("openai", ("lost-1",), {"run": "r7"}), ("anthropic", ("lost-2",), None)]
    assert server.batches.submitted("lost-1") == 1 and server.batches.total_items() == 2
    # The lost batches run on and can be found again by listing.
    server.batches.hang_create = False
    found = wait_for(lambda: oa.batches.list().data, lambda batches: batches[0].status == "completed")
    assert found[0].metadata == {"run": "r7"}
    assert an.messages.batches.list().data[0].id == created[1].id


def test_a_hung_call_does_not_hold_up_stopping_the_server() -> None:
    server = FakeServer(shutdown_timeout=5).start()
    try:
        server.batches.hang_create = True
        with pytest.raises(anthropic.APITimeoutError):
            anthropic_client(server, timeout=0.3).messages.batches.create(
                requests=[anthropic_request(1)])
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 2


def test_hang_results_and_hang_retrieve(server: FakeServer) -> None:
    oa, an = openai_client(server, timeout=0.5), anthropic_client(server, timeout=0.5)
    batch = openai_done(oa, submit(oa, [openai_line(1)]).id)
    message_batch = anthropic_done(an, submit_anthropic(an, [1]).id)
    server.batches.hang_results = True
    with pytest.raises(openai.APITimeoutError):
        oa.files.content(batch.output_file_id or "")
    with pytest.raises(anthropic.APITimeoutError):
        list(an.messages.batches.results(message_batch.id))
    assert oa.files.retrieve(batch.output_file_id or "").purpose == "batch_output"  # metadata still answers
    server.batches.hang_results, server.batches.hang_retrieve = False, True
    with pytest.raises(openai.APITimeoutError):
        oa.batches.retrieve(batch.id)
    server.batches.hang_retrieve = False
    assert len(file_lines(oa, batch.output_file_id)) == 1


def test_fail_create_answers_errors_and_creates_nothing(server: FakeServer) -> None:
    server.batches.fail_create(500, times=1)
    server.batches.fail_create(429, times=1, retry_after=2)
    oa, an = openai_client(server), anthropic_client(server)
    uploaded = upload(oa, [openai_line(1)])
    with pytest.raises(openai.InternalServerError):
        oa.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(anthropic.RateLimitError) as limited:
        submit_anthropic(an, [1])
    assert limited.value.response.headers["retry-after"] == "2"
    assert limited.value.response.json()["error"]["type"] == "rate_limit_error"
    assert server.batches.created() == [] and server.batches.calls("create") == 2
    assert submit_anthropic(an, [1]).processing_status == "in_progress"


def test_submitted_counts_every_batch(server: FakeServer) -> None:
    oa, an = openai_client(server), anthropic_client(server)
    submit(oa, [openai_line(1), openai_line(2)])
    submit_anthropic(an, [1])
    submit(oa, [openai_line(5), openai_line(6, custom_id="s5")])  # fails validation, but was submitted twice
    assert [server.batches.submitted(c) for c in ("s1", "s2", "s3", "s5")] == [2, 1, 0, 2]
    assert server.batches.total_items() == 5
    stats = raw_json(server, "/_fake/stats")["batches"]
    assert (stats["resubmitted"], stats["max_submitted"], stats["items"]) == (["s1", "s5"], 2, 5)


def test_the_standalone_server_serves_batches_and_reports_them() -> None:
    script = Path(__file__).with_name("fakeserver.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split()[1]
        client = anthropic.Anthropic(base_url=base_url, api_key="x", max_retries=0, timeout=10)
        batch = client.messages.batches.create(requests=[anthropic_request(i) for i in range(3)])
        ended = wait_for(lambda: client.messages.batches.retrieve(batch.id), lambda b: b.processing_status == "ended")
        assert ended.request_counts.succeeded == 3
        with urllib.request.urlopen(base_url + "/_fake/stats", timeout=10) as resp:
            stats = json.loads(resp.read())
        assert stats["request_count"] == 0
        assert stats["batches"]["created"] == 1 and stats["batches"]["items"] == 3
        assert stats["batches"]["statuses"] == {"ended": 1} and stats["batches"]["calls"]["create"] == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
