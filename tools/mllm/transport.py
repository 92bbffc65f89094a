"""A hard deadline around a network request made from blocking code.

httpx (and so the ``openai`` client) has connect, read, write and pool timeouts but no overall
one: the read timeout restarts with every byte, so a server that trickles its reply one byte a
second is never timed out (encode/httpx#1450). The documented remedy is to cancel the request from
asyncio: cancelling an ``AsyncClient`` request closes its connection. :class:`LoopThread` runs such
requests on an event loop in a daemon thread; :meth:`LoopThread.run` waits for one at most
``timeout`` seconds, then cancels it and raises :class:`DeadlineExceeded`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from typing import Any, Awaitable, Callable, TypeVar

__all__ = ["DeadlineExceeded", "LoopThread"]

T = TypeVar("T")

#: seconds a cancelled request gets to unwind (close its connection) before the caller moves on
CANCEL_GRACE = 1.0


class DeadlineExceeded(Exception):
    """The awaited request did not finish within its deadline and was cancelled. (Not a
    ``TimeoutError``, so that a timeout raised by the request itself stays distinguishable.)"""


class LoopThread:
    """An asyncio event loop in a daemon thread, started on first use. Thread-safe."""

    def __init__(self, name: str = "mllm-io"):
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Await ``make()`` on the loop and return its result, or cancel it after ``timeout``
        seconds (``inf``: no limit) and raise :class:`DeadlineExceeded`. Exceptions raised by the
        request propagate unchanged."""
        loop = self._ensure()
        limit = None if not math.isfinite(timeout) else max(0.0, timeout)

        async def bounded() -> T:
            task = asyncio.ensure_future(make())
            done, _ = await asyncio.wait({task}, timeout=limit)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_GRACE)
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it as never retrieved
                raise DeadlineExceeded()
            return task.result()

        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        try:
            return future.result(timeout=None if limit is None else limit + CANCEL_GRACE + 2.0)
        except concurrent.futures.TimeoutError:  # the loop itself is stuck: give up waiting on it
            future.cancel()
            raise DeadlineExceeded() from None

    def close(self, cleanup: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Run ``cleanup()`` on the loop (e.g. closing a client), then stop the loop and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or loop.is_closed():
            return
        if cleanup is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(cleanup(), loop).result(timeout=5)
            except Exception:  # closing is best effort: the process may be ending
                pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
