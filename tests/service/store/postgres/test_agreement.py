"""What replicas on one database must share: the code secret, and only that of the code book."""

from __future__ import annotations

import pytest

from service.errors import ConfigError
from tests.support.api import AUTH, MakeClient, MakeSettings, start
from tests.support.twilio import TwilioServer

SECRET = "ab" * 32


async def test_another_secret_is_refused_another_code_length_is_not(
    url: str, make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    # `url` first: its database is dropped after the clients on it are closed.
    def replica(name: str, secret: str, length: int) -> object:
        return make_settings(
            database={"url": url, "secret": secret, "replica_name": name},
            verification={"code_length": length},
        )

    first = await make_client(replica("a", SECRET, 6))
    view = await start(first, "+14155550100")
    code = (await twilio.wait_for_message("+14155550100")).code or ""
    with pytest.raises(ConfigError, match="different secret"):
        await make_client(replica("b", "cd" * 32, 6))
    # The same secret with longer codes: it starts, and the six-digit code still approves.
    longer = await make_client(replica("c", SECRET, 8))
    r = await longer.post(
        f"/verifications/{view['id']}/code",
        json={"code": code},
        headers=AUTH,
    )
    body = await r.json()
    assert (r.status, body.get("status")) == (200, "approved"), body
