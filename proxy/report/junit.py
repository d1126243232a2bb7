"""The report as JUnit XML: a test case per endpoint called, failing where a call was or would
be refused, so that CI systems list the findings as they list failed tests."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from proxy.report.model import endpoint_label
from proxy.report.prose import (
    budget_sentence,
    drift_sentence,
    lifecycle_sentence,
    plain_decision,
)


def render_junit(report: Mapping[str, Any]) -> str:
    """One test case per endpoint called, failing where Pipedrive refuses or would refuse it,
    so that CI systems list the findings as they list failed tests."""
    overall = report["overall"]
    denied: dict[str, list[Mapping[str, Any]]] = {}
    for entry in overall["denied"]:
        denied.setdefault(endpoint_label(entry), []).append(entry)
    called: dict[str, int] = {}
    for entry in overall["endpoints"]:
        called[endpoint_label(entry)] = called.get(endpoint_label(entry), 0) + entry["count"]
    cases = []
    for label in sorted(called):
        name = escape(label, quote=True)
        versioned = next(e["version"] for e in overall["endpoints"] if endpoint_label(e) == label)
        head = f'<testcase classname="pipedrive.{escape(versioned)}" name="{name}">'
        if label in denied:
            why = "; ".join(
                f"{plain_decision(d['decision'])} {d['count']}x ({d['reason']}), accepted by "
                f"{', '.join(d['accepted_scopes']) or 'no catalogue entry'}"
                for d in denied[label]
            )
            kind = escape(denied[label][0]["reason"], quote=True)
            message = escape(why, quote=True)
            cases.append(
                f'{head}<failure message="{message}" type="{kind}">{escape(why)}</failure>'
                "</testcase>"
            )
        else:
            cases.append(f"{head}</testcase>")
    for entry in report["refused_before_decision"]:
        why = f"refused {entry['count']}x before the scope check ({entry['reason']})"
        cases.append(
            f'<testcase classname="pipedrive.refused" name="refused before the scope check: '
            f'{escape(entry["reason"], quote=True)}"><failure message="{escape(why, quote=True)}" '
            f'type="{escape(entry["reason"], quote=True)}">{escape(why)}</failure></testcase>'
        )
    # An endpoint that is not current: skipped, with why, so that CI systems show it without
    # failing the run (report --fail-on deprecated is the gate for that).
    for entry in overall["lifecycle"]:
        said, name = lifecycle_sentence(entry), escape(entry["endpoint"], quote=True)
        cases.append(
            f'<testcase classname="pipedrive.lifecycle" name="{name}">'
            f'<skipped message="{escape(said, quote=True)}"/></testcase>'
        )
    # Pipedrive disagreeing with the catalogue: skipped, with what it said (report --fail-on
    # drift is the gate; the app is not at fault).
    for entry in overall.get("drift", ()):
        said, name = drift_sentence(entry), escape(str(entry["endpoint"]), quote=True)
        cases.append(
            f'<testcase classname="pipedrive.drift.{escape(entry["kind"], quote=True)}" '
            f'name="{name}"><skipped message="{escape(said, quote=True)}"/></testcase>'
        )
    # Each company's day of the budget: passed, with what was spent and left; skipped (shown,
    # never failing the run) where the governor refused calls.
    budget = overall.get("budget") or {"companies": []}
    throttled_companies = 0
    for company in budget["companies"]:
        said = budget_sentence(company, budget.get("mode"))
        name = escape(str(company["company"]), quote=True)
        if company.get("throttled"):
            throttled_companies += 1
            cases.append(
                f'<testcase classname="pipedrive.budget" name="{name}">'
                f'<skipped message="{escape(said, quote=True)}"/></testcase>'
            )
        else:
            cases.append(
                f'<testcase classname="pipedrive.budget" name="{name}">'
                f"<system-out>{escape(said)}</system-out></testcase>"
            )
    failures = sum(1 for label in called if label in denied) + len(
        report["refused_before_decision"]
    )
    skipped = len(overall["lifecycle"]) + len(overall.get("drift", ())) + throttled_companies
    counted = (
        len(called)
        + len(report["refused_before_decision"])
        + skipped
        + len(budget["companies"])
        - throttled_companies
    )
    totals = f'tests="{counted}" failures="{failures}" skipped="{skipped}"'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuites name="pipedrive-scope-proxy" {totals}>\n'
        f'<testsuite name="Pipedrive scopes" {totals}>\n'
        + "".join(f"{case}\n" for case in cases)
        + "</testsuite>\n</testsuites>\n"
    )
