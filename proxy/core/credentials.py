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
from typing import Literal, NamedTuple

from proxy.core.canonical import parameter_readings
from proxy.core.errors import (
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


class Credential(NamedTuple):
    kind: CredentialKind
    digest: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.digest)


def parameter_credential(name: str) -> CredentialKind | None:
    """The kind of credential some server reads in a query parameter of this (decoded) name."""
    for reading in parameter_readings(name):
        kind = _PARAMETER_KINDS.get(reading)
        if kind is not None:
            return kind
    return None


def extract_credential(
    headers: Sequence[tuple[str, bytes]], query_pairs: Sequence[tuple[str, str]]
) -> Credential:
    """The request's single credential, from its credential headers (lower-case names, as
    ``canonicalize`` collects them) and its query; raises if it has none, several, or an
    unusable one.

    An app sends the same header with every call: a header accepted once is known by its
    exact bytes (at most ``KNOWN_HEADERS`` of them), and is not parsed or hashed again.
    """
    if len(headers) == 1 and not any(parameter_credential(name) for name, _ in query_pairs):
        header = headers[0]
        known = _known.get(header)
        if known is None:
            known = _parse(headers, ())
            if len(_known) >= KNOWN_HEADERS:
                _known.clear()  # bounded; the ones in use come back on their next call
            _known[header] = known
        return known
    return _parse(headers, query_pairs)


KNOWN_HEADERS = 4096
_known: dict[tuple[str, bytes], Credential] = {}  # only headers that were accepted


def _parse(
    headers: Sequence[tuple[str, bytes]], query_pairs: Sequence[tuple[str, str]]
) -> Credential:
    found: list[tuple[CredentialKind, str, str, bool]] = []  # kind, token, where, canonical
    for name, raw_value in headers:
        if name == "authorization":
            scheme, _, token = raw_value.decode("ascii").partition(" ")
            if scheme.lower() == "bearer":
                found.append(("oauth", token, "Authorization: Bearer", True))
            else:
                found.append(("oauth", "", "Authorization", False))
        elif name == "x-api-token":
            found.append(("api_token", raw_value.decode("ascii"), "x-api-token", True))
    for parameter, value in query_pairs:
        kind = parameter_credential(parameter)
        if kind is not None:
            found.append((kind, value, "query", parameter == "api_token"))
    if not found:
        raise MissingCredential("no credential: send Authorization: Bearer <token>")
    if len(found) > 1:
        raise MultipleCredentials(
            f"{len(found)} credentials (Authorization, x-api-token, api_token and the query "
            "names servers read as one): send exactly one"
        )
    [(kind, token, where, canonical)] = found
    if where == "query" and not canonical:
        raise AmbiguousRequest(
            "a query parameter that some servers read as a credential: send the token as "
            "Authorization: Bearer, x-api-token or api_token"
        )
    if not canonical:
        raise UnsupportedCredential("only the Bearer authorization scheme is accepted")
    if not token:
        raise MissingCredential(f"empty token in {where}")
    if "," in token:  # what a proxy in front (Envoy) makes of the same header sent twice
        raise MultipleCredentials(f"a comma in {where}: two credentials joined into one header")
    if not _TOKEN.fullmatch(token):
        raise AmbiguousRequest(f"malformed token in {where}")
    return Credential(kind, token_digest(token))
