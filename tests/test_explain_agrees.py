"""`explain` and the server agree on every catalogue path and method, under each
``unknown_endpoints`` setting: the same pre-check (405 and the methods it lists), the same
endpoint or none (404), the same decision. The server is asked over HTTP; `explain` is the
command's own ``describe``."""

from __future__ import annotations

import asyncio
import re

import pytest

from proxy.cli.explain import describe
from proxy.core.catalog import DISPLAY_PREFIX
from tests.conftest import CATALOGUE, ProxyFactory, build_config, envelope, grants
from tests.tables import concrete

ALL_SCOPES = sorted(CATALOGUE.scopes)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND")
PATHS = sorted({DISPLAY_PREFIX[e.version] + concrete(e.template) for e in CATALOGUE.endpoints})


def explained(lines: list[str]) -> tuple[int, str]:
    """(status, what): the status the proxy answers with, and the reason or the Allow list."""
    text = "\n".join(lines)
    refused = re.search(r"refused with (\d+): .*this path takes (.*)$", text, re.M)
    if refused:
        return int(refused[1]), refused[2]
    decision = re.search(r"decision: +(\w+) \((\w+)\)", text)
    assert decision is not None, text
    verdict, reason = decision.groups()
    if verdict == "allow":
        return 200, reason
    return (404 if reason == "unknown_endpoint" else 403), reason


@pytest.mark.parametrize("unknown_endpoints", ["deny", "allow"])
async def test_explain_and_the_server_agree_on_every_path_and_method(
    make_proxy: ProxyFactory, unknown_endpoints: str
) -> None:
    tokens = grants(everything=ALL_SCOPES)
    client = await make_proxy(tokens=tokens, unknown_endpoints=unknown_endpoints)
    config, catalogue = build_config("http://127.0.0.1:9", unknown_endpoints=unknown_endpoints)
    auth = {"Authorization": "Bearer everything"}

    async def served(method: str, path: str) -> tuple[int, str]:
        response = await client.request(method, path, headers=auth)
        if response.status == 405:
            return 405, response.headers["Allow"]
        if response.status == 200:
            return 200, "in_scope" if response.headers["X-Scope-Proxy-Decision"] == "allow" else ""
        if method == "HEAD":  # an answer without a body: its status says it
            return response.status, ""
        return response.status, envelope(await response.read())["scope_proxy"]["reason"]

    calls = [(method, path) for path in PATHS for method in METHODS]
    answers = []
    for start in range(0, len(calls), 64):
        batch = calls[start : start + 64]
        answers += await asyncio.gather(*(served(method, path) for method, path in batch))
    disagreements = []
    for (method, path), (status, what) in zip(calls, answers, strict=True):
        lines, _ = describe(config, catalogue, method, path, frozenset(ALL_SCOPES))
        said_status, said = explained(lines)
        if status == 200 and said_status == 200:
            continue  # in scope, or an unknown endpoint forwarded: both let it through
        if (status, what) != (said_status, said if what or method != "HEAD" else ""):
            disagreements.append(
                f"{method} {path}: server {status} {what}, explain {said_status} {said}"
            )
    assert disagreements == [], "\n".join(disagreements[:20])
    assert len(calls) > 2_000
