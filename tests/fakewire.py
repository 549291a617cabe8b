"""The online APIs' wire formats, as the loopback fake reads and answers them.

Endpoint paths, reading a request body of either API (its messages, their text, a token
estimate), the 400 a malformed body gets, the default responder (``answer_from_marker``) and the
success body of a reply. Error bodies are in fakefaults.py.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

from fakebatch import API

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
API_PATHS: dict[API, str] = {"openai": OPENAI_PATH, "anthropic": ANTHROPIC_PATH}

Responder = Callable[[dict[str, Any]], str]
"""Maps a parsed request body (either API's format) to the assistant's reply text."""


def _content_text(content: Any) -> str:
    """Text of one message's content: a plain string or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def message_texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """Return ``(role, text)`` for every message of a request body in either API's format.

    Anthropic's top-level ``system`` prompt comes first with role ``"system"``, so both formats
    read the same way.
    """
    texts: list[tuple[str, str]] = []
    if body.get("system") is not None:
        texts.append(("system", _content_text(body["system"])))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            texts.append((str(message.get("role", "")), _content_text(message.get("content"))))
    return texts


def last_user_text(body: dict[str, Any]) -> str:
    """Return the text of the last ``user`` message of a request body, or ``""`` if none."""
    for role, text in reversed(message_texts(body)):
        if role == "user":
            return text
    return ""


def request_text(body: dict[str, Any]) -> str:
    """All message text of a request body joined by newlines (what ``count_for`` searches)."""
    return "\n".join(t for _, t in message_texts(body))


def estimate_tokens(text: str) -> int:
    """Deterministic token estimate: one token per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


_ANSWER_MARKER = re.compile(r"\[\[ANSWER:(.*?)\]\]", re.DOTALL)


def answer_from_marker(body: dict[str, Any]) -> str:
    """Responder that answers whatever a ``[[ANSWER:xyz]]`` marker in the prompt says.

    The most recent user message carrying a marker wins (so follow-up turns of a multi-turn task
    still see the sample's answer). Returns ``"The answer is xyz.\\n#### xyz"``, which both a
    GSM8K-style ``####`` parser and an "answer is X" parser accept, or ``"#### 42"`` when no user
    message has a marker. This is also the server's default responder.
    """
    for role, text in reversed(message_texts(body)):
        if role != "user":
            continue
        match = _ANSWER_MARKER.search(text)
        if match:
            answer = match.group(1).strip()
            return f"The answer is {answer}.\n#### {answer}"
    return "#### 42"


def validation_problem(path: str, body: Any) -> str | None:
    """Why a request body would be rejected with 400 by the real API, or None if it is fine."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request: expected a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages: Field required (a non-empty list)"
    if path == ANTHROPIC_PATH and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if body.get("stream"):
        # The runner never streams; failing loudly beats answering in the wrong format.
        return "stream=true is not supported by the fake server"
    return None


def reply_payload(path: str, body: dict[str, Any], reply: str, seq: int) -> dict[str, Any]:
    """The success body the API at ``path`` answers request ``body`` with when the model says ``reply``.

    Ids come from the request's arrival number ``seq``; token counts are ``estimate_tokens`` of the
    request's message text and of the reply.
    """
    model = body["model"]
    input_tokens = estimate_tokens(request_text(body))
    output_tokens = estimate_tokens(reply)
    if path == OPENAI_PATH:
        return {
            "id": f"chatcmpl-fake{seq:08d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
            "system_fingerprint": None,
        }
    return {
        "id": f"msg_fake{seq:08d}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": reply}],
        "model": model,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }

