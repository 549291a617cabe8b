"""An aiohttp application served on 127.0.0.1 from an event loop on a background thread.

``AppThread`` owns the loop, its thread and the bound site; ``FakeServer`` builds the application
(its routes) and starts and stops it through one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web

# Headroom for a burst of hundreds of simultaneous connects: with the default backlog (128) the
# kernel drops SYNs beyond the queue and the client only retries after ~1 s, which would show up
# as phantom latency in concurrency benchmarks.
_LISTEN_BACKLOG = 2048


class AppThread:
    """One aiohttp application served from a daemon thread running its own event loop.

    ``start`` and ``stop`` are called from the owner's thread; ``wait`` runs on the loop thread.
    """

    def __init__(self, name: str, port: int, shutdown_timeout: float) -> None:
        """Serve (once started) on ``port`` (0: a free one); ``stop`` waits ``shutdown_timeout`` for handlers."""
        self._name = name
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        #: the bound TCP port, once started (kept after ``stop``)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether the thread serves now (started and not yet stopped)."""
        return self._thread is not None

    def start(self, add_routes: Callable[[web.Application], None]) -> int:
        """Serve an application ``add_routes`` fills in; returns the port once it is bound."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name=self._name, daemon=True)
        thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._serve(add_routes), loop).result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            raise
        self._loop, self._thread = loop, thread
        return self.port

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent.

        Handlers still waiting in ``wait`` return at once; the rest get ``shutdown_timeout`` to finish.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(
                timeout=self._shutdown_timeout + 10
            )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = self._thread = None

    async def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, returning early with True if the server is stopping."""
        assert self._stopping is not None
        if seconds <= 0:
            return self._stopping.is_set()
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return False
        return True

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, add_routes: Callable[[web.Application], None]) -> int:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        add_routes(app)
        # handler_cancellation: when a client times out and hangs up, its handler is cancelled
        # instead of sleeping on, as a real server would stop working on a dead connection.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._requested_port, backlog=_LISTEN_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
