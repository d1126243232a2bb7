"""Which company a token belongs to: the host of the ``api_domain`` Pipedrive answers its token
exchange with (read before the proxy points it at itself), or a static grant's ``company``.
A company's daily token budget is shared by every app and user of it (the budget governor)."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from proxy.config import ConfigError, load_config
from proxy.core.credentials import token_digest
from proxy.core.oauth import company_of, read_token_response
from proxy.http.state import STORE
from tests.conftest import ProxyFactory, sha
from tests.fakes import FakeOAuth, FakePipedrive
from tests.processes import write_config


@pytest.mark.parametrize(
    ("api_domain", "company"),
    [("https://acme.pipedrive.com", "acme.pipedrive.com"),
     ("https://Acme-Sales.pipedrive.com/", "acme-sales.pipedrive.com"),
     ("https://acme.pipedrive.com:443", "acme.pipedrive.com"),
     ("acme.pipedrive.com", None), ("https://", None), ("https://a b.pipedrive.com", None),
     ("https://localhost", None), (42, None), (None, None)],
)  # fmt: skip
def test_the_company_is_the_api_domains_host(api_domain: object, company: str | None) -> None:
    assert company_of(api_domain) == company


def test_a_token_answer_teaches_the_company() -> None:
    body = (b'{"access_token": "t", "scope": "base,deals:read", "expires_in": 3599, '
            b'"api_domain": "https://acme.pipedrive.com"}')  # fmt: skip
    learned = read_token_response(body, now=0.0)
    assert learned is not None
    assert learned.company == "acme.pipedrive.com"


async def test_the_exchange_through_the_proxy_records_the_company_before_it_rewrites_api_domain(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth(scope="base,deals:read").respond  # api_domain: acme
    client = await make_proxy()
    with capture_logs() as events:
        answer = await client.post(
            "/oauth/token", data="grant_type=authorization_code&code=a",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        body = await answer.json()
    assert body["api_domain"] == f"http://{client.host}:{client.port}"  # the app's: the proxy
    learned = await client.app[STORE].get(token_digest(body["access_token"]))
    assert learned is not None
    assert learned.company == "acme.pipedrive.com"  # Pipedrive's
    [event] = [e for e in events if e["event"] == "token_learned"]
    assert event["company"] == "acme.pipedrive.com"


def test_a_static_grant_may_name_its_company(tmp_path: Path) -> None:
    grant = {"name": "sync", "sha256": sha("sync"), "scopes": ["deals:read"]}
    config = load_config(
        write_config(tmp_path, tokens=[{**grant, "company": "acme.pipedrive.com"}])
    )
    assert config.tokens[0].company == "acme.pipedrive.com"
    assert config.shown()["tokens"][0]["company"] == "acme.pipedrive.com"
    assert load_config(write_config(tmp_path, tokens=[grant])).tokens[0].company is None
    with pytest.raises(ConfigError, match=r"tokens\[0\]\.company: expected its API host"):
        load_config(write_config(tmp_path, tokens=[{**grant, "company": "not a host"}]))
