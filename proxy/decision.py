"""The decision core: plain values in, a verdict out. No I/O, no aiohttp.

Given the endpoint a request calls (or None), the scopes its token was granted and the policy
from the config, ``decide`` says whether Pipedrive would accept the call, and why. ``explain``
and the request handler both call it, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.catalog import Endpoint
from proxy.credentials import CredentialKind
from proxy.errors import ApiTokenNotScoped, UnknownToken

Mode = Literal["enforce", "report"]
Verdict = Literal["allow", "deny", "report"]
BASE = "base"


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the config that decide: mode, the app's declared scopes, fallbacks."""

    mode: Mode = "enforce"
    app_scopes: frozenset[str] | None = None
    unknown_tokens: Literal["deny", "app_scopes"] = "deny"
    api_tokens: Literal["deny", "app_scopes"] = "deny"
    unknown_endpoints: Literal["deny", "allow"] = "deny"


@dataclass(frozen=True, slots=True)
class Grant:
    """The scopes a token holds, and where that knowledge came from."""

    scopes: frozenset[str]
    source: str  # "static:<name>", "store", "app_scopes"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    endpoint: Endpoint | None
    granted_scopes: frozenset[str]

    @property
    def accepted_scopes(self) -> frozenset[str]:
        return self.endpoint.scopes if self.endpoint is not None else frozenset()

    @property
    def forwards(self) -> bool:
        return self.verdict != "deny"


def resolve_grant(
    kind: CredentialKind,
    static: Grant | None,
    stored: frozenset[str] | None,
    policy: Policy,
) -> Grant:
    """Granted scopes, in order: static grant, token store, then the fallback policy."""
    if static is not None:
        return static
    if kind == "api_token":
        if policy.api_tokens == "app_scopes" and policy.app_scopes is not None:
            return Grant(policy.app_scopes, "app_scopes")
        raise ApiTokenNotScoped()
    if stored is not None:
        return Grant(stored, "store")
    if policy.unknown_tokens == "app_scopes" and policy.app_scopes is not None:
        return Grant(policy.app_scopes, "app_scopes")
    raise UnknownToken("the proxy does not know this token's scopes")


def accepts(scopes: frozenset[str], endpoint: Endpoint) -> bool:
    """Whether any of ``scopes`` (``base`` always included) accepts the endpoint."""
    return BASE in endpoint.scopes or not scopes.isdisjoint(endpoint.scopes)


def decide(policy: Policy, endpoint: Endpoint | None, granted: frozenset[str]) -> Decision:
    """Would Pipedrive accept this call? In report mode a refusal becomes ``report``."""
    if endpoint is None:
        if policy.unknown_endpoints == "allow":
            return Decision("allow", "unknown_endpoint_allowed", None, granted)
        return _refuse(policy, "unknown_endpoint", None, granted)
    if not accepts(granted, endpoint):
        return _refuse(policy, "out_of_scope", endpoint, granted)
    if policy.app_scopes is not None and not accepts(policy.app_scopes, endpoint):
        return _refuse(policy, "outside_app_scopes", endpoint, granted)
    return Decision("allow", "in_scope", endpoint, granted)


def _refuse(
    policy: Policy, reason: str, endpoint: Endpoint | None, granted: frozenset[str]
) -> Decision:
    verdict: Verdict = "report" if policy.mode == "report" else "deny"
    return Decision(verdict, reason, endpoint, granted)
