"""The overreach report's model: a count of ``Call`` values reduced to the report document.

Pure code on plain values. The live proxy and ``report --log`` (``proxy.report.replay``) both
reduce traffic to counts of ``Call`` values and hand them to ``build_report``, so the two cannot
disagree; the renderers beside this module turn the document into text, markdown, JUnit and
HTML.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.core.catalog import DISPLAY_PREFIX, Catalogue, Endpoint, api_route
from proxy.core.decision import BASE, DECLARED_GRANT, Decision, accepts
from proxy.core.drift import KINDS
from proxy.core.reasons import BEFORE_DECISION, DECIDED, NOT_API_CALLS, Reason

MAX_TOKENS = 100  # tokens with a report section of their own (config: limits.report_tokens)
OTHER_TOKENS = "other"  # the fingerprint under which the rest are counted together
# Paths no catalogue entry matches are counted by their shape (``catalog.path_shape``), which
# a client chooses: a report, and the store its counts live in, keep the busiest
# ``UNKNOWN_SHAPES`` of them by name, in at most ``UNKNOWN_PAIRS`` (token, shape) entries; the
# rest are counted as ``GET /v1/(other unknown paths)``, one per method and API version. Every
# per-endpoint record keyed by a shape is bounded by ``fold_shapes``.
UNKNOWN_SHAPES = 100
UNKNOWN_PAIRS = 1_000
OTHER_PATHS = "(other unknown paths)"
_UNKNOWN = frozenset({"unknown_endpoint", "unknown_endpoint_allowed"})
# What a shape read back from a log keeps (logs of earlier versions held whole paths).
_SHAPE_LENGTH = 400


@dataclass(frozen=True, slots=True, order=True)
class Call:
    """One kind of call, as the report counts it; a report is a count of each.

    The one record of a call: made of a ``Decision`` (``of``) through the very fields the
    decision log writes (``logged``), read back from a log (``from_event``) or from a store's
    counter (``from_key``). A refusal before the scope check, or a request that is no API
    call, is counted by its reason alone (``refused_before``)."""

    token_fp: str
    method: str
    version: str
    endpoint: str | None  # None: no catalogue entry matched
    decision: str  # allow | deny | report
    reason: str
    accepted_scopes: tuple[str, ...]
    token_cost: int | None
    grant: str | None = None  # the static grant's name, when one gave the token its scopes
    granted_scopes: tuple[str, ...] = ()  # what the token held (the v2 migration plan's)
    drift: str | None = None  # what Pipedrive's answer said of the catalogue (core.drift)
    # Counted on every request (``Counter[Call]``): hashed once, when made.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        hashed = hash((self.token_fp, self.method, self.version, self.endpoint, self.decision,
                       self.reason, self.accepted_scopes, self.token_cost, self.grant,
                       self.granted_scopes, self.drift))  # fmt: skip
        object.__setattr__(self, "_hash", hashed)

    def __hash__(self) -> int:
        return self._hash

    @property
    def refused(self) -> bool:
        """Refused, or would have been refused in enforce mode."""
        return self.decision in ("deny", "report")

    def key(self) -> str:
        """A stable string form, for counters kept in a store: the token's fingerprint, a tab,
        the rest as JSON (a store can fold tokens together without reading JSON)."""
        rest = json.dumps(
            [self.method, self.version, self.endpoint, self.decision, self.reason,
             list(self.accepted_scopes), self.token_cost, self.grant, list(self.granted_scopes),
             *((self.drift,) if self.drift is not None else ())],
            separators=(",", ":"),
        )  # fmt: skip
        return f"{self.token_fp}\t{rest}"

    @classmethod
    def from_key(cls, key: str) -> Call:
        fp, _, rest = key.partition("\t")
        method, version, endpoint, decision, reason, accepted, cost, *more = json.loads(rest)
        grant = more[0] if more else None  # keys of earlier versions end sooner
        granted = tuple(more[1]) if len(more) > 1 else ()
        drift = more[2] if len(more) > 2 else None
        return cls(fp, method, version, endpoint, decision, reason, tuple(accepted), cost,
                   grant, granted, drift)  # fmt: skip

    @classmethod
    def of(cls, decision: Decision) -> Call | None:
        """What the report counts of a decision, read from the fields its log line holds;
        None for what the report does not count (the OAuth exchange, the proxy's own
        endpoints)."""
        return cls.read(logged(decision))

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Call | None:
        """The call a decision-log event records, or None for other events."""
        return cls.read(event) if event.get("event") == "request" else None

    @classmethod
    def read(cls, fields: Mapping[str, Any]) -> Call | None:
        """The call these log fields (``logged``) record: a decided call; a refusal before
        the scope check, or a request that is no API call, by its reason; else None."""
        reason, endpoint = fields.get("reason"), fields.get("endpoint")
        if reason in NOT_API_CALLS:
            return refused_before(NOT_AN_API_CALL)  # a stray request: counted apart
        if reason in BEFORE_DECISION:
            if _api_call(fields):
                return refused_before(str(reason))
            return refused_before(NOT_AN_API_CALL)  # refused, but never meant for Pipedrive
        if reason not in DECIDED:
            return None
        fp, version = fields.get("token_fp"), fields.get("version")
        if not isinstance(fp, str) or not isinstance(version, str):
            return None
        grant = fields.get("grant")
        if isinstance(endpoint, str) and len(endpoint) > _SHAPE_LENGTH:
            endpoint = endpoint[:_SHAPE_LENGTH] + "/..."
        return cls(
            fp,
            str(fields.get("method")),
            version,
            endpoint,
            str(fields.get("decision")),
            str(reason),
            tuple(sorted(fields.get("accepted_scopes") or ())),
            fields.get("token_cost"),
            grant if isinstance(grant, str) else None,
            tuple(sorted(fields.get("granted_scopes") or ())),
            kind if isinstance(kind := fields.get("drift"), str) and kind in KINDS else None,
        )


def logged(decision: Decision) -> dict[str, Any]:
    """What the decision log says of a decision, under the names ``Call.read`` reads (the
    request event's fields: see docs/operations.md, "Decision log")."""
    endpoint, grant = decision.endpoint, decision.grant
    lifecycle = {"lifecycle": endpoint.state} if endpoint and endpoint.lifecycle else {}
    return {
        "decision": decision.verdict,
        "reason": decision.reason,
        "method": decision.method,
        "endpoint": decision.label,
        "version": decision.version,
        "token_fp": decision.token_fp,
        "grant": grant.name if grant is not None else None,
        "accepted_scopes": decision.accepted_scopes,
        "granted_scopes": decision.granted_scopes,
        "token_cost": endpoint.token_cost if endpoint is not None else None,
        **lifecycle,  # only for an endpoint that is not current
    }


# Refusals before the decision (and requests that are no API calls) are counted under this
# fingerprint, by reason only; requests that are no API calls under this one reason.
BEFORE = "-"
NOT_AN_API_CALL = str(Reason.NOT_FOUND)


def _api_call(fields: Mapping[str, Any]) -> bool:
    """Whether a request refused before its scope check was meant for Pipedrive: an API
    version was read from its target, or it was the OAuth exchange; not when one of the
    proxy's own endpoints refused it (``POST /_proxy/report/reset``). A request the HTTP
    parser refused cannot be told: it counts as one."""
    endpoint = fields.get("endpoint")
    if isinstance(endpoint, str) and " /_proxy/" in endpoint:
        return False
    if isinstance(endpoint, str) and " /oauth/" in endpoint:
        return True
    # A line of an earlier version, without the field, counts as a call (as it did then).
    version = fields.get("version", "unwritten")
    return version is not None or fields.get("reason") == Reason.MALFORMED_REQUEST


def refused_before(reason: str) -> Call:
    """How a refusal before the scope check, or a request that is no API call, is counted: its
    reason, nothing of the request."""
    return Call(BEFORE, "", "", None, "deny", reason, (), None)


def minimal_scopes(
    requirements: Iterable[frozenset[str]], breadth: Mapping[str, int] | None = None
) -> list[str]:
    """The smallest set of scopes such that every requirement holds one of them.

    Solved exactly: among the covers of least size, the one with the most ``:read`` scopes,
    then the one whose scopes accept the fewest endpoints (``breadth``, the catalogue's count
    per scope: ``webhooks:full`` rather than ``admin``), then the alphabetically first.
    Requirements that ``base`` meets need nothing.
    """
    wide = breadth or {}
    distinct = {frozenset(r) for r in requirements if r and BASE not in r}
    # A requirement that holds all the options of a narrower one is met whenever that one is.
    needs = sorted((r for r in distinct if not any(other < r for other in distinct)), key=sorted)
    if not needs:
        return []
    best: tuple[int, int, int, list[str]] | None = None

    def cost(chosen: frozenset[str]) -> tuple[int, int, int, list[str]]:
        unread = sum(1 for s in chosen if not s.endswith(":read"))
        return (len(chosen), unread, sum(wide.get(s, 0) for s in chosen), sorted(chosen))

    def search(chosen: frozenset[str], open_needs: list[frozenset[str]]) -> None:
        nonlocal best
        if best is not None and len(chosen) > best[0]:
            return
        if not open_needs:
            candidate = cost(chosen)
            if best is None or candidate < best:
                best = candidate
            return
        if best is not None and len(chosen) == best[0]:
            return  # one more scope would exceed the best size
        # Branch on the requirement with the fewest options: one of them must be chosen.
        need = min(open_needs, key=lambda r: (len(r), sorted(r)))
        for scope in sorted(need):
            rest = [r for r in open_needs if scope not in r]
            search(chosen | {scope}, rest)

    search(frozenset(), needs)
    assert best is not None
    return best[3]


def _section(
    calls: Mapping[Call, int],
    app_scopes: frozenset[str] | None,
    catalogue: Catalogue | None = None,
    declared: bool = True,
) -> dict[str, Any]:
    """One section of the report: overall (``declared``: judged against ``app_scopes``), or
    one token's (judged against the scopes it was granted)."""
    endpoints: Counter[tuple[str | None, str, str, str, tuple[str, ...], int | None]] = Counter()
    denied: Counter[tuple[str | None, str, str, str, str, tuple[str, ...]]] = Counter()
    for call, count in calls.items():
        endpoints[
            (call.endpoint, call.method, call.version, call.decision, call.accepted_scopes,
             call.token_cost)
        ] += count  # fmt: skip
        if call.refused:
            key = (call.endpoint, call.method, call.version, call.decision, call.reason,
                   call.accepted_scopes)  # fmt: skip
            denied[key] += count
    needs = [frozenset(call.accepted_scopes) for call in calls if call.accepted_scopes]
    minimal = minimal_scopes(needs, catalogue.breadth if catalogue is not None else None)
    # Scopes with which Pipedrive answered a call the catalogue says they do not cover: the
    # catalogue may be what is wrong, so they are not called unnecessary.
    succeeded = {scope for call in calls if call.drift == "too_strict"
                 for scope in call.granted_scopes}  # fmt: skip
    unused = (
        sorted((app_scopes or frozenset()) - set(minimal) - succeeded - {BASE}) if calls else []
    )
    return {
        "requests": sum(calls.values()),
        "token_cost": sum((call.token_cost or 0) * count for call, count in calls.items()),
        "endpoints": [
            {"endpoint": endpoint, "method": method, "version": version, "count": count,
             "decision": decision, "accepted_scopes": list(accepted),
             "token_cost": (cost or 0) * count}
            for (endpoint, method, version, decision, accepted, cost), count in sorted(
                endpoints.items(), key=lambda item: (-item[1], str(item[0][0]), item[0][3])
            )
        ],
        "denied": [
            {"endpoint": endpoint, "method": method, "version": version, "count": count,
             "decision": decision, "reason": reason, "accepted_scopes": list(accepted)}
            for (endpoint, method, version, decision, reason, accepted), count in sorted(
                denied.items(), key=lambda item: (-item[1], str(item[0][0]))
            )
        ],
        "minimal_scopes": minimal,
        "unused_app_scopes": unused,
        "lifecycle": lifecycle(calls, catalogue),
        "migration": migration(calls, catalogue, app_scopes if declared else None, declared),
    }  # fmt: skip


def lifecycle(calls: Mapping[Call, int], catalogue: Catalogue | None) -> list[dict[str, Any]]:
    """The endpoints called that are not current: deprecated, out of support, or removed by
    Pipedrive, each with its state, since when, what replaces it, and how often it was called."""
    if catalogue is None:
        return []
    counted: Counter[Endpoint] = Counter()
    for call, count in calls.items():
        endpoint = catalogue.by_name.get(str(call.endpoint))
        if endpoint is not None and endpoint.lifecycle is not None:
            counted[endpoint] += count
    return [
        {"endpoint": endpoint.name, "lifecycle": endpoint.state,
         "since": endpoint.lifecycle.since if endpoint.lifecycle else None,
         "replacement": endpoint.replacement, "count": count}
        for endpoint, count in sorted(counted.items(), key=lambda item: (-item[1], item[0].name))
    ]  # fmt: skip


def migration(
    calls: Mapping[Call, int],
    catalogue: Catalogue | None,
    app_scopes: frozenset[str] | None,
    declared: bool,
) -> dict[str, Any]:
    """The move to API v2 for the v1 endpoints called that Pipedrive names a replacement for:
    each with its replacement, the token cost per call of each, the scopes the replacement
    takes, and whether the app's declared scopes (``declared``), or the scopes the token held,
    cover it; and what the calls made would have cost in v2."""
    plan: dict[Endpoint, tuple[Endpoint, int, set[str]]] = {}
    for call, count in calls.items():
        old = catalogue.by_name.get(str(call.endpoint)) if catalogue is not None else None
        if old is None or old.replacement is None:
            continue
        method, _, path = old.replacement.partition(" ")
        route = api_route(path.partition("?")[0])
        new = catalogue.match(route, method) if catalogue and route is not None else None
        if new is None:
            continue
        _, seen, held = plan.get(old, (new, 0, set()))
        plan[old] = (new, seen + count, held | set(call.granted_scopes))
    entries: list[dict[str, Any]] = []
    spent = spent_in_v2 = 0
    for old, (new, count, held) in sorted(plan.items(), key=lambda item: item[0].name):
        covered: bool | None
        if declared:
            covered = accepts(app_scopes, new) if app_scopes is not None else None
        else:  # unknown when the token's scopes are (tokens counted together as ``other``)
            covered = accepts(frozenset(held), new) if held else None
        spent += (old.token_cost or 0) * count
        spent_in_v2 += (new.token_cost or 0) * count
        entries.append(
            {"endpoint": old.name, "replacement": old.replacement, "count": count,
             "token_cost": old.token_cost, "replacement_token_cost": new.token_cost,
             "replacement_scopes": list(new.scope_list),
             "scopes_change": new.scopes != old.scopes,
             ("app_scopes_cover" if declared else "granted_scopes_cover"): covered}
        )  # fmt: skip
    return {"token_cost": spent, "replacement_token_cost": spent_in_v2, "endpoints": entries}


def fold_tokens(calls: Mapping[Call, int], keep: int) -> Counter[Call]:
    """The calls with all but the ``keep`` busiest tokens counted as one, ``other``."""
    totals: Counter[str] = Counter()
    for call, count in calls.items():
        totals[call.token_fp] += count
    totals.pop(OTHER_TOKENS, None)
    if len(totals) <= keep:
        return Counter(calls)
    busiest = {fp for fp, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:keep]}
    folded: Counter[Call] = Counter()
    for call, count in calls.items():
        if call.token_fp in busiest:
            folded[call] += count
        else:
            folded[replace(call, token_fp=OTHER_TOKENS, grant=None, granted_scopes=())] += count
    return folded


def other_paths(method: str, version: str) -> str:
    """What the unknown paths a report does not name are counted as: ``GET /v1/(other ...)``."""
    return f"{method} {DISPLAY_PREFIX.get(version, '/' + version)}/{OTHER_PATHS}"


def unknown_shape(call: Call) -> bool:
    """A call to a path no catalogue entry matches, named by its shape (not yet folded)."""
    return (
        call.reason in _UNKNOWN
        and call.endpoint is not None
        and not call.endpoint.endswith(OTHER_PATHS)
    )


def fold_shapes(
    calls: Mapping[Call, int], keep: int = UNKNOWN_SHAPES, pairs: int = UNKNOWN_PAIRS
) -> Counter[Call]:
    """The calls with every unknown path but the ``keep`` busiest counted under
    ``other_paths``; of those kept, at most ``pairs`` (token, shape) entries, the busiest."""
    shapes: Counter[str] = Counter()
    for call, count in calls.items():
        if unknown_shape(call):
            shapes[str(call.endpoint)] += count
    ranked = sorted(shapes.items(), key=lambda item: (-item[1], item[0]))
    kept = {shape for shape, _ in ranked[:keep]}
    per_token: Counter[tuple[str, str]] = Counter()
    for call, count in calls.items():
        if unknown_shape(call) and call.endpoint in kept:
            per_token[(call.token_fp, str(call.endpoint))] += count
    if len(shapes) <= keep and len(per_token) <= pairs:
        return Counter(calls)
    ranked_pairs = sorted(per_token.items(), key=lambda item: (-item[1], item[0]))
    kept_pairs = {pair for pair, _ in ranked_pairs[:pairs]}
    folded: Counter[Call] = Counter()
    for call, count in calls.items():
        if unknown_shape(call) and (call.token_fp, call.endpoint) not in kept_pairs:
            call = replace(call, endpoint=other_paths(call.method, call.version))
        folded[call] += count
    return folded


def change(declared: frozenset[str] | None, recommended: list[str]) -> dict[str, Any] | None:
    """The change to make in Developer Hub: scopes to add, to remove, and pairs where one
    replaces another of the same resource (``deals:read`` -> ``deals:full``)."""
    if declared is None:
        return None
    wanted = set(recommended)
    add = sorted(wanted - declared - {BASE})
    remove = sorted(declared - wanted - {BASE})
    replace_pairs = []
    for old in list(remove):
        resource = old.split(":")[0]
        new = next((n for n in add if n.split(":")[0] == resource), None)
        if new is not None:
            replace_pairs.append([old, new])
            remove.remove(old)
            add.remove(new)
    return {"add": add, "remove": remove, "replace": replace_pairs}


def drift_entries(
    calls: Mapping[Call, int], seen: Mapping[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """Where Pipedrive's answers disagreed with the catalogue (``proxy.core.drift``): by kind,
    endpoint, and the scopes the token held, with when that kind was first and last seen there
    (``seen``: ``seen_key`` -> (first, last), as the log lines are dated)."""
    counted: Counter[tuple[str, str, str | None, tuple[str, ...], str | None]] = Counter()
    for call, count in calls.items():
        if call.drift is not None:
            key = (call.drift, call.method, call.endpoint, call.granted_scopes, call.grant)
            counted[key] += count
    named = {seen_key(kind, endpoint) for kind, _, endpoint, _, _ in counted}
    entries = []
    order: dict[str, int] = {kind: n for n, kind in enumerate(KINDS)}
    for (kind, method, endpoint, granted, grant), count in sorted(
        counted.items(), key=lambda item: (order[item[0][0]], -item[1], str(item[0][2]), item[0][3])
    ):
        first, last = _when(seen, kind, endpoint, named)
        entries.append(
            {"kind": kind, "endpoint": endpoint, "method": method, "granted_scopes": list(granted),
             "grant": grant, "count": count, "first_seen": first, "last_seen": last}
        )  # fmt: skip
    return entries


def seen_key(kind: str, endpoint: str | None) -> str:
    """What the first and last sightings of a drift are kept under: its kind and endpoint."""
    return f"{kind}\t{endpoint}"


def _when(
    seen: Mapping[str, tuple[str, str]], kind: str, endpoint: str | None, named: set[str]
) -> tuple[str | None, str | None]:
    """First and last seen: the endpoint's own; for unknown paths counted together, the
    earliest and latest of theirs, and of those folded into them (``other_paths_of``)."""
    own = seen.get(seen_key(kind, endpoint))
    if endpoint is None or not endpoint.endswith(OTHER_PATHS):
        return own if own is not None else (None, None)
    times = [own] if own is not None else []
    for key, when in seen.items():
        seen_kind, _, shape = key.partition("\t")
        if seen_kind == kind and key not in named and other_paths_of(shape) == endpoint:
            times.append(when)
    if not times:
        return None, None
    return min(first for first, _ in times), max(last for _, last in times)


def other_paths_of(shape: str) -> str:
    """The ``other_paths`` an unknown path's shape is counted under once folded."""
    method, _, path = shape.partition(" ")
    for version, prefix in DISPLAY_PREFIX.items():
        if path.startswith(prefix + "/"):
            return other_paths(method, version)
    return shape


def uncertain(entries: list[dict[str, Any]]) -> list[str]:
    """The endpoints where the catalogue proved too strict: Pipedrive answered a call with
    scopes the catalogue says do not cover it, so its recommendation there may be wrong."""
    return sorted({str(e["endpoint"]) for e in entries if e["kind"] == "too_strict"})


def warnings(section: Mapping[str, Any]) -> list[str]:
    """A broad scope (``admin``, any ``:full``) recommended for the sake of one endpoint; an
    endpoint where Pipedrive answered calls the catalogue says the scopes do not cover."""
    chosen = set(section["minimal_scopes"])
    found = [
        f"Pipedrive answered {endpoint} for scopes the catalogue says do not cover it: the "
        "recommendation there is uncertain, and the scopes that succeeded are not called unused"
        for endpoint in uncertain(section.get("drift", ()))
    ]
    for scope in sorted(filter(_broad, chosen)):
        others = chosen - {scope}
        # The endpoints that need it: nothing narrower, and no other chosen scope, takes them.
        only_for = sorted(
            {
                endpoint_label(entry)
                for entry in section["endpoints"]
                if scope in entry["accepted_scopes"]
                and all(_broad(s) and s not in others for s in entry["accepted_scopes"])
            }
        )
        if len(only_for) == 1:
            found.append(
                f"{scope} is recommended only because of {only_for[0]}: make sure the app needs "
                "that call, since the scope grants much more"
            )
    return found


def _broad(scope: str) -> bool:
    return scope == "admin" or scope.endswith(":full")


def build_report(
    calls: Mapping[Call, int],
    app_scopes: frozenset[str] | None,
    max_tokens: int = MAX_TOKENS,
    mode: str | None = None,
    since: str | None = None,
    catalogue: Catalogue | None = None,
    seen: Mapping[str, tuple[str, str]] | None = None,
    unknown_tokens: int | None = None,
    budget: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report document (its keys are a contract: see docs/staging.md, "The report"). At most
    ``max_tokens`` tokens have a section of their own; the rest share one, ``other``. Refusals
    made before the scope check are counted apart, by reason, and requests that are no API
    calls (``GET /``, a load balancer's probe) apart again. With the ``catalogue``, the
    recommended scopes are the narrowest that will do, and the endpoints that are not current
    (``lifecycle``) and the move to v2 (``migration``) are reported. Where Pipedrive's answers
    disagreed with the catalogue, ``drift`` says so, dated by ``seen`` (``drift_entries``).
    ``unknown_tokens``: how many tokens the live proxy saw in the last hour whose scopes it has
    not learned (None from a log). ``budget``: the budget governor's section, per company
    (``proxy.report.budget``), with a budget configured."""
    before: Counter[str] = Counter()
    decided: Counter[Call] = Counter()
    not_api = 0
    for call, count in calls.items():
        if call.token_fp != BEFORE:
            decided[call] += count
        elif call.reason in NOT_API_CALLS:
            not_api += count
        else:
            before[call.reason] += count
    shapes_folded = fold_shapes(decided)
    folded = fold_tokens(shapes_folded, max_tokens)
    by_token: dict[str, dict[Call, int]] = {}
    for call, count in folded.items():
        by_token.setdefault(call.token_fp, {})[call] = count
    overall = _section(folded, app_scopes, catalogue)
    overall["drift"] = drift_entries(shapes_folded, seen or {})  # the scopes held, whichever token
    if budget is not None:
        overall["budget"] = budget
    return {
        "mode": mode,
        "since": since,
        "app_scopes": sorted(app_scopes) if app_scopes is not None else None,
        "unknown_tokens": unknown_tokens,
        "overall": overall,
        "change": change(app_scopes, overall["minimal_scopes"]) if decided else None,
        "warnings": warnings(overall),
        "refused_before_decision": [
            {"reason": reason, "count": count}
            for reason, count in sorted(before.items(), key=lambda item: (-item[1], item[0]))
        ],
        "not_api_calls": not_api,
        "tokens": [
            {
                "fingerprint": fp,
                "grant": next((c.grant for c in token_calls if c.grant is not None), None),
                **_section(token_calls, None, catalogue, declared=False),
            }
            for fp, token_calls in sorted(
                by_token.items(), key=lambda item: (item[0] == OTHER_TOKENS, item[0])
            )
        ],
    }


def rejudge(calls: Mapping[Call, int], declared: frozenset[str], mode: str | None) -> Counter[Call]:
    """The calls as a new declaration would decide them. A token taken to hold the declared
    scopes holds the new ones; for the others ``app_scopes`` is a ceiling: a call none of whose
    accepting scopes is declared would be refused (``outside_app_scopes``), one refused only by
    the old ceiling passes it now (their own grants are as logged)."""
    refused = "deny" if mode == "enforce" else "report"
    judged: Counter[Call] = Counter()
    for call, count in calls.items():
        accepted = set(call.accepted_scopes)
        if call.token_fp == BEFORE or not accepted or BASE in accepted:
            judged[call] += count
        elif call.grant == DECLARED_GRANT:  # the token holds whatever the app declares
            if accepted & declared:
                judged[replace(call, decision="allow", reason="in_scope")] += count
            else:
                judged[replace(call, decision=refused, reason="out_of_scope")] += count
        elif not accepted & declared:
            judged[replace(call, decision=refused, reason="outside_app_scopes")] += count
        elif call.reason == "outside_app_scopes":
            judged[replace(call, decision="allow", reason="in_scope")] += count
        else:
            judged[call] += count
    return judged


def endpoint_label(entry: Mapping[str, Any]) -> str:
    """How people read an entry's endpoint: its template, or for a path outside the catalogue
    its shape (from logs of earlier versions, only the method)."""
    endpoint = entry.get("endpoint")
    if not endpoint:
        return f"{entry['method']} ({entry['version']}, not in the catalogue)"
    return str(endpoint) if entry.get("accepted_scopes") else f"{endpoint} (not in the catalogue)"
