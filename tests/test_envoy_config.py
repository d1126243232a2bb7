"""``envoy-config``: the bootstrap for Pipedrive itself (TLS, SNI, certificate checks), the
safety settings the SPEC requires, and clear errors for addresses it cannot use. What the
bootstrap does with real traffic is tested with a real Envoy in ``test_envoy``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.processes import envoy_validate, run, write_config


def generated(*args: str) -> dict[str, Any]:
    result = run("envoy-config", *args)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def manager(document: dict[str, Any]) -> dict[str, Any]:
    [listener] = document["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [http] = chain["filters"]
    found: dict[str, Any] = http["typed_config"]
    return found


def clusters(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in document["static_resources"]["clusters"]}


def test_the_default_config_sends_allowed_calls_to_pipedrive_over_verified_tls(
    tmp_path: Path,
) -> None:
    result = run("envoy-config", "--config", "config/proxy.yaml")
    assert result.returncode == 0, result.stderr
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(result.stdout)
    envoy_validate(bootstrap)
    document = yaml.safe_load(result.stdout)
    api = clusters(document)["pipedrive_api"]
    assert api["type"] == "STRICT_DNS"
    address = api["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "api.pipedrive.com", "port_value": 443}
    tls = api["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.pipedrive.com"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"]["filename"] == "/etc/ssl/certs/ca-certificates.crt"
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.pipedrive.com"}}
    ]
    routes = manager(document)["route_config"]["virtual_hosts"][0]["routes"]
    api_routes = [r for r in routes if r.get("route", {}).get("cluster") == "pipedrive_api"]
    assert [route["match"]["prefix"] for route in api_routes] == ["/v1/", "/api/v1/", "/api/v2/"]
    assert {route["route"]["host_rewrite_literal"] for route in api_routes} == {"api.pipedrive.com"}
    # The listen address by default; the proxy on loopback, where it listens on every address.
    listen = document["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listen == {"address": "0.0.0.0", "port_value": 10000}
    authz = clusters(document)["scope_proxy"]
    address = authz["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    assert "transport_socket" not in authz


def test_the_safety_settings_are_all_there() -> None:
    http = manager(generated("--config", "config/proxy.yaml"))
    assert (http["normalize_path"], http["merge_slashes"]) == (False, False)
    assert http["codec_type"] == "HTTP1"  # see test_envoy: no HTTP/2 body games
    assert http["path_with_escaped_slashes_action"] == "KEEP_UNCHANGED"
    assert http["common_http_protocol_options"]["headers_with_underscores_action"] == (
        "REJECT_REQUEST"
    )
    assert http["http_protocol_options"] == {"allow_absolute_url": False}
    names = [f["name"] for f in http["http_filters"]]
    assert names == [
        "envoy.filters.http.header_mutation",  # the client's own verdict header removed
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.rbac",  # the call goes on only with the proxy's verdict
        "envoy.filters.http.router",
    ]
    check = http["http_filters"][1]["typed_config"]
    assert check["encode_raw_headers"] is True
    assert check["failure_mode_allow"] is False
    assert check["allowed_headers"] == {"patterns": [{"safe_regex": {"regex": ".*"}}]}
    assert check["http_service"]["path_prefix"] == "/_proxy/authz"
    assert check["http_service"]["server_uri"]["timeout"] == "2s"
    assert check["with_request_body"] == {  # the body to the check, up to the bound
        "max_request_bytes": 10 * 1024 * 1024 + 1, "allow_partial_message": True
    }  # fmt: skip
    assert http["http_filters"][-1]["name"] == "envoy.filters.http.router"


def test_oauth_goes_to_the_proxy_unchecked_and_everything_else_is_a_pipedrive_404() -> None:
    routes = manager(generated("--config", "config/proxy.yaml"))["route_config"]
    oauth, catch_all = routes["virtual_hosts"][0]["routes"][-2:]
    unchecked = {"envoy.filters.http.ext_authz", "envoy.filters.http.rbac"}
    assert oauth["match"] == {"prefix": "/oauth/"}
    assert oauth["route"]["cluster"] == "scope_proxy"
    assert "host_rewrite_literal" not in oauth["route"], "the proxy rewrites api_domain from Host"
    assert set(oauth["typed_per_filter_config"]) == unchecked
    assert catch_all["match"] == {"prefix": "/"}
    assert catch_all["direct_response"]["status"] == 404
    body = json.loads(catch_all["direct_response"]["body"]["inline_string"])
    assert (body["success"], body["errorCode"], body["scope_proxy"]["reason"]) == (
        False, 404, "not_found",
    )  # fmt: skip
    assert set(catch_all["typed_per_filter_config"]) == unchecked


def test_addresses_and_timeouts_follow_the_options_and_the_config(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        listen={"host": "::", "port": 9000},
        upstream={"api_url": "http://10.0.0.7:8081", "read_timeout": 90, "connect_timeout": 3},
        limits={"keepalive_timeout": 30, "header_timeout": 4},
    )
    document = generated("--config", config, "--listen", "[::]:10443")
    listen = document["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listen == {"address": "::", "port_value": 10443}
    found = clusters(document)
    address = found["scope_proxy"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"] == {
        "address": "::1",
        "port_value": 9000,
    }
    options = found["scope_proxy"]["typed_extension_protocol_options"]
    idle = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert idle["common_http_protocol_options"]["idle_timeout"] == "25s", "before the proxy's 30"
    api = found["pipedrive_api"]
    assert (api["type"], api["connect_timeout"]) == ("STATIC", "3s")
    assert "transport_socket" not in api, "plain HTTP upstream"
    http = manager(document)
    route = http["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert (route["timeout"], route["idle_timeout"], route["host_rewrite_literal"]) == (
        "0s", "90s", "10.0.0.7:8081",
    )  # fmt: skip
    assert http["request_headers_timeout"] == "4s"
    listener = document["static_resources"]["listeners"][0]
    assert [f["name"] for f in listener["listener_filters"]] == [
        "envoy.filters.listener.http_inspector"
    ]
    assert listener["listener_filters_timeout"] == "4s", "a silent client waits header_timeout"
    assert listener["continue_on_listener_filters_timeout"] is False
    [monitor] = document["overload_manager"]["resource_monitors"]
    assert monitor["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    assert monitor["typed_config"]["max_active_downstream_connections"] == 1024
    checked = generated("--config", config, "--authz", "https://scope-proxy.internal:8443")
    authz = clusters(checked)["scope_proxy"]
    assert authz["type"] == "STRICT_DNS"
    assert authz["transport_socket"]["typed_config"]["sni"] == "scope-proxy.internal"


def test_a_body_timeout_longer_than_the_read_timeout_sets_the_streams_idle_timeout(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        upstream={"read_timeout": 20},
        limits={"body_timeout": 45, "max_connections": 64},
    )
    document = generated("--config", config)
    route = manager(document)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["idle_timeout"] == "45s"
    [monitor] = document["overload_manager"]["resource_monitors"]
    assert monitor["typed_config"]["max_active_downstream_connections"] == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "10000"], "--listen: expected HOST:PORT, e.g. 0.0.0.0:10000, not '10000'"),
        (
            ["--listen", "0.0.0.0:99999"],
            "--listen: the port must be between 1 and 65535, not 99999",
        ),
        (
            ["--listen", "localhost:10000"],
            "--listen: Envoy listens on an IP address, e.g. 0.0.0.0 or 127.0.0.1 (127.0.0.1 for "
            "localhost), not 'localhost'",
        ),
        (
            ["--listen", "http://0.0.0.0:10000"],
            "--listen: Envoy listens on an IP address, e.g. 0.0.0.0 or 127.0.0.1, not 'http://0.0.0.0'",
        ),
        (["--authz", "127.0.0.1:8080"], "--authz: expected http://host:port or https://host"),
        (["--authz", "http://proxy:8080/_proxy"], "--authz: expected an origin with no path"),
        (
            ["--authz", "http://proxy:port"],
            "--authz: the port must be a number between 1 and 65535, in 'http://proxy:port'",
        ),
        (
            ["--authz", "http://127.0.0.1:99999"],
            "--authz: the port must be a number between 1 and 65535, in 'http://127.0.0.1:99999'",
        ),
    ],
    ids=[
        "no host",
        "port out of range",
        "a name",
        "a URL",
        "no scheme",
        "a path",
        "bad port",
        "authz port out of range",
    ],
)
def test_unusable_addresses_are_one_clear_line_and_status_2(args: list[str], message: str) -> None:
    result = run("envoy-config", "--config", "config/proxy.yaml", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr
