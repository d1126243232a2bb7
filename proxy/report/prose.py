"""The report in plain words: findings, the Developer Hub change, decisions as people say them.
Shared by every renderer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.core.decision import DECLARED_GRANT
from proxy.core.why import why
from proxy.report.model import endpoint_label


def findings(section: Mapping[str, Any], app_scopes: list[str] | None) -> list[str]:
    """One plain sentence per finding, for the text and HTML reports."""
    if not section["requests"]:
        return ["No calls yet: run the app's tests or click through it, then look again."]
    sentences = []
    for entry in section["denied"]:
        times = "once" if entry["count"] == 1 else f"{entry['count']} times"
        refused = "was refused" if entry["decision"] == "deny" else "would be refused"
        said = why(entry["reason"], entry["accepted_scopes"])
        sentences.append(f"{endpoint_label(entry)} {refused} {times}: {said}.")
    sentences += [drift_sentence(entry) for entry in section.get("drift", ())]
    sentences += [lifecycle_sentence(entry) for entry in section.get("lifecycle", ())]
    moving = section.get("migration")
    if moving and moving["endpoints"]:
        sentences.append(migration_sentence(moving))
    for scope in section["unused_app_scopes"]:
        sentences.append(
            f"The app declares {scope}, which the recommended scopes make unnecessary."
        )
    if section["minimal_scopes"] or app_scopes is not None:
        needed = ", ".join(section["minimal_scopes"]) or "nothing beyond base"
        sentences.append(f"Every call seen is covered by: {needed}.")
    return sentences


def drift_sentence(entry: Mapping[str, Any]) -> str:
    """What Pipedrive's answers said of the catalogue (see ``proxy.core.drift``)."""
    times = "once" if entry["count"] == 1 else f"{entry['count']} times"
    endpoint, granted = entry["endpoint"], ", ".join(entry["granted_scopes"]) or "none"
    kind = entry["kind"]
    if kind == "too_generous":
        return (
            f"Pipedrive refused {endpoint} {times} (Scope and URL mismatch) for scopes "
            f"{granted}, which the catalogue says accept it: the catalogue is too generous."
        )
    if kind == "too_strict":
        return (
            f"Pipedrive answered {endpoint} {times} for scopes {granted}, which the "
            "catalogue says do not accept it: the catalogue is too strict."
        )
    if kind == "missing":
        return f"Pipedrive answered {endpoint} {times}: an endpoint the catalogue does not know."
    grant = entry.get("grant")
    held = (
        "the declared app_scopes the token was taken to hold"
        if grant == DECLARED_GRANT
        else f"the static grant {grant}"
        if grant
        else "scopes Pipedrive did not give"
    )
    return (f"Pipedrive's answers to {endpoint} ({times}) disagree with {held} ({granted}): "
            "check that grant; the catalogue is not in question.")  # fmt: skip


def drift_words(entry: Mapping[str, Any]) -> str:
    """``too generous``, ``grant mismatch``, ..."""
    return str(entry["kind"]).replace("_", " ")


def lifecycle_words(entry: Mapping[str, Any]) -> str:
    """``out of support since 2026-08-01``, ``removed since 2026-02-01``, ``deprecated``."""
    words = str(entry["lifecycle"]).replace("_", " ")
    return f"{words} since {entry['since']}" if entry.get("since") else words


def lifecycle_sentence(entry: Mapping[str, Any]) -> str:
    times = "once" if entry["count"] == 1 else f"{entry['count']} times"
    sentence = f"{entry['endpoint']} was called {times}; Pipedrive has it {lifecycle_words(entry)}"
    if entry.get("replacement"):
        sentence += f", and names {entry['replacement']} in its place"
    return sentence + "."


def migration_sentence(moving: Mapping[str, Any]) -> str:
    """What moving the calls made to v1 endpoints with a v2 replacement would change."""
    count = len(moving["endpoints"])
    uncovered = [e["replacement"] for e in moving["endpoints"] if e.get("app_scopes_cover") is False
                 or e.get("granted_scopes_cover") is False]  # fmt: skip
    sentence = (
        f"Moving the {count} v1 endpoint{'s' if count != 1 else ''} called that v2 replaces "
        f"would have cost {moving['replacement_token_cost']} tokens where these calls cost "
        f"{moving['token_cost']}"
    )
    if uncovered:
        sentence += f"; the scopes do not cover {', '.join(uncovered)}"
    return sentence + "."


def change_lines(report: Mapping[str, Any]) -> list[str]:
    """The Developer Hub change, one line per scope: ``+ add``, ``- remove``, ``~ a -> b``."""
    wanted = report.get("change")
    if not wanted:
        return []
    return [
        *(f"~ {old} -> {new}" for old, new in wanted["replace"]),
        *(f"+ {scope}" for scope in wanted["add"]),
        *(f"- {scope}" for scope in wanted["remove"]),
    ]


def grant_label(grant: str) -> str:
    """``(crm-sync)`` for a static grant; ``(app_scopes)`` as it is."""
    return grant if grant == DECLARED_GRANT else f"({grant})"


def plain_decision(decision: str) -> str:
    return {"allow": "allowed", "deny": "refused", "report": "would be refused"}.get(
        decision, decision
    )


def budget_sentence(company: Mapping[str, Any], mode: str | None = None) -> str:
    """One company's day of the budget, in words: spent, what may still be spent, what
    Pipedrive says is left, when it runs out, what was refused (or, in report mode, would have
    been)."""
    words = f"{company['company']}: spent {company['spent']} tokens"
    if company.get("share_tokens") is not None:
        words += f" of a share of {company['share_tokens']}"
    if company.get("budget_left") is not None:
        words += f", {company['budget_left']} more may be spent"
    if company.get("left") is not None:
        words += f" (Pipedrive says {company['left']} left)"
    if company.get("projected_exhaustion"):
        words += f", runs out at {company['projected_exhaustion']} at the rate seen"
    throttled = company.get("throttled") or {}
    if throttled:
        verb = "would have refused" if mode == "report" else "refused"
        words += f"; {verb} " + ", ".join(f"{n} ({kind})" for kind, n in throttled.items())
    return words


def costliest_words(entry: Mapping[str, Any]) -> str:
    """A costly endpoint: its tokens in all, its calls, and what its v2 replacement costs."""
    words = (
        f"{entry['endpoint']}: {entry['tokens']} tokens in {entry['calls']} calls "
        f"({entry['token_cost']} each)"
    )
    if entry.get("replacement"):
        words += f"; v2 {entry['replacement']} costs {entry['replacement_token_cost']} each"
    return words
