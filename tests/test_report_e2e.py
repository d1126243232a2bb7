"""A staging run, end to end: real proxy processes in report mode, their JSON decision log, the
live report, the HTML page in a real headless browser, and the offline ``report --log``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import RedisServer, free_port, grants
from tests.fakes import FakePipedrive
from tests.processes import ROOT, run, serving, wait_ready, write_config

pytestmark = pytest.mark.slow

APP_SCOPES = ["base", "deals:read", "contacts:full", "activities:read"]
# (token, method, path): alice holds deals:read and contacts:full, bob deals:full.
SCENARIO = [
    *[("alice", "GET", "/v1/deals/1")] * 3,
    ("alice", "GET", "/api/v2/persons"),
    ("alice", "DELETE", "/v1/deals/1"),  # out of alice's scopes
    ("alice", "GET", "/v1/activities"),  # out of alice's scopes
    ("bob", "DELETE", "/api/v2/deals/2"),  # bob may, the app's declaration may not
    ("bob", "GET", "/v1/noSuchThing/884217739?email=bob@example.com"),  # not in the catalogue
    ("bob", "GET", "/v1/users/me"),
]
EXPECTED_MINIMAL = ["activities:read", "contacts:read", "deals:full"]
EXPECTED_UNUSED = ["contacts:full", "deals:read"]


def scenario_config(tmp_path: Path, upstream: FakePipedrive, store: str = "memory") -> str:
    return write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        mode="report",
        app_scopes=APP_SCOPES,
        tokens=grants(alice=["deals:read", "contacts:full"], bob=["deals:full"]),
        store=store,
    )


async def play(port: int, scenario: list[tuple[str, str, str]]) -> list[tuple[int, str]]:
    seen = []
    async with aiohttp.ClientSession() as client:
        for token, method, path in scenario:
            headers = {"Authorization": f"Bearer {token}"}
            async with client.request(
                method, f"http://127.0.0.1:{port}{path}", headers=headers
            ) as r:
                seen.append((r.status, r.headers["X-Scope-Proxy-Decision"]))
    return seen


async def fetch(port: int, path: str, method: str = "GET", **options: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, f"http://127.0.0.1:{port}{path}", **options) as response,
    ):
        return response.status, await response.text()


def offline_report(log: Path, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "report", "--log", str(log), *extra],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = (
        json.loads(result.stdout) if "json" in extra else {"text": result.stdout}
    )
    return document


def as_from_a_log(live: dict[str, Any]) -> dict[str, Any]:
    """The live report as a log gives it: the tokens still unknown are the live process's own
    count (a log has no hour of its own to count them in)."""
    assert isinstance(live["unknown_tokens"], int)
    return {**live, "unknown_tokens": None}


def chips(html: str, element_id: str) -> list[str]:
    found = re.search(rf'id="{element_id}">(.*?)</p>', html, re.S)
    assert found, element_id
    return re.findall(r'<span class="scope[^"]*">([^<]+)</span>', found.group(1))


async def test_live_report_html_page_and_offline_report_agree(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    config_path = scenario_config(tmp_path, upstream)
    port = free_port()
    log = tmp_path / "decisions.jsonl"
    with serving(config_path, port) as process:
        await wait_ready(port)
        outcomes = await play(port, SCENARIO)
        status, text = await fetch(port, "/_proxy/report")
        live = json.loads(text)
        html_status, html = await fetch(port, "/_proxy/report.html")
        process.terminate()
        await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
        assert process.stdout is not None
        log.write_text(process.stdout.read())

    # Report mode forwarded every authenticated call and marked what enforce would refuse.
    assert [s for s, _ in outcomes] == [200] * len(SCENARIO)
    assert [d for _, d in outcomes].count("report") == 4
    assert len(upstream.received) == len(SCENARIO)

    assert status == 200
    overall = live["overall"]
    assert overall["minimal_scopes"] == EXPECTED_MINIMAL
    assert overall["unused_app_scopes"] == EXPECTED_UNUSED
    assert overall["requests"] == len(SCENARIO)
    assert overall["token_cost"] == 3 * 2 + 10 + 6 + 20 + 3 + 2  # x-token-cost of each call
    assert {(d["endpoint"], d["reason"]) for d in overall["denied"]} == {
        ("DELETE /v1/deals/{id}", "out_of_scope"),
        ("GET /v1/activities", "out_of_scope"),
        ("DELETE /api/v2/deals/{id}", "outside_app_scopes"),
        ("GET /v1/noSuchThing/{id}", "unknown_endpoint"),  # its shape: no id, no query
    }
    assert [t["minimal_scopes"] for t in live["tokens"]] != []

    assert html_status == 200
    assert chips(html, "recommended") == overall["minimal_scopes"]
    assert chips(html, "unused") == overall["unused_app_scopes"]
    assert (
        "GET /v1/activities would be refused once: it needs one of activities:full, "
        "activities:read, which the token does not hold." in html
    )

    offline = offline_report(log, "--format", "json")
    assert offline == as_from_a_log(live)  # one report, live or from the log
    assert "884217739" not in log.read_text()  # too long to turn up in a timestamp by chance
    assert "example.com" not in log.read_text()
    text_report = offline_report(log)["text"]
    assert "recommended scopes: activities:read, contacts:read, deals:full" in text_report


async def test_stray_requests_are_counted_apart_and_never_fail_the_gate(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(alice=["deals:read"]),
    )
    port = free_port()
    log = tmp_path / "decisions.jsonl"
    with serving(config_path, port, log=log) as process:
        await wait_ready(port)
        outcomes = await play(port, [("alice", "GET", "/v1/deals/1")] * 2)
        for stray in ("/", "/favicon.ico", "/healthz", "/_proxy/nope"):
            assert (await fetch(port, stray))[0] == 404
        # Refused by the proxy's own endpoints: not API calls either.
        assert (await fetch(port, "/_proxy/report/reset", "POST", data=b"{}"))[0] == 415
        assert (await fetch(port, "/_proxy/health", "POST"))[0] == 405
        live = json.loads((await fetch(port, "/_proxy/report"))[1])
        process.terminate()
        await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
    assert outcomes == [(200, "allow")] * 2
    assert live["not_api_calls"] == 6
    assert live["refused_before_decision"] == []
    assert live["overall"]["requests"] == 2
    gate = run("report", "--log", str(log), "--fail-on", "denied")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "not API calls (not counted above): 6" in gate.stdout
    assert offline_report(log, "--format", "json") == as_from_a_log(live)


async def test_reset_starts_a_new_staging_run(tmp_path: Path, upstream: FakePipedrive) -> None:
    config_path = scenario_config(tmp_path, upstream)
    port = free_port()
    with serving(config_path, port):
        await wait_ready(port)
        await play(port, SCENARIO[:2])
        assert json.loads((await fetch(port, "/_proxy/report"))[1])["overall"]["requests"] == 2
        assert (await fetch(port, "/_proxy/report/reset"))[0] == 405
        # A cross-site form or text/plain POST (a CORS "simple" request) cannot reset it.
        assert (await fetch(port, "/_proxy/report/reset", "POST", data="x"))[0] == 415
        assert json.loads((await fetch(port, "/_proxy/report"))[1])["overall"]["requests"] == 2
        assert (await fetch(port, "/_proxy/report/reset", "POST", json={}))[0] == 200
        assert json.loads((await fetch(port, "/_proxy/report"))[1])["overall"]["requests"] == 0


async def test_two_processes_sharing_redis_produce_one_report(
    tmp_path: Path, upstream: FakePipedrive, redis_server: RedisServer
) -> None:
    config_path = scenario_config(tmp_path, upstream, store=redis_server.url)
    first, second = free_port(), free_port()
    with serving(config_path, first), serving(config_path, second):
        await wait_ready(first)
        await wait_ready(second)
        await play(first, SCENARIO[:5])
        await play(second, SCENARIO[5:])
        report: dict[str, Any] = {}
        for _ in range(50):  # the other process adds its counts within a second
            report = json.loads((await fetch(first, "/_proxy/report"))[1])
            if report["overall"]["requests"] == len(SCENARIO):
                break
            await asyncio.sleep(0.1)
        assert report["overall"]["requests"] == len(SCENARIO)
        assert report["overall"]["minimal_scopes"] == EXPECTED_MINIMAL
        from_second = json.loads((await fetch(second, "/_proxy/report"))[1])
        assert from_second["overall"] == report["overall"]


class Browser:
    """Headless Chromium driven over the DevTools protocol."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Browser:
        self.process = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
             f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def page_socket(self, client: aiohttp.ClientSession) -> str:
        for _ in range(200):
            try:
                async with client.get(f"http://127.0.0.1:{self.port}/json/list") as response:
                    pages = [t for t in await response.json() if t["type"] == "page"]
                    if pages:
                        return str(pages[0]["webSocketDebuggerUrl"])
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("chromium did not open its DevTools port")

    async def visit(self, url: str, script: str, width: int = 1280) -> tuple[Any, list[str], bytes]:
        """Load ``url`` in a window ``width`` CSS pixels wide (390: a phone); return what
        ``script`` evaluates to, console errors, a screenshot."""
        errors: list[str] = []
        async with (
            aiohttp.ClientSession() as client,
            client.ws_connect(await self.page_socket(client), max_msg_size=0) as ws,
        ):
            counter = 0

            async def call(method: str, **params: Any) -> Any:
                nonlocal counter
                counter += 1
                await ws.send_json({"id": counter, "method": method, "params": params})
                while True:
                    message = json.loads((await asyncio.wait_for(ws.receive(), 20)).data)
                    note(message)
                    if message.get("id") == counter:
                        return message.get("result", {})

            loaded = asyncio.Event()

            def note(message: dict[str, Any]) -> None:
                method = message.get("method")
                params = message.get("params", {})
                if method == "Page.loadEventFired":
                    loaded.set()
                elif method == "Runtime.exceptionThrown":
                    errors.append(json.dumps(params.get("exceptionDetails")))
                elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                    errors.append(json.dumps(params.get("args")))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    errors.append(params["entry"].get("text", ""))

            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable")
            await call(
                "Emulation.setDeviceMetricsOverride",
                width=width, height=900, deviceScaleFactor=1, mobile=width < 600,
            )  # fmt: skip
            await call("Page.navigate", url=url)
            while not loaded.is_set():
                note(json.loads((await asyncio.wait_for(ws.receive(), 20)).data))
            await asyncio.sleep(0.3)  # late console messages
            result = await call("Runtime.evaluate", expression=script, returnByValue=True)
            shot = await call("Page.captureScreenshot", format="png")
        return result["result"].get("value"), errors, base64.b64decode(shot["data"])


async def test_report_page_renders_in_a_real_browser_without_console_errors(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    config_path = scenario_config(tmp_path, upstream)
    port = free_port()
    page_facts = """({
        recommended: Array.from(document.querySelectorAll('#recommended .scope'))
            .map(e => e.textContent),
        change: Array.from(document.querySelectorAll('#change li')).map(e => e.textContent),
        window: document.querySelector('#window').textContent,
        json: document.querySelector('#window a').getAttribute('href'),
        sideways: document.documentElement.scrollWidth - window.innerWidth,
        jargon: Array.from(document.querySelectorAll('td span.report'))
            .filter(e => e.textContent === 'report').length,
    })"""
    with serving(config_path, port):
        await wait_ready(port)
        async with Browser(binary) as browser:
            empty, errors, _ = await browser.visit(
                f"http://127.0.0.1:{port}/_proxy/report.html", page_facts
            )
            assert errors == []
            assert empty["change"] == []  # no traffic yet: nothing to change, nothing red
            await play(port, SCENARIO)
            pages = {}
            for width in (1280, 390):
                facts, errors, screenshot = await browser.visit(
                    f"http://127.0.0.1:{port}/_proxy/report.html", page_facts, width
                )
                (tmp_path / f"report-{width}.png").write_bytes(screenshot)
                assert errors == [], width
                assert screenshot.startswith(b"\x89PNG")
                pages[width] = facts
    for width, facts in pages.items():
        assert facts["recommended"] == EXPECTED_MINIMAL
        assert facts["sideways"] <= 0, f"the page scrolls sideways at {width} px"
        assert facts["json"] == "/_proxy/report"
        assert facts["window"].startswith("Mode report")
        assert facts["jargon"] == 0
        assert facts["change"], "the change to make is on the page"
