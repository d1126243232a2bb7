"""Find the one credential a request carries and identify it by digest, never by value.

Pipedrive accepts an OAuth access token (``Authorization: Bearer``) and a personal API token
(``x-api-token`` header or ``api_token`` query parameter). When a request carries two of them it
honours the API token, so a scope check that read only the Bearer token could be bypassed: a
request with more than one credential, of any kinds, is refused.

What counts as a credential is what ANY server on the way might read as one, not only the
canonical spellings: PHP reads ``api.token``, ``api token`` and ``api[token`` as ``api_token``,
and RFC 6750 defines ``access_token`` as a query credential. Such a name counts towards the
credentials of a request (so beside another one it makes two) and, alone, is refused as
ambiguous rather than guessed at.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.canonical import parameter_readings
from proxy.errors import (
    AmbiguousRequest,
    MissingCredential,
    MultipleCredentials,
    UnsupportedCredential,
)

CredentialKind = Literal["oauth", "api_token"]

# RFC 6750's b64token characters, plus ':' (Pipedrive's tokens look like
# ``v1u:<base64>:<base64>``, padding included). No spaces, commas or quotes: a token a server
# could split or unquote differently is refused.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/:=]+")
_PARAMETER_KINDS: dict[str, CredentialKind] = {"api_token": "api_token", "access_token": "oauth"}


def token_digest(token: str) -> str:
    """SHA-256 of a token, hex: the only form in which the proxy keeps or compares tokens."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def fingerprint(digest: str) -> str:
    """How logs and reports name a token: the first 12 hex characters of its SHA-256."""
    return digest[:12]


@dataclass(frozen=True, slots=True)
class Credential:
    kind: CredentialKind
    digest: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.digest)


@dataclass(frozen=True, slots=True)
class _Found:
    kind: CredentialKind
    token: str
    where: str  # how the proxy names the place, never the request's own bytes
    canonical: bool = True


def parameter_credential(name: str) -> CredentialKind | None:
    """The kind of credential some server reads in a query parameter of this (decoded) name."""
    for reading in parameter_readings(name):
        kind = _PARAMETER_KINDS.get(reading)
        if kind is not None:
            return kind
    return None


def extract_credential(
    headers: Sequence[tuple[bytes, bytes]], query_pairs: Sequence[tuple[str, str]]
) -> Credential:
    """The request's single credential; raises if it has none, several, or an unusable one."""
    found: list[_Found] = []
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"authorization":
            scheme, _, token = raw_value.decode("ascii").partition(" ")
            if scheme.lower() != "bearer":
                found.append(_Found("oauth", "", "Authorization", canonical=False))
            else:
                found.append(_Found("oauth", token, "Authorization: Bearer"))
        elif name == b"x-api-token":
            found.append(_Found("api_token", raw_value.decode("ascii"), "x-api-token"))
    for parameter, value in query_pairs:
        kind = parameter_credential(parameter)
        if kind is not None:
            found.append(_Found(kind, value, "query", canonical=parameter == "api_token"))
    if not found:
        raise MissingCredential("no credential: send Authorization: Bearer <token>")
    if len(found) > 1:
        raise MultipleCredentials(
            f"{len(found)} credentials (Authorization, x-api-token, api_token and the query "
            "names servers read as one): send exactly one"
        )
    [credential] = found
    if credential.where == "query" and not credential.canonical:
        raise AmbiguousRequest(
            "a query parameter that some servers read as a credential: send the token as "
            "Authorization: Bearer, x-api-token or api_token"
        )
    if not credential.canonical:
        raise UnsupportedCredential("only the Bearer authorization scheme is accepted")
    if not credential.token:
        raise MissingCredential(f"empty token in {credential.where}")
    if not _TOKEN.fullmatch(credential.token):
        raise AmbiguousRequest(f"malformed token in {credential.where}")
    return Credential(credential.kind, token_digest(credential.token))
