"""The server as a real process: a stop that keeps to its grace, and a cap on open connections.

Requests are written by hand on raw sockets, so that a test can leave one half-sent, hold one
open and idle, and tell an answer from a connection closed without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.api import API_KEY, AUTH
from tests.support.process import ServiceProcess, request
from tests.support.twilio import TwilioServer

pytestmark = pytest.mark.slow  # each test runs the service as a process

GRACE = 2.0
#: What a stop may take beyond the grace: the cleanup's second, and slack for a busy machine.
STOP_SLACK = 1.5
PHONE = "+14155550100"

MakeService = Callable[..., ServiceProcess]
Connect = Callable[[int], Awaitable["Connection"]]


@dataclass
class Reply:
    status: int
    #: Lower-cased names.
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One client connection, HTTP/1.1 keep-alive, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, method: str, path: str, body: bytes = b"", *, length: int | None = None) -> None:
        """Write a request; a `length` beyond the body's leaves the body half-sent."""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {API_KEY}"]
        if body or length is not None:
            head += ["Content-Type: application/json", f"Content-Length: {length or len(body)}"]
        self.writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)

    async def reply(self) -> Reply | None:
        """The next response, or None if the connection closed without one."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        status_line, *lines = head.decode().split("\r\n")
        headers = {}
        for line in filter(None, lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Reply(int(status_line.split()[1]), headers, body)

    async def get(self, path: str) -> Reply | None:
        self.send("GET", path)
        return await self.reply()

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def make_service(tmp_path: Path, twilio: TwilioServer) -> AsyncIterator[MakeService]:
    made: list[ServiceProcess] = []

    def make(**env: str) -> ServiceProcess:
        base = {
            "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
            **twilio.sender_env,
            "VERIFY_QUEUE_ENABLED": "false",
            "VERIFY_AUTH_API_KEYS": API_KEY,
            "VERIFY_SERVER_SHUTDOWN_GRACE_SECONDS": str(GRACE),
        }
        process = ServiceProcess(base | env, tmp_path / "service.log")
        made.append(process)
        return process

    yield make
    for process in made:
        if process.process is not None and process.process.returncode is None:
            await process.kill()


async def pending_with_sms_recorded(service: ServiceProcess, twilio: TwilioServer) -> str:
    """A pending verification whose SMS is sent and checkpointed: its task is idle, waiting."""
    async with aiohttp.ClientSession(headers=AUTH) as http:
        status, view = await request(
            http, "POST", f"{service.url}/verifications", json={"phone": PHONE}
        )
    assert status == 202, view
    await twilio.wait_for_message(PHONE)
    database = service.env["VERIFY_DATABASE_PATH"]
    for _ in range(100):
        with contextlib.closing(sqlite3.connect(database)) as db:
            row = db.execute("SELECT sms_sent_at FROM verifications").fetchone()
        if row[0] is not None:
            return str(view["id"])
        await asyncio.sleep(0.05)
    raise AssertionError("the SMS was never recorded")


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    opened: list[Connection] = []

    async def open_(port: int) -> Connection:
        connection = await Connection.open(port)
        opened.append(connection)
        return connection

    yield open_
    for connection in opened:
        connection.close()
        with contextlib.suppress(ConnectionError):
            await connection.writer.wait_closed()


def lock_database(service: ServiceProcess) -> sqlite3.Connection:
    """Take SQLite's write lock from outside, as another process would: its writes wait."""
    db = sqlite3.connect(service.env["VERIFY_DATABASE_PATH"], isolation_level=None, timeout=10)
    db.execute("BEGIN IMMEDIATE")
    return db


async def in_flight(
    service: ServiceProcess, connect: Connect, verification_id: str
) -> list[Connection]:
    """Two requests the service has begun and cannot finish: a code whose write waits for the
    database's lock, and a start whose body is still arriving."""
    blocked = await connect(service.port)
    blocked.send("POST", f"/verifications/{verification_id}/code", b'{"code": "000000"}')
    stalled = await connect(service.port)
    stalled.send("POST", "/verifications", b'{"phone": "+1415', length=40)
    await asyncio.sleep(0.5)  # both read and being handled
    return [blocked, stalled]


def assert_unavailable(reply: Reply | None) -> None:
    assert reply is not None, "the connection closed without an answer"
    assert reply.status == 503, reply
    assert reply.json()["error"]["code"] == "unavailable", reply
    assert reply.headers.get("retry-after", "").isdigit(), reply.headers
    assert reply.headers["content-type"].startswith("application/json"), reply.headers


async def test_sigterm_answers_every_request_in_flight_and_stops_within_the_grace(
    make_service: MakeService, twilio: TwilioServer, connect: Connect
) -> None:
    # Each write fails fast on the lock and the orchestrator keeps trying the code's for a minute:
    # work in flight that only the stop ends, and that the cleanup used to wait for once more.
    service = make_service(
        VERIFY_DATABASE_BUSY_TIMEOUT_MS="200", VERIFY_DATABASE_WRITE_RETRY_SECONDS="60"
    )
    await service.start()
    verification_id = await pending_with_sms_recorded(service, twilio)
    lock = lock_database(service)
    try:
        connections = await in_flight(service, connect, verification_id)
        loop = asyncio.get_running_loop()
        assert service.process is not None

        signalled = loop.time()
        service.process.send_signal(signal.SIGTERM)
        answered = []
        for connection in connections:
            answered.append((await asyncio.wait_for(connection.reply(), GRACE + 5), loop.time()))
        status = await asyncio.wait_for(service.process.wait(), GRACE + 5)
        stopped = loop.time() - signalled
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    for reply, at in answered:
        assert_unavailable(reply)
        assert GRACE - 0.3 <= at - signalled <= GRACE + 0.7, "answered at the grace's end"
    assert status == 0, service.logs()
    assert stopped <= GRACE + STOP_SLACK, f"stopped {stopped:.2f} s after SIGTERM"


async def test_a_second_sigterm_neither_cuts_the_stop_short_nor_extends_it(
    make_service: MakeService, connect: Connect
) -> None:
    service = make_service()
    await service.start()
    stalled = await connect(service.port)
    stalled.send("POST", "/verifications", b'{"phone": "+1415', length=40)
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    assert service.process is not None

    signalled = loop.time()
    service.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    service.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    service.process.send_signal(signal.SIGINT)
    reply = await asyncio.wait_for(stalled.reply(), GRACE + 5)
    answered = loop.time() - signalled
    status = await asyncio.wait_for(service.process.wait(), GRACE + 5)
    stopped = loop.time() - signalled

    assert_unavailable(reply)
    assert GRACE - 0.3 <= answered <= GRACE + 0.7, f"answered {answered:.2f} s after SIGTERM"
    assert status == 0, service.logs()
    assert stopped <= GRACE + STOP_SLACK, f"stopped {stopped:.2f} s after SIGTERM"
    assert "already stopping" in service.logs()


async def test_a_stop_stuck_in_its_cleanup_ends_itself_soon_after_the_grace(
    make_service: MakeService, twilio: TwilioServer, connect: Connect
) -> None:
    service = make_service(VERIFY_DATABASE_BUSY_TIMEOUT_MS="20000")
    await service.start()
    verification_id = await pending_with_sms_recorded(service, twilio)
    lock = lock_database(service)  # held throughout: closing the store waits for the write
    try:
        connections = await in_flight(service, connect, verification_id)
        loop = asyncio.get_running_loop()
        assert service.process is not None

        signalled = loop.time()
        service.process.send_signal(signal.SIGTERM)
        replies = [await asyncio.wait_for(c.reply(), GRACE + 5) for c in connections]
        status = await asyncio.wait_for(service.process.wait(), GRACE + 5)
        stopped = loop.time() - signalled
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    for reply in replies:
        assert_unavailable(reply)
    assert status == 1, service.logs()
    assert stopped <= GRACE + 2.0 + 0.5, f"stopped {stopped:.2f} s after SIGTERM"
    assert "overran" in service.logs()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_connections_past_the_cap_get_503_at_once(
    make_service: MakeService, connect: Connect, event_loop: str
) -> None:
    cap = 4
    service = make_service(
        VERIFY_SERVER_MAX_CONNECTIONS=str(cap), VERIFY_SERVER_EVENT_LOOP=event_loop
    )
    await service.start()
    await asyncio.sleep(0.3)  # the start-up probe's connection is gone
    open_ = [await connect(service.port) for _ in range(cap)]
    for connection in open_:
        reply = await connection.get("/healthz")
        assert reply is not None and reply.status == 200, reply

    extra = await connect(service.port)
    refused = await asyncio.wait_for(extra.get("/healthz"), 2)
    assert_unavailable(refused)
    assert refused is not None
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert await asyncio.wait_for(extra.reader.read(), 3) == b"", "then it is closed"

    # The open ones are unaffected, keep-alive included.
    for connection in open_:
        reply = await connection.get("/healthz")
        assert reply is not None and reply.status == 200, reply

    for connection in open_[:2]:
        connection.close()
    await asyncio.sleep(0.3)
    fresh = [await connect(service.port) for _ in range(2)]
    for connection in fresh:
        reply = await connection.get("/healthz")
        assert reply is not None and reply.status == 200, reply

    # Idle keep-alive connections do not hold up a stop.
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    assert await service.stop() == 0
    assert loop.time() - signalled < 1.0
