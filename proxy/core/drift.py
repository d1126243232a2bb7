"""Drift: Pipedrive's own answer disagreeing with the catalogue, as live traffic shows it.

The proxy decides from its catalogue; Pipedrive decides from what it really does. When a call
the proxy let through comes back, its answer is evidence:

- ``too_generous``: the token's scopes accept the endpoint in the catalogue, yet Pipedrive
  refused the call with its own 403 "Scope and URL mismatch".
- ``too_strict``: the token's scopes do not accept the endpoint in the catalogue (report mode
  forwarded it anyway), yet Pipedrive answered 2xx. A call refused only by the app's declared
  ceiling (``outside_app_scopes``) proves nothing: Pipedrive does not know the ceiling.
- ``missing``: no catalogue entry matches the call (forwarded in report mode or under
  ``unknown_endpoints: allow``), yet Pipedrive answered 2xx: the endpoint exists.
- ``grant_mismatch``: a disagreement over scopes for a token whose scopes the proxy did not
  learn from Pipedrive's own token exchange (a static grant, or a token taken to hold the
  declared ``app_scopes``): the grant as configured, not the catalogue, may be what is wrong.
  It is shown, and never fails ``report --fail-on drift``.

Only the first three say the catalogue is wrong. Pure: status codes and bytes in, a kind out.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Literal

from proxy.core.decision import Decision
from proxy.core.reasons import Reason

Drift = Literal["too_generous", "too_strict", "missing", "grant_mismatch"]
KINDS: tuple[Drift, ...] = ("too_generous", "too_strict", "missing", "grant_mismatch")
GATING: frozenset[str] = frozenset({"too_generous", "too_strict", "missing"})
# What of a 403 answer is read to recognise Pipedrive's refusal: a copy of its first bytes (the
# refusal is about 120), inflated to at most as many; the answer goes to the client unchanged.
PEEK_BYTES = 4096
SCOPE_MISMATCH = "Scope and URL mismatch"
# The grant sources whose scopes Pipedrive itself said (its token exchange): ``Grant.source``.
LEARNED = "store"


# Read on every call: module constants, compared by identity (an enum member read through its
# class costs more than the comparison).
_IN_SCOPE, _OUTSIDE_APP_SCOPES = Reason.IN_SCOPE, Reason.OUTSIDE_APP_SCOPES
_OUT_OF_SCOPE = Reason.OUT_OF_SCOPE
_UNKNOWN_ENDPOINT, _UNKNOWN_ALLOWED = Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT_ALLOWED


def peeks(decision: Decision) -> bool:
    """Whether a 403 answer to this forwarded call is worth reading: one the catalogue says
    the token's scopes accept."""
    reason = decision.reason
    return reason is _IN_SCOPE or reason is _OUTSIDE_APP_SCOPES


def drift(decision: Decision, status: int, scope_refusal: bool) -> Drift | None:
    """What Pipedrive's answer (``status``; ``scope_refusal``: a 403 whose body is Pipedrive's
    "Scope and URL mismatch") to a forwarded call says of the catalogue, if anything."""
    reason = decision.reason
    if 200 <= status < 300:
        if decision.endpoint is None:
            unknown = reason is _UNKNOWN_ENDPOINT or reason is _UNKNOWN_ALLOWED
            return "missing" if unknown else None
        if reason is not _OUT_OF_SCOPE or decision.verdict != "report":
            return None
        kind: Drift = "too_strict"
    elif status == 403 and scope_refusal and (reason is _IN_SCOPE or reason is _OUTSIDE_APP_SCOPES):
        kind = "too_generous"
    else:
        return None
    grant = decision.grant
    return kind if grant is not None and grant.source == LEARNED else "grant_mismatch"


def is_scope_refusal(body: bytes, content_encoding: str | None = None) -> bool:
    """Whether a 403 answer's first bytes (``PEEK_BYTES`` at most) are Pipedrive's refusal for
    want of a scope: JSON with ``success: false`` and ``error: "Scope and URL mismatch"``.
    A ``gzip`` or ``deflate`` body is inflated first, to at most ``PEEK_BYTES``; a body in
    another coding, cut short, or anything else is not recognised (no drift is recorded)."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("gzip", "x-gzip", "deflate"):
        body = _inflate(body, coding)
    elif coding not in ("", "identity"):
        return False
    try:
        answer = json.loads(body)
    except ValueError:  # cut short, not JSON, or not UTF-8
        return False
    return (
        isinstance(answer, dict)
        and answer.get("success") is False
        and answer.get("error") == SCOPE_MISMATCH
    )


def _inflate(body: bytes, coding: str) -> bytes:
    """The start of a compressed body, bounded: a few KB compressed never inflate to more than
    ``PEEK_BYTES`` here (a zip bomb reads as a body cut short)."""
    # gzip: a gzip header; deflate: as HTTP means it (zlib-wrapped), else raw as some send it.
    windows = (16 + zlib.MAX_WBITS,) if coding != "deflate" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for window in windows:
        try:
            return zlib.decompressobj(window).decompress(body, PEEK_BYTES)
        except zlib.error:
            continue
    return b""


def merge_seen(into: dict[str, tuple[str, str]], seen: Mapping[str, tuple[str, str]]) -> None:
    """Sightings (of drifts: ``proxy.report.model.seen_key``) merged: of each key, the
    earliest first and the latest last."""
    for key, (first, last) in seen.items():
        known = into.get(key)
        into[key] = (min(first, known[0]), max(last, known[1])) if known else (first, last)
