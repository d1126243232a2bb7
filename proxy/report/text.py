"""The report for a terminal: ``report --log`` (the default format)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.report.model import endpoint_label
from proxy.report.prose import (
    budget_sentence,
    change_lines,
    costliest_words,
    drift_words,
    findings,
    grant_label,
    lifecycle_words,
    plain_decision,
)


def render_text(report: Mapping[str, Any]) -> str:
    """The report for a terminal."""
    overall = report["overall"]
    app = report["app_scopes"]
    changes = change_lines(report)
    lines = [
        f"requests: {overall['requests']}    token cost: {overall['token_cost']}"
        f"    mode: {report['mode'] or '?'}    since: {report['since'] or '?'}",
        f"declared scopes:   {', '.join(app) if app is not None else '(app_scopes not set)'}",
        f"recommended scopes: {', '.join(overall['minimal_scopes']) or '(none beyond base)'}",
        f"unused declared:   {', '.join(overall['unused_app_scopes']) or '(none)'}",
    ]
    if changes:
        lines += ["", "change in Developer Hub:", *(f"  {line}" for line in changes)]
    lines += ["", "findings:", *(f"  - {sentence}" for sentence in findings(overall, app))]
    lines += [f"  ! {warning}" for warning in report["warnings"]]
    if report["refused_before_decision"]:
        lines += [
            "",
            "refused before the scope check:",
            *(f"  {r['count']:6}  {r['reason']}" for r in report["refused_before_decision"]),
        ]
    if report.get("not_api_calls"):
        lines += ["", f"not API calls (not counted above): {report['not_api_calls']}"]
    if overall.get("drift"):
        lines += ["", "Pipedrive disagreed with the catalogue:"]
        lines += [
            f"  {e['count']:6}  {drift_words(e):14}  {e['endpoint']}  "
            f"[{', '.join(e['granted_scopes'])}]  "
            f"{e['first_seen'] or '?'} .. {e['last_seen'] or '?'}"
            for e in overall["drift"]
        ]
    if overall["lifecycle"]:
        lines += ["", "endpoints Pipedrive may change without notice, or has removed:"]
        lines += [
            f"  {e['count']:6}  {e['endpoint']}  {lifecycle_words(e)}"
            + (f"  -> {e['replacement']}" if e["replacement"] else "")
            for e in overall["lifecycle"]
        ]
    budget = overall.get("budget")
    if budget is not None:
        lines += ["", f"daily token budget (governor: {budget['mode']}):"]
        for company in budget["companies"] or [{"company": "(no calls yet)", "spent": 0}]:
            lines.append(f"  {budget_sentence(company, budget['mode'])}")
            lines += [f"      {costliest_words(e)}" for e in company.get("costliest", ())]
    moving = overall["migration"]
    if moving["endpoints"]:
        lines += ["", f"moving to v2: token cost {moving['token_cost']} -> "
                      f"{moving['replacement_token_cost']} for these calls"]  # fmt: skip
        lines += [
            f"  {e['count']:6}  {e['endpoint']} -> {e['replacement']}  cost "
            f"{e['token_cost']} -> {e['replacement_token_cost']} per call"
            + (f"  [{', '.join(e['replacement_scopes'])}]" if e["scopes_change"] else "")
            + ("  not covered by the declared scopes" if e.get("app_scopes_cover") is False else "")
            for e in moving["endpoints"]
        ]
    lines += [
        "",
        "endpoints:",
        *(
            f"  {entry['count']:6}  {plain_decision(entry['decision']):16}  {endpoint_label(entry)}"
            f"  [{', '.join(entry['accepted_scopes'])}]  cost {entry['token_cost']}"
            for entry in overall["endpoints"]
        ),
        "",
        "tokens:",
        *(
            f"  {token['fingerprint']}"
            + (f" {grant_label(token['grant'])}" if token["grant"] else "")
            + f"  {token['requests']} request{'s' if token['requests'] != 1 else ''}, "
            f"{sum(d['count'] for d in token['denied'])} refused, needs "
            f"{', '.join(token['minimal_scopes']) or 'base'}"
            for token in report["tokens"]
        ),
    ]
    return "\n".join(lines) + "\n"
