"""Settings from the environment: ``PIPEDRIVE_SCOPE_PROXY_<KEY>`` over the file, under flags.

As Helm charts, Compose files and Kubernetes manifests set them: nested keys joined by ``_``,
lists comma-separated, numbers as text; variables that name no key (Kubernetes' service links
for a Service called ``pipedrive-scope-proxy``) warned about and never fatal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy.config import _TOP, ENV_SCHEMA, ConfigError, Limits, load, load_config
from proxy.http.app import create_app
from proxy.http.serving import reload
from proxy.http.state import RUNTIME
from tests.conftest import free_port
from tests.processes import ROOT, certificate, run, serving, wait_ready, write_config

P = "PIPEDRIVE_SCOPE_PROXY_"
# Kubernetes' service-link variables for a Service named pipedrive-scope-proxy.
SERVICE_LINKS = {
    f"{P}PORT": "tcp://10.96.0.12:8080",
    f"{P}SERVICE_HOST": "10.96.0.12",
    f"{P}SERVICE_PORT": "8080",
    f"{P}PORT_8080_TCP": "tcp://10.96.0.12:8080",
    f"{P}PORT_8080_TCP_PROTO": "tcp",
    f"{P}PORT_8080_TCP_PORT": "8080",
    f"{P}PORT_8080_TCP_ADDR": "10.96.0.12",
}

# variable (less the prefix), its text, and what the config then says
EVERY_KEY: list[tuple[str, str, Any]] = [
    ("LISTEN_HOST", "127.0.0.2", lambda c: c.listen.host == "127.0.0.2"),
    ("LISTEN_PORT", "9090", lambda c: c.listen.port == 9090),
    ("UPSTREAM_API_URL", "http://sandbox.test:8000", lambda c: c.upstream.api_url == "http://sandbox.test:8000"),
    ("UPSTREAM_OAUTH_URL", "http://oauth.test", lambda c: c.upstream.oauth_url == "http://oauth.test"),
    ("UPSTREAM_CONNECT_TIMEOUT", "2.5", lambda c: c.upstream.connect_timeout == 2.5),
    ("UPSTREAM_READ_TIMEOUT", "90", lambda c: c.upstream.read_timeout == 90.0),
    ("MODE", "report", lambda c: c.policy.mode == "report"),
    ("APP_SCOPES", "deals:read, contacts:read", lambda c: c.policy.app_scopes == {"deals:read", "contacts:read"}),
    ("UNKNOWN_ENDPOINTS", "allow", lambda c: c.policy.unknown_endpoints == "allow"),
    ("STORE", "sqlite:///tmp/tokens.db", lambda c: c.store.kind == "sqlite"),
    ("PUBLIC_URL", "https://proxy.example", lambda c: c.public_url == "https://proxy.example"),
    ("REWRITE_API_DOMAIN", "false", lambda c: c.rewrite_api_domain is False),
    ("CATALOG_EXTRA", "", lambda c: c.catalog_extra == ()),
    ("LOGGING_FORMAT", "console", lambda c: c.logging.format == "console"),
    ("LOGGING_LEVEL", "warning", lambda c: c.logging.level == "warning"),
    ("LIMITS_HEADER_TIMEOUT", "5", lambda c: c.limits.header_timeout == 5.0),
    ("LIMITS_KEEPALIVE_TIMEOUT", "30", lambda c: c.limits.keepalive_timeout == 30.0),
    ("LIMITS_BODY_TIMEOUT", "20", lambda c: c.limits.body_timeout == 20.0),
    ("LIMITS_MAX_CONNECTIONS", "64", lambda c: c.limits.max_connections == 64),
    ("LIMITS_REPORT_TOKENS", "10", lambda c: c.limits.report_tokens == 10),
    ("LIMITS_MAX_CHECKED_BODY", "2048", lambda c: c.limits.max_checked_body == 2048),
    ("ADMIN_LISTEN_PORT", "9901", lambda c: c.admin_listen is not None and c.admin_listen.port == 9901),
    ("ADMIN_LISTEN_HOST", "127.0.0.1", lambda c: c.admin_listen is None or c.admin_listen.host == "127.0.0.1"),
    ("WARMUP", "true", lambda c: c.warmup == 3600.0),
    ("UPSTREAM_PROXY", "http://egress:3128", lambda c: c.upstream.proxy == "http://egress:3128"),
    ("BUDGET_MODE", "enforce", lambda c: c.budget.mode == "enforce"),
    ("BUDGET_APP", "crm-sync", lambda c: c.budget.app == "crm-sync"),
    ("BUDGET_DAILY_TOKENS", "60000", lambda c: c.budget.daily_tokens == 60000),
    ("BUDGET_SHARE", "0.25", lambda c: c.budget.share == 0.25),
    ("BUDGET_RESERVE", "0", lambda c: c.budget.reserve == 0.0),
    ("BUDGET_CRITICAL", "GET /v1/users/me, GET /v1/deals", lambda c: c.budget.critical == {"GET /v1/users/me", "GET /v1/deals"}),
    ("BUDGET_BURST_OAUTH", "80", lambda c: c.budget.burst_oauth == 80),
    ("BUDGET_BURST_API_TOKEN", "20", lambda c: c.budget.burst_api_token == 20),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "text", "holds"), EVERY_KEY, ids=[name for name, _, _ in EVERY_KEY]
)
def test_each_key_is_set_by_its_variable_over_the_file(
    tmp_path: Path, name: str, text: str, holds: Any
) -> None:
    path = write_config(tmp_path, mode="enforce", listen={"host": "0.0.0.0", "port": 8080},
                        limits={"max_connections": 1024}, app_scopes=["deals:full"],
                        admin_listen={"port": 9902})  # fmt: skip
    config = load_config(path, env={P + name: text})
    assert holds(config), name
    assert [variable for variable, _ in config.environment.applied] == [P + name]


def test_the_schema_the_environment_reads_is_the_files() -> None:
    assert set(ENV_SCHEMA) == _TOP - {"tokens"}
    assert set(ENV_SCHEMA["limits"]) == set(Limits.__dataclass_fields__)
    covered = {name for name, _, _ in EVERY_KEY}

    def leaves(schema: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, kinds in schema.items():
            name = f"{prefix}{key}".upper()
            found |= leaves(kinds, name + "_") if isinstance(kinds, dict) else {name}
        return found

    below = {"UNKNOWN_TOKENS", "API_TOKENS"} | {  # below: with app_scopes, with real files
        f"{listen}_TLS_{name}" for listen in ("LISTEN", "ADMIN_LISTEN")
        for name in ("CERT_FILE", "KEY_FILE")
    }  # fmt: skip
    assert leaves(ENV_SCHEMA) - covered == below


def test_a_listeners_tls_files_from_the_environment(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    env = {f"{P}LISTEN_TLS_CERT_FILE": str(cert), f"{P}LISTEN_TLS_KEY_FILE": str(key),
           f"{P}ADMIN_LISTEN_PORT": "9901", f"{P}ADMIN_LISTEN_TLS_CERT_FILE": str(cert),
           f"{P}ADMIN_LISTEN_TLS_KEY_FILE": str(key)}  # fmt: skip
    config = load_config(write_config(tmp_path), env=env)
    assert config.listen.tls is not None
    assert config.admin_listen is not None
    assert config.admin_listen.tls is not None
    assert (config.listen.tls.cert_file, config.admin_listen.tls.key_file) == (cert, key)
    assert config.listen.url.startswith("https://")


def test_nested_keys_are_found_by_the_schema_and_the_policy_fallbacks_too(tmp_path: Path) -> None:
    path = write_config(tmp_path, app_scopes=["deals:read"])
    config = load_config(
        path, env={f"{P}UNKNOWN_TOKENS": "app_scopes", f"{P}API_TOKENS": "app_scopes"}
    )
    assert (config.policy.unknown_tokens, config.policy.api_tokens) == ("app_scopes", "app_scopes")
    assert dict(config.environment.applied) == {
        f"{P}API_TOKENS": "api_tokens", f"{P}UNKNOWN_TOKENS": "unknown_tokens",
    }  # fmt: skip


def test_service_links_and_tokens_are_ignored_and_said_so_never_fatal(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    env = {**SERVICE_LINKS, f"{P}TOKENS": "[{name: x}]", f"{P}MODE": "report"}
    config = load_config(path, env=env)
    assert config.policy.mode == "report"
    ignored = dict(config.environment.ignored)
    assert set(ignored) == {*SERVICE_LINKS, f"{P}TOKENS"}
    assert ignored[f"{P}TOKENS"].startswith("tokens are never read from the environment")
    result = run("check", "--config", path, env=env)
    assert result.returncode == 0, result.stderr
    assert "mode: from PIPEDRIVE_SCOPE_PROXY_MODE" in result.stdout
    assert f"warning: {P}PORT ignored: names no config key" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_value_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={f"{P}LISTEN_PORT": "eighty"})
    assert str(raised.value) == (
        f"{P}LISTEN_PORT (listen.port): expected a port number, got 'eighty'"
    )
    result = run("check", "--config", path, env={f"{P}APP_SCOPES": "deals:write"})
    assert result.returncode == 2
    assert result.stderr.startswith(f"pipedrive-scope-proxy: {P}APP_SCOPES (app_scopes[0]): ")
    result = run("check", "--config", path, env={f"{P}MODE": "enforced"})
    assert result.returncode == 2
    assert result.stderr.startswith(f"pipedrive-scope-proxy: {P}MODE (mode): ")


def test_a_number_written_as_a_string_is_a_number(tmp_path: Path) -> None:
    path = write_config(tmp_path, listen={"port": "8081"}, upstream={"read_timeout": "30"},
                        limits={"max_connections": "100"})  # fmt: skip
    config = load_config(path, env={})
    assert (config.listen.port, config.upstream.read_timeout) == (8081, 30.0)
    assert config.limits.max_connections == 100


def test_check_no_secrets_validates_without_the_token_variables(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, tokens=[{"name": "ci", "token_env": "SCOPE_PROXY_UNSET_IN_CI", "scopes": ["deals:read"]}]
    )  # fmt: skip
    unset = {"SCOPE_PROXY_UNSET_IN_CI": ""}
    assert run("check", "--config", path, env=unset).returncode == 2
    result = run("check", "--config", path, "--no-secrets", env=unset)
    assert result.returncode == 0, result.stderr
    assert "token_env variables not read: --no-secrets" in result.stdout
    bad = write_config(tmp_path, tokens=[{"name": "ci", "token_env": "X", "scopes": ["deal:read"]}])
    assert run("check", "--config", bad, "--no-secrets").returncode == 2  # the rest still checked


def test_a_reload_reads_the_environment_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, mode="enforce", upstream={"api_url": "http://127.0.0.1:9"})
    monkeypatch.setenv(f"{P}MODE", "report")
    config, catalogue = load(path)
    app = create_app(config, catalogue)
    write_config(tmp_path, mode="enforce", app_scopes=["deals:read"],
                 upstream={"api_url": "http://127.0.0.1:9"})  # fmt: skip
    with capture_logs():
        reload(app, path, config)
    running = app[RUNTIME].current.config
    assert running.policy.mode == "report"
    assert running.policy.app_scopes == frozenset({"deals:read"})


@pytest.mark.slow
async def test_a_flag_is_over_the_environment_and_the_environment_over_the_file(
    tmp_path: Path,
) -> None:
    """With Kubernetes' service links present: never fatal, said in the log."""
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    path = write_config(tmp_path, listen={"host": "127.0.0.1", "port": file_port})
    env = {**SERVICE_LINKS, f"{P}LISTEN_PORT": str(env_port), f"{P}MODE": "report"}
    with serving(path, flag_port, env=env, log=tmp_path / "flag.log"):
        await wait_ready(flag_port)  # --port (serving passes it) over the variable
    log = tmp_path / "env.log"
    with log.open("w") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, awaited by its port
            [sys.executable, "-m", "proxy", "serve", "--config", path], stdout=out,
            stderr=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, **env},
        )  # fmt: skip
        try:
            await wait_ready(env_port)  # the variable over the file's port
        finally:
            process.terminate()
            process.wait(timeout=30)
    lines = log.read_text()
    assert '"from_environment":["listen.port","mode"]' in lines
    assert f'"variable":"{P}PORT"' in lines
    assert '"event":"environment_ignored"' in lines
