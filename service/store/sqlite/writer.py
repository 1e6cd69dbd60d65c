"""A thread that runs calls in order for the event loop: the store's one writing connection lives
on it, so a group commit crosses threads once, however many statements it holds."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

#: A function for the thread, its arguments, and the future for its result.
Call = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class WriterThread:
    """One thread running calls in order for the event loop.

    A put on a SimpleQueue there and one call_soon_threadsafe back, without the work items and
    idle-thread bookkeeping of ThreadPoolExecutor.submit: this runs once per group commit, at the
    busiest several hundred times a second. The thread is a daemon
    so that a process that never closed its store can still exit; SQLite rolls back whatever
    transaction that cut short.
    """

    def __init__(self, name: str) -> None:
        self._calls: SimpleQueue[Call | None] = SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((future, fn, args))
        return future

    def stop(self) -> None:
        """The thread ends once the calls already made have run."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            try:
                result = fn(*args)
            except BaseException as exc:
                _answer(future, future.set_exception, exc)
            else:
                _answer(future, future.set_result, result)


def _answer(future: asyncio.Future[Any], settle: Callable[[Any], None], value: Any) -> None:
    def deliver() -> None:
        if not future.done():  # the caller may have been cancelled meanwhile
            settle(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
        future.get_loop().call_soon_threadsafe(deliver)
