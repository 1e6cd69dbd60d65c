"""A small Twilio-compatible server for tests and benchmarks, like morpheus' `dummy_server.py`.

It accepts `POST /2010-04-01/Accounts/{sid}/Messages.json` as Twilio does (form body, HTTP basic
auth, the same JSON for a message and for an error), records what it was sent, refuses the magic
numbers Twilio's test credentials refuse, and fails on demand:

    POST   /_test/faults      {"mode": "none"|"error500"|"hang"|"accept_then_hang"|"garbage",
                               "count": N}
                              (count: optional; accept_then_hang records the message, then never
                              answers: Twilio took it but the answer was lost; garbage answers
                              201 with a body that is not JSON, which the SDK does not expect)
    GET    /_test/messages    ?to=+1...  the recorded messages, each with the code it carries
    DELETE /_test/messages    forget them

In-process: `async with TwilioServer() as twilio: ...`. Standalone, for subprocess tests and
benchmarks: `python -m tests.support.twilio --host 127.0.0.1 --port 4011`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import BasicAuth, web

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "test-auth-token"
FAULT_MODES = ("none", "error500", "hang", "accept_then_hang", "garbage")

#: The refusals Twilio's test credentials give for these `To` numbers.
MAGIC_NUMBERS: dict[str, tuple[int, str]] = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number: +15005550002, is not currently reachable."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for the region."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}

CODE = re.compile(r"(?<!\d)\d{4,10}(?!\d)")


@dataclass(frozen=True)
class Message:
    sid: str
    account_sid: str
    to: str
    from_: str
    messaging_service_sid: str
    body: str
    #: `time.time()` when it was accepted.
    time: float

    @property
    def code(self) -> str | None:
        """The last run of 4-10 digits in the body: the verification code, if there is one."""
        found = CODE.findall(self.body)
        return found[-1] if found else None

    def twilio_json(self) -> dict[str, Any]:
        """The Message resource as Twilio answers it, enough for the SDK's `MessageInstance`."""
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(self.time))
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": self.body,
            "date_created": date,
            "date_sent": None,
            "date_updated": date,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": self.from_ or None,
            "messaging_service_sid": self.messaging_service_sid or None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": "accepted" if self.messaging_service_sid else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": self.to,
            "uri": f"{uri}.json",
        }

    def record_json(self) -> dict[str, Any]:
        return {**self.twilio_json(), "time": self.time, "code": self.code}


class TwilioServer:
    """Serves the fake Twilio on `host:port` (port 0: a free one) while the context is open."""

    account_sid = ACCOUNT_SID
    auth_token = AUTH_TOKEN

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.messages: list[Message] = []
        #: Every request to Messages.json, faulted and refused ones included.
        self.attempts = 0
        #: Seconds each request takes before it is answered, and the most answered at once.
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._by_to: dict[str, list[Message]] = {}
        self._waited: dict[str, int] = {}
        self._arrivals: dict[str, list[asyncio.Future[None]]] = {}
        self._fault_mode = "none"
        self._fault_count: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def sender_env(self) -> dict[str, str]:
        """The service's settings for sending its SMS here through the Twilio sender."""
        return {
            "VERIFY_SMS_SENDER": "twilio",
            "VERIFY_SMS_ACCOUNT_SID": self.account_sid,
            "VERIFY_SMS_AUTH_TOKEN": self.auth_token,
            "VERIFY_SMS_FROM_NUMBER": "+15005550006",
            "VERIFY_SMS_API_BASE_URL": self.base_url,
        }

    async def __aenter__(self) -> TwilioServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        # handler_cancellation ends a hung request once its client gives up.
        self._runner = web.AppRunner(
            self._app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def set_faults(self, mode: str, count: int | None = None) -> None:
        """Fail the next `count` Messages requests (all of them if None) the way `mode` says."""
        if mode not in FAULT_MODES:
            raise ValueError(f"Fault mode must be one of {FAULT_MODES}, not {mode!r}.")
        if count is not None and count < 1:
            raise ValueError(f"Fault count must be 1 or more, or absent, not {count!r}.")
        self._fault_mode, self._fault_count = mode, count

    def messages_to(self, to: str) -> list[Message]:
        return list(self._by_to.get(to, ()))

    def clear(self) -> None:
        self.messages.clear()
        self._by_to.clear()
        self._waited.clear()

    # A per-call deadline reads better in a test than a timeout block around each wait.
    async def wait_for_message(self, to: str, timeout: float = 5) -> Message:  # noqa: ASYNC109
        """The next message to `to` that no earlier call returned, waiting up to `timeout` s."""
        seen = self._waited.get(to, 0)
        try:
            async with asyncio.timeout(timeout):
                while len(self._by_to.get(to, ())) <= seen:
                    arrival = asyncio.get_running_loop().create_future()
                    self._arrivals.setdefault(to, []).append(arrival)
                    await arrival
        except TimeoutError:
            raise TimeoutError(f"No new message to {to} within {timeout:g} s.") from None
        self._waited[to] = seen + 1
        return self._by_to[to][seen]

    def code_for(self, to: str) -> str:
        """The code in the last message to `to`."""
        sent = self._by_to.get(to)
        if not sent:
            raise LookupError(f"No message was sent to {to}.")
        code = sent[-1].code
        if code is None:
            raise LookupError(f"The last message to {to} has no code: {sent[-1].body!r}.")
        return code

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account_sid}/Messages.json", self._create)
        app.router.add_post("/_test/faults", self._faults)
        app.router.add_get("/_test/messages", self._list)
        app.router.add_delete("/_test/messages", self._clear)
        return app

    async def _create(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        fault = self._take_fault()
        if fault == "hang":
            await asyncio.Future()  # never done: cancelled when the client gives up
        if fault == "error500":
            return _error(500, 20500, "Internal Server Error")
        if fault == "garbage":
            return web.Response(status=201, text="<html>proxy says hello</html>")
        if not _authorized(request):
            return _error(401, 20003, "Authentication Error - No credentials provided")
        form = await request.post()
        refusal = _refusal({k: str(v) for k, v in form.items()})
        if refusal is not None:
            return _error(400, *refusal)
        message = Message(
            sid=f"SM{uuid.uuid4().hex}",
            account_sid=request.match_info["account_sid"],
            to=str(form["To"]),
            from_=str(form.get("From", "")),
            messaging_service_sid=str(form.get("MessagingServiceSid", "")),
            body=str(form.get("Body", "")),
            time=time.time(),
        )
        self._record(message)
        if fault == "accept_then_hang":
            await asyncio.Future()  # taken, but the answer never reaches the client
        return web.json_response(message.twilio_json(), status=201)

    def _take_fault(self) -> str:
        mode = self._fault_mode
        if self._fault_count is not None:
            self._fault_count -= 1
            if self._fault_count <= 0:
                self._fault_mode, self._fault_count = "none", None
        return mode

    def _record(self, message: Message) -> None:
        self.messages.append(message)
        self._by_to.setdefault(message.to, []).append(message)
        for arrival in self._arrivals.pop(message.to, ()):
            if not arrival.done():
                arrival.set_result(None)

    async def _faults(self, request: web.Request) -> web.Response:
        payload = await request.json()
        try:
            self.set_faults(payload.get("mode", "none"), payload.get("count"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"mode": self._fault_mode, "count": self._fault_count})

    async def _list(self, request: web.Request) -> web.Response:
        to = request.query.get("to")
        found = self.messages if to is None else self._by_to.get(to, [])
        return web.json_response([m.record_json() for m in found])

    async def _clear(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)


def _authorized(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    try:
        auth = BasicAuth.decode(header)
    except ValueError:
        return False
    return bool(auth.login and auth.password)


def _refusal(form: dict[str, str]) -> tuple[int, str] | None:
    """Twilio's code and message for a request it would refuse, or None."""
    to = form.get("To", "")
    if not to:
        return 21604, "A 'To' phone number is required."
    if not (form.get("From") or form.get("MessagingServiceSid")):
        return 21603, "A 'From' phone number is required."
    if not (form.get("Body") or form.get("MediaUrl") or form.get("ContentSid")):
        return 21602, "Message body is required."
    return MAGIC_NUMBERS.get(to)


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


async def serve(host: str, port: int, kind: type[TwilioServer] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `kind` is a subclass with routes of its own (bench/)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with (kind or TwilioServer)(host, port) as twilio:
        print(f"listening on {twilio.base_url}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4011)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
