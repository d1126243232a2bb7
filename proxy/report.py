"""The overreach report: what an app called, what Pipedrive would refuse, which scopes it needs.

Pure code on plain values. The live proxy and ``report --log`` both reduce traffic to counts of
``Call`` values and hand them to ``build_report``, so the two cannot disagree.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy.decision import BASE
from proxy.reasons import DECIDED

MAX_TOKENS = 100  # tokens with a report section of their own (config: limits.report_tokens)
OTHER_TOKENS = "other"  # the fingerprint under which the rest are counted together


@dataclass(frozen=True, slots=True, order=True)
class Call:
    """One kind of decided call; a report is a count of each."""

    token_fp: str
    method: str
    version: str
    endpoint: str | None  # None: no catalogue entry matched
    decision: str  # allow | deny | report
    reason: str
    accepted_scopes: tuple[str, ...]
    token_cost: int | None

    @property
    def refused(self) -> bool:
        """Refused, or would have been refused in enforce mode."""
        return self.decision in ("deny", "report")

    def key(self) -> str:
        """A stable string form, for counters kept in a store: the token's fingerprint, a tab,
        the rest as JSON (a store can fold tokens together without reading JSON)."""
        rest = json.dumps(
            [self.method, self.version, self.endpoint, self.decision, self.reason,
             list(self.accepted_scopes), self.token_cost],
            separators=(",", ":"),
        )  # fmt: skip
        return f"{self.token_fp}\t{rest}"

    @classmethod
    def from_key(cls, key: str) -> Call:
        fp, _, rest = key.partition("\t")
        method, version, endpoint, decision, reason, accepted, cost = json.loads(rest)
        return cls(fp, method, version, endpoint, decision, reason, tuple(accepted), cost)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Call | None:
        """The call a decision-log event records, or None for events that are not decided calls."""
        if event.get("event") != "request" or event.get("reason") not in DECIDED:
            return None
        fp, version = event.get("token_fp"), event.get("version")
        if not isinstance(fp, str) or not isinstance(version, str):
            return None
        return cls(
            fp,
            str(event.get("method")),
            version,
            event.get("endpoint"),
            str(event.get("decision")),
            str(event.get("reason")),
            tuple(sorted(event.get("accepted_scopes") or ())),
            event.get("token_cost"),
        )


def minimal_scopes(requirements: Iterable[frozenset[str]]) -> list[str]:
    """The smallest set of scopes such that every requirement holds one of them.

    Solved exactly: among the covers of least size, the one with the most ``:read`` scopes,
    then the alphabetically first. Requirements that ``base`` meets need nothing.
    """
    distinct = {frozenset(r) for r in requirements if r and BASE not in r}
    # A requirement that holds all the options of a narrower one is met whenever that one is.
    needs = sorted((r for r in distinct if not any(other < r for other in distinct)), key=sorted)
    if not needs:
        return []
    best: tuple[int, int, list[str]] | None = None

    def cost(chosen: frozenset[str]) -> tuple[int, int, list[str]]:
        return (len(chosen), sum(1 for s in chosen if not s.endswith(":read")), sorted(chosen))

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
    return best[2]


def _section(calls: Mapping[Call, int], app_scopes: frozenset[str] | None) -> dict[str, Any]:
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
    needs = [frozenset(call.accepted_scopes) for call in calls if call.endpoint is not None]
    minimal = minimal_scopes(needs)
    unused = sorted((app_scopes or frozenset()) - set(minimal) - {BASE})
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
    }  # fmt: skip


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
            folded[replace(call, token_fp=OTHER_TOKENS)] += count
    return folded


def build_report(
    calls: Mapping[Call, int], app_scopes: frozenset[str] | None, max_tokens: int = MAX_TOKENS
) -> dict[str, Any]:
    """The report document (its keys are a contract: see README, "The report"). At most
    ``max_tokens`` tokens have a section of their own; the rest share one, ``other``."""
    folded = fold_tokens(calls, max_tokens)
    by_token: dict[str, dict[Call, int]] = {}
    for call, count in folded.items():
        by_token.setdefault(call.token_fp, {})[call] = count
    return {
        "app_scopes": sorted(app_scopes) if app_scopes is not None else None,
        "overall": _section(folded, app_scopes),
        "tokens": [
            {"fingerprint": fp, **_section(token_calls, app_scopes)}
            for fp, token_calls in sorted(
                by_token.items(), key=lambda item: (item[0] == OTHER_TOKENS, item[0])
            )
        ],
    }


def calls_from_log(lines: Iterable[str]) -> tuple[Counter[Call], list[str] | None, int]:
    """Calls counted from a JSON decision log, the app scopes its last start-up event names,
    and how many lines were not JSON events."""
    calls: Counter[Call] = Counter()
    app_scopes: list[str] | None = None
    unreadable = 0
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            event = json.loads(text)
        except ValueError:
            unreadable += 1
            continue
        if not isinstance(event, dict):
            unreadable += 1
            continue
        if event.get("event") == "startup":
            declared = event.get("app_scopes")
            app_scopes = [str(s) for s in declared] if isinstance(declared, list) else None
        call = Call.from_event(event)
        if call is not None:
            calls[call] += 1
    return calls, app_scopes, unreadable


def endpoint_label(entry: Mapping[str, Any]) -> str:
    """How people read an entry's endpoint; calls outside the catalogue have none."""
    endpoint = entry.get("endpoint")
    return (
        str(endpoint)
        if endpoint
        else f"{entry['method']} ({entry['version']}, not in the catalogue)"
    )


def findings(section: Mapping[str, Any], app_scopes: list[str] | None) -> list[str]:
    """One plain sentence per finding, for the text and HTML reports."""
    sentences = []
    for entry in section["denied"]:
        times = "once" if entry["count"] == 1 else f"{entry['count']} times"
        label = endpoint_label(entry)
        refused = "was refused" if entry["decision"] == "deny" else "would be refused"
        if not entry["accepted_scopes"]:
            sentences.append(
                f"{label} was called {times}: no catalogue entry matches it, so it {refused} "
                "(unknown_endpoints: allow forwards such calls)."
            )
            continue
        accepted = entry["accepted_scopes"]
        needs = accepted[0] if len(accepted) == 1 else "one of " + ", ".join(accepted)
        lacking = (
            "the app does not declare"
            if entry["reason"] == "outside_app_scopes"
            else "the token does not hold"
        )
        sentences.append(f"{label} {refused} {times}: it needs {needs}, which {lacking}.")
    for scope in section["unused_app_scopes"]:
        sentences.append(
            f"The app declares {scope}, which the recommended set does not need: drop it."
        )
    if section["minimal_scopes"] or app_scopes is not None:
        needed = ", ".join(section["minimal_scopes"]) or "nothing beyond base"
        sentences.append(f"Every call seen is covered by: {needed}.")
    return sentences


def render_text(report: Mapping[str, Any]) -> str:
    """The report for a terminal."""
    overall = report["overall"]
    app = report["app_scopes"]
    lines = [
        f"requests: {overall['requests']}    token cost: {overall['token_cost']}",
        f"declared scopes:   {', '.join(app) if app is not None else '(app_scopes not set)'}",
        f"recommended scopes: {', '.join(overall['minimal_scopes']) or '(none beyond base)'}",
        f"unused declared:   {', '.join(overall['unused_app_scopes']) or '(none)'}",
        "",
        "findings:",
        *(f"  - {sentence}" for sentence in findings(overall, app)),
        "",
        "endpoints:",
        *(
            f"  {entry['count']:6}  {entry['decision']:6}  {endpoint_label(entry)}"
            f"  [{', '.join(entry['accepted_scopes'])}]  cost {entry['token_cost']}"
            for entry in overall["endpoints"]
        ),
        "",
        "tokens:",
        *(
            f"  {token['fingerprint']}  {token['requests']} requests, "
            f"{sum(d['count'] for d in token['denied'])} refused, needs "
            f"{', '.join(token['minimal_scopes']) or 'base'}"
            for token in report["tokens"]
        ),
    ]
    return "\n".join(lines) + "\n"
