"""Requests to this surface are counted under its own route templates, apart from v1's."""

from __future__ import annotations

from typing import Any

from tests.support.durable import START, WEBHOOK, raise_code, relative, start
from tests.support.metrics import scrape, value
from tests.support.twilio import TwilioServer

LATENCY = "http_request_duration_seconds_count"


async def test_durable_routes_are_counted_by_their_templates(
    client: Any, twilio: TwilioServer
) -> None:
    links = await start(client)
    await start(client, "+14155550101", path="/orchestrators/E4_SmsPhoneVerification")
    code = (await twilio.wait_for_message("+14155550100")).code
    await raise_code(client, links, code)
    await client.get(relative(links["statusQueryGetUri"]))

    samples = await scrape(client)

    instance = f"{WEBHOOK}/instances/{{instanceId}}"
    counts = {
        (f"{START.rsplit('/', 1)[0]}/{{functionName}}", "POST", "202"): 1,
        ("/orchestrators/{functionName}", "POST", "202"): 1,
        (f"{instance}/raiseEvent/{{eventName}}", "POST", "202"): 1,
        (instance, "GET", "200"): 1,
    }
    for (route, method, status), count in counts.items():
        assert value(samples, LATENCY, route=route, method=method, status=status) == count, route
    assert value(samples, LATENCY, route="/verifications", method="POST", status="202") == 0
