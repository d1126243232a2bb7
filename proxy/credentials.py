"""Find the one credential a request carries and identify it by digest, never by value.

Pipedrive accepts an OAuth access token (``Authorization: Bearer``) and a personal API token
(``x-api-token`` header or ``api_token`` query parameter). When a request carries two of them it
honours the API token, so a scope check that read only the Bearer token could be bypassed: a
request with more than one credential, of any kinds, is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.errors import (
    AmbiguousRequest,
    MissingCredential,
    MultipleCredentials,
    UnsupportedCredential,
)

CredentialKind = Literal["oauth", "api_token"]


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


def _fold_parameter(name: str) -> str:
    return name.lower().replace("-", "_").split("[", 1)[0]


def extract_credential(
    headers: Sequence[tuple[bytes, bytes]], query_pairs: Sequence[tuple[str, str]]
) -> Credential:
    """The request's single credential; raises if it has none, several, or an unusable one."""
    found: list[tuple[CredentialKind, str, str]] = []  # kind, token, where it came from
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"authorization":
            scheme, _, token = raw_value.decode("ascii").strip().partition(" ")
            found.append(("oauth", token.strip(), scheme))
        elif name == b"x-api-token":
            found.append(("api_token", raw_value.decode("ascii").strip(), "x-api-token"))
    for parameter, value in query_pairs:
        if parameter == "api_token":
            found.append(("api_token", value, "api_token"))
        elif _fold_parameter(parameter) == "api_token":
            raise AmbiguousRequest(f"query parameter {parameter!r} reads as 'api_token'")
    if not found:
        raise MissingCredential("no credential: send Authorization: Bearer <token>")
    if len(found) > 1:
        raise MultipleCredentials(
            f"{len(found)} credentials (Authorization, x-api-token, api_token): send exactly one"
        )
    kind, token, origin = found[0]
    if kind == "oauth" and origin.lower() != "bearer":
        raise UnsupportedCredential(f"authorization scheme {origin[:20]!r} is not accepted")
    if not token:
        raise MissingCredential(f"empty token in {origin}")
    return Credential(kind, token_digest(token))
