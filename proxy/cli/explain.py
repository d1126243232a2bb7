"""``explain``: the endpoint a call matches, the scopes that accept it, and, for given scopes,
the decision and why, made by the proxy's own decision code."""

from __future__ import annotations

from proxy.cli.usage import UsageError, parse_scopes
from proxy.config import Config, load
from proxy.core.canonical import canonicalize
from proxy.core.catalog import API_PREFIXES, Catalogue, Endpoint, api_route
from proxy.core.decision import BASE, Grant, authorize, locate, precheck
from proxy.core.errors import ProxyError
from proxy.core.why import why


def explain(config_path: str | None, method: str, path: str, scopes: str | None) -> int:
    """Print the endpoint a call matches, its scopes, and the decision for ``--scopes``."""
    config, catalogue = load(config_path, read_tokens=False)
    granted = parse_scopes(scopes, catalogue.scopes) if scopes is not None else None
    lines, status = describe(config, catalogue, method, path, granted)
    print("\n".join(lines))
    return status


def describe(
    config: Config,
    catalogue: Catalogue,
    method: str,
    path: str,
    granted: frozenset[str] | None,
) -> tuple[list[str], int]:
    """What ``explain`` prints, and its exit status: 0 allowed (or nothing to decide), 1
    refused; the server's own reading, pre-check and decision of the call."""
    typed, method = method, method.upper()
    try:  # the proxy's own reading of the request, refusals included
        route = api_route(canonicalize(method, path, ()).path)
        if route is None:
            prefixes = ", ".join(prefix for prefix, _ in API_PREFIXES)
            raise UsageError(f"path {path!r} is not under {prefixes}")
        precheck(catalogue, config.policy, route, method)
    except ProxyError as error:
        return [f"{method} {path}", f"  refused with {error.status}: {error.message}"], 1
    endpoint, _, taken = locate(catalogue, route, method)
    lines = [f"{method} {path}"]
    if typed != method:  # said here, as the proxy would refuse the call as it is spelled
        lines.append(
            f"  note:            the proxy refuses the method {typed!r} (400); as {method}:"
        )
    if endpoint is None:
        lines.append("  endpoint:        none in the catalogue")
        if taken:
            lines.append(f"  this path takes: {', '.join(taken)}")
    else:
        cost = endpoint.token_cost
        lines += [
            f"  endpoint:        {endpoint.name}",
            f"  accepted scopes: {', '.join(endpoint.scope_list)}",
            f"  token cost:      {cost if cost is not None else 'unknown'}",
            *(f"  source:          {catalogue.said_by(source)}" for source in _sources(endpoint)),
            f"  lifecycle:       {catalogue.lifecycle_of(endpoint)}",
            *_replaced(endpoint, catalogue),
            *(f"  note:            {note}" for note in endpoint.notes),
        ]
    app_scopes = config.policy.app_scopes
    if app_scopes is not None:
        lines.append(f"  app scopes:      {', '.join(sorted(app_scopes))}")
    if granted is None and app_scopes is None and endpoint is not None:
        lines.append("  decision:        none (give --scopes, or app_scopes in the config)")
        return lines, 0
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
    holding = endpoint.scopes & (granted | {BASE}) if endpoint is not None else ()
    said = why(decision.reason, decision.accepted_scopes, decision.methods, holding)
    lines.append(f"  why:             {said}")
    return lines, 0 if decision.verdict == "allow" else 1


def _replaced(endpoint: Endpoint, catalogue: Catalogue) -> list[str]:
    """The v2 endpoint Pipedrive names in this one's place, and what each costs."""
    if endpoint.replacement is None:
        return []
    method, _, path = endpoint.replacement.partition(" ")
    route = api_route(path.partition("?")[0])
    new = catalogue.match(route, method) if route is not None else None
    costs = ""
    if new is not None and new.token_cost is not None and endpoint.token_cost is not None:
        costs = f" (token cost {new.token_cost} there, {endpoint.token_cost} here)"
    return [f"  replaced by:     {endpoint.replacement}{costs}"]


def _sources(endpoint: Endpoint) -> list[str]:
    """Where the entry comes from, less the change its lifecycle line cites already."""
    cited = f"overlay:{endpoint.lifecycle.change}" if endpoint.lifecycle is not None else None
    return [source for source in endpoint.sources if source != cited]
