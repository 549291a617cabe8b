"""Providers: one small interface (``base.Provider``) and a factory from the ``--model`` string.

Model strings: ``openai/<model>``, ``anthropic/<model>``, ``local/smollm2``, and for
OpenAI-compatible servers ``vllm/<model>`` / ``ollama/<model>`` (default local base URLs) or any
``<model>`` with ``--base-url``.
"""

from __future__ import annotations

import os

from evalledger.errors import UsageError
from evalledger.providers.anthropic import AnthropicProvider
from evalledger.providers.base import ChatRequest, ChatResponse, ErrorInfo, ErrorKind, NetworkFault, Provider
from evalledger.providers.batch import (
    BatchAPI,
    BatchCounts,
    BatchInfo,
    BatchItem,
    BatchLimits,
    BatchResult,
    supports_batch,
)
from evalledger.providers.local import LocalProvider
from evalledger.providers.openai import OpenAIProvider

# Default base URLs of common self-hosted OpenAI-compatible servers.
COMPATIBLE_DEFAULT_URLS = {
    "vllm": "http://127.0.0.1:8000/v1",
    "ollama": "http://127.0.0.1:11434/v1",
}


def split_model(model: str) -> tuple[str, str]:
    """``openai/gpt-4o-mini`` → ``("openai", "gpt-4o-mini")``; no prefix → ``("", model)``."""
    prefix, sep, rest = model.partition("/")
    if sep and prefix in ("openai", "anthropic", "local", *COMPATIBLE_DEFAULT_URLS):
        if not rest:
            raise UsageError(f"--model {model!r}: missing the model name after '{prefix}/'")
        return prefix, rest
    return "", model


# Where the SDKs send requests when neither --base-url nor their variable says otherwise.
SDK_DEFAULT_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
_URL_VARIABLES = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


def endpoint_for(model: str, base_url: str | None = None) -> str:
    """The endpoint a ``--model`` reaches, as the provider will resolve it: ``--base-url``, else the
    SDK's variable (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``), else its default URL; the
    embedded model is ``local:<name>``. Trailing slashes are dropped so equal URLs compare equal."""
    prefix, name = split_model(model)
    if prefix == "local":
        return f"local:{name}"
    if base_url:
        url = base_url
    elif prefix in COMPATIBLE_DEFAULT_URLS:
        url = COMPATIBLE_DEFAULT_URLS[prefix]
    else:
        api = prefix or "openai"
        url = os.environ.get(_URL_VARIABLES[api], "").strip() or SDK_DEFAULT_URLS[api]
    return url.rstrip("/")


def make_provider(
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 600.0,
    concurrency: int = 8,
) -> Provider:
    """Build the provider for a ``--model`` string: cheap, no SDK imported and no network I/O
    until ``start``/``complete``.

    Raises :class:`UsageError` for an unknown model prefix or a missing API key, so callers can
    build it before creating anything on disk.
    """
    prefix, name = split_model(model)
    if prefix == "openai":
        return OpenAIProvider(model, name, base_url=base_url, api_key=api_key, timeout=timeout,
                              concurrency=concurrency)
    if prefix == "anthropic":
        return AnthropicProvider(model, name, base_url=base_url, api_key=api_key, timeout=timeout,
                                 concurrency=concurrency)
    if prefix == "local":
        return LocalProvider(model, name, parallel=concurrency, timeout=timeout)
    if prefix in COMPATIBLE_DEFAULT_URLS or base_url:
        url = base_url or COMPATIBLE_DEFAULT_URLS[prefix]
        return OpenAIProvider(model, name, base_url=url, api_key=api_key, timeout=timeout, concurrency=concurrency)
    raise UsageError(
        f"--model {model!r}: say which API serves it: openai/<model>, anthropic/<model>, local/smollm2, "
        "vllm/<model>, ollama/<model>, or <model> with --base-url for any OpenAI-compatible server"
    )


__all__ = ["BatchAPI", "BatchCounts", "BatchInfo", "BatchItem", "BatchLimits", "BatchResult", "ChatRequest",
           "ChatResponse", "ErrorInfo", "ErrorKind", "NetworkFault", "Provider", "endpoint_for", "make_provider",
           "split_model", "supports_batch"]
