"""The one writing connection, on a thread of its own, and the group commit that feeds it.

Writes queue up on the event loop; a loop takes whatever has queued meanwhile and commits it in a
single transaction on the writer thread: every caller is answered only after its write is on
disk, yet a burst of transitions costs one fsync, and one trip to the thread, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A function for the thread, its arguments, and the future for its result.
Call = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]
#: A write runs on the writer thread, inside the batch's transaction.
Write = Callable[[sqlite3.Connection], T]
#: What a write came to: its result, or the exception that rolled it back.
Outcome = tuple[bool, Any]

#: How many queued writes one transaction takes at most.
MAX_BATCH = 512


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


class GroupCommit:
    """Commits queued writes in batches on `thread`, where `db` lives; writes run in order."""

    def __init__(self, db: sqlite3.Connection, thread: WriterThread) -> None:
        self._db = db
        self._thread = thread
        self._queue: asyncio.Queue[tuple[Write[Any], asyncio.Future[Any]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    def submit(self, write: Write[T]) -> asyncio.Future[T]:
        """Queue `write` after those submitted before; its future is answered once committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((write, future))
        return future

    async def drain(self) -> None:
        """Wait until every write submitted so far is committed (or failed), then stop the loop."""
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def close(self) -> None:
        """Close the connection on its thread, then end the thread; `drain` first."""
        await self._thread.call(self._db.close)
        self._thread.stop()

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self._thread.call(
                    _commit_batch, self._db, [write for write, _ in batch]
                )
                _settle(batch, outcomes)
            except BaseException:
                # Cancelled or the thread is gone: nobody may wait forever for an answer.
                for _, future in batch:
                    future.cancel()
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()


def _settle(batch: list[tuple[Write[Any], asyncio.Future[Any]]], outcomes: list[Outcome]) -> None:
    for (_, future), (ok, result) in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(result)
        else:
            log.error("write failed and was rolled back", exc_info=result)
            future.set_exception(result)


# -- on the writer thread -------------------------------------------------------------------------


def _commit_batch(db: sqlite3.Connection, writes: list[Write[Any]]) -> list[Outcome]:
    """Commit the writes in one transaction; if that fails, each in its own."""
    try:
        return [(True, result) for result in transaction(db, writes)]
    except Exception:
        # One bad write must not sink the others that shared its transaction.
        return [_commit_alone(db, write) for write in writes]


def _commit_alone(db: sqlite3.Connection, write: Write[Any]) -> Outcome:
    try:
        return True, transaction(db, [write])[0]
    except Exception as exc:
        return False, exc


def transaction(db: sqlite3.Connection, writes: list[Write[Any]]) -> list[Any]:
    """Run `writes` in one transaction, committed, or rolled back if any raises."""
    # IMMEDIATE takes the write lock up front, so the transaction never fails half-way on it.
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [write(db) for write in writes]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results
