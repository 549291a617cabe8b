"""The SDK clients use the aiohttp transport, with a pool as large as the run's concurrency."""

from __future__ import annotations

import asyncio

import pytest

from evalledger.providers import make_provider


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
