"""The command line's parser: the commands, their options and help."""

from __future__ import annotations

import argparse

from proxy import __version__


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
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="validate without reading the token_env variables (for CI, where they are not set)",
    )

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
        "--fail-on", action="append", default=[], metavar="denied|unused|deprecated|drift",
        help="exit 1 when an API call was refused or would be (denied; requests that are no "
        "API calls, such as GET / or a load balancer's probe, never count), a declared "
        "scope is not needed (unused), a call went to an endpoint Pipedrive deprecated, "
        "no longer supports or removed (deprecated), or Pipedrive's answers disagreed with the "
        "catalogue (drift; grant_mismatch never fails); repeat or comma-separate for more",
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
