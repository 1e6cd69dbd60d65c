"""The tests' fake Twilio with two routes a load driver needs, run as its own process.

    GET /_bench/code?to=+1...&timeout=S   waits for the next message to that number:
                                          {"code", "time"}
    GET /_bench/count                     {"messages": accepted,
                                           "attempts": requests to Messages.json}

Waiting on the server, instead of polling `/_test/messages`, costs one request per code and adds
no polling delay. `python -m bench.twilio --port N` serves until SIGTERM.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

from tests.support.twilio import TwilioServer, serve

MAX_WAIT_SECONDS = 60.0


class BenchTwilioServer(TwilioServer):
    def _app(self) -> web.Application:
        app = super()._app()
        app.router.add_get("/_bench/code", self._code)
        app.router.add_get("/_bench/count", self._count)
        return app

    async def _code(self, request: web.Request) -> web.Response:
        to = request.query.get("to", "")
        timeout = min(float(request.query.get("timeout", "10")), MAX_WAIT_SECONDS)
        try:
            message = await self.wait_for_message(to, timeout)
        except TimeoutError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response({"code": message.code, "time": message.time})

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": len(self.messages), "attempts": self.attempts})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, BenchTwilioServer))


if __name__ == "__main__":
    main()
