"""The decision core: plain values in, a ``Decision`` out. No I/O, no aiohttp.

``authorize`` is the one decision of the proxy: given the API route and method a request calls,
its credential and what is known of that credential's scopes, and the policy from the config,
it says whether Pipedrive would accept the call, and why. Forwarding, Envoy's external
authorization check and ``explain`` all call it; the log event, the metrics and the report
entry of a request are all built from the ``Decision`` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from proxy.core.canonical import METHODS, SERVED_METHODS
from proxy.core.catalog import Catalogue, Endpoint, Route, path_shape
from proxy.core.credentials import Credential
from proxy.core.errors import (
    ApiTokenNotScoped,
    MethodNotAllowed,
    OutOfScope,
    ProxyError,
    UnknownEndpoint,
    UnknownToken,
)
from proxy.core.reasons import Reason

Mode = Literal["enforce", "report"]
Fallback = Literal["deny", "app_scopes"]
EndpointFallback = Literal["deny", "allow"]
Verdict = Literal["allow", "deny", "report"]
BASE = "base"
MODES: tuple[Mode, ...] = ("enforce", "report")
FALLBACKS: tuple[Fallback, ...] = ("deny", "app_scopes")
ENDPOINT_FALLBACKS: tuple[EndpointFallback, ...] = ("deny", "allow")


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the config that decide: mode, the app's declared scopes, fallbacks."""

    mode: Mode = "enforce"
    app_scopes: frozenset[str] | None = None
    unknown_tokens: Fallback = "deny"
    api_tokens: Fallback = "deny"
    unknown_endpoints: EndpointFallback = "deny"


# The grant name logs and reports give a token taken to hold the declared scopes
# (unknown_tokens or api_tokens: app_scopes); a static grant cannot be named so.
DECLARED_GRANT = "(app_scopes)"


@dataclass(frozen=True, slots=True)
class Grant:
    """The scopes a token holds, and where that knowledge came from."""

    scopes: frozenset[str]
    source: str  # "static:<name>", "store", "app_scopes", or how the CLI was told
    company: str | None = None  # the company's API host, when known (the budget governor's)
    # Derived once, read on every request: the static grant's name if the scopes come from
    # one, and the scopes sorted.
    name: str | None = field(init=False, compare=False)
    scope_list: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        static = self.source.startswith("static:")
        name = self.source.removeprefix("static:") if static else None
        if self.source == "app_scopes":
            name = DECLARED_GRANT  # the token was taken to hold the app's declared scopes
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "scope_list", tuple(sorted(self.scopes)))


class Decision(NamedTuple):
    """What became of a call: forwarded (``allow``, or ``report`` where enforce mode would have
    refused it) or refused (``deny``), why, and the facts the decision was made on. A call
    refused before its scope check could be made (no credential, an unknown token, the store
    down) is a decision too, and names the endpoint it was for."""

    verdict: Verdict
    reason: Reason
    method: str
    version: str | None = None
    endpoint: Endpoint | None = None
    credential: Credential | None = None
    grant: Grant | None = None
    shape: str | None = None  # a path no catalogue entry matches, ids left out (path_shape)
    methods: tuple[str, ...] = ()  # for such a path, the methods some endpoint there takes

    @property
    def label(self) -> str | None:
        """What logs and reports call the endpoint: its template, or the unknown path's shape."""
        return self.endpoint.name if self.endpoint is not None else self.shape

    @property
    def forwards(self) -> bool:
        return self.verdict != "deny"

    @property
    def accepted_scopes(self) -> tuple[str, ...]:
        return self.endpoint.scope_list if self.endpoint is not None else ()

    @property
    def granted_scopes(self) -> tuple[str, ...]:
        return self.grant.scope_list if self.grant is not None else ()

    @property
    def token_fp(self) -> str | None:
        return self.credential.fingerprint if self.credential is not None else None

    def refusal(self) -> ProxyError:
        """The answer to a call this decision refuses, carrying this decision."""
        error: ProxyError
        if self.reason is Reason.UNKNOWN_TOKEN:
            error = UnknownToken(NOT_LEARNED_HINT)
        elif self.reason is Reason.API_TOKEN_NOT_SCOPED:
            error = ApiTokenNotScoped()
        elif self.endpoint is None:
            error = UnknownEndpoint(self.shape, self.methods)
        else:
            error = OutOfScope(
                self.reason, self.endpoint.name, self.accepted_scopes, self.granted_scopes
            )
        error.decision = self
        return error


# What lets an unknown token through: said in the 401's scope_proxy.detail.
NOT_LEARNED_HINT = (
    "the proxy does not know this token's scopes: it learns them from the token's OAuth "
    "exchange, so refresh the token through the proxy (POST /oauth/token); after a restart "
    "that lost them, a warm-up (warmup) or unknown_tokens: app_scopes lets it through on the "
    "app's declared scopes"
)


def precheck(catalogue: Catalogue, policy: Policy, route: Route, method: str) -> None:
    """What is checked of an API call before its credential: a method the proxy does not serve
    is refused (405), naming the methods the path takes (every served one where unknown
    endpoints are forwarded). The server and ``explain`` both start here."""
    if method not in METHODS:
        allowed = SERVED_METHODS if policy.unknown_endpoints == "allow" else None
        raise MethodNotAllowed(allowed or catalogue.methods(route))


def authorize(
    catalogue: Catalogue,
    policy: Policy,
    route: Route,
    method: str,
    credential: Credential | None,
    static: Grant | None,
    stored: frozenset[str] | None,
    company: str | None = None,
) -> Decision:
    """Would Pipedrive accept this call? In report mode a scope refusal becomes ``report``.

    Granted scopes come from, in order: a static grant, the token store (``stored``, learned
    with the token's ``company``), then the policy's fallbacks. Unknown tokens and unscoped
    API tokens are refused in either mode.
    """
    endpoint, shape, methods = locate(catalogue, route, method)
    grant = resolve_grant(credential, static, stored, policy, company)
    if isinstance(grant, Reason):
        return Decision(
            "deny", grant, method, route.version, endpoint, credential, None, shape, methods
        )
    verdict, reason = decide(policy, endpoint, grant.scopes)
    version = route.version
    return Decision(verdict, reason, method, version, endpoint, credential, grant, shape, methods)


def refused_before(
    catalogue: Catalogue,
    route: Route,
    method: str,
    refusal: ProxyError,
    credential: Credential | None = None,
) -> ProxyError:
    """A call refused before its scope could be checked (no credential or two, the store
    down): the refusal, carrying the decision that names the endpoint the call was for."""
    endpoint, shape, methods = locate(catalogue, route, method)
    refusal.decision = Decision(
        "deny", refusal.reason, method, route.version, endpoint, credential, None, shape, methods
    )
    return refusal


def locate(
    catalogue: Catalogue, route: Route, method: str
) -> tuple[Endpoint | None, str | None, tuple[str, ...]]:
    """The endpoint a call is for; or, for a path no catalogue entry matches, its shape (what
    logs and reports may show of it) and the methods some endpoint at that path takes."""
    endpoint = catalogue.match(route, method)
    if endpoint is not None:
        return endpoint, None, ()
    return None, path_shape(method, route), catalogue.methods(route)


def decide(
    policy: Policy, endpoint: Endpoint | None, granted: frozenset[str]
) -> tuple[Verdict, Reason]:
    """The verdict on calling ``endpoint`` (None: no catalogue entry) with ``granted`` scopes."""
    if endpoint is None:
        if policy.unknown_endpoints == "allow":
            return "allow", Reason.UNKNOWN_ENDPOINT_ALLOWED
        return _refused(policy), Reason.UNKNOWN_ENDPOINT
    if not accepts(granted, endpoint):
        return _refused(policy), Reason.OUT_OF_SCOPE
    if policy.app_scopes is not None and not accepts(policy.app_scopes, endpoint):
        return _refused(policy), Reason.OUTSIDE_APP_SCOPES
    return "allow", Reason.IN_SCOPE


def resolve_grant(
    credential: Credential | None,
    static: Grant | None,
    stored: frozenset[str] | None,
    policy: Policy,
    company: str | None = None,
) -> Grant | Reason:
    """Granted scopes, in order: static grant, token store, then the fallback policy; or the
    reason the credential has none."""
    if static is not None:
        return static
    if credential is not None and credential.kind == "api_token":
        if policy.api_tokens == "app_scopes" and policy.app_scopes is not None:
            return Grant(policy.app_scopes, "app_scopes")
        return Reason.API_TOKEN_NOT_SCOPED
    if stored is not None:
        return Grant(stored, "store", company)
    if policy.unknown_tokens == "app_scopes" and policy.app_scopes is not None:
        return Grant(policy.app_scopes, "app_scopes")
    return Reason.UNKNOWN_TOKEN


def accepts(scopes: frozenset[str], endpoint: Endpoint) -> bool:
    """Whether any of ``scopes`` (``base`` always included) accepts the endpoint."""
    return BASE in endpoint.scopes or not scopes.isdisjoint(endpoint.scopes)


def _refused(policy: Policy) -> Verdict:
    return "report" if policy.mode == "report" else "deny"
