"""The command line as users run it: a real process, its exit status and what it prints."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import free_port, grants, sha
from tests.fakes import FakeOAuth, FakePipedrive
from tests.processes import ROOT, run, serving, session, wait_ready, write_config
from tests.refusals import REFUSED

SECRET = "v1u:c2VjcmV0LXRva2Vu:dGhlLXJlc3Q="


def test_check_accepts_the_default_config() -> None:
    result = run("check", "--config", "config/proxy.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok: mode enforce, store memory, 459 endpoints" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: blue\n", "colour: unknown key"),
        ("app_scopes: [deals:write]\n", "app_scopes[0]: unknown scope 'deals:write'"),
        ("upstream: {api_url: not-a-url}\n", "upstream.api_url: not an absolute http(s) URL"),
        ("listen: {port: [8080\n", "malformed YAML: line"),
    ],
    ids=["unknown key", "unknown scope", "bad URL", "malformed YAML"],
)
def test_check_refuses_bad_config_with_one_line_and_status_2(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run("check", "--config", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_clear_error() -> None:
    result = run("check", "--config", "/nonexistent/proxy.yaml")
    assert result.returncode == 2
    assert "/nonexistent/proxy.yaml: cannot read config file" in result.stderr


def test_explain_names_the_endpoint_its_scopes_and_the_decision() -> None:
    allowed = run("explain", "GET", "/v1/deals/42", "--scopes", "deals:read")
    assert allowed.returncode == 0, allowed.stderr
    assert "endpoint:        GET /v1/deals/{id}" in allowed.stdout
    assert "accepted scopes: deals:full, deals:read" in allowed.stdout
    assert "decision:        allow (in_scope)" in allowed.stdout
    denied = run("explain", "DELETE", "/api/v2/deals/42", "--scopes", "deals:read")
    assert denied.returncode == 1
    assert "decision:        deny (out_of_scope)" in denied.stdout
    assert "it needs one of: deals:full" in denied.stdout
    info = run("explain", "GET", "/api/v2/activityFields")
    assert info.returncode == 0
    assert "accepted scopes: admin" in info.stdout


def test_explain_refuses_what_the_proxy_refuses_and_unknown_scopes() -> None:
    ambiguous = run("explain", "GET", "/v1/deals/../users")
    assert ambiguous.returncode == 1
    assert "refused with 400" in ambiguous.stdout
    unknown = run("explain", "GET", "/v1/deals", "--scopes", "deals:write")
    assert unknown.returncode == 2
    assert "--scopes: unknown scope 'deals:write'" in unknown.stderr


def test_report_from_a_missing_log_is_a_clear_error() -> None:
    result = run("report", "--log", "/nonexistent/decisions.jsonl")
    assert result.returncode == 2
    assert "--log: cannot read /nonexistent/decisions.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_several_workers_with_the_memory_store_exit_2() -> None:
    result = run("serve", "--config", "config/proxy.yaml", "--workers", "2")
    assert result.returncode == 2
    assert "sqlite://" in result.stderr
    assert "redis://" in result.stderr


async def test_serve_forwards_reloads_on_sighup_and_drains_on_sigterm(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    release = asyncio.Event()

    async def slow(request: Any, seen: Any) -> Any:
        from aiohttp import web

        if seen.raw_path == "/v1/deals/slow":
            await asyncio.wait_for(release.wait(), timeout=10)
        return web.json_response({"success": True})

    upstream.respond = slow
    document = {
        "upstream": {"api_url": upstream.url, "oauth_url": upstream.url},
        "tokens": [{"name": "staging-bot", "sha256": sha(SECRET), "scopes": ["deals:read"]}],
    }
    config_path = write_config(tmp_path, **document)
    port = free_port()
    auth = {"Authorization": f"Bearer {SECRET}"}
    with serving(config_path, port) as process:
        await wait_ready(port)
        async with session() as client:
            async with client.delete(f"http://127.0.0.1:{port}/v1/deals/1", headers=auth) as r:
                assert r.status == 403
            # SIGHUP: switch to report mode without a restart.
            Path(config_path).write_text(yaml.safe_dump({**document, "mode": "report"}))
            process.send_signal(signal.SIGHUP)
            for _ in range(100):
                async with client.delete(f"http://127.0.0.1:{port}/v1/deals/1", headers=auth) as r:
                    if r.headers["X-Scope-Proxy-Decision"] == "report":
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("SIGHUP did not reload the config")
            # An invalid config on SIGHUP keeps the running one.
            Path(config_path).write_text("mode: sideways\n")
            process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.3)
            async with client.get(f"http://127.0.0.1:{port}/v1/deals/2", headers=auth) as r:
                assert r.status == 200
            # SIGTERM while a request is in flight: it completes, then the process exits 0.
            in_flight = asyncio.ensure_future(
                client.get(f"http://127.0.0.1:{port}/v1/deals/slow", headers=auth)
            )
            for _ in range(100):
                if any(r.raw_path == "/v1/deals/slow" for r in upstream.received):
                    break
                await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            release.set()
            response = await in_flight
            assert response.status == 200
            response.release()
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 20)
        out, _ = process.communicate()
    assert code == 0
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [event["event"] for event in events]
    assert "reload_failed" in kinds
    assert "reloaded" in kinds
    assert "shutting_down" in kinds
    assert {event.get("grant") for event in events if event["event"] == "request"} == {
        "staging-bot"
    }
    assert SECRET not in out


async def test_pure_python_http_parser_gets_the_same_refusals(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """aiohttp's two HTTP parsers accept different things; the proxy must refuse under both."""
    all_scopes = ["admin", "deals:full", "deals:read", "users:read"]
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(everything=all_scopes),
    )
    port = free_port()
    with serving(config_path, port, env={"AIOHTTP_NO_EXTENSIONS": "1"}):
        await wait_ready(port)
        for name, request, status, reason in REFUSED:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=10)
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert int(head.split(b" ", 2)[1]) == status, name
            assert json.loads(body)["scope_proxy"]["reason"] == reason, name
    assert upstream.received == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_clear_line_and_status_2(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, store=f"sqlite://{tmp_path}/t.db")
        result = run("serve", "--config", config, "--host", "127.0.0.1", "--port", str(port),
                     "--workers", workers)  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


async def learn_token(port: int) -> str:
    async with (
        session() as client,
        client.post(
            f"http://127.0.0.1:{port}/oauth/token",
            data="grant_type=authorization_code&code=abc",
            headers={
                "Authorization": "Basic Y2k6Y3M=",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        ) as response,
    ):
        assert response.status == 200
        token: str = (await response.json())["access_token"]
        return token


async def statuses(port: int, token: str, count: int) -> list[int]:
    """One new connection per request, so that the kernel spreads them over the workers."""
    found = []
    for _ in range(count):
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as client,
            client.get(
                f"http://127.0.0.1:{port}/v1/deals", headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            found.append(response.status)
    return found


async def test_workers_share_one_port_and_the_sqlite_store(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth(scope="deals:read").respond
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        store=f"sqlite://{tmp_path}/tokens.db",
    )
    port = free_port()
    with serving(config_path, port, "--workers", "2") as process:
        await wait_ready(port)
        answering = set()
        for _ in range(400):  # until both workers answer on the one port
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as client,
                client.get(f"http://127.0.0.1:{port}/_proxy/health") as response,
            ):
                answering.add((await response.json())["pid"])
            if len(answering) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(answering) == 2, "two worker processes answer on the one port"
        token = await learn_token(port)
        # A token learned by one worker is known to both: every request is allowed.
        assert await statuses(port, token, 30) == [200] * 30
        # Whichever worker answers a scrape reports both workers' counts.
        for _ in range(4):
            async with (
                session() as client,
                client.get(f"http://127.0.0.1:{port}/_proxy/metrics") as response,
            ):
                metrics = await response.text()
            assert 'decision="allow",reason="in_scope",version="v1"} 30.0' in metrics
            assert "scope_proxy_tokens_learned_total 1.0" in metrics
        process.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
        out, _ = process.communicate()
    assert code == 0
    pids = {json.loads(line)["pid"] for line in out.splitlines() if '"listening"' in line}
    assert pids == answering


async def test_a_token_learned_through_one_process_works_through_another_via_redis(
    tmp_path: Path, upstream: FakePipedrive, redis_server: Any
) -> None:
    upstream.respond = FakeOAuth(scope="deals:read").respond
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        store=redis_server.url,
    )
    first, second = free_port(), free_port()
    with serving(config_path, first), serving(config_path, second):
        await wait_ready(first)
        await wait_ready(second)
        token = await learn_token(first)
        assert await statuses(second, token, 3) == [200] * 3


@pytest.mark.parametrize(
    "command",
    [["explain", "GET", "/v1/deals/1", "--scopes", "deals:read"], ["check"],
     ["report", "--log", "config/proxy.yaml", "--format", "json"]],
    ids=["explain", "check", "report"],
)  # fmt: skip
def test_commands_other_than_serve_do_not_load_the_server(command: list[str]) -> None:
    """explain, check and report start fast: no aiohttp, Redis client or Prometheus."""
    probe = (
        "import sys; from proxy.cli import main; main(sys.argv[1:]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'aiohttp', 'redis', 'prometheus_client', 'multidict', 'yarl'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
