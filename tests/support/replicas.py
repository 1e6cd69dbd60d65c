"""Several replicas of the service as real processes on one PostgreSQL database.

`make_replicas` (a fixture; re-exported by tests/service/replicas/conftest.py) starts N
`python -m service` processes on loopback, named "a", "b", "c"..., on a new database of the
test's, sharing one code secret, one fake Twilio (`ReplicaTwilio`) and one new SQS queue, with
short leases so that a takeover takes a second or two:

    cluster = await make_replicas(3, lease_seconds=1.5, ttl_seconds=30)
    a, b, c = cluster.replicas
    view = await cluster.start(a, phone(1))
    await a.kill()                         # SIGKILL; also pause() (SIGSTOP), resume() (SIGCONT)
    await b.restart()                      # SIGTERM, then the same name and port again

Each replica sends its SMS under an account SID of its own, so the fake Twilio tells who sent
what (`Message.account_sid`) and holds one replica's requests while the others' go through
(`ReplicaTwilio.hold`). The cluster reads the rows behind the replicas (`row`, `rows`) with a
connection of its own, and the queue with `outcomes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from notifier.queues import SqsClient
from notifier.settings import QueueSettings
from tests.support.api import API_KEY, AUTH
from tests.support.localstack import receive_all
from tests.support.process import ServiceProcess
from tests.support.twilio import TwilioServer

#: A lease short enough for a takeover within two seconds, long enough for two loaded cores.
LEASE_SECONDS = 1.5
ADOPTED = "verifications_adopted_total"
HOLD_MODES = ("hang", "accept")


def phone(n: int) -> str:
    """The `n`th test number (0 to 9999): a valid US number, one per verification."""
    return f"+1212555{n:04d}"


def unix(rfc3339: str) -> float:
    """A time of the view ("2026-11-25T22:01:56.068Z") in Unix seconds."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def account_sid(name: str) -> str:
    """The Twilio account SID replica `name` sends under."""
    return "AC" + hashlib.sha256(name.encode()).hexdigest()[:32]


class ReplicaTwilio(TwilioServer):
    """The fake Twilio, able to hold the requests of one account (one replica) while the others'
    go through.

    `hold(sid, "hang")`: its next requests are neither answered nor recorded until
    `release(sid)`; `hold(sid, "accept")`: they are recorded at once (the SMS went out) and their
    answer is withheld until `release`. A hold replaces the one before for the requests to come;
    those already held stay held. A held request whose client is gone (killed) is dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self._holds: dict[str, tuple[str, asyncio.Event]] = {}
        self._held_events: dict[str, list[asyncio.Event]] = {}
        #: Requests that arrived while their account was held, by account SID.
        self.held: dict[str, int] = {}
        self._arrived = asyncio.Condition()

    def hold(self, sid: str, mode: str) -> None:
        if mode not in HOLD_MODES:
            raise ValueError(f"Hold mode must be one of {HOLD_MODES}, not {mode!r}.")
        event = asyncio.Event()
        self._holds[sid] = (mode, event)
        self._held_events.setdefault(sid, []).append(event)

    def release(self, sid: str) -> None:
        """Answer every held request of `sid`, and hold no more."""
        self._holds.pop(sid, None)
        for event in self._held_events.pop(sid, []):
            event.set()

    async def wait_held(self, sid: str, count: int, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Until `count` requests of `sid` in all were held."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.held.get(sid, 0) >= count)

    def senders(self, to: str) -> list[str]:
        """The account SIDs the messages to `to` were sent under, in order."""
        return [m.account_sid for m in self.messages_to(to)]

    async def _answer(self, request: web.Request) -> web.Response:
        sid = request.match_info["account_sid"]
        hold = self._holds.get(sid)
        if hold is None:
            return await super()._answer(request)
        mode, released = hold
        self.held[sid] = self.held.get(sid, 0) + 1
        async with self._arrived:
            self._arrived.notify_all()
        if mode == "hang":
            await released.wait()
            return await super()._answer(request)
        answer = await super()._answer(request)  # recorded now: the SMS went out
        await released.wait()
        return answer


class Replica(ServiceProcess):
    """One replica: `python -m service` under a name of its own, restartable under it."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.account_sid = account_sid(name)
        super().__init__(
            {
                **env,
                "VERIFY_DATABASE_REPLICA_NAME": name,
                "VERIFY_SMS_ACCOUNT_SID": self.account_sid,
            },
            log_path,
        )
        self.paused = False

    @property
    def running(self) -> bool:
        """Started, not exited, and not paused: it answers."""
        alive = self.process is not None and self.process.returncode is None
        return alive and not self.paused

    async def pause(self) -> None:
        """SIGSTOP: frozen in the middle of whatever it did, lease and all."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    async def resume(self) -> None:
        """SIGCONT: it carries on from where it was, believing nothing happened."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    async def restart(self, timeout: float = 20.0) -> int:  # noqa: ASYNC109
        """SIGTERM, then the same name on the same port again, healthy; the stop's exit code."""
        code = await self.stop()
        await self.start(timeout)
        return code

    def __repr__(self) -> str:
        return f"Replica({self.name!r}, {self.url})"


@dataclass
class Outcome:
    """One message of the queue: its body, and when SQS took it (Unix seconds)."""

    body: dict[str, Any]
    sent_at: float

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def status(self) -> str:
        return str(self.body["status"])


class Replicas:
    """The replicas of one test, and what they share: the database, the queue, Twilio."""

    def __init__(
        self,
        replicas: list[Replica],
        *,
        database_url: str,
        twilio: ReplicaTwilio,
        sqs: SqsClient,
        queue_url: str,
        lease_seconds: float,
        ttl_seconds: float,
    ) -> None:
        self.replicas = replicas
        self.database_url = database_url
        self.twilio = twilio
        self.sqs = sqs
        self.queue_url = queue_url
        self.lease_seconds = lease_seconds
        self.ttl_seconds = ttl_seconds
        self.http: aiohttp.ClientSession | None = None
        self.db: asyncpg.Connection | None = None
        #: Every message received from the queue so far, in order.
        self.received: list[Outcome] = []

    @property
    def check_seconds(self) -> float:
        """How often a replica renews its lease and looks for orphans."""
        return self.lease_seconds / 5

    async def open(self) -> None:
        await asyncio.gather(*(r.start() for r in self.replicas))
        self.http = aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=30))
        self.db = await asyncpg.connect(self.database_url)

    async def close(self) -> None:
        for r in self.replicas:
            if r.process is not None and r.process.returncode is None:
                await r.kill()  # SIGKILL ends a paused process too
        if self.http is not None:
            await self.http.close()
        if self.db is not None:
            await self.db.close()

    def logs(self) -> str:
        """The end of each replica's log, for a failure's message."""
        return "\n".join(f"--- {r.name} ---\n{r.logs()[-1500:]}" for r in self.replicas)

    # -- HTTP ----------------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        assert self.http is not None, "the cluster is not open"
        return self.http

    async def call(
        self, replica: Replica, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any], Any]:
        """One request to `replica`: its status, headers, and JSON body."""
        async with self.session().request(method, f"{replica.url}{path}", **kwargs) as r:
            return r.status, dict(r.headers), await r.json()

    async def start(self, replica: Replica, to: str, **headers: str) -> dict[str, Any]:
        status, _, view = await self.call(
            replica, "POST", "/verifications", json={"phone": to}, headers=headers
        )
        assert status == 202, (replica, view)
        result: dict[str, Any] = view
        return result

    async def code(self, replica: Replica, verification_id: str, code: str) -> tuple[int, Any]:
        status, _, body = await self.call(
            replica, "POST", f"/verifications/{verification_id}/code", json={"code": code}
        )
        return status, body

    async def get(self, replica: Replica, verification_id: str) -> dict[str, Any]:
        status, _, view = await self.call(replica, "GET", f"/verifications/{verification_id}")
        assert status == 200, (replica, view)
        result: dict[str, Any] = view
        return result

    async def cancel(self, replica: Replica, verification_id: str) -> tuple[int, Any]:
        status, _, body = await self.call(replica, "DELETE", f"/verifications/{verification_id}")
        return status, body

    async def wait_final(
        self, replica: Replica, ids: Iterable[str], seconds: float = 15
    ) -> dict[str, dict[str, Any]]:
        """The view of each of `ids` once none is pending; AssertionError after `seconds`."""
        waiting = set(ids)
        finals: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + seconds
        while waiting:
            for verification_id in list(waiting):
                view = await self.get(replica, verification_id)
                if view["status"] != "pending":
                    finals[verification_id] = view
                    waiting.discard(verification_id)
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still pending after {seconds} s: {sorted(waiting)}")
            await asyncio.sleep(0.05)
        return finals

    # -- metrics -------------------------------------------------------------------------------

    async def adopted(self, replicas: Iterable[Replica] | None = None) -> float:
        """`verifications_adopted_total`, summed over `replicas` (those running, by default)."""
        total = 0.0
        for r in replicas if replicas is not None else [r for r in self.replicas if r.running]:
            async with self.session().get(f"{r.url}/metrics") as response:
                text = await response.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == ADOPTED:
                        total += sample.value
        return total

    async def wait_adopted(
        self, count: float, since: float, replicas: Iterable[Replica], seconds: float = 30
    ) -> float:
        """Seconds from `since` (monotonic) until `replicas` adopted `count` in all."""
        chosen = list(replicas)
        deadline = time.monotonic() + seconds
        while (adopted := await self.adopted(chosen)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{adopted:g} of {count:g} adopted after {seconds} s\n{self.logs()}"
                )
            await asyncio.sleep(0.02)
        return time.monotonic() - since

    # -- the database --------------------------------------------------------------------------

    def connection(self) -> asyncpg.Connection:
        assert self.db is not None, "the cluster is not open"
        return self.db

    async def row(self, verification_id: str) -> dict[str, Any]:
        """The verification's row, every column."""
        found = await self.connection().fetchrow(
            "SELECT * FROM verifications WHERE id = $1", verification_id
        )
        assert found is not None, verification_id
        return dict(found)

    async def rows(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        found = await self.connection().fetch(
            "SELECT * FROM verifications WHERE id = ANY($1::text[])", list(ids)
        )
        return {r["id"]: dict(r) for r in found}

    async def outbox(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        found = await self.connection().fetch(
            "SELECT * FROM outbox WHERE verification_id = ANY($1::text[])", list(ids)
        )
        return {r["verification_id"]: dict(r) for r in found}

    async def held_by(self, replica: Replica) -> int:
        """Pending verifications `replica` holds."""
        count: int = await self.connection().fetchval(
            "SELECT count(*) FROM verifications WHERE status = 'pending' AND holder = $1",
            replica.name,
        )
        return count

    async def epoch(self, replica: Replica) -> int | None:
        value: int | None = await self.connection().fetchval(
            "SELECT epoch FROM replicas WHERE name = $1", replica.name
        )
        return value

    async def rejoined(self, replica: Replica, epoch: int | None, seconds: float = 10) -> int:
        """Until `replica` joins again under a new epoch (after `epoch`); the new one."""
        deadline = time.monotonic() + seconds
        while True:
            now = await self.epoch(replica)
            if now is not None and now != epoch:
                return now
            if time.monotonic() > deadline:
                raise AssertionError(f"{replica} did not join again within {seconds} s")
            await asyncio.sleep(0.05)

    async def wait_sms_recorded(self, ids: Iterable[str], seconds: float = 10) -> None:
        """Until each of `ids` has its SMS checkpointed (`sms_sent_at` set)."""
        wanted = list(ids)
        deadline = time.monotonic() + seconds
        while True:
            unsent = await self.connection().fetchval(
                "SELECT count(*) FROM verifications WHERE id = ANY($1::text[])"
                " AND sms_sent_at IS NULL",
                wanted,
            )
            if unsent == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{unsent} SMS not recorded after {seconds} s")
            await asyncio.sleep(0.02)

    # -- the queue -----------------------------------------------------------------------------

    async def outcomes(
        self, ids: Iterable[str], seconds: float = 30, quiet: float = 1.0
    ) -> dict[str, list[Outcome]]:
        """Every message received by now, by verification id: read until each of `ids` has
        one, then until the queue stays empty for `quiet` seconds, so that a second copy of one
        cannot be left unread.
        """
        wanted = set(ids)
        deadline = time.monotonic() + seconds
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            batch = await receive_all(self.sqs, self.queue_url, count=1, seconds=0.5)
            for m in batch:
                sent = int(m["Attributes"]["SentTimestamp"]) / 1000
                self.received.append(Outcome(json.loads(m["Body"]), sent))
            seen = {o.id for o in self.received}
            if batch or not wanted <= seen:
                quiet_since = None
                continue
            if quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                break
        by_id: dict[str, list[Outcome]] = {}
        for o in self.received:
            by_id.setdefault(o.id, []).append(o)
        return by_id


MakeReplicas = Callable[..., Awaitable[Replicas]]


@pytest.fixture
async def replica_twilio() -> AsyncIterator[ReplicaTwilio]:
    server = ReplicaTwilio()  # not `async with`: its __aenter__ is typed as the base class's
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_replicas(
    tmp_path: Path,
    postgres_database_url: str,
    replica_twilio: ReplicaTwilio,
    sqs_client: SqsClient,
    queue_settings: QueueSettings,
) -> AsyncIterator[MakeReplicas]:
    """Starts the test's replicas (once), all healthy; kills whatever is left of them after."""
    made: list[Replicas] = []

    async def make(
        count: int = 3,
        *,
        lease_seconds: float = LEASE_SECONDS,
        ttl_seconds: float = 30.0,
        **env: str,
    ) -> Replicas:
        assert not made, "one cluster per test"
        shared = {
            "VERIFY_DATABASE_URL": postgres_database_url,
            "VERIFY_DATABASE_SECRET": secrets.token_hex(32),
            "VERIFY_DATABASE_LEASE_SECONDS": str(lease_seconds),
            # Where a secret file would go, were it needed: never the working directory.
            "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
            "VERIFY_VERIFICATION_TTL_SECONDS": str(ttl_seconds),
            "VERIFY_SMS_SENDER": "twilio",
            "VERIFY_SMS_AUTH_TOKEN": replica_twilio.auth_token,
            "VERIFY_SMS_FROM_NUMBER": "+15005550006",
            "VERIFY_SMS_API_BASE_URL": replica_twilio.base_url,
            "VERIFY_SMS_RETRY_DELAYS": "0.05,0.1",
            "VERIFY_AUTH_API_KEYS": API_KEY,
            "VERIFY_QUEUE_URL": str(queue_settings.url),
            "VERIFY_QUEUE_ENDPOINT_URL": str(queue_settings.endpoint_url),
            "VERIFY_QUEUE_RETRY_DELAYS": "0.05,0.1,0.2",
            "VERIFY_SERVER_SHUTDOWN_GRACE_SECONDS": "1",
            **env,
        }
        names = [chr(ord("a") + i) for i in range(count)]
        cluster = Replicas(
            [Replica(name, shared, tmp_path / f"replica-{name}.log") for name in names],
            database_url=postgres_database_url,
            twilio=replica_twilio,
            sqs=sqs_client,
            queue_url=str(queue_settings.url),
            lease_seconds=lease_seconds,
            ttl_seconds=ttl_seconds,
        )
        made.append(cluster)
        await cluster.open()
        return cluster

    yield make
    for cluster in made:
        await cluster.close()
