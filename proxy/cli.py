"""Command line: ``serve`` (the default), ``check``, ``explain``, ``report``,
``envoy-config`` and ``health``.

Every user error (a bad config key, an unknown scope, malformed YAML) is one line on stderr
naming what is wrong, and exit status 2; never a traceback. Only ``serve`` loads the server
(aiohttp, the stores, Prometheus): the other commands start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace

from proxy import __version__
from proxy.canonical import METHODS, canonicalize
from proxy.catalog import API_PREFIXES, Catalogue, Endpoint, api_route
from proxy.config import Config, ConfigError, Listen, load, load_config
from proxy.decision import Grant, authorize
from proxy.errors import MethodNotAllowed, ProxyError
from proxy.reasons import Reason
from proxy.report import build_report, calls_from_log, render_text


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipedrive-scope-proxy",
        description="Enforce Pipedrive OAuth scopes in front of the Pipedrive API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the proxy (the default)")
    _add_config(serve)
    serve.add_argument("--host", help="listen address (overrides listen.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")

    check = commands.add_parser("check", help="validate the config and the catalogue")
    _add_config(check)

    explain = commands.add_parser("explain", help="which scopes accept a call, and why")
    _add_config(explain)
    explain.add_argument("method", help="HTTP method, e.g. GET")
    explain.add_argument("path", help="request path, e.g. /v1/deals/42 or /api/v2/deals")
    explain.add_argument("--scopes", help="comma-separated granted scopes to decide for")

    report = commands.add_parser("report", help="the overreach report, from a JSON decision log")
    report.add_argument("--log", required=True, help="JSON decision log file ('-' for stdin)")
    report.add_argument("--format", choices=("json", "text"), default="text")
    report.add_argument(
        "--app-scopes", help="comma-separated declared scopes (default: the log's startup event)"
    )

    envoy = commands.add_parser(
        "envoy-config", help="print an Envoy bootstrap that asks this proxy about every call"
    )
    _add_config(envoy)
    envoy.add_argument(
        "--listen", default="0.0.0.0:10000", help="where Envoy listens (default 0.0.0.0:10000)"
    )
    envoy.add_argument(
        "--authz", help="the proxy's URL as Envoy reaches it (default: the config's listen)"
    )

    health = commands.add_parser(
        "health", help="ask a running proxy for /_proxy/health at the port its config sets"
    )
    _add_config(health)
    health.add_argument(
        "--ready", action="store_true", help="ask /_proxy/ready (catalogue and store) instead"
    )
    health.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)"
    )
    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="YAML config file (default: $PIPEDRIVE_SCOPE_PROXY_CONFIG)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve", "check", "explain", "report", "envoy-config", "health"}
    commands |= {"-h", "--help", "--version"}
    if not words or words[0] not in commands:
        words.insert(0, "serve")  # serve is the default command
    args = build_parser().parse_args(words)
    command = args.command
    try:
        if command == "check":
            return check(args.config)
        if command == "explain":
            return explain(args.config, args.method, args.path, args.scopes)
        if command == "report":
            return report(args.log, args.format, args.app_scopes)
        if command == "envoy-config":
            return envoy_config(args.config, args.listen, args.authz)
        if command == "health":
            return health(args.config, args.timeout, args.ready)
        return serve(args.config, args.host, args.port, args.workers)
    except (ConfigError, UsageError) as error:
        print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
        return 2


def check(config_path: str | None) -> int:
    config, catalogue = load(config_path)
    print(
        f"{config.source}: ok: mode {config.policy.mode}, store {config.store.kind}, "
        f"{len(catalogue)} endpoints (v1 {catalogue.count('v1')}, v2 {catalogue.count('v2')}), "
        f"{len(config.tokens)} static grants"
    )
    return 0


def explain(config_path: str | None, method: str, path: str, scopes: str | None) -> int:
    """Print the endpoint a call matches, its scopes, and the decision for ``--scopes``."""
    config, catalogue = load(config_path, read_tokens=False)
    method = method.upper()
    granted = _parse_scopes(scopes, catalogue) if scopes is not None else None
    try:  # the proxy's own reading of the request, refusals included
        route = api_route(canonicalize(method, path, ()).path)
        if route is None:
            prefixes = ", ".join(prefix for prefix, _ in API_PREFIXES)
            raise UsageError(f"path {path!r} is not under {prefixes}")
        if method not in METHODS:
            raise MethodNotAllowed(catalogue.methods(route))
    except ProxyError as error:
        print(f"{method} {path}\n  refused with {error.status}: {error.message}")
        return 1
    endpoint = catalogue.match(route, method)
    lines = [f"{method} {path}"]
    if endpoint is None:
        lines.append("  endpoint:        none in the catalogue")
    else:
        cost = endpoint.token_cost
        lines += [
            f"  endpoint:        {endpoint.name}",
            f"  accepted scopes: {', '.join(endpoint.scope_list)}",
            f"  token cost:      {cost if cost is not None else 'unknown'}",
            f"  sources:         {', '.join(endpoint.sources)}",
            f"  deprecated:      {'yes' if endpoint.deprecated else 'no'}",
            *(f"  note:            {note}" for note in endpoint.notes),
        ]
    app_scopes = config.policy.app_scopes
    if app_scopes is not None:
        lines.append(f"  app scopes:      {', '.join(sorted(app_scopes))}")
    if granted is None:
        print("\n".join(lines))
        return 0
    grant = Grant(granted, "--scopes")
    decision = authorize(catalogue, config.policy, route, method, None, grant, None)
    lines.append(f"  granted scopes:  {', '.join(sorted(granted)) or '(none)'} (base is implied)")
    lines.append(f"  decision:        {decision.verdict} ({decision.reason})")
    lines.append(f"  why:             {_why(decision.reason, endpoint, granted)}")
    print("\n".join(lines))
    return 0 if decision.verdict == "allow" else 1


def _why(reason: Reason, endpoint: Endpoint | None, granted: frozenset[str]) -> str:
    if endpoint is None:
        return "no catalogue entry matches; unknown endpoints are " + (
            "forwarded (unknown_endpoints: allow)"
            if reason is Reason.UNKNOWN_ENDPOINT_ALLOWED
            else "refused"
        )
    accepted = ", ".join(endpoint.scope_list)
    if reason is Reason.OUT_OF_SCOPE:
        return f"none of the granted scopes accepts {endpoint.name}; it needs one of: {accepted}"
    if reason is Reason.OUTSIDE_APP_SCOPES:
        return f"the app declares none of the scopes that accept it ({accepted})"
    held = sorted(endpoint.scopes & (granted | {"base"}))
    return f"{' and '.join(held)} accepts {endpoint.name}"


def _parse_scopes(text: str, catalogue: Catalogue) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - catalogue.scopes.keys())
    if unknown:
        raise UsageError(f"--scopes: unknown scope {unknown[0]!r}")
    return names


def report(log: str, format: str, app_scopes: str | None) -> int:
    """The overreach report computed from a JSON decision log, as the live proxy serves it."""
    try:
        if log == "-":
            calls, logged_scopes, unreadable = calls_from_log(sys.stdin)
        else:
            with open(log, encoding="utf-8", errors="replace") as handle:
                calls, logged_scopes, unreadable = calls_from_log(handle)
    except OSError as error:
        raise UsageError(f"--log: cannot read {log}: {error.strerror}") from None
    if app_scopes is not None:
        declared: frozenset[str] | None = frozenset(
            name.strip() for name in app_scopes.split(",") if name.strip()
        )
    else:
        declared = frozenset(logged_scopes) if logged_scopes is not None else None
    if unreadable:
        print(
            f"pipedrive-scope-proxy: skipped {unreadable} lines that are not JSON", file=sys.stderr
        )
    document = build_report(calls, declared)
    if format == "json":
        print(json.dumps(document, indent=2))
    else:
        print(render_text(document), end="")
    return 0


def envoy_config(config_path: str | None, listen: str, authz: str | None) -> int:
    """Print the Envoy bootstrap for "Envoy in front" (see ``proxy.envoy``)."""
    from proxy import envoy

    config, _ = load(config_path, read_tokens=False)
    try:
        where = envoy.parse_listen(listen)
        checker = envoy.parse_origin(authz or envoy.default_authz(config), "--authz")
        print(envoy.render(config, where, checker), end="")
    except envoy.EnvoyConfigError as error:
        raise UsageError(str(error)) from None
    return 0


def health(config_path: str | None, timeout: float, ready: bool = False) -> int:
    """Exit 0 if the proxy this config describes answers ``/_proxy/health`` (or, with
    ``ready``, ``/_proxy/ready``) with 200, else 1 with the reason on stderr: a container's
    HEALTHCHECK or an exec probe (Docker reserves exit status 2)."""
    import urllib.error
    import urllib.request

    try:
        config = load_config(config_path, read_tokens=False)
        url = health_url(config, "ready" if ready else "health")
    except ConfigError as error:
        print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http only)
            status, body = answer.status, answer.read(4096)
    except urllib.error.HTTPError as error:
        status, body = error.code, b""
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        what = "ready" if ready else "healthy"
        print(f"pipedrive-scope-proxy: {url}: not {what}: {reason}", file=sys.stderr)
        return 1
    try:
        found = json.loads(body) if status == 200 else {}
    except ValueError:
        found = {}
    if status != 200 or not isinstance(found, dict):
        what = "ready" if ready else "healthy"
        print(f"pipedrive-scope-proxy: {url}: not {what}: HTTP {status}", file=sys.stderr)
        return 1
    print(f"{url}: " + ", ".join(f"{key} {value}" for key, value in found.items()))
    return 0


def health_url(config: Config, endpoint: str = "health") -> str:
    """Where ``/_proxy/health`` (or ``/_proxy/ready``) is served: the admin listener if there
    is one, else the main port; a wildcard listen address is asked on loopback."""
    where = config.admin_listen or config.listen
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(where.host, where.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{where.port}/_proxy/{endpoint}"


def serve(config_path: str | None, host: str | None, port: int | None, workers: int) -> int:
    """Check what was asked, then serve (see ``proxy.serving``)."""
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port: expected a port number between 0 and 65535, not {port}")
    config, catalogue = load(config_path)
    listen = Listen(host or config.listen.host, config.listen.port if port is None else port)
    if config.admin_listen is not None and listen.port == config.admin_listen.port:
        raise UsageError(f"--port: {port} is admin_listen's port in {config.source}")
    config = replace(config, listen=listen)
    if workers < 1:
        raise UsageError("--workers: expected at least 1")
    if workers > 1 and config.store.kind == "memory":
        raise UsageError(
            "--workers: store 'memory' lives inside one process; with several workers use "
            "store: sqlite:///path/tokens.db or store: redis://host:6379/0"
        )
    from proxy import serving  # the server and its dependencies, only when serving

    try:
        return serving.serve(config_path, config, catalogue, workers)
    except serving.ServeError as error:
        raise UsageError(str(error)) from None
