"""The command line as users run it: a real process, its exit status and what it prints."""

from __future__ import annotations

import asyncio
import errno
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import health_url, main
from proxy.config import parse_config
from tests.conftest import ProxyFactory, free_port
from tests.processes import ROOT, run


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
    assert "why:             it needs deals:full, which the token does not hold" in denied.stdout
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


@pytest.mark.parametrize(
    ("method", "path", "takes"),
    [("GET", "/v1/dealz", None), ("PATCH", "/v1/deals/1", "GET, HEAD, PUT, DELETE")],
    ids=["a-mistyped-path", "a-method-the-path-does-not-take"],
)
def test_explain_says_an_unknown_endpoint_is_a_404_and_what_the_path_takes(
    method: str, path: str, takes: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", method, path, "--scopes", "deals:full,admin"]) == 1
    out = capsys.readouterr().out
    assert "endpoint:        none in the catalogue" in out
    assert "decision:        deny (unknown_endpoint)" in out
    assert "refused with 404" in out
    assert ("this path takes: " + str(takes) in out) == (takes is not None)


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


@pytest.mark.parametrize(
    "command",
    [["explain", "GET", "/v1/deals/1", "--scopes", "deals:read"], ["check"],
     ["report", "--log", "config/proxy.yaml", "--format", "json"],
     ["envoy-config", "--config", "config/proxy.yaml"], ["health", "--timeout", "0.2"]],
    ids=["explain", "check", "report", "envoy-config", "health"],
)  # fmt: skip
def test_commands_other_than_serve_do_not_load_the_server(command: list[str]) -> None:
    """explain, check, report, envoy-config and health start fast: no aiohttp, Redis client or
    Prometheus."""
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


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_is_one_line_and_status_2(port: str) -> None:
    result = run("serve", "--config", "config/proxy.yaml", "--port", port)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"pipedrive-scope-proxy: --port: expected a port number between 0 and 65535, not {port}"
    )


@pytest.mark.parametrize(
    ("document", "url"),
    [({}, "http://127.0.0.1:8080/_proxy/health"),
     ({"listen": {"host": "10.1.2.3", "port": 9000}}, "http://10.1.2.3:9000/_proxy/health"),
     ({"listen": {"host": "::", "port": 9000}}, "http://[::1]:9000/_proxy/health"),
     ({"admin_listen": {"port": 9901}}, "http://127.0.0.1:9901/_proxy/health"),
     ({"admin_listen": {"host": "0.0.0.0", "port": 9901}}, "http://127.0.0.1:9901/_proxy/health")],
)  # fmt: skip
def test_health_asks_where_the_config_serves_it(document: dict[str, Any], url: str) -> None:
    assert health_url(parse_config(document)) == url


def test_health_of_a_proxy_that_is_not_running_is_one_line_and_status_1(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(f"listen: {{port: {port}}}\n")
    result = run("health", "--config", str(config), "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout == ""
    line = f"pipedrive-scope-proxy: http://127.0.0.1:{port}/_proxy/health: not healthy: "
    assert result.stderr.startswith(line)
    assert "refused" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_health_with_a_bad_config_is_unhealthy_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("listen: {port: nine}\n")
    result = run("health", "--config", str(config))
    assert result.returncode == 1  # Docker reserves 2; a HEALTHCHECK only knows 0 and 1
    assert (
        result.stderr == "pipedrive-scope-proxy: listen.port: expected a port number, got 'nine'\n"
    )


@pytest.mark.parametrize(
    "command",
    [["explain", "GET", "/v1/deals/1", "--scopes", "deals:read"],
     ["envoy-config"], ["health", "--timeout", "0.2"]],
    ids=["explain", "envoy-config", "health"],
)  # fmt: skip
def test_commands_that_decide_on_no_token_do_not_need_its_variable(
    tmp_path: Path, command: list[str]
) -> None:
    """A static grant's token_env is read by serve and check; explain, envoy-config and health
    (a container's HEALTHCHECK, run where the app's secrets may not be) never use the token."""
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"listen: {{port: {free_port()}}}\n"
        "tokens: [{name: sync, token_env: SCOPE_PROXY_TEST_UNSET, scopes: [deals:read]},\n"
        "         {name: ci, token_env: SCOPE_PROXY_TEST_UNSET_TOO, scopes: [deals:full]}]\n"
    )  # two of them: neither read, neither taken for the other
    env = {"SCOPE_PROXY_TEST_UNSET": "", "SCOPE_PROXY_TEST_UNSET_TOO": ""}
    checked = run("check", "--config", str(config), env=env)
    assert checked.returncode == 2
    assert "tokens[0].token_env: environment variable SCOPE_PROXY_TEST_UNSET is not set" in (
        checked.stderr
    )
    result = run(command[0], "--config", str(config), *command[1:], env=env)
    assert "token_env" not in result.stderr
    assert result.returncode == (1 if command[0] == "health" else 0), result.stderr


def test_serve_port_on_the_admin_port_is_one_line_and_status_2(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("admin_listen: {port: 9901}\n")
    result = run("serve", "--config", str(config), "--port", "9901")
    assert result.returncode == 2
    assert (
        result.stderr == f"pipedrive-scope-proxy: --port: 9901 is admin_listen's port in {config}\n"
    )


def test_workers_without_a_writable_temp_directory_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As on a read-only root file system with nothing mounted on /tmp."""

    def read_only(prefix: str) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    port = str(free_port())  # not the config's 8080, which something else may hold
    status = main(["serve", "--config", "config/replicas.yaml", "--workers", "2", "--port", port])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("pipedrive-scope-proxy: --workers: cannot make the workers' metrics")
    assert "Read-only file system; mount a writable directory there or set TMPDIR" in err


def test_a_mistyped_command_says_so_and_lists_the_commands() -> None:
    result = run("chek", "--config", "config/proxy.yaml")
    assert result.returncode == 2
    assert result.stderr == (
        "pipedrive-scope-proxy: unknown command 'chek' (did you mean check?); the commands are "
        "serve, check, explain, report, envoy-config, health\n"
    )
    # Options alone still mean serve.
    flags = run("--config", "config/proxy.yaml", "--port", "70000")
    assert "--port: expected a port number between 0 and 65535" in flags.stderr


def test_an_unknown_scope_name_suggests_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("app_scopes: [base, deal:read]\n")
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        "pipedrive-scope-proxy: app_scopes[1]: unknown scope 'deal:read' (did you mean "
        "deals:read?)\n"
    )
    explained = run("explain", "GET", "/v1/deals", "--scopes", "deals:raed")
    assert explained.returncode == 2
    assert "--scopes: unknown scope 'deals:raed' (did you mean deals:read" in explained.stderr


@pytest.mark.parametrize(
    ("document", "method", "status", "last_lines"),
    [("app_scopes: [base, deals:read]\n", "DELETE", 1,
      ["  granted scopes:  base, deals:read from app_scopes (base is implied)",
       "  decision:        deny (out_of_scope)"]),
     ("app_scopes: [base, deals:read]\n", "GET", 0,
      ["  granted scopes:  base, deals:read from app_scopes (base is implied)",
       "  decision:        allow (in_scope)"]),
     ("{}\n", "DELETE", 0,
      ["  decision:        none (give --scopes, or app_scopes in the config)"])],
    ids=["refused by the declaration", "allowed by it", "nothing to decide with"],
)  # fmt: skip
def test_explain_without_scopes_decides_with_the_configs_declaration(
    tmp_path: Path, document: str, method: str, status: int, last_lines: list[str]
) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(document)
    result = run("explain", "--config", str(config), method, "/v1/deals/1")
    assert result.returncode == status, result.stderr
    lines = result.stdout.splitlines()
    assert [
        line for line in lines if line.split(":")[0].strip() in ("granted scopes", "decision")
    ] == last_lines


def test_report_refuses_what_is_not_a_decision_log_and_unknown_scope_names(tmp_path: Path) -> None:
    readme = run("report", "--log", "README.md")
    assert readme.returncode == 2
    assert readme.stderr.startswith(
        "pipedrive-scope-proxy: --log: no request events in README.md: expected the proxy's "
        "JSON decision log"
    )
    log = tmp_path / "decisions.jsonl"
    log.write_text(
        '{"event": "request", "decision": "allow", "reason": "in_scope", "method": "GET", '
        '"endpoint": "GET /v1/deals/{id}", "version": "v1", "token_fp": "aaaaaaaaaaaa", '
        '"accepted_scopes": ["deals:read", "deals:full"], "token_cost": 2}\n'
    )
    typo = run("report", "--log", str(log), "--app-scopes", "deals:reed")
    assert typo.returncode == 2
    assert "--app-scopes: unknown scope 'deals:reed' (did you mean deals:read" in typo.stderr
    gate = run("report", "--log", str(log), "--fail-on", "denid")
    assert (gate.returncode, gate.stderr) == (
        2,
        "pipedrive-scope-proxy: --fail-on: expected denied, unused, deprecated or drift, not 'denid'\n",
    )
    # A declaration that leaves deals out: the call would now be refused, and the gate says so.
    judged = run("report", "--log", str(log), "--app-scopes", "contacts:read", "--fail-on",
                 "denied", "--format", "json")  # fmt: skip
    assert judged.returncode == 1
    denied = json.loads(judged.stdout)["overall"]["denied"]
    assert [(d["endpoint"], d["reason"]) for d in denied] == [
        ("GET /v1/deals/{id}", "outside_app_scopes")
    ]
    assert run("report", "--log", str(log), "--fail-on", "denied,unused").returncode == 0


def test_the_gate_fails_on_refusals_before_the_scope_check_and_refuses_an_empty_run(
    tmp_path: Path,
) -> None:
    """A run whose every call was refused for want of a known token is no green run, and a
    run with no calls at all (a reset, then nothing) proves nothing."""
    refused = '{"event": "request", "decision": "deny", "reason": "unknown_token", "status": 401}\n'
    log = tmp_path / "decisions.jsonl"
    log.write_text(refused * 3)
    gate = run("report", "--log", str(log), "--fail-on", "denied", "--format", "markdown")
    assert gate.returncode == 1, gate.stderr
    assert "**3 refused before the scope check**" in gate.stdout
    log.write_text(refused + '{"event": "report_reset", "since": "2026-11-29T10:00:00Z"}\n')
    empty = run("report", "--log", str(log), "--fail-on", "denied")
    assert (empty.returncode, empty.stdout) == (2, "")
    assert empty.stderr == (
        f"pipedrive-scope-proxy: --fail-on: no calls in the run {log} ends with since "
        "2026-11-29T10:00:00Z\n"
    )
    assert run("report", "--log", str(log)).returncode == 0  # without a gate: an empty report


@pytest.mark.parametrize(
    "command",
    [["explain", "GET", "/v1/deals/1", "--scopes", "deals:read"], ["check"],
     ["envoy-config", "--config", "config/proxy.yaml"]],
    ids=["explain", "check", "envoy-config"],
)  # fmt: skip
def test_a_reader_gone_early_is_no_traceback(command: list[str]) -> None:
    """``... | head``: the pipe closes before the command has written; it stops quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *command], stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_explain_says_the_proxy_refuses_a_lower_case_method() -> None:
    result = run("explain", "get", "/v1/deals/1", "--scopes", "deals:read")
    assert result.returncode == 0
    assert result.stdout.splitlines()[:2] == [
        "GET /v1/deals/1",
        "  note:            the proxy refuses the method 'get' (400); as GET:",
    ]


class _AnyJson(http.server.BaseHTTPRequestHandler):
    """A server that answers every request, proxied or not, with 200 and a JSON object."""

    def do_GET(self) -> None:
        body = b'{"status": "ok", "version": "9.9.9"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def answering_any_json() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnyJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_health_never_asks_through_an_http_proxy_and_wants_the_proxys_own_answer(
    tmp_path: Path,
) -> None:
    """A stopped proxy is not made healthy by an HTTP proxy in the environment that answers
    any JSON, nor by another server on its port that answers 200."""
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(f"listen: {{port: {port}}}\n")
    with answering_any_json() as forward_proxy:
        hostile = f"http://127.0.0.1:{forward_proxy}"
        env = {"http_proxy": hostile, "HTTP_PROXY": hostile, "no_proxy": "", "NO_PROXY": ""}
        stopped = run("health", "--config", str(config), "--timeout", "1", env=env)
        config.write_text(f"listen: {{port: {forward_proxy}}}\n")
        impostor = run("health", "--config", str(config), "--timeout", "1")
    assert stopped.returncode == 1
    assert "refused" in stopped.stderr
    assert impostor.returncode == 1
    assert "not pipedrive-scope-proxy" in impostor.stderr


async def test_health_of_a_running_proxy_ignores_an_unreachable_http_proxy(
    tmp_path: Path, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy()
    config = tmp_path / "proxy.yaml"
    config.write_text(f"listen: {{port: {client.server.port}}}\n")
    unreachable = f"http://127.0.0.1:{free_port()}"
    asked = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "health", "--config", str(config), "--timeout", "5",
        env={**os.environ, "http_proxy": unreachable, "HTTP_PROXY": unreachable,
             "no_proxy": "", "NO_PROXY": ""},
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(asked.communicate(), timeout=60)
    assert asked.returncode == 0, err.decode()
    assert out.decode().startswith(f"http://127.0.0.1:{client.server.port}/_proxy/health: ")
    assert "status ok" in out.decode()
