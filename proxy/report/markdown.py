"""The report as markdown, for a pull-request comment or a CI job summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.report.model import endpoint_label
from proxy.report.prose import (
    change_lines,
    costliest_words,
    drift_words,
    lifecycle_words,
    migration_sentence,
    plain_decision,
)


def render_markdown(report: Mapping[str, Any]) -> str:
    """A summary and tables for a pull-request comment or a CI job summary."""
    overall = report["overall"]
    refused = sum(d["count"] for d in overall["denied"])
    before = sum(r["count"] for r in report["refused_before_decision"])
    verdict = (
        "**No call would be refused.**"
        if not refused
        else f"**{refused} call{'s' if refused != 1 else ''} would be refused by Pipedrive.**"
    )
    if before:
        verdict += f" **{before} refused before the scope check** (no or unknown token, ...)."
    lines = [
        "## Pipedrive scopes",
        "",
        f"{verdict} {overall['requests']} calls, token cost {overall['token_cost']}"
        f" (mode {report['mode'] or '?'}, since {report['since'] or '?'}).",
        "",
        f"- Declared: {_md_scopes(report['app_scopes'])}",
        f"- Recommended: {_md_scopes(overall['minimal_scopes'])}",
        f"- Declared but unused: {_md_scopes(overall['unused_app_scopes'])}",
    ]
    changes = change_lines(report)
    if changes:
        lines += ["", "Change in Developer Hub:", "", "```diff", *changes, "```"]
    lines += [f"> **Warning:** {warning}" for warning in report["warnings"]]
    if overall["denied"]:
        lines += ["", "| endpoint | calls | why | accepted by |", "|---|---:|---|---|"]
        lines += [
            f"| `{endpoint_label(d)}` | {d['count']} | {d['reason']} | "
            f"{_md_scopes(d['accepted_scopes'])} |"
            for d in overall["denied"]
        ]
    if report["refused_before_decision"]:
        lines += ["", "Refused before the scope check: " + ", ".join(
            f"{r['reason']} {r['count']}" for r in report["refused_before_decision"]
        )]  # fmt: skip
    if report.get("not_api_calls"):
        lines += ["", f"Not API calls (not counted above): {report['not_api_calls']}."]
    if overall.get("drift"):
        lines += ["", "**Pipedrive disagreed with the catalogue:**", "",
                  "| kind | endpoint | calls | scopes held | first seen | last seen |",
                  "|---|---|---:|---|---|---|"]  # fmt: skip
        lines += [
            f"| {drift_words(e)} | `{e['endpoint']}` | {e['count']} | "
            f"{_md_scopes(e['granted_scopes'])} | {e['first_seen'] or '?'} | "
            f"{e['last_seen'] or '?'} |"
            for e in overall["drift"]
        ]
    if overall["lifecycle"]:
        heading = "**Endpoints Pipedrive may change without notice, or has removed:**"
        lines += ["", heading, "", "| endpoint | calls | lifecycle | replaced by |",
                  "|---|---:|---|---|"]  # fmt: skip
        lines += [
            f"| `{e['endpoint']}` | {e['count']} | {lifecycle_words(e)} | "
            + (f"`{e['replacement']}`" if e["replacement"] else "")
            + " |"
            for e in overall["lifecycle"]
        ]
    budget = overall.get("budget")
    if budget is not None:
        refused = "would have refused" if budget["mode"] == "report" else "refused"
        lines += ["", f"**Daily token budget** (governor: {budget['mode']}):", "",
                  f"| company | spent | may still spend | Pipedrive says left | runs out at "
                  f"| {refused} | costliest |",
                  "|---|---:|---:|---:|---|---|---|"]  # fmt: skip
        lines += [
            f"| {c['company']} | {c['spent']} | {_unknown(c['budget_left'])} | "
            f"{_unknown(c['left'])} | {c['projected_exhaustion'] or ''} | "
            + ", ".join(f"{n} {kind}" for kind, n in c["throttled"].items())
            + " | "
            + "<br>".join(costliest_words(e) for e in c["costliest"])
            + " |"
            for c in budget["companies"]
        ]
    moving = overall["migration"]
    if moving["endpoints"]:
        lines += ["", migration_sentence(moving), "",
                  "| v1 endpoint | calls | v2 endpoint | token cost per call | scopes in v2 |",
                  "|---|---:|---|---|---|"]  # fmt: skip
        lines += [
            f"| `{e['endpoint']}` | {e['count']} | `{e['replacement']}` | "
            f"{e['token_cost']} -> {e['replacement_token_cost']} | "
            + (_md_scopes(e["replacement_scopes"]) if e["scopes_change"] else "the same")
            + (" (not declared)" if e.get("app_scopes_cover") is False else "")
            + " |"
            for e in moving["endpoints"]
        ]
    lines += ["", "<details><summary>Endpoints called</summary>", ""]
    lines += ["| endpoint | calls | decision | token cost |", "|---|---:|---|---:|"]
    lines += [
        f"| `{endpoint_label(e)}` | {e['count']} | {plain_decision(e['decision'])} "
        f"| {e['token_cost']} |"
        for e in overall["endpoints"]
    ]
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _md_scopes(names: list[str] | None) -> str:
    if names is None:
        return "(app_scopes not set)"
    return ", ".join(f"`{name}`" for name in names) or "none"
