"""The SDK clients use the aiohttp transport, with a pool as large as the run's concurrency."""

from __future__ import annotations

import asyncio

import pytest
from helpers import all_records, run_config, write_qa_dataset

from evalledger.providers import make_provider
from evalledger.run import run_experiment


@pytest.mark.parametrize("model", ["openai/x", "anthropic/x"])
def test_provider_uses_the_aiohttp_transport_sized_to_concurrency(model):
    async def build():
        provider = make_provider(model, base_url="http://127.0.0.1:9", api_key="k", concurrency=300)
        try:
            http = provider._client._client  # the SDK client's transport-level client
            return type(http).__mro__, http._transport.limits.max_keepalive_connections
        finally:
            await provider.aclose()

    mro, keepalive = asyncio.run(build())
    assert any("Aiohttp" in cls.__name__ for cls in mro)
    assert keepalive >= 300  # else requests past the pool's idle limit would reconnect each time


def test_openai_requests_carry_auth_and_exactly_our_fields(fake_server, tmp_path):
    """The lean request path (``post_json``) still sends the SDK's auth header and a body of
    exactly the fields evalledger sets, for one-turn and multi-turn (self-correct) requests."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", task="self-correct", top_p=0.9, seed=7))
    assert s.exit_code == 0 and s.ok == 2
    reqs = fake_server.requests
    assert len(reqs) == 4  # the answer, then the review and final answer, for each sample
    for r in reqs:
        assert r.headers["authorization"] == "Bearer sk-test"
        assert set(r.body) == {"model", "messages", "temperature", "max_tokens", "top_p", "seed"}
        assert r.body["model"] == "test-model" and r.body["top_p"] == 0.9 and r.body["seed"] == 7
    assert max(len(r.body["messages"]) for r in reqs) >= 4  # the review turn carries the conversation
    ids = sorted(i for r in all_records(s.run_dir) for i in r["request_ids"])
    assert ids == ["req_1", "req_2", "req_3", "req_4"]  # from the x-request-id header


def test_the_sdk_transform_we_skip_is_a_no_op_for_our_requests(fake_server, tmp_path):
    """``post_json`` skips ``openai``'s request transform because it changes nothing for the
    requests evalledger builds. If a future SDK starts renaming or reformatting any of these
    fields, this fails and the lean path must go back to ``chat.completions.create``."""
    from openai._utils import transform
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", task="self-correct", top_p=0.5))
    assert s.ok == 2
    for r in fake_server.requests:
        assert transform(r.body, CompletionCreateParamsNonStreaming) == r.body


@pytest.mark.parametrize("model", ["openai/test-model", "anthropic/claude-test"])
def test_a_200_reply_that_is_not_json_is_a_sample_error(fake_server, tmp_path, model):
    """A broken proxy answering 200 with an HTML page: that sample is an error record naming the
    problem, the other samples finish, the run ends incomplete (exit 1) and a resume retries it."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    fake_server.fail_next(1, kind="garbage")
    base_url = fake_server.anthropic_base_url if model.startswith("anthropic/") else fake_server.openai_base_url
    s = run_experiment(run_config(fake_server, data, out, model=model, concurrency=1, base_url=base_url))
    assert (s.ok, s.errors, s.exit_code) == (2, 1, 1)
    errors = [r for r in all_records(s.run_dir) if r["status"] == "error"]
    assert len(errors) == 1
    assert errors[0]["error"]["type"] == "APIResponseValidationError", errors[0]["error"]
    assert "is not JSON" in errors[0]["error"]["message"] and "502 upstream error" in errors[0]["error"]["message"]
    s2 = run_experiment(run_config(fake_server, data, out, model=model, concurrency=1, base_url=base_url,
                                   resume=True))
    assert (s2.ok, s2.errors, s2.exit_code) == (1, 0, 0)


def test_anthropic_requests_carry_the_sdk_headers_and_our_fields(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", model="anthropic/claude-test",
                                  base_url=fake_server.anthropic_base_url))
    assert s.exit_code == 0 and s.ok == 2
    for r in fake_server.requests:
        # anthropic SDK 2.x sends the API key as a bearer token (it used to be x-api-key)
        assert r.headers["authorization"] == "Bearer sk-test" and r.headers.get("anthropic-version")
        assert set(r.body) == {"model", "messages", "max_tokens", "system"}
        assert [m["role"] for m in r.body["messages"]] == ["user"]
    recs = all_records(s.run_dir)
    assert all(r["usage"]["input_tokens"] > 0 and r["usage"]["output_tokens"] > 0 for r in recs)
    assert sorted(r["request_ids"][0] for r in recs) == ["req_1", "req_2"]  # the request-id header
