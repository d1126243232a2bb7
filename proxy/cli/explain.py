"""``explain``: the endpoint a call matches, the scopes that accept it, and, for given scopes,
the decision and why, made by the proxy's own decision code."""

from __future__ import annotations

from proxy.cli.usage import UsageError, parse_scopes
from proxy.config import load
from proxy.core.canonical import METHODS, canonicalize
from proxy.core.catalog import API_PREFIXES, Catalogue, Endpoint, api_route
from proxy.core.decision import Grant, authorize
from proxy.core.errors import MethodNotAllowed, ProxyError
from proxy.core.reasons import Reason


def explain(config_path: str | None, method: str, path: str, scopes: str | None) -> int:
    """Print the endpoint a call matches, its scopes, and the decision for ``--scopes``."""
    config, catalogue = load(config_path, read_tokens=False)
    typed, method = method, method.upper()
    granted = parse_scopes(scopes, catalogue.scopes) if scopes is not None else None
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
