"""Tests of the fake LLM API server itself, driven through the real OpenAI and Anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from fakeserver import ANTHROPIC_PATH, OPENAI_PATH, FakeServer, answer_from_marker


def openai_client(server: FakeServer, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0, timeout=timeout)


def anthropic_client(server: FakeServer, timeout: float = 10.0) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key="x", max_retries=0, timeout=timeout
    )


def ask_openai(client: openai.OpenAI, text: str) -> Any:
    return client.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": text}])


def ask_anthropic(client: anthropic.Anthropic, text: str) -> Any:
    return client.messages.create(
        model="claude-fake", max_tokens=64, messages=[{"role": "user", "content": text}]
    )


def post_raw(url: str, payload: bytes) -> tuple[int, dict[str, Any]]:
    """POST bytes without any SDK, to send bodies the SDKs refuse to build."""
    request = urllib.request.Request(url, data=payload, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ---- normal completions ---------------------------------------------------------------------


def test_openai_completion_has_content_usage_and_request_id(fake_server: FakeServer) -> None:
    resp = ask_openai(openai_client(fake_server), "What is 6 * 7? [[ANSWER:17]]")

    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-fake"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "The answer is 17.\n#### 17"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens >= 1 and resp.usage.completion_tokens >= 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp._request_id == "req_1"


def test_anthropic_completion_has_content_usage_and_request_id(fake_server: FakeServer) -> None:
    msg = ask_anthropic(anthropic_client(fake_server), "Natalia sold clips. [[ANSWER:72]]")

    assert msg.id.startswith("msg_")
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-fake"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "The answer is 72.\n#### 72"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens >= 1 and msg.usage.output_tokens >= 1
    assert msg._request_id == "req_1"


def test_usage_grows_with_prompt_and_reply_length(fake_server: FakeServer) -> None:
    client = openai_client(fake_server)
    short = ask_openai(client, "hi")
    long = ask_openai(client, "hi " * 200 + "[[ANSWER:" + "9" * 100 + "]]")
    assert long.usage.prompt_tokens > short.usage.prompt_tokens
    assert long.usage.completion_tokens > short.usage.completion_tokens


def test_default_responder_without_marker_ends_with_42(fake_server: FakeServer) -> None:
    resp = ask_openai(openai_client(fake_server), "Janet's ducks lay 16 eggs per day...")
    assert resp.choices[0].message.content.endswith("#### 42")


def test_answer_from_marker_uses_latest_user_marker() -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Q [[ANSWER: 5 ]]"}]},
            {"role": "assistant", "content": "[[ANSWER:wrong]]"},
            {"role": "user", "content": "Check your answer."},
        ]
    }
    assert answer_from_marker(body) == "The answer is 5.\n#### 5"
    assert answer_from_marker({"messages": [{"role": "user", "content": "no marker"}]}) == "#### 42"


def test_custom_responder_sees_request_body() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body)
        return f"echo {body['messages'][-1]['content']}"

    with FakeServer(responder=responder) as server:
        resp = ask_openai(openai_client(server), "ping")
        msg = ask_anthropic(anthropic_client(server), "pong")
    assert resp.choices[0].message.content == "echo ping"
    assert msg.content[0].text == "echo pong"
    assert [b["model"] for b in seen] == ["gpt-fake", "claude-fake"]


def test_responder_exception_becomes_500() -> None:
    def broken(body: dict[str, Any]) -> str:
        raise KeyError("boom")

    with FakeServer(responder=broken) as server:
        with pytest.raises(openai.InternalServerError, match="boom"):
            ask_openai(openai_client(server), "hi")


# ---- injected status errors -----------------------------------------------------------------


def test_openai_429_carries_retry_after_headers(fake_server: FakeServer) -> None:
    client = openai_client(fake_server)
    fake_server.fail_next(1, status=429, retry_after=2, retry_after_ms=1500)

    with pytest.raises(openai.RateLimitError) as info:
        ask_openai(client, "hi")

    err = info.value
    assert err.response.headers["retry-after"] == "2"
    assert err.response.headers["retry-after-ms"] == "1500"
    assert err.request_id == "req_1"
    assert err.code == "rate_limit_exceeded"
    # Only the next one failed: the SDK client and the server carry on.
    assert ask_openai(client, "hi").choices[0].message.content == "#### 42"


def test_fractional_retry_after_and_no_header_by_default(fake_server: FakeServer) -> None:
    client = openai_client(fake_server)
    fake_server.fail_next(2, status=429, retry_after=0.25)
    fake_server.fail_next(1, status=429)
    for expected in ("0.25", "0.25", None):
        with pytest.raises(openai.RateLimitError) as info:
            ask_openai(client, "hi")
        assert info.value.response.headers.get("retry-after") == expected


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "invalid_request_error"),
        (403, openai.PermissionDeniedError, "invalid_request_error"),
        (404, openai.NotFoundError, "invalid_request_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
def test_openai_status_errors_map_to_sdk_classes(
    fake_server: FakeServer, status: int, error_class: type[openai.APIStatusError], error_type: str
) -> None:
    fake_server.fail_next(1, status=status)
    with pytest.raises(error_class) as info:
        ask_openai(openai_client(fake_server), "hi")
    assert info.value.status_code == status
    assert info.value.type == error_type
    assert isinstance(info.value.message, str) and info.value.message


def test_openai_error_overrides(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, status=429, code="insufficient_quota", error_type="insufficient_quota",
                          message="You exceeded your current quota.")
    with pytest.raises(openai.RateLimitError) as info:
        ask_openai(openai_client(fake_server), "hi")
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"
    assert "exceeded your current quota" in info.value.message


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_status_errors_map_to_sdk_classes(
    fake_server: FakeServer, status: int, error_class: type[anthropic.APIStatusError], error_type: str
) -> None:
    fake_server.fail_next(1, status=status, retry_after=3)
    with pytest.raises(error_class) as info:
        ask_anthropic(anthropic_client(fake_server), "hi")
    err = info.value
    assert err.status_code == status
    assert err.type == error_type
    assert err.api_message
    assert err.request_id == "req_1"
    assert err.response.headers["retry-after"] == "3"


def test_anthropic_529_is_an_internal_server_error(fake_server: FakeServer) -> None:
    # Retry logic that catches InternalServerError must also see overload.
    fake_server.fail_next(1, status=529)
    with pytest.raises(anthropic.InternalServerError) as info:
        ask_anthropic(anthropic_client(fake_server), "hi")
    assert isinstance(info.value, anthropic.OverloadedError)


def test_fail_always_until_cleared(fake_server: FakeServer) -> None:
    client = openai_client(fake_server)
    fake_server.fail_always(status=401)
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            ask_openai(client, "hi")
    fake_server.clear_faults()
    assert ask_openai(client, "hi").choices[0].message.content == "#### 42"
    assert fake_server.status_counts() == {401: 3, 200: 1}


def test_fail_next_takes_precedence_and_queues(fake_server: FakeServer) -> None:
    client = openai_client(fake_server)
    fake_server.fail_always(status=401)
    fake_server.fail_next(1, status=500)
    fake_server.fail_next(1, status=429)
    with pytest.raises(openai.InternalServerError):
        ask_openai(client, "hi")
    with pytest.raises(openai.RateLimitError):
        ask_openai(client, "hi")
    with pytest.raises(openai.AuthenticationError):
        ask_openai(client, "hi")


def test_fail_rate_is_seeded_and_bounded() -> None:
    def outcomes(seed: int) -> list[bool]:
        with FakeServer() as server:
            server.fail_rate(0.5, status=500, seed=seed)
            client = openai_client(server)
            results = []
            for _ in range(40):
                try:
                    ask_openai(client, "hi")
                    results.append(True)
                except openai.InternalServerError:
                    results.append(False)
            return results

    first = outcomes(seed=0)
    assert 5 < first.count(False) < 35
    assert outcomes(seed=0) == first
    assert outcomes(seed=1) != first

    with FakeServer() as server:
        server.fail_rate(1.0, status=503)
        with pytest.raises(openai.InternalServerError):
            ask_openai(openai_client(server), "hi")
        server.fail_rate(0.0)
        assert ask_openai(openai_client(server), "hi").choices


def test_fail_when_hits_only_matching_requests(fake_server: FakeServer) -> None:
    client = openai_client(fake_server)
    fake_server.fail_when("sample-bad", status=400, message="context length exceeded")

    for _ in range(2):
        with pytest.raises(openai.BadRequestError, match="context length exceeded"):
            ask_openai(client, "question sample-bad")
    assert ask_openai(client, "question sample-good").choices[0].message.content == "#### 42"
    assert fake_server.count_for("sample-bad") == 2
    assert fake_server.count_for("sample-bad", status=200) == 0
    assert fake_server.count_for("sample-good", status=200) == 1


def test_fail_when_times_limits_failures(fake_server: FakeServer) -> None:
    client = anthropic_client(fake_server)
    fake_server.fail_when("flaky", status=529, times=2)
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            ask_anthropic(client, "flaky one")
    assert ask_anthropic(client, "flaky one").content[0].text == "#### 42"


def test_invalid_fault_arguments_are_rejected(fake_server: FakeServer) -> None:
    with pytest.raises(ValueError):
        fake_server.fail_next(1, kind="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fake_server.fail_next(1, status=200)
    with pytest.raises(ValueError):
        fake_server.fail_rate(1.5)


# ---- connection-level faults ----------------------------------------------------------------


def test_reset_raises_connection_error_in_both_sdks(fake_server: FakeServer) -> None:
    fake_server.fail_next(2, kind="reset")

    with pytest.raises(openai.APIConnectionError) as oinfo:
        ask_openai(openai_client(fake_server), "hi")
    assert not isinstance(oinfo.value, openai.APITimeoutError)

    with pytest.raises(anthropic.APIConnectionError) as ainfo:
        ask_anthropic(anthropic_client(fake_server), "hi")
    assert not isinstance(ainfo.value, anthropic.APITimeoutError)

    # The server survives and the faulted requests are counted, with no status sent.
    assert ask_openai(openai_client(fake_server), "hi").choices
    assert [(r.fault, r.status) for r in fake_server.requests] == [
        ("reset", None),
        ("reset", None),
        (None, 200),
    ]


def test_hang_until_client_timeout(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, kind="hang")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask_openai(openai_client(fake_server, timeout=0.5), "hi")
    assert 0.4 < time.monotonic() - started < 5

    fake_server.fail_next(1, kind="hang")
    with pytest.raises(anthropic.APITimeoutError):
        ask_anthropic(anthropic_client(fake_server, timeout=0.5), "hi")

    # The client hung up, so the server stops working on those requests.
    deadline = time.monotonic() + 5
    while fake_server.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake_server.in_flight == 0
    assert fake_server.request_count == 2


def test_short_hang_then_answers(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, kind="hang", hang_seconds=0.3)
    started = time.monotonic()
    resp = ask_openai(openai_client(fake_server), "hi")
    assert time.monotonic() - started >= 0.3
    assert resp.choices[0].message.content == "#### 42"


def test_stop_does_not_wait_for_hanging_requests() -> None:
    server = FakeServer().start()
    server.fail_next(1, kind="hang")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ask_openai(openai_client(server, timeout=30), "hi")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    caller.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)
    server.stop()  # idempotent


# ---- counting, latency, concurrency ---------------------------------------------------------


def test_request_counting_and_count_for(fake_server: FakeServer) -> None:
    oclient, aclient = openai_client(fake_server), anthropic_client(fake_server)
    fake_server.fail_next(1, status=429)
    with pytest.raises(openai.RateLimitError):
        ask_openai(oclient, "sample-1 [[ANSWER:1]]")
    ask_openai(oclient, "sample-1 [[ANSWER:1]]")
    ask_anthropic(aclient, "sample-2 [[ANSWER:2]]")
    aclient.messages.create(
        model="claude-fake",
        max_tokens=16,
        system="You are sample-3's grader.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "block sample-4"}]}],
    )

    assert fake_server.request_count == 4
    assert fake_server.count_for("sample-1") == 2
    assert fake_server.count_for("sample-1", status=200) == 1
    assert fake_server.count_for("sample-2") == 1
    assert fake_server.count_for("sample-3") == 1  # Anthropic system prompt is searched too
    assert fake_server.count_for("sample-4") == 1
    assert fake_server.count_for("sample-9") == 0

    records = fake_server.requests
    assert [r.path for r in records] == [OPENAI_PATH, OPENAI_PATH, ANTHROPIC_PATH, ANTHROPIC_PATH]
    assert [r.status for r in records] == [429, 200, 200, 200]
    assert [r.request_id for r in records] == ["req_1", "req_2", "req_3", "req_4"]
    assert records[0].body["messages"][0]["content"] == "sample-1 [[ANSWER:1]]"
    assert "anthropic-version" in records[2].headers  # header names are lower-cased
    # SDK retries are off, as the project requires.
    assert all(r.headers["x-stainless-retry-count"] == "0" for r in records)

    fake_server.clear_requests()
    assert fake_server.request_count == 0
    assert ask_openai(oclient, "again")._request_id == "req_5"


def test_invalid_bodies_get_api_shaped_400s(fake_server: FakeServer) -> None:
    status, body = post_raw(fake_server.base_url + OPENAI_PATH, b"{not json")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"

    no_max_tokens = json.dumps({"model": "c", "messages": [{"role": "user", "content": "x"}]})
    status, body = post_raw(fake_server.base_url + ANTHROPIC_PATH, no_max_tokens.encode())
    assert status == 400
    assert body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}

    assert fake_server.request_count == 2
    assert fake_server.status_counts() == {400: 2}


def test_latency_is_applied_and_settable_at_runtime() -> None:
    with FakeServer(latency=0.3) as server:
        client = openai_client(server)
        started = time.monotonic()
        ask_openai(client, "hi")
        assert time.monotonic() - started >= 0.3

        server.latency = 0.0
        started = time.monotonic()
        ask_openai(client, "hi")
        assert time.monotonic() - started < 0.25


def test_hundreds_of_concurrent_requests() -> None:
    concurrency = 300
    latency = 0.5

    async def burst(server: FakeServer) -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
        async with client:
            responses = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="gpt-fake",
                        messages=[{"role": "user", "content": f"[[ANSWER:{i}]]"}],
                    )
                    for i in range(concurrency)
                )
            )
        return [r.choices[0].message.content for r in responses]

    with FakeServer(latency=latency) as server:
        started = time.monotonic()
        answers = asyncio.run(burst(server))
        elapsed = time.monotonic() - started
        assert answers == [f"The answer is {i}.\n#### {i}" for i in range(concurrency)]
        assert server.request_count == concurrency
        # Served in parallel, not one after another.
        assert server.peak_in_flight >= concurrency // 2
        assert elapsed < latency * 40  # serial handling would take 300 × latency; slack for a loaded machine


# ---- standalone process ---------------------------------------------------------------------


def test_runs_as_a_separate_process() -> None:
    script = Path(__file__).with_name("fakeserver.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--latency", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:")
        base_url = line.split()[1]

        client = openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=10)
        for _ in range(3):
            assert client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "abc"}]
            ).choices
        with urllib.request.urlopen(base_url + "/_fake/stats?contains=abc", timeout=10) as resp:
            stats = json.loads(resp.read())
        assert stats["request_count"] == 3
        assert stats["count_for"] == 3
        assert stats["status_counts"] == {"200": 3}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == ""  # nothing after READY: no per-request logging
