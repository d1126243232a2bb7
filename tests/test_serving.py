"""Serving as users run it: a real ``serve`` process, its signals, its workers, its limits on
what can break it (a closed log pipe, a worker killed, Ctrl-C with a call in flight)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from proxy import __version__
from proxy.core.catalog import load_catalogue
from tests.conftest import free_port, grants, sha
from tests.fakes import FakeOAuth, FakePipedrive, Received
from tests.processes import ROOT, run, serving, session, wait_ready, write_config
from tests.refusals import REFUSED
from tests.waiting import eventually, log_events, refused

pytestmark = pytest.mark.slow

SECRET = "v1u:c2VjcmV0LXRva2Vu:dGhlLXJlc3Q="


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
    log = tmp_path / "proxy.log"
    with serving(config_path, port, log=log) as process:
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
            await eventually(lambda: bool(log_events(log, "reload_failed")), "reload_failed")
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
            await eventually(lambda: refused(port), "the listener closed on SIGTERM")
            release.set()
            response = await in_flight
            assert response.status == 200
            response.release()
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 20)
    assert code == 0
    out = log.read_text()
    events = log_events(log)
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


def two_supervisors(tmp_path: Path, upstream: FakePipedrive) -> tuple[str, str]:
    """Two configs for ``serve --workers 2`` on one port: enforce mode and report mode, each
    with a store of its own; a token ``reader`` holding deals:read."""
    configs = []
    for mode in ("enforce", "report"):
        folder = tmp_path / mode
        folder.mkdir()
        configs.append(
            write_config(
                folder,
                mode=mode,
                store=f"sqlite://{folder}/t.db",
                upstream={"api_url": upstream.url, "oauth_url": upstream.url},
                tokens=grants(reader=["deals:read"]),
            )
        )
    return configs[0], configs[1]


async def deleting(port: int, times: int) -> list[tuple[int, str]]:
    """Status and decision of ``times`` DELETEs a deals:read token may not make, each on a new
    connection (the kernel spreads new connections over the port's listeners)."""
    found = []
    for _ in range(times):
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as client,
            client.delete(
                f"http://127.0.0.1:{port}/v1/deals/1", headers={"Authorization": "Bearer reader"}
            ) as response,
        ):
            found.append((response.status, response.headers["X-Scope-Proxy-Decision"]))
    return found


async def test_a_second_supervisor_on_a_served_port_exits_2_and_the_first_keeps_serving(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """Workers share their port with SO_REUSEPORT: a second ``serve --workers 2`` there, in
    report mode, would join the first one's workers and forward half of what it refuses."""
    enforcing, reporting = two_supervisors(tmp_path, upstream)
    port = free_port()
    with serving(enforcing, port, "--workers", "2"):
        await wait_ready(port)
        second_serve = ("serve", "--config", reporting, "--host", "127.0.0.1", "--port",
                        str(port), "--workers", "2")  # fmt: skip
        result = await asyncio.get_running_loop().run_in_executor(None, run, *second_serve)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"pipedrive-scope-proxy: cannot listen on 127.0.0.1:{port}: Address already in use"
        ]
        decisions = await deleting(port, 20)
    assert decisions == [(403, "deny")] * 20
    assert upstream.received == []


async def test_a_supervisor_whose_workers_all_died_does_not_join_a_server_that_took_the_port(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """While every worker is down the port is free, and another server may take it; the
    supervisor then stops (exit 2) rather than restart its workers into that server's port."""
    enforcing, reporting = two_supervisors(tmp_path, upstream)
    port = free_port()
    with serving(enforcing, port, "--workers", "2") as supervisor:
        await wait_ready(port)
        children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text()
        workers = [  # the supervisor's children, less multiprocessing's resource tracker
            int(pid)
            for pid in children.split()
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
        with contextlib.ExitStack() as stack:
            supervisor.send_signal(signal.SIGSTOP)  # it restarts nothing until the other is up
            try:
                for worker in workers:
                    os.kill(worker, signal.SIGKILL)
                await eventually(lambda: refused(port), "both workers gone", within=10)
                second = stack.enter_context(serving(reporting, port, "--workers", "2"))
                await wait_ready(port)
            finally:
                supervisor.send_signal(signal.SIGCONT)
            code = await asyncio.get_running_loop().run_in_executor(None, supervisor.wait, 20)
            assert code == 2
            assert supervisor.stderr is not None
            assert "cannot listen on 127.0.0.1" in supervisor.stderr.read()
            assert second.poll() is None
            decisions = await deleting(port, 10)
            assert decisions == [(200, "report")] * 10, "only the second server answers"


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

        # Whichever worker answers a scrape reports both workers' counts (each adds its own to
        # the shared files about once a second).
        async def counted() -> bool:
            async with (
                session() as client,
                client.get(f"http://127.0.0.1:{port}/_proxy/metrics") as response,
            ):
                return 'reason="in_scope",version="v1"} 30.0' in await response.text()

        await eventually(counted, "both workers' counts in a scrape")
        for _ in range(4):
            async with (
                session() as client,
                client.get(f"http://127.0.0.1:{port}/_proxy/metrics") as response,
            ):
                metrics = await response.text()
            assert 'decision="allow",reason="in_scope",version="v1"} 30.0' in metrics
            assert "scope_proxy_tokens_learned_total 1.0" in metrics
            # Both run one catalogue: one series, 1 (the highest of the live workers').
            version = load_catalogue().provenance.version
            assert re.findall(r"^scope_proxy_build_info\{.*$", metrics, re.MULTILINE) == [
                f'scope_proxy_build_info{{catalogue="{version}",version="{__version__}"}} 1.0'
            ]
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


async def call(port: int, method: str, path: str, token: str = "writer") -> int:
    async with (
        session() as client,
        client.request(
            method, f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        await response.read()
        return response.status


def hold_answers(upstream: FakePipedrive) -> asyncio.Event:
    """The upstream holds every answer until the event is set."""
    release = asyncio.Event()

    async def slow(request: web.Request, seen: Received) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), timeout=10)
        return web.json_response({"success": True})

    upstream.respond = slow
    return release


def writer_config(tmp_path: Path, upstream: FakePipedrive, **extra: Any) -> str:
    return write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(writer=["deals:full"]),
        **extra,
    )


async def test_a_closed_log_pipe_never_breaks_serving(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """``serve | head -n 2``: once the reader is gone every call is still answered exactly as
    before (a POST reaches the upstream once), the failure is counted and said once."""
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(writer=["deals:full"]),
    )
    port = free_port()
    with serving(config_path, port) as process:
        assert process.stdout is not None
        await wait_ready(port)
        process.stdout.close()  # what `head` does once it has its lines
        for _ in range(3):
            assert await call(port, "POST", "/v1/deals") == 200
            assert await call(port, "GET", "/v1/activities") == 403
        async with session() as client, client.get(f"http://127.0.0.1:{port}/_proxy/metrics") as r:
            metrics = await r.text()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 20)
        assert process.stderr is not None
        errors = process.stderr.read()
    assert code == 0
    assert [r.method for r in upstream.received] == ["POST"] * 3
    failures = float(metrics.split("\nscope_proxy_log_errors_total ")[1].split()[0])
    assert failures >= 6
    assert errors.count("the log sink failed") == 1
    assert "Traceback" not in errors


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_ctrl_c_drains_like_sigterm_and_the_last_log_lines_are_written(
    stop: signal.Signals, tmp_path: Path, upstream: FakePipedrive
) -> None:
    release = hold_answers(upstream)
    config_path = writer_config(tmp_path, upstream)
    port = free_port()
    with serving(config_path, port) as process:
        await wait_ready(port)
        in_flight = asyncio.ensure_future(call(port, "GET", "/v1/deals/slow"))
        for _ in range(100):
            if upstream.received:
                break
            await asyncio.sleep(0.05)
        process.send_signal(stop)
        await eventually(lambda: refused(port), "the listener closed on the signal")
        release.set()
        assert await in_flight == 200
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 20)
        out, errors = process.communicate()
    assert code == 0
    assert "Traceback" not in errors
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [event["event"] for event in events]
    assert kinds.index("shutting_down") < len(kinds) - 1
    assert events[-1]["event"] == "request" and events[-1]["status"] == 200  # noqa: PT018


async def health_pid(port: int) -> int:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.get(f"http://127.0.0.1:{port}/_proxy/health") as response,
    ):
        pid: int = (await response.json())["pid"]
        return pid


async def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(writer=["deals:full"]),
        store=f"sqlite://{tmp_path}/tokens.db",
    )
    port = free_port()
    with serving(config_path, port, "--workers", "2") as process:
        await wait_ready(port)
        workers: set[int] = set()
        for _ in range(400):
            workers.add(await health_pid(port))
            if len(workers) == 2:
                break
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        statuses, refused_at = [], []
        replacement = None
        for _ in range(300):  # calls go on while the supervisor restarts the worker
            try:
                statuses.append(await call(port, "GET", "/v1/deals"))
                pid = await health_pid(port)
            except aiohttp.ClientConnectionError:
                refused_at.append(time.monotonic() - killed)
                continue
            if pid not in workers:
                replacement = pid
                break
            await asyncio.sleep(0.02)
        assert replacement is not None, "a new worker took the dead one's place"
        assert set(statuses) == {200}
        # Each worker has its own listening socket (SO_REUSEPORT, for an even spread); the
        # connections the kernel had queued on the killed one's are reset with it, unless
        # net.ipv4.tcp_migrate_req hands them to the others (README, --workers).
        if Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1":
            assert refused_at == []
        else:
            assert all(after < 0.5 for after in refused_at), refused_at
        process.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
        out, errors = process.communicate()
    assert code == 0
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    [exited] = [e for e in events if e["event"] == "worker_exited"]
    assert (exited["pid"], exited["exit"]) == (victim, "signal SIGKILL")
    started = [e["pid"] for e in events if e["event"] == "worker_started"]
    assert replacement in started
    assert "Traceback" not in errors


def serve_piped_to_tee(
    config_path: str, port: int, log: Path
) -> tuple[subprocess.Popen[str], subprocess.Popen[bytes]]:
    """``serve ... | tee LOG``, both in one process group, as a shell runs a pipeline."""
    tee_binary = shutil.which("tee")
    assert tee_binary is not None
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", config_path, "--port", str(port),
         "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, process_group=0,
    )  # fmt: skip
    tee = subprocess.Popen(
        [tee_binary, str(log)], stdin=proxy.stdout, stdout=subprocess.DEVNULL,
        process_group=proxy.pid,
    )  # fmt: skip
    return proxy, tee


async def test_ctrl_c_on_serve_piped_to_tee_drains_without_a_traceback(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """The README's staging command, ``serve ... | tee decisions.jsonl``, and Ctrl-C: the
    terminal sends SIGINT to both, so tee is gone while the proxy drains its in-flight call."""
    release = hold_answers(upstream)
    config_path = writer_config(tmp_path, upstream)
    port = free_port()
    proxy, tee = serve_piped_to_tee(config_path, port, tmp_path / "decisions.jsonl")
    assert proxy.stdout is not None and proxy.stderr is not None  # noqa: PT018
    proxy.stdout.close()
    try:
        await wait_ready(port)
        in_flight = asyncio.ensure_future(call(port, "GET", "/v1/deals/slow"))
        for _ in range(100):
            if upstream.received:
                break
            await asyncio.sleep(0.05)
        os.killpg(proxy.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        await eventually(lambda: refused(port), "the listener closed on Ctrl-C")
        # tee is gone before the in-flight call's line is written (else the line may sit
        # in the pipe, unread, and neither the log nor stderr would show it)
        await asyncio.get_running_loop().run_in_executor(None, tee.wait, 20)
        release.set()
        assert await in_flight == 200
        code = await asyncio.get_running_loop().run_in_executor(None, proxy.wait, 20)
        errors = proxy.stderr.read()
    finally:
        for process in (proxy, tee):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        proxy.stderr.close()
    assert code == 0
    assert "Traceback" not in errors
    assert "request" in (tmp_path / "decisions.jsonl").read_text() or "log sink" in errors


def test_a_reload_freezes_the_new_catalogue_and_lets_the_old_one_go(tmp_path: Path) -> None:
    """The catalogue is kept out of the collector's full passes, but not forever: a reload's
    old one is reclaimed."""
    from proxy.config import load
    from proxy.http.app import create_app
    from proxy.http.serving import reload, settle_heap
    from proxy.http.state import RUNTIME

    path = write_config(tmp_path, upstream={"api_url": "http://127.0.0.1:9"}, tokens=grants(t=[]))
    config, catalogue = load(path)
    app = create_app(config, catalogue)
    cyclic = _Cyclic()  # stands for whatever of the old runtime only the collector can free
    try:
        settle_heap()
        assert gc.get_freeze_count() > len(catalogue.endpoints), "the catalogue is frozen"
        old, old_cyclic = weakref.ref(catalogue), weakref.ref(cyclic)
        del catalogue, cyclic
        reload(app, path, config)
        assert app[RUNTIME].current.catalogue is not old()
        assert old() is None, "the old catalogue was reclaimed"
        assert old_cyclic() is None, "frozen garbage is collected at the next reload"
    finally:
        gc.unfreeze()


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


async def test_the_admin_listener_takes_the_proxys_own_endpoints_off_the_main_port(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    port, admin = free_port(), free_port()
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(reader=["deals:read"]),
        admin_listen={"host": "127.0.0.1", "port": admin},
    )
    auth = {"Authorization": "Bearer reader"}
    main_url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    json_body = {"Content-Type": "application/json"}
    with serving(config_path, port) as process:
        await wait_ready(admin)
        async with session() as client:

            async def status(method: str, url: str, **kwargs: Any) -> int:
                async with client.request(method, url, **kwargs) as response:
                    await response.read()
                    return response.status

            assert await status("GET", f"{main_url}/v1/deals/1", headers=auth) == 200
            assert await status("GET", f"{main_url}/_proxy/authz/v1/deals/1", headers=auth) == 200
            for path in ("/_proxy/health", "/_proxy/ready", "/_proxy/metrics", "/_proxy/report"):
                assert await status("GET", main_url + path) == 404, path
                assert await status("GET", admin_url + path) == 200, path
            assert await status("POST", f"{main_url}/_proxy/report/reset", headers=json_body) == 404
            assert (
                await status("POST", f"{admin_url}/_proxy/report/reset", headers=json_body) == 200
            )
            # The admin listener serves nothing else: no API calls, no checks; and such a call,
            # a misdirected one, is counted as a refused call, not as a stray request.
            assert await status("GET", f"{admin_url}/v1/deals/1", headers=auth) == 404
            assert await status("GET", f"{admin_url}/_proxy/authz/v1/deals/1", headers=auth) == 404
            async with client.get(f"{admin_url}/_proxy/report") as answer:
                report = await answer.json()
            assert report["refused_before_decision"] == [{"reason": "wrong_listener", "count": 2}]
        # The container's HEALTHCHECK command finds the admin port in the same config.
        healthy = await asyncio.to_thread(run, "health", "--config", config_path)
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout.startswith(f"{admin_url}/_proxy/health: status ok, version ")
        ready = await asyncio.to_thread(run, "health", "--ready", "--config", config_path)
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout == f"{admin_url}/_proxy/ready: catalogue 459, store ok\n"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    assert [raw_path for raw_path in (r.raw_path for r in upstream.received)] == ["/v1/deals/1"]
    listening = [json.loads(line) for line in out.splitlines() if '"listening"' in line]
    assert {(event["port"], event["listener"]) for event in listening} == {
        (port, "main"), (admin, "admin"),
    }  # fmt: skip


async def test_a_reload_names_what_only_a_restart_changes_and_applies_the_rest(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    document: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 8080},  # --port overrides it
        "upstream": {"api_url": upstream.url, "oauth_url": upstream.url},
        "tokens": grants(reader=["deals:read"]),
    }
    config_path = write_config(tmp_path, **document)
    port = free_port()
    auth = {"Authorization": "Bearer reader"}
    log = tmp_path / "proxy.log"
    with serving(config_path, port, log=log) as process:
        await wait_ready(port)
        # Only the mode: applied, nothing to restart (the --port override is no change).
        Path(config_path).write_text(yaml.safe_dump({**document, "mode": "report"}))
        process.send_signal(signal.SIGHUP)
        await eventually(lambda: len(log_events(log, "reloaded")) == 1, "the first reload")
        changed = {**document, "listen": {"host": "127.0.0.1", "port": 8081},
                   "upstream": {**document["upstream"], "read_timeout": 9}, "mode": "report",
                   "app_scopes": ["deals:read"], "limits": {"body_timeout": 5}}  # fmt: skip
        Path(config_path).write_text(yaml.safe_dump(changed))
        process.send_signal(signal.SIGHUP)
        await eventually(lambda: len(log_events(log, "reloaded")) == 2, "the second reload")
        async with (
            session() as client,
            client.delete(f"http://127.0.0.1:{port}/v1/deals/1", headers=auth) as response,
        ):
            assert response.headers["X-Scope-Proxy-Decision"] == "report"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    reloads = log_events(log, "reloaded")
    assert [event["applied"] for event in reloads] == [["mode"], ["app_scopes"]]
    assert [event["needs_restart"] for event in reloads] == [[], ["listen", "upstream", "limits"]]
    assert [event["mode"] for event in reloads] == ["report", "report"]
    assert [event["app_scopes"] for event in reloads] == [None, ["deals:read"]]


async def test_a_store_that_cannot_open_says_why_at_start_and_keeps_the_proxy_unready(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        store=f"sqlite://{blocker}/tokens.db",
    )
    port = free_port()
    with serving(config_path, port) as process:
        await wait_ready(port)  # health: serving (static grants would work)
        async with session() as client, client.get(f"http://127.0.0.1:{port}/_proxy/ready") as r:
            assert r.status == 503
            assert (await r.json())["store"] == "unavailable"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    [event] = [json.loads(line) for line in out.splitlines() if '"store_unavailable"' in line]
    assert event["store"] == f"sqlite://{blocker}/tokens.db"
    assert event["problem"].startswith(f"sqlite {blocker}/tokens.db: ")
    assert "File exists" in event["problem"]  # its directory could not be made


async def test_serve_mode_and_log_level_flags_hold_over_reloads(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    config_path = write_config(  # mode: enforce (the default)
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(reader=["deals:read"]),
    )
    port = free_port()
    with serving(config_path, port, "--mode", "report", "--log-level", "warning") as process:
        await wait_ready(port)
        assert await call(port, "DELETE", "/v1/deals/1", token="reader") == 200  # reported
        process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await call(port, "DELETE", "/v1/deals/1", token="reader") == 200
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # At warning, no request or reload events are written.
    assert not [e for e in events if e["event"] in ("request", "reloaded", "startup")]
    assert [r.method for r in upstream.received] == ["DELETE", "DELETE"]
