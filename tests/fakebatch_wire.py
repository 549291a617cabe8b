"""Wire formats and validation of the fake batch endpoints.

What the real APIs send back (``openai.types.Batch`` and ``FileObject``, an OpenAI output or
error file's lines, ``anthropic.types.messages.MessageBatch`` and its result lines) and what they
refuse: the checks of a create call, of an OpenAI input file's lines and of a Message Batch's
requests, and of the query parameters of the list calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from fakebatch_model import OPENAI_OPEN, Batch, BatchItem, Refused, StoredFile

OPENAI_ENDPOINT = "/v1/chat/completions"
"""The one ``endpoint`` (and line ``url``) the fake's OpenAI batches accept: the online endpoint it serves."""
_OPENAI_ENDPOINTS = frozenset({"/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                               "/v1/moderations", "/v1/images/generations", "/v1/images/edits"})
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DAY = 24 * 3600
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512


def file_json(stored: StoredFile) -> dict[str, Any]:
    """The file as ``openai.types.FileObject``."""
    return {"id": stored.id, "object": "file", "bytes": len(stored.content), "created_at": int(stored.created_at),
            "filename": stored.filename, "purpose": stored.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


def openai_batch_json(b: Batch) -> dict[str, Any]:
    """The batch as ``openai.types.Batch``."""
    counted = b.status not in ("validating", "failed")
    stamp = {name: _int_time(b.times.get(name)) for name in (
        "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
        "cancelled_at")}
    return {
        "id": b.id, "object": "batch", "endpoint": OPENAI_ENDPOINT, "model": b.model,
        "errors": {"object": "list", "data": b.errors} if b.status == "failed" else None,
        "input_file_id": b.input_file_id, "completion_window": "24h", "status": b.status,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": int(b.created_at), "expires_at": int(b.created_at) + _DAY, **stamp,
        "request_counts": {"total": len(b.items) if counted else 0, "completed": b.count("succeeded"),
                           "failed": b.count("errored")},
        "metadata": b.metadata, "usage": _openai_usage(b) if b.status not in OPENAI_OPEN else None,
    }


def _openai_usage(b: Batch) -> dict[str, Any]:
    usages = [item.answer.body["usage"] for item in b.items if item.answer is not None and item.answer.status == 200]
    prompt, completion = sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


def openai_result_lines(b: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines of the output file and of the error file of a batch that ended."""
    output: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for item in b.items:
        line: dict[str, Any] = {"id": item.line_id, "custom_id": item.custom_id, "response": None, "error": None}
        if item.answer is not None:
            line["response"] = {"status_code": item.answer.status, "request_id": item.answer.request_id,
                                "body": item.answer.body}
            (output if item.answer.status == 200 else failed).append(line)
        elif item.outcome in ("expired", "canceled"):
            code = "batch_expired" if item.outcome == "expired" else "batch_cancelled"
            reason = ("the batch expired before this request was run" if item.outcome == "expired"
                      else "the batch was cancelled before this request was run")
            line["error"] = {"code": code, "message": f"This request could not be executed: {reason}."}
            failed.append(line)
    return output, failed


def checked_openai_create(body: dict[str, Any]) -> tuple[str, dict[str, str] | None]:
    """The input file id and metadata of an OpenAI batch create call, refused (400) as the real API refuses them."""
    file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
    if body.get("completion_window") != "24h":
        raise Refused(400, "Invalid value for 'completion_window': only '24h' is supported.",
                      code="invalid_value")
    if endpoint not in _OPENAI_ENDPOINTS:
        raise Refused(400, f"Invalid value for 'endpoint': {endpoint!r}.", code="invalid_value")
    if endpoint != OPENAI_ENDPOINT:
        raise Refused(400, f"The fake server runs only {OPENAI_ENDPOINT} batches, not {endpoint}.",
                      code="invalid_value")
    metadata = _checked_metadata(body.get("metadata"))
    if not isinstance(file_id, str):
        raise Refused(400, "Missing required parameter: 'input_file_id'.", code="missing_required_parameter")
    return file_id, metadata


def _checked_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's metadata, refused (400) beyond 16 pairs, 64-character keys or 512-character values."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > _METADATA_PAIRS:
        raise Refused(400, f"Invalid 'metadata': at most {_METADATA_PAIRS} key-value pairs.", code="invalid_value")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY:
            raise Refused(400, f"Invalid 'metadata': key {key!r} is longer than {_METADATA_KEY} characters.",
                          code="invalid_value")
        if not isinstance(value, str) or len(value) > _METADATA_VALUE:
            raise Refused(400, f"Invalid 'metadata': the value of {key!r} must be a string of at most "
                          f"{_METADATA_VALUE} characters.", code="invalid_value")
    return dict(metadata)


def openai_lines(content: bytes, new_item: Callable[[str, dict[str, Any]], BatchItem], max_requests: int,
                 max_bytes: int) -> tuple[list[BatchItem], list[str], list[dict[str, Any]]]:
    """The items of an input file, every custom id it submits, and the problems validating finds.

    ``new_item`` makes an item; more than ``max_requests`` lines or ``max_bytes`` bytes is a problem too.
    """
    items: list[BatchItem] = []
    custom_ids: list[str] = []
    seen: set[str] = set()
    errors: list[dict[str, Any]] = []
    model: str | None = None
    lines = [(n, raw) for n, raw in enumerate(content.split(b"\n"), 1) if raw.strip()]
    for number, raw in lines:
        try:
            line = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            line = None
        if not isinstance(line, dict):
            errors.append(_line_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        custom_id, body = line.get("custom_id"), line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(_line_error("missing_required_parameter", "Missing required parameter: 'custom_id'.",
                                      number, "custom_id"))
            continue
        problem: tuple[str, str, str] | None = None
        if custom_id in seen:
            problem = ("duplicate_custom_id", "The custom_id for this request is a duplicate of another "
                       "request. The custom_id parameter must be unique for each request in a batch.", "custom_id")
        elif line.get("method") != "POST":
            problem = ("invalid_value", "The method must be 'POST'.", "method")
        elif line.get("url") != OPENAI_ENDPOINT:
            problem = ("invalid_url", "The URL provided for this request does not match the batch endpoint.",
                       "url")
        elif not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            problem = ("missing_required_parameter", "Missing required parameter: 'body.model'.", "body.model")
        elif model is not None and body["model"] != model:
            problem = ("mismatched_model", f"The model '{body['model']}' of this request differs from the model "
                       f"'{model}' of the batch's other requests; a batch uses one model.", "body.model")
        custom_ids.append(custom_id)
        seen.add(custom_id)
        if problem is not None:
            errors.append(_line_error(*problem[:2], number, problem[2]))
            continue
        assert isinstance(body, dict)
        model = body["model"]
        items.append(new_item(custom_id, body))
    if not lines:
        errors.append(_line_error("empty_file", "The input file has no requests.", None))
    if len(lines) > max_requests:
        errors.append(_line_error("too_many_requests", f"The input file has {len(lines)} requests; a batch "
                                  f"holds at most {max_requests}.", None))
    if len(content) > max_bytes:
        errors.append(_line_error("file_too_large", f"The input file has {len(content)} bytes; a batch "
                                  f"input file holds at most {max_bytes}.", None))
    return items, custom_ids, errors


def _line_error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "line": line, "param": param}


def anthropic_batch_json(b: Batch, base_url: str) -> dict[str, Any]:
    """The batch as ``anthropic.types.messages.MessageBatch``."""
    ended = b.status == "ended"
    counts = {outcome: b.count(outcome) if ended else 0
              for outcome in ("succeeded", "errored", "canceled", "expired")}
    return {
        "id": b.id, "type": "message_batch", "processing_status": b.status,
        "request_counts": {"processing": 0 if ended else len(b.items), **counts},
        "created_at": _rfc3339(b.created_at), "expires_at": _rfc3339(b.created_at + _DAY),
        "ended_at": _rfc3339(b.times.get("ended_at")), "archived_at": None,
        "cancel_initiated_at": _rfc3339(b.times.get("cancel_initiated_at")),
        "results_url": f"{base_url}/v1/messages/batches/{b.id}/results" if ended else None,
    }


def anthropic_result(item: BatchItem) -> dict[str, Any]:
    """The ``result`` of an item's line in a Message Batch's results."""
    if item.answer is None:
        return {"type": item.outcome}
    if item.answer.status == 200:
        return {"type": "succeeded", "message": item.answer.body}
    # A result's error carries no request id: the batch item was never a request of its own.
    return {"type": "errored", "error": {k: v for k, v in item.answer.body.items() if k != "request_id"}}


def checked_anthropic_requests(body: dict[str, Any], max_requests: int) -> list[dict[str, Any]]:
    """The requests of a Message Batch create call, refused (400) as the real API refuses them."""
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise Refused(400, "requests: Field required (a non-empty list)")
    if len(requests) > max_requests:
        raise Refused(400, f"requests: {len(requests)} requests; a Message Batch holds at most {max_requests}.")
    seen: set[str] = set()
    for i, entry in enumerate(requests):
        _check_anthropic_request(i, entry, seen)
    return requests


def _check_anthropic_request(i: int, entry: Any, seen: set[str]) -> None:
    """Refuse a Message Batch whose request ``i`` the real API would refuse (400)."""
    if not isinstance(entry, dict):
        raise Refused(400, f"requests.{i}: Input should be an object")
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
        raise Refused(400, f"requests.{i}.custom_id: String should match pattern '{_CUSTOM_ID.pattern}'")
    if custom_id in seen:
        raise Refused(400, f"requests.{i}.custom_id: Duplicate custom_id '{custom_id}'; each custom_id must be "
                      "unique within a Message Batch.")
    seen.add(custom_id)
    params = entry.get("params")
    if not isinstance(params, dict):
        raise Refused(400, f"requests.{i}.params: Field required")
    if not isinstance(params.get("model"), str) or not params["model"]:
        raise Refused(400, f"requests.{i}.params.model: Field required")
    if not isinstance(params.get("max_tokens"), int):
        raise Refused(400, f"requests.{i}.params.max_tokens: Field required")
    if not isinstance(params.get("messages"), list) or not params["messages"]:
        raise Refused(400, f"requests.{i}.params.messages: Field required (a non-empty list)")


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's body, refused (400) unless it is a JSON object."""
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise Refused(400, "We could not parse the JSON body of your request: expected a JSON object.")
    return body


def int_query(request: web.Request, name: str, default: int, most: int) -> int:
    """Query parameter ``name`` (``default`` when absent), refused (400) unless an integer from 1 to ``most``."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise Refused(400, f"Invalid '{name}': an integer from 1 to {most}.")
    return int(raw)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    """``lines`` as a JSONL file's content."""
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _int_time(t: float | None) -> int | None:
    return None if t is None else int(t)


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
