"""What a request is to the caches that answer it without sending it: its body (the one definition
the turn cache's ``call_key`` and the response cache's key both hash), the response cache's key, and
the conversion of an answer to and from what that cache stores."""

from __future__ import annotations

import hashlib
from typing import Any

from evalledger.fsio import canonical_json
from evalledger.providers import ChatRequest, ChatResponse
from evalledger.response_cache import CachedAnswer, request_key


def request_body(request: ChatRequest) -> dict[str, Any]:
    """Everything of a request that determines its answer: the ``--model`` string (which names the
    provider), the messages and every generation parameter, the seed included."""
    return {"messages": request.messages, "model": request.model, "temperature": request.temperature,
            "max_tokens": request.max_tokens, "seed": request.seed, "top_p": request.top_p}


def call_key(request: ChatRequest) -> str:
    """The turn cache's key of one model call (32 hex digits): the same body, the same answer to reuse."""
    return hashlib.sha256(canonical_json(request_body(request)).encode()).hexdigest()[:32]


def cache_key(endpoint: str, epoch: int, request: ChatRequest) -> str:
    """The response cache's key of ``request`` sent to ``endpoint`` for repeat ``epoch`` of its sample."""
    return request_key(endpoint=endpoint, epoch=epoch, request=request_body(request))


def answer_of(resp: ChatResponse) -> CachedAnswer:
    """What the response cache keeps of a successful reply: what a record uses, nothing else."""
    return CachedAnswer(text=resp.text, input_tokens=resp.input_tokens, output_tokens=resp.output_tokens,
                        request_id=resp.request_id, finish_reason=resp.finish_reason, served_model=resp.model)


def response_of(answer: CachedAnswer) -> ChatResponse:
    """A stored answer as the reply the task gets (no rate-limit headers: nothing was sent)."""
    return ChatResponse(text=answer.text, input_tokens=answer.input_tokens, output_tokens=answer.output_tokens,
                        request_id=answer.request_id, finish_reason=answer.finish_reason, model=answer.served_model)
