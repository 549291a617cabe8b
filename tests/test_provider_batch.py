"""The providers' batch API adapters (OpenAI's Batch API, Anthropic's Message Batches): the wire
helpers on lines in the official formats, each to the exact result, and what a batch may hold.
Through the real SDKs against the fake server: test_provider_batch_sdk.py.
"""

from __future__ import annotations

import orjson
import pytest

from evalledger.providers import (
    BatchCounts,
    BatchInfo,
    BatchItem,
    BatchLimits,
    BatchResult,
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    ErrorKind,
    make_provider,
    supports_batch,
)
from evalledger.providers import anthropic as anthropic_wire
from evalledger.providers import openai as openai_wire
from evalledger.providers.batch import check_batch, check_metadata, jsonl_objects

# ---- OpenAI: lines of a batch's output and error files ----------------------------------------

OPENAI_SUCCESS = {
    "id": "batch_req_wnaDys", "custom_id": "s1-t1",
    "response": {"status_code": 200, "request_id": "req_c187b3", "body": {
        "id": "chatcmpl-9758Iw", "object": "chat.completion", "created": 1711475054, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 4."},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 22, "completion_tokens": 6, "total_tokens": 28},
        "system_fingerprint": "fp_3ba"}},
    "error": None,
}


def _openai_error_line(status: int, error_type: str, message: str) -> dict:
    return {"id": "batch_req_456", "custom_id": "s2-t1",
            "response": {"status_code": status, "request_id": "req_789",
                         "body": {"error": {"message": message, "type": error_type, "param": None, "code": None}}},
            "error": None}


def test_openai_success_line_is_the_online_response():
    assert openai_wire.batch_line_result(OPENAI_SUCCESS) == BatchResult("s1-t1", response=ChatResponse(
        text="The answer is 4.", input_tokens=22, output_tokens=6, request_id="req_c187b3", finish_reason="stop",
        model="gpt-4o-mini"))
    # the same body parsed as an online reply (the request id from its header) reads the same
    body = OPENAI_SUCCESS["response"]["body"]
    assert openai_wire.chat_completion_response(body, "req_c187b3") == \
        openai_wire.batch_line_result(OPENAI_SUCCESS).response


def test_openai_success_line_without_a_request_id_falls_back_to_the_completion_id():
    line = {**OPENAI_SUCCESS, "response": {**OPENAI_SUCCESS["response"], "request_id": None}}
    assert openai_wire.batch_line_result(line).response.request_id == "chatcmpl-9758Iw"


def test_openai_error_line_400_is_a_sample_error():
    line = _openai_error_line(400, "invalid_request_error", "Invalid value for 'max_tokens'.")
    assert openai_wire.batch_line_result(line) == BatchResult("s2-t1", error=ErrorInfo(
        ErrorKind.SAMPLE, "invalid_request_error", "HTTP 400: Invalid value for 'max_tokens'.", 400, None, "req_789"))


def test_openai_error_line_500_is_transient():
    line = _openai_error_line(500, "server_error", "The server had an error while processing your request.")
    assert openai_wire.batch_line_result(line) == BatchResult("s2-t1", error=ErrorInfo(
        ErrorKind.TRANSIENT, "server_error", "HTTP 500: The server had an error while processing your request.",
        500, None, "req_789"))


def test_openai_error_line_401_inside_a_batch_is_never_fatal():
    line = _openai_error_line(401, "invalid_request_error", "Incorrect API key provided.")
    assert openai_wire.batch_line_result(line).error.kind is ErrorKind.SAMPLE


@pytest.mark.parametrize("code", ["batch_expired", "batch_cancelled"])
def test_openai_expired_or_cancelled_line_is_unfinished(code):
    line = {"id": "batch_req_123", "custom_id": "s3-t2", "response": None,
            "error": {"code": code, "message": "This request could not be executed before the completion window "
                                               "expired."}}
    assert openai_wire.batch_line_result(line) == BatchResult("s3-t2", unfinished=True)


def test_openai_error_without_a_response_is_a_sample_error():
    line = {"id": "batch_req_1", "custom_id": "s4", "response": None,
            "error": {"code": "invalid_json_line", "message": "This line is not parseable as valid JSON."}}
    assert openai_wire.batch_line_result(line) == BatchResult("s4", error=ErrorInfo(
        ErrorKind.SAMPLE, "invalid_json_line", "This line is not parseable as valid JSON."))


def test_openai_line_without_a_custom_id_is_skipped_and_odd_fields_read_empty():
    assert openai_wire.batch_line_result({"response": OPENAI_SUCCESS["response"]}) is None
    odd = {"custom_id": "s5", "response": {"status_code": 200, "body": {"choices": "no", "usage": None}}}
    assert openai_wire.batch_line_result(odd) == BatchResult("s5", response=ChatResponse(
        text="", input_tokens=0, output_tokens=0))


def test_openai_batch_object_as_info():
    failed = {"id": "batch_abc", "object": "batch", "endpoint": "/v1/chat/completions", "status": "failed",
              "errors": {"object": "list", "data": [
                  {"code": "invalid_request", "message": "Model not found.", "param": None, "line": 3},
                  {"code": "too_many_requests", "message": None, "param": None, "line": None}]},
              "input_file_id": "file-1", "completion_window": "24h", "created_at": 1711471533,
              "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": {"evalledger_run": "r1"}}
    assert openai_wire.batch_info(failed) == BatchInfo(
        "batch_abc", "failed", True, BatchCounts(0, 0, 0, 0), 1711471533.0, {"evalledger_run": "r1"},
        "Model not found. (line 3); too_many_requests")
    running = {**failed, "status": "in_progress", "errors": None, "metadata": None,
               "request_counts": {"total": 10, "completed": 6, "failed": 1}}
    assert openai_wire.batch_info(running) == BatchInfo(
        "batch_abc", "in_progress", False, BatchCounts(10, 6, 1, 3), 1711471533.0, {})
    expired = {**running, "status": "expired"}
    assert openai_wire.batch_info(expired).counts == BatchCounts(10, 6, 1, 0, expired=3)
    cancelled = {**running, "status": "cancelled"}
    assert openai_wire.batch_info(cancelled).counts == BatchCounts(10, 6, 1, 0, canceled=3)
    assert openai_wire.batch_info({"id": "b"}) == BatchInfo("b", "unknown", False, BatchCounts(0, 0, 0, 0), 0.0, {})


def test_openai_sdk_batch_model_as_info():
    from openai.types import Batch

    batch = Batch.construct(id="batch_1", status="finalizing", created_at=1700000000,
                            request_counts={"total": 2, "completed": 2, "failed": 0}, metadata={"k": "v"})
    assert openai_wire.batch_info(batch) == BatchInfo(
        "batch_1", "finalizing", False, BatchCounts(2, 2, 0, 0), 1700000000.0, {"k": "v"})


# ---- Anthropic: lines of a Message Batch's results --------------------------------------------

ANTHROPIC_SUCCESS = {"custom_id": "s1-t1", "result": {"type": "succeeded", "message": {
    "id": "msg_014VwiXbi91y3JMjcpyGBHX5", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Hello again! "}, {"type": "text", "text": "#### 4"}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 36}}}}


def _anthropic_errored(error_type: str, message: str) -> dict:
    return {"custom_id": "s2-t1", "result": {"type": "errored", "error": {
        "type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_011CS"}}}


def test_anthropic_succeeded_is_the_online_response():
    assert anthropic_wire.batch_line_result(ANTHROPIC_SUCCESS) == BatchResult("s1-t1", response=ChatResponse(
        text="Hello again! #### 4", input_tokens=11, output_tokens=36, request_id="msg_014VwiXbi91y3JMjcpyGBHX5",
        finish_reason="end_turn", model="claude-sonnet-4-5"))


def test_anthropic_errored_invalid_request_is_a_sample_error():
    line = _anthropic_errored("invalid_request_error", "max_tokens: Field required")
    assert anthropic_wire.batch_line_result(line) == BatchResult("s2-t1", error=ErrorInfo(
        ErrorKind.SAMPLE, "invalid_request_error", "max_tokens: Field required", None, None, "req_011CS"))


@pytest.mark.parametrize("error_type", ["api_error", "overloaded_error"])
def test_anthropic_errored_api_error_is_transient(error_type):
    line = _anthropic_errored(error_type, "Internal server error")
    assert anthropic_wire.batch_line_result(line) == BatchResult("s2-t1", error=ErrorInfo(
        ErrorKind.TRANSIENT, error_type, "Internal server error", None, None, "req_011CS"))


@pytest.mark.parametrize("kind", ["expired", "canceled"])
def test_anthropic_expired_or_canceled_is_unfinished(kind):
    assert anthropic_wire.batch_line_result({"custom_id": "s9", "result": {"type": kind}}) == \
        BatchResult("s9", unfinished=True)


def test_anthropic_odd_lines():
    assert anthropic_wire.batch_line_result({"result": {"type": "expired"}}) is None
    unknown = anthropic_wire.batch_line_result({"custom_id": "s1", "result": {"type": "later"}})
    assert unknown.error.kind is ErrorKind.SAMPLE and "'later'" in unknown.error.message


def test_anthropic_message_batch_as_info():
    ended = {"id": "msgbatch_013Zva", "type": "message_batch", "processing_status": "ended",
             "request_counts": {"processing": 0, "succeeded": 5, "errored": 1, "canceled": 2, "expired": 3},
             "ended_at": "2024-09-25T18:37:21.432Z", "created_at": "2024-09-24T18:37:24.100435Z",
             "expires_at": "2024-09-25T18:37:24.100435Z", "results_url": "https://api.anthropic.com/v1/x/results"}
    assert anthropic_wire.batch_info(ended) == BatchInfo(
        "msgbatch_013Zva", "ended", True, BatchCounts(11, 5, 1, 0, expired=3, canceled=2), 1727203044.100435, {})
    running = {**ended, "processing_status": "in_progress",
               "request_counts": {"processing": 4, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}}
    assert anthropic_wire.batch_info(running) == BatchInfo(
        "msgbatch_013Zva", "in_progress", False, BatchCounts(4, 0, 0, 4), 1727203044.100435, {})


# ---- what a batch may hold ---------------------------------------------------------------------

REQUEST = ChatRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                      model="m", temperature=0.0, max_tokens=16, seed=7)


@pytest.mark.parametrize("custom_id", ["", "a" * 65, "has space", "s1/t1", "é"])
def test_a_bad_custom_id_is_refused(custom_id):
    with pytest.raises(ValueError, match="custom_id"):
        BatchItem(custom_id, REQUEST)


def test_a_batch_past_its_limits_is_refused():
    items = [BatchItem(f"s{i}", REQUEST) for i in range(3)]
    limits = BatchLimits(max_requests=3, max_bytes=30)
    check_batch(items, [10, 10, 10], limits)
    with pytest.raises(ValueError, match="at least one"):
        check_batch([], [], limits)
    with pytest.raises(ValueError, match="at most 2"):
        check_batch(items, [1, 1, 1], BatchLimits(2, 30))
    with pytest.raises(ValueError, match="31 bytes"):
        check_batch(items, [10, 10, 10], limits, overhead=1)
    with pytest.raises(ValueError, match="twice"):
        check_batch([*items, BatchItem("s1", REQUEST)], [1] * 4, BatchLimits(9, 99))
    with pytest.raises(ValueError, match="17 pairs"):
        check_metadata({f"k{i}": "v" for i in range(17)})
    with pytest.raises(ValueError, match="up to 512"):
        check_metadata({"k": "v" * 513})


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-x"])
def test_item_bytes_are_what_create_sends(model):
    provider = make_provider(model, api_key="k", base_url="http://127.0.0.1:9")
    item = BatchItem("s1-t1", REQUEST)
    body = provider.request_body(REQUEST)
    if model.startswith("openai/"):
        line = openai_wire.batch_line("s1-t1", body)
        assert provider.batch_item_bytes(item) == len(line) and line.endswith(b"\n")
        assert jsonl_objects(line) == [{"custom_id": "s1-t1", "method": "POST", "url": "/v1/chat/completions",
                                        "body": body}]
    else:
        assert provider.batch_item_bytes(item) == len(orjson.dumps({"custom_id": "s1-t1", "params": body})) + 1


def test_which_providers_support_batch():
    assert supports_batch(make_provider("openai/gpt-4o-mini", api_key="k"))
    assert supports_batch(make_provider("anthropic/claude-x", api_key="k"))
    assert not supports_batch(make_provider("vllm/llama"))
    assert not supports_batch(make_provider("my-model", base_url="http://127.0.0.1:9/v1"))
