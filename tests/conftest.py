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
def _warnings_on_stderr() -> Iterator[None]:
    """The library warns through ``logging``; show its warnings on stderr the way the CLI does, so
    that tests of the Python API read them where a user of the command line sees them."""
    show_warnings()
    yield
