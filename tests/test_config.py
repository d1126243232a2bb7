"""Config parsing: every shipped file loads, every bad value is named by its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, catalogue_for, load, load_config, parse_config
from tests.conftest import CATALOGUE, sha, shipped_or_extended

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_file_loads(path: Path) -> None:
    config, catalogue = load(str(path), env={})
    assert len(catalogue) > 400
    assert config.source == str(path)


def test_default_config_is_what_the_spec_describes() -> None:
    config = load_config(str(ROOT / "config" / "proxy.yaml"), env={})
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    assert config.upstream.api_url == "https://api.pipedrive.com"
    assert config.upstream.oauth_url == "https://oauth.pipedrive.com"
    assert (config.policy.mode, config.store.kind) == ("enforce", "memory")


def test_static_grants_by_sha256_and_by_environment_variable() -> None:
    config = parse_config(
        {
            "tokens": [
                {"name": "bot", "sha256": sha("one").upper(), "scopes": ["deals:full"]},
                {"name": "dev", "token_env": "DEV_TOKEN", "scopes": ["deals:read"]},
            ]
        },
        env={"DEV_TOKEN": "two"},
    )
    grants = config.static_grants()
    assert grants[sha("one")].scopes == {"deals:full"}
    assert grants[sha("two")].source == "static:dev"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"colour": "blue"}, "colour: unknown key"),
        ({"upstream": {"api_url": "api.pipedrive.com"}}, "upstream.api_url: not an absolute http"),
        ({"upstream": {"api_url": "ftp://x"}}, "upstream.api_url: not an absolute http"),
        (
            {"upstream": {"api_url": "https://api.pipedrive.com/v1"}},
            "upstream.api_url: must be an origin .* without a path, not one ending in '/v1'",
        ),
        (
            {"upstream": {"oauth_url": "https://oauth.pipedrive.com/oauth/token"}},
            "upstream.oauth_url: must be an origin",
        ),
        ({"upstream": {"api_url": "https://x:99999"}}, "upstream.api_url: not a valid port"),
        ({"admin_listen": {"port": 8080}}, "admin_listen.port: the main port is 8080 already"),
        ({"admin_listen": {"host": "127.0.0.1"}}, "admin_listen.port: expected a port number"),
        ({"admin_listen": {"port": 9, "path": "/x"}}, "admin_listen.path: unknown key"),
        ({"upstream": {"apiurl": "https://x"}}, "upstream.apiurl: unknown key"),
        ({"upstream": {"read_timeout": 0}}, "upstream.read_timeout: expected more than 0"),
        ({"listen": {"port": "eighty"}}, "listen.port: expected a port number"),
        ({"listen": {"port": 70000}}, "listen.port: expected a port number"),
        ({"mode": "audit"}, "mode: expected one of enforce | report"),
        ({"app_scopes": ["deals:read", "deals:write"]}, r"app_scopes\[1\]: unknown scope 'deals:write'"),
        ({"unknown_tokens": "app_scopes"}, "unknown_tokens: app_scopes needs"),
        ({"tokens": [{"name": "x", "sha256": "abc", "scopes": []}]}, r"tokens\[0\]\.sha256"),
        ({"tokens": [{"name": "x", "token_env": "MISSING", "scopes": []}]},
         r"tokens\[0\]\.token_env: environment variable MISSING is not set"),
        ({"tokens": [{"name": "x", "sha256": "a" * 64}]}, r"tokens\[0\]\.scopes: missing"),
        ({"tokens": [{"name": "x", "sha256": "a" * 64, "scopes": ["nope"]}]},
         r"tokens\[0\]\.scopes\[0\]: unknown scope 'nope'"),
        ({"store": "postgres://x"}, "store: expected memory"),
        ({"logging": {"format": "xml"}}, "logging.format: expected one of json | console"),
        ({"rewrite_api_domain": "yes"}, "rewrite_api_domain: expected true or false"),
        ({"catalog_extra": ["/nonexistent/extra.yaml"]}, "catalog_extra: .*cannot read"),
        ({"limits": {"header_timeout": 0}}, "limits.header_timeout: expected more than 0"),
        ({"limits": {"body_timeout": "30s"}}, "limits.body_timeout: expected a number of seconds"),
        ({"limits": {"max_connections": 0}}, "limits.max_connections: expected between 1"),
        ({"limits": {"report_tokens": 0}}, "limits.report_tokens: expected between 1"),
        ({"limits": {"colour": 1}}, "limits.colour: unknown key"),
        (["a", "list"], "config: expected a mapping"),
    ],
    ids=lambda value: str(value)[:60] if isinstance(value, dict | list) else None,
)  # fmt: skip
def test_bad_values_are_refused_naming_the_key(document: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        catalogue_for(parse_config(document, env={}), shipped_or_extended)


def test_reading_the_config_and_checking_its_scopes_are_two_steps() -> None:
    config = parse_config({"app_scopes": ["deals:read", "beta:read"]}, env={})
    assert config.policy.app_scopes == frozenset({"deals:read", "beta:read"})
    with pytest.raises(ConfigError, match=r"app_scopes\[1\]: unknown scope 'beta:read'"):
        catalogue_for(config, lambda extra: CATALOGUE)


@pytest.mark.parametrize(
    ("url", "kind", "shown"),
    [
        ("memory", "memory", "memory"),
        ("sqlite:///var/lib/t.db", "sqlite", "sqlite:///var/lib/t.db"),
        ("redis://:s3cret@cache:6379/0", "redis", "redis://:***@cache:6379/0"),
        ("rediss://app:s3cret@cache:6380/1", "redis", "rediss://app:***@cache:6380/1"),
    ],
)
def test_the_store_url_is_parsed_once_with_its_password_hidden(
    url: str, kind: str, shown: str
) -> None:
    store = parse_config({"store": url}, env={}).store
    assert (store.kind, store.redacted) == (kind, shown)


def test_malformed_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen:\n  port: [8080\nmode: enforce\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: malformed YAML: line \d+, column \d+"):
        load_config(str(path), env={})


def test_config_path_comes_from_the_environment_when_not_given(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("mode: report\n")
    config = load_config(None, env={"PIPEDRIVE_SCOPE_PROXY_CONFIG": str(path)})
    assert config.policy.mode == "report"
