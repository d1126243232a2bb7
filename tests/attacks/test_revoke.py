"""A revocation forgets exactly the token the OAuth server revokes, never another one.

The form is decoded once, as the OAuth server decodes it. Reading it a second time as well
would let anyone holding client credentials make the proxy forget a token by sending an encoding
of it: ``token=v1u%253Aab`` names ``v1u%3Aab``, not ``v1u:ab``.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import ProxyFactory
from tests.fakes import FakeOAuth, FakePipedrive

FORM = {
    "Authorization": "Basic Y2xpZW50OnNlY3JldA==",
    "Content-Type": "application/x-www-form-urlencoded",
}


async def status_for(client: TestClient[Any, Any], token: str) -> int:
    response = await client.get("/v1/deals", headers={"Authorization": f"Bearer {token}"})
    return response.status


async def test_revoke_forgets_only_what_the_form_parser_reads(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth(scope="deals:read", tokens=("v1u:ab",)).respond
    client = await make_proxy()
    exchanged = await client.post("/oauth/token", data="grant_type=x&code=c", headers=FORM)
    assert exchanged.status == 200
    assert await status_for(client, "v1u:ab") == 200

    # Names "v1u%3Aab" once decoded, as the OAuth server reads it: not the learned token.
    revoked = await client.post("/oauth/revoke", data="token=v1u%253Aab", headers=FORM)
    assert revoked.status == 200
    assert await status_for(client, "v1u:ab") == 200, "a second decoding names another token"

    revoked = await client.post("/oauth/revoke", data="token=v1u%3Aab", headers=FORM)
    assert revoked.status == 200
    assert await status_for(client, "v1u:ab") == 401, "the token the OAuth server read is forgotten"
