"""The report cannot be reset cross-site.

A page on any origin can make the browser send a POST without asking the server first, if it
looks like a form (``text/plain``, ``application/x-www-form-urlencoded``,
``multipart/form-data``: a CORS "simple request"). Such a request to a proxy on localhost or an
internal address would wipe a staging run's report (CSRF, CWE-352). The reset requires
``Content-Type: application/json``, which a browser sends cross-site only after a preflight the
proxy never grants.
"""

from __future__ import annotations

import pytest

from tests.conftest import ProxyFactory, envelope, grants
from tests.fakes import FakePipedrive

SIMPLE = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    None,
]


@pytest.mark.parametrize("content_type", SIMPLE, ids=[str(t) for t in SIMPLE])
async def test_a_simple_cross_site_post_cannot_reset_the_report(
    content_type: str | None, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    headers = {"Origin": "https://evil.example"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/_proxy/report/reset", data=b"x", headers=headers)
    assert response.status == 415
    assert envelope(await response.read())["scope_proxy"]["reason"] == "unsupported_media_type"
    report = await (await client.get("/_proxy/report")).json()
    assert report["overall"]["requests"] == 1


async def test_a_json_post_resets_it(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    response = await client.post("/_proxy/report/reset", json={})
    assert response.status == 200
    assert (await (await client.get("/_proxy/report")).json())["overall"]["requests"] == 0


async def test_the_preflight_a_browser_would_send_first_is_not_granted(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy()
    response = await client.options(
        "/_proxy/report/reset",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )  # fmt: skip
    assert response.status >= 400
    assert "Access-Control-Allow-Origin" not in response.headers
