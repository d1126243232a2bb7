"""Command line: ``serve`` (the default), ``check``, ``explain``, ``report``,
``envoy-config`` and ``health``.

Every user error (a bad config key, an unknown scope, malformed YAML) is one line on stderr
naming what is wrong, and exit status 2; never a traceback. Only ``serve`` loads the server
(aiohttp, the stores, Prometheus): the other commands start fast.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace

from proxy import __version__
from proxy.canonical import METHODS, canonicalize
from proxy.catalog import (
    API_PREFIXES,
    Catalogue,
    Endpoint,
    api_route,
    load_catalogue,
    unknown_scope,
)
from proxy.config import NO_OVERRIDES, Config, ConfigError, Listen, Overrides, load, load_config
from proxy.decision import Grant, authorize
from proxy.errors import MethodNotAllowed, ProxyError
from proxy.reasons import Reason
from proxy.report import (
    build_report,
    calls_from_log,
    rejudge,
    render_junit,
    render_markdown,
    render_text,
)


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
    serve.add_argument(
        "--mode", choices=("enforce", "report"), help="overrides mode (also over reloads)"
    )
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="overrides logging.level"
    )

    check = commands.add_parser("check", help="validate the config and the catalogue")
    _add_config(check)

    explain = commands.add_parser("explain", help="which scopes accept a call, and why")
    _add_config(explain)
    explain.add_argument("method", help="HTTP method, e.g. GET")
    explain.add_argument("path", help="request path, e.g. /v1/deals/42 or /api/v2/deals")
    explain.add_argument("--scopes", help="comma-separated granted scopes to decide for")

    report = commands.add_parser("report", help="the overreach report, from a JSON decision log")
    report.add_argument("--log", required=True, help="JSON decision log file ('-' for stdin)")
    report.add_argument(
        "--format", choices=("text", "json", "markdown", "junit"), default="text",
        help="text (the default), json, markdown (a pull-request comment, a CI job summary) "
        "or junit (a test case per endpoint called, failing where a call would be refused)",
    )  # fmt: skip
    report.add_argument(
        "--app-scopes",
        help="comma-separated declared scopes to judge the calls against (default: the "
        "declaration in force in the log)",
    )
    report.add_argument(
        "--fail-on", action="append", default=[], metavar="denied|unused",
        help="exit 1 when an API call was refused or would be (denied; requests that are no "
        "API calls, such as GET / or a load balancer's probe, never count), or a declared "
        "scope is not needed (unused); repeat or comma-separate for both",
    )  # fmt: skip

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


COMMANDS = ("serve", "check", "explain", "report", "envoy-config", "health")


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in ("-h", "--help", "--version")):
        words.insert(0, "serve")  # serve is the default command: `pipedrive-scope-proxy --config F`
    elif words[0] not in (*COMMANDS, "-h", "--help", "--version"):
        close = difflib.get_close_matches(words[0], COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(
            f"pipedrive-scope-proxy: unknown command {words[0]!r}{hint}; "
            f"the commands are {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(words)
    command = args.command
    try:
        if command == "check":
            return check(args.config)
        if command == "explain":
            return explain(args.config, args.method, args.path, args.scopes)
        if command == "report":
            return report(args.log, args.format, args.app_scopes, args.fail_on)
        if command == "envoy-config":
            return envoy_config(args.config, args.listen, args.authz)
        if command == "health":
            return health(args.config, args.timeout, args.ready)
        overrides = Overrides(args.mode, args.log_level)
        return serve(args.config, args.host, args.port, args.workers, overrides)
    except (ConfigError, UsageError) as error:
        print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `report ... | head`: the reader has gone, which is no error worth a traceback. What
        # is still buffered goes nowhere, and the status is the shell's for a SIGPIPE death.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


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
    typed, method = method, method.upper()
    granted = _parse_scopes(scopes, catalogue.scopes) if scopes is not None else None
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
    if typed != method:  # said here, as the proxy would refuse the call as it is spelled
        lines.append(
            f"  note:            the proxy refuses the method {typed!r} (400); as {method}:"
        )
    if endpoint is None:
        lines.append("  endpoint:        none in the catalogue")
        taken = catalogue.methods(route)
        if taken:
            lines.append(f"  this path takes: {', '.join(taken)}")
    else:
        cost = endpoint.token_cost
        lines += [
            f"  endpoint:        {endpoint.name}",
            f"  accepted scopes: {', '.join(endpoint.scope_list)}",
            f"  token cost:      {cost if cost is not None else 'unknown'}",
            f"  sources:         {', '.join(endpoint.sources)}",
            f"  deprecated:      {'yes' if endpoint.deprecated else 'no'}",
            f"  lifecycle:       {_lifecycle(endpoint, catalogue)}",
            *(f"  note:            {note}" for note in endpoint.notes),
        ]
    app_scopes = config.policy.app_scopes
    if app_scopes is not None:
        lines.append(f"  app scopes:      {', '.join(sorted(app_scopes))}")
    if granted is None and app_scopes is None and endpoint is not None:
        lines.append("  decision:        none (give --scopes, or app_scopes in the config)")
        print("\n".join(lines))
        return 0
    if granted is not None:
        source = "--scopes"
    elif app_scopes is not None:  # a token holding the declared scopes (unknown_tokens does)
        granted, source = app_scopes, "app_scopes"
    else:  # a path the catalogue lacks: unknown_endpoints decides, whatever the scopes
        granted, source = frozenset(), "no scopes"
    decision = authorize(
        catalogue, config.policy, route, method, None, Grant(granted, source), None
    )
    held = ", ".join(sorted(granted)) or "(none)"
    given = " from app_scopes" if source == "app_scopes" else ""
    if source != "no scopes":
        lines.append(f"  granted scopes:  {held}{given} (base is implied)")
    lines.append(f"  decision:        {decision.verdict} ({decision.reason})")
    lines.append(f"  why:             {_why(decision.reason, endpoint, granted)}")
    print("\n".join(lines))
    return 0 if decision.verdict == "allow" else 1


def _lifecycle(endpoint: Endpoint, catalogue: Catalogue) -> str:
    """``current``, or ``removed since 2026-02-01``, with the Pipedrive page that says so."""
    lifecycle = endpoint.lifecycle
    if lifecycle is None:
        return "current"
    state = lifecycle.state.replace("_", " ")
    change = catalogue.changes.get(lifecycle.change)
    cited = f" ({change.cited()})" if change is not None else ""
    return f"{state} since {lifecycle.since}{cited}"


def _why(reason: Reason, endpoint: Endpoint | None, granted: frozenset[str]) -> str:
    if endpoint is None:
        return "no catalogue entry matches; unknown endpoints are " + (
            "forwarded (unknown_endpoints: allow)"
            if reason is Reason.UNKNOWN_ENDPOINT_ALLOWED
            else "refused with 404 (a mistyped path or method, not a missing scope)"
        )
    accepted = ", ".join(endpoint.scope_list)
    if reason is Reason.OUT_OF_SCOPE:
        return f"none of the granted scopes accepts {endpoint.name}; it needs one of: {accepted}"
    if reason is Reason.OUTSIDE_APP_SCOPES:
        return f"the app declares none of the scopes that accept it ({accepted})"
    held = sorted(endpoint.scopes & (granted | {"base"}))
    return f"{' and '.join(held)} accepts {endpoint.name}"


def _parse_scopes(text: str, known: Iterable[str], option: str = "--scopes") -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(known))
    if unknown:
        raise UsageError(f"{option}: {unknown_scope(unknown[0], known)}")
    return names


FAIL_ON = ("denied", "unused")


def report(log: str, format: str, app_scopes: str | None, fail_on: Sequence[str] = ()) -> int:
    """The overreach report computed from a JSON decision log, as the live proxy serves it.
    Exit 0, or 1 when a ``--fail-on`` finding is there (a CI gate)."""
    gates = {gate.strip() for text in fail_on for gate in text.split(",") if gate.strip()}
    for gate in sorted(gates - set(FAIL_ON)):
        raise UsageError(f"--fail-on: expected denied or unused, not {gate!r}")
    source = "standard input" if log == "-" else log
    try:
        if log == "-":
            run = calls_from_log(sys.stdin)
        else:
            with open(log, encoding="utf-8", errors="replace") as handle:
                run = calls_from_log(handle)
    except OSError as error:
        raise UsageError(f"--log: cannot read {log}: {error.strerror}") from None
    if not run.request_events:
        raise UsageError(
            f"--log: no request events in {source}: expected the proxy's JSON decision log "
            "(logging.format: json, at level info or debug)"
        )
    if run.unreadable:
        print(
            f"pipedrive-scope-proxy: skipped {run.unreadable} lines that are not JSON",
            file=sys.stderr,
        )
    calls = run.calls
    catalogue = load_catalogue()
    if app_scopes is not None:
        known = catalogue.scopes.keys() | {
            scope for call in calls for scope in call.accepted_scopes
        }
        declared: frozenset[str] | None = _parse_scopes(app_scopes, known, "--app-scopes")
        assert declared is not None
        calls = rejudge(calls, declared, run.mode)
    else:
        declared = frozenset(run.app_scopes) if run.app_scopes is not None else None
    document = build_report(
        calls, declared, mode=run.mode, since=run.since, breadth=catalogue.breadth
    )
    overall = document["overall"]
    refused_before = document["refused_before_decision"]
    if gates and not overall["requests"] and not refused_before:
        window = f" since {run.since}" if run.since else ""
        raise UsageError(f"--fail-on: no calls in the run {source} ends with{window}")
    renderers = {"json": lambda d: json.dumps(d, indent=2) + "\n", "text": render_text,
                 "markdown": render_markdown, "junit": render_junit}  # fmt: skip
    print(renderers[format](document), end="")
    found = ("denied" in gates and (overall["denied"] or refused_before)) or (
        "unused" in gates and overall["unused_app_scopes"]
    )
    return 1 if found else 0


def envoy_config(config_path: str | None, listen: str, authz: str | None) -> int:
    """Print the Envoy bootstrap for "Envoy in front" (see ``proxy.envoy``)."""
    from proxy import envoy

    config, _ = load(config_path, read_tokens=False)
    try:
        where = envoy.parse_listen(listen)
        checker = envoy.parse_origin(authz or config.listen.url, "--authz")
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
    return f"{(config.admin_listen or config.listen).url}/_proxy/{endpoint}"


def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int,
    overrides: Overrides = NO_OVERRIDES,
) -> int:
    """Check what was asked, then serve (see ``proxy.serving``)."""
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port: expected a port number between 0 and 65535, not {port}")
    config, catalogue = load(config_path)
    config = overrides.apply(config)
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
        return serving.serve(config_path, config, catalogue, workers, overrides)
    except serving.ServeError as error:
        raise UsageError(str(error)) from None
