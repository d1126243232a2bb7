"""Every catalogued endpoint, end to end: one accepting scope forwards it, none refuses it.

Parametrized twice, independently: from the shipped catalogue, and from the founding document's
own text read by a parser written here, so that a bug in the generator cannot hide itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.core.catalog import DISPLAY_PREFIX, Endpoint
from tests.conftest import CATALOGUE, ProxyFactory, envelope, grants
from tests.fakes import FakePipedrive
from tests.tables import PIPEDRIVE_403, concrete

ALL_SCOPES = sorted(CATALOGUE.scopes)
FOUNDING_TEXT = (
    Path(__file__).parent.parent / "catalog/sources/scopes-and-permissions.txt"
).read_text()


def scope_tokens() -> list[dict[str, object]]:
    """One static grant per scope, named after it, and one holding nothing."""
    return grants(**{f"only-{scope}": [scope] for scope in ALL_SCOPES}, nothing=[])


def endpoint_id(endpoint: Endpoint) -> str:
    return endpoint.name


@pytest.mark.parametrize("endpoint", CATALOGUE.endpoints, ids=endpoint_id)
async def test_catalogued_endpoint_is_forwarded_for_each_accepting_scope_and_refused_without(
    endpoint: Endpoint, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    others = sorted(set(ALL_SCOPES) - endpoint.scopes - {"base"})
    client = await make_proxy(tokens=[*scope_tokens(), *grants(others=others)])
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
        endpoint.method, path, headers={"Authorization": "Bearer others"}, data=body
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
        "granted_scopes": others,
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


@pytest.mark.parametrize(
    ("scope", "method", "path"), FOUNDING, ids=[f"{m} {p} under {s}" for s, m, p in FOUNDING]
)
async def test_founding_document_entry_is_forwarded_with_its_scope_and_refused_with_none(
    scope: str, method: str, path: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(holder=[scope], nothing=[]))
    target = "/v1" + concrete(path)
    response = await client.request(method, target, headers={"Authorization": "Bearer holder"})
    assert response.status == 200, await response.text()
    assert [(r.method, r.raw_path) for r in upstream.received] == [(method, target)]

    response = await client.request(method, target, headers={"Authorization": "Bearer nothing"})
    if scope == "base":
        assert response.status == 200
        return
    assert response.status == 403
    assert envelope(await response.read())["error"] == "Scope and URL mismatch"
    assert len(upstream.received) == 1, "a refused call reached the upstream"
