"""Why a call was decided as it was, in words: the one sentence ``explain`` prints and the
report's findings repeat, so that the two can never explain a decision differently."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from proxy.core.reasons import Reason


def why(
    reason: str,
    accepted: Sequence[str],
    methods: Sequence[str] = (),
    holding: Iterable[str] = (),
) -> str:
    """Why a call with this ``reason`` was allowed or refused. ``accepted``: the scopes that
    accept its endpoint; ``methods``: for a path no endpoint matches, those the path takes;
    ``holding``: for an allowed call, the granted scopes that accept it."""
    needs = accepted[0] if len(accepted) == 1 else "one of " + ", ".join(accepted)
    if reason == Reason.OUT_OF_SCOPE:
        return f"it needs {needs}, which the token does not hold"
    if reason == Reason.OUTSIDE_APP_SCOPES:
        return f"it needs {needs}, which the app does not declare"
    if reason in (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT_ALLOWED):
        taken = f"; this path takes {', '.join(methods)}" if methods else ""
        fate = (
            "unknown endpoints are forwarded (unknown_endpoints: allow)"
            if reason == Reason.UNKNOWN_ENDPOINT_ALLOWED
            else "unknown endpoints are refused with 404 (a mistyped path or method, "
            "not a missing scope)"
        )
        return f"no catalogue entry matches it{taken}; {fate}"
    held = sorted(holding)
    if reason == Reason.IN_SCOPE and held:
        return f"{' and '.join(held)} {'accepts' if len(held) == 1 else 'accept'} it"
    return str(reason)
