"""Every catalogued endpoint, end to end: one accepting scope forwards it, none refuses it.

Parametrized twice, independently: from the shipped catalogue, and from the founding document's
own text read by a parser written here, so that a bug in the generator cannot hide itself.
The module's tests share one fake Pipedrive and one proxy (each test's tokens granted up front):
over a thousand of them, each would otherwise start its own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.core.catalog import DISPLAY_PREFIX, Endpoint
from proxy.http.app import create_app
from tests.conftest import CATALOGUE, ProxyTestServer, build_config, envelope, grants
from tests.fakes import FakeClock, FakePipedrive
from tests.tables import PIPEDRIVE_403, concrete

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop the shared servers run in
Served = tuple[TestClient[web.Request, web.Application], FakePipedrive]

ALL_SCOPES = sorted(CATALOGUE.scopes)
FOUNDING_TEXT = (
    Path(__file__).parent.parent / "catalog/sources/scopes-and-permissions.txt"
).read_text()


def others(scopes: frozenset[str]) -> list[str]:
    """Every scope but those that accept an endpoint (and ``base``, granted to every app)."""
    return sorted(set(ALL_SCOPES) - scopes - {"base"})


# A token per set of accepting scopes, holding every other scope.
OTHERS = {scopes: f"others-{n}" for n, scopes in enumerate({e.scopes for e in CATALOGUE.endpoints})}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[Served]:
    """The fake Pipedrive, and the proxy in front of it with every token the module's tests
    use: one per scope, named after it; one holding nothing; the ``OTHERS``."""
    upstream = FakePipedrive()
    fake = web.Application()
    fake.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = TestServer(fake)
    await server.start_server()
    upstream.url = str(server.make_url("")).rstrip("/")
    tokens = grants(
        **{f"only-{scope}": [scope] for scope in ALL_SCOPES},
        nothing=[],
        **{name: others(scopes) for scopes, name in OTHERS.items()},
    )
    config, catalogue = build_config(upstream.url, tokens=tokens)
    client = TestClient(ProxyTestServer(create_app(config, catalogue, clock=FakeClock())))
    await client.start_server()
    yield client, upstream
    await client.close()
    await server.close()


def endpoint_id(endpoint: Endpoint) -> str:
    return endpoint.name


@in_module_loop
@pytest.mark.parametrize("endpoint", CATALOGUE.endpoints, ids=endpoint_id)
async def test_catalogued_endpoint_is_forwarded_for_each_accepting_scope_and_refused_without(
    endpoint: Endpoint, served: Served
) -> None:
    client, upstream = served
    upstream.received.clear()
    prefixes = ["/v1", "/api/v1"] if endpoint.version == "v1" else ["/api/v2"]
    body = b'{"title": "x"}' if endpoint.method in ("POST", "PUT", "PATCH") else b""
    sent = []
    for scope in sorted(endpoint.scopes):
        for prefix in prefixes:
            path = prefix + concrete(endpoint.template)
            response = await client.request(
                endpoint.method, path, headers={"Authorization": f"Bearer only-{scope}"}, data=body
            )
            assert response.status == 200, (scope, path, await response.text())
            assert response.headers["X-Scope-Proxy-Decision"] == "allow"
            sent.append((endpoint.method, path, body))
    assert [(r.method, r.raw_path, r.body) for r in upstream.received] == sent

    path = DISPLAY_PREFIX[endpoint.version] + concrete(endpoint.template)
    response = await client.request(
        endpoint.method,
        path,
        headers={"Authorization": f"Bearer {OTHERS[endpoint.scopes]}"},
        data=body,
    )
    if "base" in endpoint.scopes:
        assert response.status == 200  # base is granted to every app
        return
    assert response.status == 403
    answer = envelope(await response.read())
    assert {k: answer[k] for k in PIPEDRIVE_403} == PIPEDRIVE_403
    assert answer["scope_proxy"] == {
        "reason": "out_of_scope",
        "endpoint": endpoint.name,
        "accepted_scopes": sorted(endpoint.scopes),
        "granted_scopes": others(endpoint.scopes),
    }
    assert response.headers["X-Scope-Proxy-Decision"] == "deny"
    assert len(upstream.received) == len(sent), "a refused call reached the upstream"


def founding_entries() -> list[tuple[str, str, str]]:
    """(scope, method, path) as the founding document lists them, with its two typos fixed."""
    typos = {
        "/deals/{id}participants": "/deals/{id}/participants",
        "/teams/users/{id}": "/teams/user/{id}",
    }
    entries = []
    for scope, block in re.findall(r'"([a-z][a-z:-]*)": \[(.*?)\]', FOUNDING_TEXT, re.S):
        for method, path in re.findall(r'"(GET|POST|PUT|PATCH|DELETE) (/[^"]+)"', block):
            entries.append((scope, method, typos.get(path, path)))
    return entries


FOUNDING = founding_entries()


def test_the_founding_document_parser_here_sees_all_twenty_scopes() -> None:
    assert len({scope for scope, _, _ in FOUNDING}) == 20
    assert len(FOUNDING) > 300


@in_module_loop
@pytest.mark.parametrize(
    ("scope", "method", "path"), FOUNDING, ids=[f"{m} {p} under {s}" for s, m, p in FOUNDING]
)
async def test_founding_document_entry_is_forwarded_with_its_scope_and_refused_with_none(
    scope: str, method: str, path: str, served: Served
) -> None:
    client, upstream = served
    upstream.received.clear()
    target = "/v1" + concrete(path)
    response = await client.request(
        method, target, headers={"Authorization": f"Bearer only-{scope}"}
    )
    assert response.status == 200, await response.text()
    assert [(r.method, r.raw_path) for r in upstream.received] == [(method, target)]

    response = await client.request(method, target, headers={"Authorization": "Bearer nothing"})
    if scope == "base":
        assert response.status == 200
        return
    assert response.status == 403
    assert envelope(await response.read())["error"] == "Scope and URL mismatch"
    assert len(upstream.received) == 1, "a refused call reached the upstream"
