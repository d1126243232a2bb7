"""The decision core and credential handling, as plain functions on plain values."""

from __future__ import annotations

import hashlib

import pytest

from proxy.core import credentials
from proxy.core.catalog import Endpoint, Route
from proxy.core.credentials import Credential, extract_credential, fingerprint
from proxy.core.decision import Grant, Policy, authorize, decide, resolve_grant
from proxy.core.errors import (
    AmbiguousRequest,
    ApiTokenNotScoped,
    MissingCredential,
    MultipleCredentials,
    OutOfScope,
    UnknownToken,
    UnsupportedCredential,
)
from proxy.core.reasons import Reason
from tests.conftest import CATALOGUE


def route(version: str, path: str) -> Route:
    return Route(version, tuple(path[1:].split("/")))


def endpoint(version: str, method: str, path: str) -> Endpoint:
    found = CATALOGUE.match(route(version, path), method)
    assert found is not None
    return found


DELETE_DEAL = endpoint("v1", "DELETE", "/deals/1")
GET_DEAL = endpoint("v1", "GET", "/deals/1")
ME = endpoint("v1", "GET", "/users/me")


@pytest.mark.parametrize(
    ("policy", "target", "granted", "verdict", "reason"),
    [
        (Policy(), GET_DEAL, {"deals:read"}, "allow", "in_scope"),
        (Policy(), GET_DEAL, {"contacts:read"}, "deny", "out_of_scope"),
        (Policy(), ME, set(), "allow", "in_scope"),
        (Policy(mode="report"), GET_DEAL, {"contacts:read"}, "report", "out_of_scope"),
        (Policy(app_scopes=frozenset({"deals:read"})), GET_DEAL, {"deals:full"}, "allow",
         "in_scope"),
        (Policy(app_scopes=frozenset({"deals:read"})), DELETE_DEAL, {"deals:full"}, "deny",
         "outside_app_scopes"),
        (Policy(), None, {"deals:full"}, "deny", "unknown_endpoint"),
        (Policy(mode="report"), None, {"deals:full"}, "report", "unknown_endpoint"),
        (Policy(unknown_endpoints="allow"), None, set(), "allow", "unknown_endpoint_allowed"),
    ],
    ids=[
        "a granted accepting scope allows",
        "no accepting scope denies",
        "base is always granted",
        "report mode marks instead of denying",
        "a full token under a read declaration may read",
        "the app declaration is a ceiling: a full token may not delete under deals:read",
        "an unknown endpoint fails closed",
        "report mode reports an unknown endpoint",
        "unknown_endpoints: allow forwards it",
    ],
)  # fmt: skip
def test_decide(
    policy: Policy, target: Endpoint | None, granted: set[str], verdict: str, reason: str
) -> None:
    assert decide(policy, target, frozenset(granted)) == (verdict, reason)


APP = frozenset({"deals:read"})
STATIC = Grant(frozenset({"admin"}), "static:ops")
OAUTH = Credential("oauth", "0" * 64)
API_TOKEN = Credential("api_token", "1" * 64)


@pytest.mark.parametrize(
    ("credential", "static", "stored", "policy", "expected"),
    [
        (OAUTH, STATIC, frozenset({"x"}), Policy(), STATIC),
        (OAUTH, None, frozenset({"deals:full"}), Policy(), Grant(frozenset({"deals:full"}), "store")),
        (OAUTH, None, None, Policy(), Reason.UNKNOWN_TOKEN),
        (OAUTH, None, None, Policy(app_scopes=APP, unknown_tokens="app_scopes"), Grant(APP, "app_scopes")),
        (API_TOKEN, None, None, Policy(app_scopes=APP), Reason.API_TOKEN_NOT_SCOPED),
        (API_TOKEN, None, None, Policy(app_scopes=APP, api_tokens="app_scopes"), Grant(APP, "app_scopes")),
        (API_TOKEN, STATIC, None, Policy(), STATIC),
    ],
    ids=[
        "a static grant comes first",
        "then the token store",
        "an unknown OAuth token is refused",
        "or treated as holding the app's scopes",
        "personal API tokens are refused by default",
        "or treated as holding the app's scopes",
        "a static grant applies to an API token too",
    ],
)  # fmt: skip
def test_resolve_grant(
    credential: Credential,
    static: Grant | None,
    stored: frozenset[str] | None,
    policy: Policy,
    expected: Grant | Reason,
) -> None:
    assert resolve_grant(credential, static, stored, policy) == expected


def test_authorize_tells_the_whole_decision() -> None:
    decision = authorize(
        CATALOGUE,
        Policy(),
        route("v2", "/deals/7"),
        "DELETE",
        OAUTH,
        None,
        frozenset({"deals:read"}),
    )
    assert (decision.verdict, decision.reason, decision.forwards) == ("deny", "out_of_scope", False)
    assert decision.endpoint is not None
    assert decision.endpoint.name == "DELETE /api/v2/deals/{id}"
    assert (decision.version, decision.method, decision.token_fp) == ("v2", "DELETE", "0" * 12)
    assert (decision.accepted_scopes, decision.granted_scopes) == (("deals:full",), ("deals:read",))
    refusal = decision.refusal()
    assert isinstance(refusal, OutOfScope)
    assert (refusal.status, refusal.endpoint) == (403, "DELETE /api/v2/deals/{id}")


@pytest.mark.parametrize(
    ("credential", "policy", "refusal"),
    [(OAUTH, Policy(), UnknownToken), (API_TOKEN, Policy(), ApiTokenNotScoped)],
    ids=["an unknown token", "an unscoped API token"],
)
def test_a_credential_without_scopes_is_refused_in_either_mode(
    credential: Credential, policy: Policy, refusal: type[Exception]
) -> None:
    for mode_policy in (policy, Policy(mode="report")):
        decision = authorize(
            CATALOGUE, mode_policy, route("v1", "/deals"), "GET", credential, None, None
        )
        assert (decision.verdict, decision.label, decision.token_fp) == (
            "deny", "GET /v1/deals", credential.fingerprint,
        )  # fmt: skip
        assert decision.grant is None  # no scopes were decided on
        made = decision.refusal()
        assert isinstance(made, refusal)
        assert made.decision is decision


def test_a_static_grant_names_itself() -> None:
    decision = authorize(CATALOGUE, Policy(), route("v1", "/users/me"), "GET", OAUTH, STATIC, None)
    assert decision.grant is not None
    assert decision.grant.name == "ops"
    assert Grant(APP, "store").name is None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ([(b"Authorization", b"Bearer tok")], [], Credential("oauth", digest("tok"))),
        ([(b"authorization", b"bearer tok")], [], Credential("oauth", digest("tok"))),
        ([(b"AUTHORIZATION", b"BEARER  tok")], [], AmbiguousRequest),
        ([(b"x-api-token", b"abc")], [], Credential("api_token", digest("abc"))),
        ([], [("api_token", "abc")], Credential("api_token", digest("abc"))),
        ([], [], MissingCredential),
        ([(b"Authorization", b"Bearer ")], [], MissingCredential),
        ([(b"Authorization", b"Basic Y2k6Y3M=")], [], UnsupportedCredential),
        ([(b"Authorization", b"Bearer a"), (b"Authorization", b"Bearer a")], [], MultipleCredentials),
        ([(b"Authorization", b"Bearer a"), (b"X-Api-Token", b"b")], [], MultipleCredentials),
        ([(b"x-api-token", b"a")], [("api_token", "a")], MultipleCredentials),
        ([], [("api_token", "a"), ("api_token", "b")], MultipleCredentials),
        ([(b"Authorization", b"Basic x"), (b"x-api-token", b"b")], [], MultipleCredentials),
        ([], [("Api_Token", "a")], AmbiguousRequest),
        ([], [("api-token", "a")], AmbiguousRequest),
    ],
    ids=[
        "a Bearer token",
        "the scheme is case-insensitive",
        "a second space before the token is refused, not trimmed",
        "an x-api-token header",
        "an api_token query parameter",
        "no credential",
        "an empty Bearer token",
        "a scheme other than Bearer",
        "two Authorization headers",
        "Bearer and x-api-token (Pipedrive would honour the API token)",
        "header and query API tokens",
        "two api_token parameters",
        "a Basic header beside an API token still counts",
        "a case variant of api_token",
        "api-token with a dash",
    ],
)  # fmt: skip
def test_extract_credential(
    headers: list[tuple[bytes, bytes]], query: list[tuple[str, str]], expected: object
) -> None:
    named = [(name.decode().lower(), value) for name, value in headers]
    for _ in range(2):  # the second time, an accepted header is known by its bytes
        if isinstance(expected, type):
            with pytest.raises(expected):
                extract_credential(named, query)
        else:
            assert extract_credential(named, query) == expected


def test_a_known_header_still_counts_beside_a_query_credential() -> None:
    header = [("authorization", b"Bearer known")]
    assert extract_credential(header, [("limit", "10")]) == Credential("oauth", digest("known"))
    with pytest.raises(MultipleCredentials):
        extract_credential(header, [("api_token", "other")])
    with pytest.raises(MultipleCredentials):
        extract_credential(header, [("api.token", "other")])  # what PHP reads as api_token


def test_the_known_headers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "KNOWN_HEADERS", 3)
    for n in range(10):
        token = f"t{n}"
        assert extract_credential([("x-api-token", token.encode())], []) == Credential(
            "api_token", digest(token)
        )
        assert len(credentials._known) <= 3


def test_fingerprint_is_the_first_12_hex_of_the_sha256() -> None:
    assert fingerprint(digest("tok")) == digest("tok")[:12]
    assert Credential("oauth", digest("tok")).fingerprint == digest("tok")[:12]
