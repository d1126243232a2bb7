"""The commands around a running proxy: ``check`` a config, ``serve`` it, print its
``envoy-config``, ask its ``health``."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any, TypeGuard

from proxy.cli.usage import UsageError
from proxy.config import NO_OVERRIDES, Config, ConfigError, Overrides, load, load_config
from proxy.core.errors import DECISION_HEADER


def check(config_path: str | None, no_secrets: bool = False) -> int:
    """Validate the config (with the environment's settings laid over it) and the catalogue;
    say which values came from the environment, and which variables were not read."""
    config, catalogue = load(config_path, read_tokens=not no_secrets)
    print(
        f"{config.source}: ok: mode {config.policy.mode}, store {config.store.kind}, "
        f"{len(catalogue)} endpoints (v1 {catalogue.count('v1')}, v2 {catalogue.count('v2')}), "
        f"{len(config.tokens)} static grant{'' if len(config.tokens) == 1 else 's'}"
        + (" (token_env variables not read: --no-secrets)" if no_secrets else "")
    )
    print(f"catalogue: {catalogue.provenance.described()}")
    budget = config.budget
    if budget.on:
        burst = (
            f", burst {budget.burst_oauth or '-'} (OAuth) / {budget.burst_api_token or '-'} "
            "(API token) per 2 s"
            if budget.burst_oauth is not None or budget.burst_api_token is not None
            else ""
        )
        print(
            f"budget: {budget.mode}, app {budget.app}, share {budget.share:g} of "
            f"{budget.daily_tokens} tokens a day until Pipedrive says the company's, reserve "
            f"{budget.reserve:g} for {len(budget.critical)} critical endpoint"
            f"{'' if len(budget.critical) == 1 else 's'}{burst}"
        )
    for variable, key in config.environment.applied:
        print(f"{key}: from {variable}")
    warn_ignored(config)
    return 0


def warn_ignored(config: Config) -> None:
    """One line on stderr per ``PIPEDRIVE_SCOPE_PROXY_*`` variable that was not read."""
    for variable, why in config.environment.ignored:
        print(f"pipedrive-scope-proxy: warning: {variable} ignored: {why}", file=sys.stderr)


def envoy_config(config_path: str | None, listen: str, authz: str | None) -> int:
    """Print the Envoy bootstrap for "Envoy in front" (see ``proxy.envoy``)."""
    from proxy.envoy import bootstrap as envoy

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
    ``ready``, ``/_proxy/ready``) with 200 and its own answer, else 1 with the reason on
    stderr: a container's HEALTHCHECK or an exec probe (Docker reserves exit status 2).

    It asks the address directly: never through an HTTP proxy from the environment
    (``http_proxy``), which would answer for a stopped proxy or fail a running one, and it
    follows no redirect. An answer counts only as the proxy's: its decision header and the
    endpoint's own keys (``status: ok`` and ``version``; ``catalogue`` and ``store: ok``)."""
    import urllib.error
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # a redirect is answered as its own status: not healthy

    what = "ready" if ready else "healthy"
    try:
        config = load_config(config_path, read_tokens=False)
        url = health_url(config, "ready" if ready else "health")
    except ConfigError as error:
        print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
        return 1
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}), NoRedirects()]
    tls = (config.admin_listen or config.listen).tls
    if tls is not None:  # the listener's own certificate is what it must present
        import ssl

        pinned = ssl.create_default_context(cafile=str(tls.cert_file))
        pinned.check_hostname = False  # asked on loopback, whatever name the certificate has
        pinned.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        handlers.append(urllib.request.HTTPSHandler(context=pinned))
    direct = urllib.request.build_opener(*handlers)
    try:
        with direct.open(url, timeout=timeout) as answer:
            status, body, headers = answer.status, answer.read(4096), answer.headers
    except urllib.error.HTTPError as error:
        status, body, headers = error.code, b"", error.headers
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        print(f"pipedrive-scope-proxy: {url}: not {what}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"pipedrive-scope-proxy: {url}: not {what}: HTTP {status}", file=sys.stderr)
        return 1
    try:
        found = json.loads(body)
    except ValueError:
        found = None
    if DECISION_HEADER not in headers or not _own_answer(found, ready):
        print(
            f"pipedrive-scope-proxy: {url}: not {what}: something answered there, but not "
            "pipedrive-scope-proxy (is another server on that port?)",
            file=sys.stderr,
        )
        return 1
    print(f"{url}: " + ", ".join(f"{key} {_said(value)}" for key, value in found.items()))
    return 0


def _said(value: object) -> object:
    """A value of the health answer in a line: the catalogue by its version."""
    if isinstance(value, dict):
        return value.get("version", json.dumps(value))
    return value


def _own_answer(found: object, ready: bool) -> TypeGuard[dict[str, object]]:
    if not isinstance(found, dict):
        return False
    if ready:
        return isinstance(found.get("catalogue"), int) and found.get("store") == "ok"
    return found.get("status") == "ok" and isinstance(found.get("version"), str)


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
    """Check what was asked, then serve (see ``proxy.http.serving``)."""
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port: expected a port number between 0 and 65535, not {port}")
    config, catalogue = load(config_path)
    config = overrides.apply(config)
    listen = replace(
        config.listen,
        host=host or config.listen.host,
        port=config.listen.port if port is None else port,
    )  # its tls, if any, goes with it
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
    from proxy.http import serving  # the server and its dependencies, only when serving

    try:
        return serving.serve(config_path, config, catalogue, workers, overrides)
    except serving.ServeError as error:
        raise UsageError(str(error)) from None
