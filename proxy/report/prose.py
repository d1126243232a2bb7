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
    for scope in section["unused_app_scopes"]:
        sentences.append(
            f"The app declares {scope}, which the recommended scopes make unnecessary."
        )
    if section["minimal_scopes"] or app_scopes is not None:
        needed = ", ".join(section["minimal_scopes"]) or "nothing beyond base"
        sentences.append(f"Every call seen is covered by: {needed}.")
    return sentences


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
