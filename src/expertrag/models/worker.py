"""One dedicated thread for all model work.

After `generate` ran on one thread, `generate` on another thread decoded markedly slower on
2-core machines (OpenMP thread pools; figures in benchmarks/RESULTS.md, "Model speed and
dtype"). So every model call goes through one long-lived worker; sync callers wait on a Future,
async callers await it without blocking the loop.
The worker also serialises access to peft's global "active adapter" state, which makes the
per-call expert choice safe under concurrency.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ModelWorker:
    """A single daemon thread that runs submitted callables in order."""

    def __init__(self, name: str = "expertrag-model") -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def in_worker(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue `fn`; run inline when already on the worker (avoids self-deadlock)."""
        future: Future[T] = Future()
        if self.in_worker():
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            return future
        self._queue.put((fn, future))
        return future

    def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker and wait for its result."""
        return self.submit(fn).result()

    async def arun(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker; the event loop stays free while it runs."""
        return await asyncio.wrap_future(self.submit(fn))

    def close(self) -> None:
        self._queue.put(None)


class _Failure:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


async def iterate_in_thread(make: Callable[[], Iterable[T]]) -> AsyncIterator[T]:
    """The items of a blocking iterable, produced on an executor thread and handed to the
    event loop as they come (a streaming call made async); an exception raised while
    producing is raised here, after the items before it."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    def produce() -> None:
        try:
            for item in make():
                loop.call_soon_threadsafe(items.put_nowait, item)
        except Exception as exc:
            loop.call_soon_threadsafe(items.put_nowait, _Failure(exc))
        loop.call_soon_threadsafe(items.put_nowait, done)

    task = loop.run_in_executor(None, produce)
    while (item := await items.get()) is not done:
        if isinstance(item, _Failure):
            raise item.exc
        yield item
    await task
