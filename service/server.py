"""The server: the app on a socket, with a cap on open connections, stopped within one grace.

The stop starts at the first SIGTERM or SIGINT and has one deadline, `shutdown_grace_seconds`
after that signal. At once the socket stops accepting and idle keep-alive connections close. The
app's `on_shutdown` handlers stop its work (the orchestrator lets what is busy finish, by the
deadline at most) while the requests in flight run on; each still running at the deadline is
answered 503 `unavailable` by `Drain`, so none is left without an answer. Then the app's cleanup
contexts unwind (the publisher's last flush, the store): the second a stop takes beyond the
grace. Should they hang (a database write stuck on a lock), the process ends itself, status 1, a
second later still. A later signal changes nothing: the deadline stands, and a stop that must not
wait is what SIGKILL is for (nothing is lost by it; pending verifications resume at the next
start).

This replaces `web.run_app`, whose shutdown gives handlers its timeout, then cancels them, which
closes their connections with no answer, and only then runs the cleanup, where the orchestrator
waited the grace again; a second signal cut that short. It has no cap on connections either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from service.api.v1.render import error_body
from service.config import ServerSettings
from service.errors import Unavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: aiohttp's default: connections the kernel queues before the loop accepts them.
BACKLOG = 128
#: aiohttp's own wait, once every request in flight is answered: for a body still arriving behind
#: its answer (aiohttp reads it before closing, lest the close reset the connection and lose the
#: answer), or a handler that ignored its cancellation.
LINGER_SECONDS = 0.25
#: Past the grace, the cleanup's second (the last flush, the store) and as much slack; then the
#: process ends itself.
OVERRUN_SECONDS = 2.0
#: A refused connection is held open at most this long for the client to read its 503 and close
#: first: closing with its request unread would reset the connection, which can lose the answer.
REFUSAL_LINGER_SECONDS = 1.0
#: Descriptors beyond the connections: the database, its journal, the sockets to Twilio and SQS.
SPARE_DESCRIPTORS = 64


def check_settings(settings: ServerSettings) -> None:
    """Warn, before anything starts, of what the machine will not let the settings do."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and settings.max_connections + SPARE_DESCRIPTORS > soft:
        log.warning(
            "server.max_connections is %d but only %d files may be open (ulimit -n): past about"
            " %d connections, accepting fails instead of answering 503",
            settings.max_connections,
            soft,
            soft - SPARE_DESCRIPTORS,
        )


async def serve(app: web.Application, settings: ServerSettings) -> None:
    """Serve `app` until SIGTERM or SIGINT, then stop as the module's docstring says.

    `app` must not have started: this adds its `Drain` to the app's middlewares and on_shutdown.
    """
    loop = asyncio.get_running_loop()
    drain = Drain()
    # The root's innermost, inside its `errors` (which renders the 503), outside each surface's.
    app.middlewares.append(drain.middleware)
    # After the app's own handlers: the requests are waited for beside its work, then this.
    app.on_shutdown.append(drain.wait)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=LINGER_SECONDS)
    listeners: list[asyncio.Server] = []
    stopping = loop.create_future()

    def stop(reason: str) -> None:
        if drain.deadline is not None:
            left = max(0.0, drain.deadline - loop.time())
            log.warning(
                "%s: already stopping, %.1f s of the grace left; SIGKILL ends it", reason, left
            )
            return
        grace = settings.shutdown_grace_seconds
        log.info("%s: stopping; requests in flight have %g s", reason, grace)
        # Here, not after a task switch: not one more connection is accepted.
        for listener in listeners:
            listener.close()
        drain.expire_at(loop.time() + grace)
        # A thread, not the loop: it must fire even if whatever overruns blocks the loop.
        watchdog = threading.Timer(grace + OVERRUN_SECONDS, _overrun)
        watchdog.daemon = True
        watchdog.start()
        stopping.set_result(None)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum.name)
    try:
        try:
            await runner.setup()
            # A signal during start-up (a long recovery): no listening, and the deadline and the
            # watchdog count from the signal all the same.
            if not stopping.done():
                assert runner.server is not None
                listeners.append(await listen(runner.server, settings))
                log.info("listening on http://%s:%d", settings.host, settings.port)
                await stopping
        finally:
            if drain.deadline is None:  # not a signal: start-up or listening failed
                stop("no longer serving")
            # Idle connections close, `on_shutdown` runs (the app's, then the wait for requests
            # in flight, which Drain ends by the deadline), then the cleanup contexts unwind.
            await runner.cleanup()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _overrun() -> None:
    log.error("the stop overran its grace by %g s: exiting now", OVERRUN_SECONDS)
    os._exit(1)


async def listen(server: web.Server, settings: ServerSettings) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    gate = Gate(server, settings.max_connections)
    return await loop.create_server(gate, settings.host, settings.port, backlog=BACKLOG)


class Drain:
    """The requests in flight: once the stop's deadline passes, each still running is answered 503.

    Until the stop a request costs two set operations: the deadline is one timer for them all.
    """

    def __init__(self) -> None:
        #: When requests in flight are cut short (loop time); None until the stop.
        self.deadline: float | None = None
        self._passed = False
        self._running: set[asyncio.Task[Any]] = set()
        #: The tasks this cancelled: their CancelledError is turned into the 503.
        self._cut: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Future[None] | None = None

    def expire_at(self, deadline: float) -> None:
        self.deadline = deadline
        asyncio.get_running_loop().call_at(deadline, self._cut_short)

    async def wait(self, app: web.Application) -> None:
        """Until every request in flight is answered: by the deadline at the latest."""
        if self._running:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle

    def _cut_short(self) -> None:
        self._passed = True
        for task in self._running:
            self._cut.add(task)
            task.cancel()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._passed:
            raise _stopping()
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            raise _stopping() from None
        finally:
            self._running.discard(task)
            if task in self._cut:  # as asyncio.timeout does: the cancellation was ours, and spent
                self._cut.discard(task)
                task.uncancel()
            if self._idle is not None and not self._running and not self._idle.done():
                self._idle.set_result(None)
        if self.deadline is not None:
            response.force_close()  # aiohttp closes the connection after it; the client is told
        return response


def _stopping() -> Unavailable:
    return Unavailable("The service is stopping; try again shortly.")


class Gate:
    """The connections' protocol factory: aiohttp's handler, or a 503 once `limit` are open.

    aiohttp has no such limit. The count is its own list of connections, read when a connection
    is made rather than when it is accepted: the loop accepts a burst before it makes any.
    """

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server = server
        self._limit = limit
        self._refusing = False

    def __call__(self) -> asyncio.Protocol:
        return _Admission(self)

    def admit(self) -> asyncio.Protocol:
        if len(self._server.connections) < self._limit:
            self._refusing = False
            return self._server()
        if not self._refusing:  # once for each time it fills up, not for each refusal
            log.warning(
                "%d connections are open, server.max_connections: refusing more with 503",
                self._limit,
            )
            self._refusing = True
        return Refusal()


class _Admission(asyncio.Protocol):
    """A connection's protocol until it is made; then it hands the transport to the gate's pick.

    Once handed over, the transport calls that protocol directly: nothing is added per read.
    """

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._gate.admit()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def _refusal() -> bytes:
    error = Unavailable("Too many connections are open; try again shortly.")
    body = json.dumps(error_body(error), separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode() + body


REFUSAL = _refusal()


class Refusal(asyncio.Protocol):
    """Answers a connection over the cap with 503 at once, without reading its request."""

    def __init__(self) -> None:
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport (uvloop's is not an asyncio.Transport subclass, only alike).
        transport = cast(asyncio.Transport, transport)
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(REFUSAL_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request: the answer is the same whatever it is

    def eof_received(self) -> bool:
        return False  # the client has closed its side: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
