"""``envoy-config``: an Envoy v3 bootstrap that puts Envoy in front and this proxy beside it.

Envoy carries the traffic; for every API call its HTTP ``ext_authz`` filter asks the proxy at
``/_proxy/authz/<path and query>`` (the same method and every header, no body) and forwards the
call to ``upstream.api_url`` only on a 200. What it forwards must be byte for byte what was
checked, so the bootstrap turns off everything in Envoy that would rewrite the request between
the check and the upstream (path normalization, slash merging, escaped-slash handling) and
refuses what the proxy would refuse and Envoy would otherwise pass on differently (header names
with underscores, absolute-form targets). A check that fails or times out refuses the call.

The OAuth exchange goes through the proxy itself (the check is off there), so the proxy still
learns each new token's scopes and rewrites ``api_domain`` to Envoy's address. Every other path
is answered 404 in Pipedrive's envelope by Envoy, without asking anyone.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config import Config
from proxy.core.catalog import API_PREFIXES, AUTHZ_PREFIX
from proxy.core.errors import (
    DECISION_HEADER,
    AuthorizerUnavailable,
    NotFound,
    UpstreamUnavailable,
    envelope,
)

# Debian's and Ubuntu's bundle of trusted CAs (the envoyproxy/envoy images are Ubuntu).
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CHECK_TIMEOUT_SECONDS = 2.0
# Envoy drops a pooled connection to the proxy before the proxy would close it as idle
# (limits.keepalive_timeout), so that a check is never sent on a connection being closed.
_IDLE_MARGIN_SECONDS = 5.0


class EnvoyConfigError(ValueError):
    """An address the bootstrap cannot use; the message names the option."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def parse_listen(text: str) -> Address:
    """``HOST:PORT`` (``[::]:10000`` for IPv6); Envoy listens on an IP address, not a name."""
    host, separator, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit():
        raise EnvoyConfigError(f"--listen: expected HOST:PORT, e.g. 0.0.0.0:10000, not {text!r}")
    if not 0 < int(port) < 65536:
        raise EnvoyConfigError(f"--listen: the port must be between 1 and 65535, not {port}")
    if not _is_ip(host):
        hint = " (127.0.0.1 for localhost)" if host == "localhost" else ""
        raise EnvoyConfigError(
            f"--listen: Envoy listens on an IP address, e.g. 0.0.0.0 or 127.0.0.1{hint}, "
            f"not {host!r}"
        )
    return Address(host, int(port))


def parse_origin(text: str, option: str) -> Origin:
    """``http://host:port`` or ``https://host[:port]``: where Envoy sends checks or calls."""
    try:
        parts = urlsplit(text)
    except ValueError:
        raise EnvoyConfigError(f"{option}: not a URL: {text!r}") from None
    try:
        port = parts.port
    except ValueError:
        raise EnvoyConfigError(
            f"{option}: the port must be a number between 1 and 65535, in {text!r}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnvoyConfigError(f"{option}: expected http://host:port or https://host, not {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EnvoyConfigError(f"{option}: expected an origin with no path, not {text!r}")
    if port == 0:
        raise EnvoyConfigError(f"{option}: the port must be between 1 and 65535, in {text!r}")
    default = 443 if parts.scheme == "https" else 80
    return Origin(parts.scheme, parts.hostname, port or default)


def bootstrap(config: Config, listen: Address, authz: Origin) -> dict[str, Any]:
    """The whole Envoy v3 bootstrap, as the YAML document's data."""
    upstream = parse_origin(config.upstream.api_url, "upstream.api_url")
    limits = config.limits
    # Envoy cannot tell a silent client body from a silent upstream: one stream idle timeout
    # covers both, as long as the longer of the proxy's two.
    read_timeout = max(config.upstream.read_timeout, limits.body_timeout)
    api_routes = [
        {
            "match": {"prefix": prefix},
            "route": {
                "cluster": "pipedrive_api",
                "host_rewrite_literal": _authority(upstream),
                "timeout": "0s",  # a download may take long; a silent upstream may not:
                "idle_timeout": _seconds(read_timeout),
            },
            # The check's verdict was for Envoy (see _verdict_required), not for Pipedrive.
            "request_headers_to_remove": [VERDICT_HEADER],
        }
        for prefix, _ in API_PREFIXES
    ]
    oauth_route = {
        "match": {"prefix": "/oauth/"},
        # The proxy forwards the exchange itself and learns the new token's scopes; Host goes
        # as it came, so that the proxy points api_domain at Envoy.
        "route": {
            "cluster": "scope_proxy",
            "timeout": "0s",
            "idle_timeout": _seconds(read_timeout + config.upstream.connect_timeout + 5),
        },
        "typed_per_filter_config": _UNCHECKED,
    }
    not_found = envelope(NotFound("not a Pipedrive API path"))
    catch_all = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": json.dumps(not_found)}},
        "response_headers_to_add": [
            _header("content-type", "application/json"),
            _header(DECISION_HEADER.lower(), "deny"),
        ],
        "typed_per_filter_config": _UNCHECKED,
    }
    connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "pipedrive",
        # HTTP/1.1 only: over HTTP/2 a GET can end with trailers and no DATA, which Envoy
        # forwards chunked without telling the check there was a body stream.
        "codec_type": "HTTP1",
        # What is checked is what is forwarded: Envoy rewrites no path.
        "normalize_path": False,
        "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "common_http_protocol_options": {
            # Some servers read X_Api_Token as x-api-token: the proxy refuses it, so Envoy does.
            "headers_with_underscores_action": "REJECT_REQUEST",
            "idle_timeout": _seconds(limits.keepalive_timeout),
        },
        "http_protocol_options": {"allow_absolute_url": False},
        "request_headers_timeout": _seconds(limits.header_timeout),
        "server_header_transformation": "PASS_THROUGH",
        # Envoy's own answer when Pipedrive cannot be reached, in the envelope the proxy alone
        # answers with (502), not Envoy's plain text.
        "local_reply_config": {
            "mappers": [_upstream_unavailable(upstream), _authorizer_unavailable()]
        },
        "route_config": {
            "name": "pipedrive",
            "virtual_hosts": [
                {
                    "name": "pipedrive",
                    "domains": ["*"],
                    "routes": [*api_routes, oauth_route, catch_all],
                }
            ],
        },
        "http_filters": [
            *_verdict_required(authz, limits.max_checked_body),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            },
        ],
    }
    return {
        "overload_manager": _connection_limit(limits.max_connections),
        "static_resources": {
            "listeners": [
                {
                    "name": "pipedrive",
                    "address": _socket_address(listen.host, listen.port),
                    # A client that connects and sends nothing is closed after header_timeout,
                    # as the proxy closes it: the inspector waits for the first bytes, and
                    # request_headers_timeout (above) counts from them.
                    "listener_filters": [
                        {
                            "name": "envoy.filters.listener.http_inspector",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.listener"
                                ".http_inspector.v3.HttpInspector"
                            },
                        }
                    ],
                    "listener_filters_timeout": _seconds(limits.header_timeout),
                    "continue_on_listener_filters_timeout": False,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster("scope_proxy", authz, 1.0, config.limits.keepalive_timeout),
                _cluster("pipedrive_api", upstream, config.upstream.connect_timeout, None),
            ],
        },
    }


def render(config: Config, listen: Address, authz: Origin) -> str:
    """The bootstrap as YAML, with a header saying what made it and from what."""
    head = (
        "# Envoy v3 bootstrap for pipedrive-scope-proxy (Envoy in front, the proxy as its\n"
        "# external authorizer), made by `pipedrive-scope-proxy envoy-config`\n"
        f"# from {config.source}. Envoy listens on {listen.host}:{listen.port}, asks the proxy at\n"
        f"# {authz.scheme}://{_authority(authz)}{AUTHZ_PREFIX}/ about every API call, and sends\n"
        f"# allowed calls to {config.upstream.api_url}. Run: envoy -c this-file.yaml\n"
    )
    document = yaml.safe_dump(bootstrap(config, listen, authz), sort_keys=False, width=100)
    return head + document


# The check's answer names its decision in this header; Envoy requires it (see below).
VERDICT_HEADER = DECISION_HEADER.lower()
_VERDICTS = "^(allow|report)$"
# Routes that are not checked: OAuth (the proxy's own route) and the catch-all 404.
_UNCHECKED = {
    "envoy.filters.http.ext_authz": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "disabled": True,
    },
    # An RBACPerRoute without a policy turns the filter off on the route.
    "envoy.filters.http.rbac": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
    },
}


def _connection_limit(max_connections: int) -> dict[str, Any]:
    """Envoy's overload manager holding its client connections to ``limits.max_connections``:
    past it, a new connection is closed as soon as it is accepted."""
    return {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                    ".downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_connections,
                },
            }
        ]
    }


def _upstream_unavailable(upstream: Origin) -> dict[str, Any]:
    failed = UpstreamUnavailable(f"cannot connect to {upstream.host}")  # as the proxy says it
    return {
        # connection failure, no healthy host, retries exhausted, overflow, no cluster
        "filter": {"response_flag_filter": {"flags": ["UF", "UH", "URX", "UO", "NC"]}},
        "status_code": failed.status,
        "body": {"inline_string": json.dumps(envelope(failed))},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }


def _authorizer_unavailable() -> dict[str, Any]:
    """Envoy's answer when the check failed: 503 in the envelope, with the decision header,
    telling the app and its developer that the call was not checked. Told apart by
    ext_authz's response flag (UAEX) together with the status it answers then
    (``status_on_error``, 503). The proxy's own refusals of a check also carry UAEX, but only
    its 4xx ones pass Envoy as refusals: Envoy takes an authorizer's 5xx (the proxy's token
    store down, too many connections) for a failure. Pipedrive's own 503, or its outage (the
    other mapper), never carries UAEX."""
    failed = AuthorizerUnavailable(
        "the authorizer (pipedrive-scope-proxy) could not be reached or could not decide "
        "(its log says why), so the call was neither checked nor forwarded"
    )
    return {
        "filter": {
            "and_filter": {
                "filters": [
                    {"response_flag_filter": {"flags": ["UAEX"]}},
                    {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 503, "runtime_key": _NO_RUNTIME},
                            }
                        }
                    },
                ]
            }
        },
        "status_code": failed.status,
        "body": {"inline_string": json.dumps(envelope(failed))},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
        "headers_to_add": [_header(DECISION_HEADER.lower(), "deny")],
    }


_NO_RUNTIME = "pipedrive_scope_proxy.unused"  # Envoy requires a key; nothing sets it


def _verdict_required(authz: Origin, checked_body: int) -> list[dict[str, Any]]:
    """The check, and what makes a 200 count only when the proxy gave it.

    ext_authz takes any 200 as "allowed", whoever answers it: an ``--authz`` that points at
    some other server that answers 200 would let every call through. So the proxy's verdict
    (``X-Scope-Proxy-Decision: allow`` or ``report``) is copied from the check's answer onto
    the request, an RBAC filter lets the call on only with it, and the route removes it before
    the upstream. A client's own copy of that header is removed before the check, so it cannot
    stand in for the proxy's.
    """
    forget_clients_verdict = {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"
            ".HeaderMutation",
            "mutations": {"request_mutations": [{"remove": VERDICT_HEADER}]},
        },
    }
    verdict_required = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "checked-by-pipedrive-scope-proxy": {
                        "permissions": [{"any": True}],
                        "principals": [
                            {
                                "header": {
                                    "name": VERDICT_HEADER,
                                    "string_match": {"safe_regex": {"regex": _VERDICTS}},
                                }
                            }
                        ],
                    }
                },
            },
        },
    }
    check = {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": _ext_authz(authz, checked_body),
    }
    return [forget_clients_verdict, check, verdict_required]


def _ext_authz(authz: Origin, checked_body: int) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": False,  # no answer from the proxy: refused
        # Envoy's answer when the check fails: no answer in time, or a 5xx one (which Envoy
        # takes for a failure, never passing it on); _authorizer_unavailable words it.
        "status_on_error": {"code": "ServiceUnavailable"},
        # Header values go to the check as the client sent them, not with bytes that are not
        # UTF-8 replaced (which would check one value and forward another).
        "encode_raw_headers": True,
        # Every request header goes to the check: the proxy decides on all of them.
        "allowed_headers": {"patterns": [{"safe_regex": {"regex": ".*"}}]},
        # The check carries the body, up to one byte more than limits.max_checked_body, and
        # its Content-Length is that of what it carries: the proxy reads form, multipart and
        # JSON bodies for method overrides and credentials (refusing one longer than the bound:
        # 413; Envoy marks a body partial only when it holds more than it was asked for, so a
        # body cut at exactly the bound would not show), and a GET or HEAD with a body is
        # refused (an upstream that ignores it reads it as a second request). Envoy holds a
        # body until it has that much of it, or all of it.
        "with_request_body": {
            "max_request_bytes": checked_body + 1,
            "allow_partial_message": True,
        },
        "http_service": {
            "server_uri": {
                "uri": f"{authz.scheme}://{_authority(authz)}",
                "cluster": "scope_proxy",
                "timeout": _seconds(CHECK_TIMEOUT_SECONDS),
            },
            "path_prefix": AUTHZ_PREFIX,
            "authorization_response": {
                # A refusal reaches the client as the proxy wrote it: status, body, these.
                "allowed_client_headers": {
                    "patterns": [
                        {"exact": name, "ignore_case": True}
                        for name in ("content-type", DECISION_HEADER, "allow", "retry-after")
                    ]
                },
                # An allowed call's answer says so too.
                "allowed_client_headers_on_success": {
                    "patterns": [{"exact": DECISION_HEADER, "ignore_case": True}]
                },
                # The verdict, onto the request for the RBAC filter (see _verdict_required).
                "allowed_upstream_headers": {
                    "patterns": [{"exact": DECISION_HEADER, "ignore_case": True}]
                },
            },
        },
    }


def _cluster(
    name: str, origin: Origin, connect_timeout: float, idle_before: float | None
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(origin.host) else "STRICT_DNS",
        "connect_timeout": _seconds(connect_timeout),
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(origin.host, origin.port)}}
                    ]
                }
            ],
        },
    }
    if idle_before is not None:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                ".HttpProtocolOptions",
                "common_http_protocol_options": {
                    "idle_timeout": _seconds(max(idle_before - _IDLE_MARGIN_SECONDS, 1.0))
                },
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    if origin.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                ".UpstreamTlsContext",
                "sni": origin.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": CA_BUNDLE},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": origin.host}}
                        ],
                    }
                },
            },
        }
    return cluster


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _header(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _authority(origin: Origin) -> str:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    default = 443 if origin.tls else 80
    return host if origin.port == default else f"{host}:{origin.port}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
