"""Drift end to end, as an operator meets it: ``serve`` in report mode in front of a Pipedrive
that disagrees with the catalogue, the live report and ``report --log`` giving the same drift
(first and last seen included), ``report --fail-on drift`` failing, then passing after a reset
in a run where Pipedrive agrees, whatever the credential; and a static grant Pipedrive refused
shown as ``grant_mismatch`` without failing the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import free_port, sha
from tests.fakes import FakeOAuth, FakePipedrive, ScopedPipedrive
from tests.processes import serving, wait_ready
from tests.test_staging import log_report, same_reports

pytestmark = pytest.mark.slow

STATIC = "static-token-for-the-crm-sync"
API_TOKEN = "0123456789abcdef0123456789abcdef01234567"
FORM = {"grant_type": "authorization_code", "code": "abc"}


async def call(client: aiohttp.ClientSession, port: int, method: str, path: str,
               headers: dict[str, str]) -> str:  # fmt: skip
    async with client.request(method, f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        await r.read()
        return f"{r.headers['X-Scope-Proxy-Decision']} {r.status}"


async def test_drift_in_the_live_report_and_the_log_alike_and_the_gate_on_it(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    pipedrive = ScopedPipedrive(
        FakeOAuth(scope="base,goals:read,contacts:read"),
        held={STATIC: frozenset({"contacts:read"}), API_TOKEN: frozenset({"deals:read"})},
        differs={"GET /v1/goals/find": {"admin"},  # Pipedrive refuses what the catalogue allows
                 "GET /v1/deals/{id}": {"deals:read", "deals:full", "contacts:read"},
                 "GET /v1/brandNewThings/7": {"base"}},  # and knows an endpoint it does not
        encoding="gzip",
    )  # fmt: skip
    upstream.respond = pipedrive.respond
    document: dict[str, Any] = {
        "mode": "report",
        "app_scopes": ["contacts:read", "deals:read", "goals:read"],
        "api_tokens": "app_scopes",
        "upstream": {"api_url": upstream.url, "oauth_url": upstream.url},
        "tokens": [{"name": "crm-sync", "sha256": sha(STATIC), "scopes": ["deals:read"]}],
        "logging": {"format": "json", "level": "info"},
    }
    config, log = tmp_path / "proxy.yaml", tmp_path / "decisions.jsonl"
    config.write_text(yaml.safe_dump(document))
    port = free_port()
    with serving(str(config), port, log=log):
        await wait_ready(port)
        async with aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{port}/oauth/token", data=FORM) as r:
                learned = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
            gzip_ok = {**learned, "Accept-Encoding": "gzip"}
            answers = [
                await call(client, port, "GET", "/v1/goals/find", gzip_ok),
                await call(client, port, "GET", "/v1/goals/find", learned),
                await call(client, port, "GET", "/v1/deals/1", learned),
                await call(client, port, "GET", "/v1/brandNewThings/7", learned),
                await call(client, port, "GET", "/v1/persons/1", learned),  # agreed
            ]
            assert answers == ["allow 403", "allow 403", "report 200", "report 200", "allow 200"]
            first = await same_reports(port, log)
            kinds = {(e["kind"], e["endpoint"], e["count"]) for e in first["overall"]["drift"]}
            assert kinds == {("too_generous", "GET /v1/goals/find", 2),
                             ("too_strict", "GET /v1/deals/{id}", 1),
                             ("missing", "GET /v1/brandNewThings/{id}", 1)}  # fmt: skip
            generous = next(e for e in first["overall"]["drift"] if e["kind"] == "too_generous")
            assert generous["first_seen"] < generous["last_seen"], "two calls, two times"
            assert log_report(log, "--fail-on", "drift")[0] == 1

            # A new run in which Pipedrive agrees with the catalogue, whatever the credential.
            async with client.post(f"http://127.0.0.1:{port}/_proxy/report/reset",
                                   headers={"Content-Type": "application/json"}) as r:  # fmt: skip
                assert r.status == 200
            pipedrive.differs.clear()
            pipedrive.held[STATIC] = frozenset({"deals:read"})
            pipedrive.held[API_TOKEN] = frozenset(document["app_scopes"])  # as it is taken to
            for auth in (learned, {"Authorization": f"Bearer {STATIC}"},
                         {"x-api-token": API_TOKEN}):  # fmt: skip
                for path in ("/v1/deals/1", "/v1/goals/find", "/v1/persons/1", "/v1/dealz"):
                    await call(client, port, "GET", path, auth)
            agreed = await same_reports(port, log)
            assert agreed["overall"]["drift"] == []
            assert log_report(log, "--fail-on", "drift")[0] == 0

            # A static grant Pipedrive refused: shown, never failing the gate.
            pipedrive.held[STATIC] = frozenset({"contacts:read"})
            assert await call(client, port, "GET", "/v1/deals/2",
                              {"Authorization": f"Bearer {STATIC}"}) == "allow 403"  # fmt: skip
            mismatch = await same_reports(port, log)
            [entry] = mismatch["overall"]["drift"]
            assert (entry["kind"], entry["grant"]) == ("grant_mismatch", "crm-sync")
            assert log_report(log, "--fail-on", "drift")[0] == 0
            metrics = await (await client.get(f"http://127.0.0.1:{port}/_proxy/metrics")).text()
            assert 'scope_proxy_drift_total{kind="grant_mismatch"} 1.0' in metrics
            assert 'scope_proxy_drift_total{kind="too_generous"} 2.0' in metrics
