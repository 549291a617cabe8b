"""Shared pytest fixtures: the loopback fake LLM API server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

# Test helpers (fakeserver) live beside the tests and are imported as top-level modules.
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import pytest  # noqa: E402
from fakeserver import FakeServer  # noqa: E402

from evalledger.cli.options import show_warnings  # noqa: E402


def _serve() -> Iterator[FakeServer]:
    server = FakeServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A started FakeServer (no latency, default responder), stopped after the test."""
    yield from _serve()


@pytest.fixture
def second_server() -> Iterator[FakeServer]:
    """Another one, on another port: a second endpoint."""
    yield from _serve()


@pytest.fixture(autouse=True)
def _own_response_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own empty response cache (``EVALLEDGER_CACHE_DIR``, inherited by the CLI
    subprocesses it starts) and user cache (``XDG_CACHE_HOME``), never the user's: runs within one
    test share them, as one user's runs do."""
    cache_dir = tmp_path_factory.mktemp("response-cache")
    monkeypatch.setenv("EVALLEDGER_CACHE_DIR", str(cache_dir))
    # The remembered dataset hashes too (datasets/hashcache.py, under XDG_CACHE_HOME), never the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    return cache_dir


@pytest.fixture(autouse=True)
def _warnings_on_stderr() -> Iterator[None]:
    """The library warns through ``logging``; show its warnings on stderr the way the CLI does, so
    that tests of the Python API read them where a user of the command line sees them."""
    show_warnings()
    yield
