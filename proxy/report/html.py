"""The overreach report as one self-contained HTML page: no scripts, no external assets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from proxy.report.model import OTHER_TOKENS, endpoint_label
from proxy.report.prose import (
    change_lines,
    costliest_words,
    drift_words,
    findings,
    grant_label,
    plain_decision,
)

SHOWN_TOKENS = 20  # token sections on the page; the JSON has every one

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #1d2330;
       padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.summary { display: flex; gap: 1rem; flex-wrap: wrap; margin: 1rem 0; }
.summary div { background: #f3f5f9; border-radius: 6px; padding: .6rem 1rem; }
.summary b { display: block; font-size: 1.3rem; }
.scope { display: inline-block; background: #e5f3e8; border: 1px solid #9cd3a8; border-radius: 4px;
         padding: 0 .4rem; margin: .1rem; font-family: ui-monospace, monospace; }
.scope.unused { background: #fdecea; border-color: #f1a9a0; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #e3e6ec; }
th { background: #f3f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.deny, .report { color: #b3261e; font-weight: 600; } .allow { color: #1e7b34; }
ul.findings li { margin: .3rem 0; }
.scroll { overflow-x: auto; }
.meta { color: #5b6475; }
ul.change { list-style: none; padding: 0; font-family: ui-monospace, monospace; }
ul.change li { padding: .15rem .6rem; margin: .1rem 0; border-radius: 4px; }
ul.change .add { background: #e5f3e8; } ul.change .remove { background: #fdecea; }
ul.change .replace { background: #fff4d6; }
.warning { background: #fff4d6; border-left: 4px solid #e0a800; padding: .4rem .8rem; }
.bar { background: #c9d6f2; height: .8rem; border-radius: 2px; min-width: 2px; }
@media (max-width: 600px) { body { margin: 1rem auto; font-size: 14px; }
  th, td { padding: .25rem .35rem; } }
"""


def _scopes(names: Iterable[str], css: str = "scope") -> str:
    chips = [f'<span class="{css}">{escape(name)}</span>' for name in names]
    return " ".join(chips) or "<em>none</em>"


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if index in numeric else f"<td>{cell}</td>"
            for index, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _section(section: Mapping[str, Any], app_scopes: list[str] | None, level: str) -> str:
    """One report section; the overall one (``h2``) carries the ids tests and people link to."""
    ids = level == "h2"
    recommended = ' id="recommended"' if ids else ' class="recommended"'
    unused = ' id="unused"' if ids else ' class="unused"'
    parts = [
        '<div class="summary">'
        f"<div>requests<b>{section['requests']}</b></div>"
        f"<div>refused or would be<b>{sum(d['count'] for d in section['denied'])}</b></div>"
        f"<div>token cost<b>{section['token_cost']}</b></div></div>",
        f"<{level}>Recommended scopes</{level}>",
        f"<p{recommended}>{_scopes(section['minimal_scopes'])}</p>",
        f"<{level}>Declared but unused</{level}>",
        f"<p{unused}>{_scopes(section['unused_app_scopes'], 'scope unused')}</p>",
        f"<{level}>Findings</{level}>",
        '<ul class="findings">'
        + "".join(f"<li>{escape(s)}</li>" for s in findings(section, app_scopes))
        + "</ul>",
    ]
    if section["denied"]:
        parts.append(f"<{level}>Refused, or would be refused</{level}>")
        parts.append(
            _table(
                ["endpoint", "calls", "why", "accepted by"],
                [
                    [
                        f"<code>{escape(endpoint_label(d))}</code>",
                        str(d["count"]),
                        escape(d["reason"]),
                        _scopes(d["accepted_scopes"]),
                    ]
                    for d in section["denied"]
                ],
                {1},
            )
        )
    parts.append(f"<{level}>Endpoints called</{level}>")
    parts.append(
        _table(
            ["endpoint", "calls", "decision", "accepted by", "token cost"],
            [
                [
                    f"<code>{escape(endpoint_label(e))}</code>",
                    str(e["count"]),
                    f'<span class="{escape(e["decision"])}">'
                    f"{escape(plain_decision(e['decision']))}</span>",
                    _scopes(e["accepted_scopes"]),
                    str(e["token_cost"]),
                ]
                for e in section["endpoints"]
            ],
            {1, 4},
        )
    )
    return "\n".join(parts)


def _token_name(token: Mapping[str, Any]) -> str:
    if token["fingerprint"] == OTHER_TOKENS:
        return "Other tokens (beyond the busiest)"
    grant = f" {escape(grant_label(token['grant']))}" if token.get("grant") else ""
    return f"Token <code>{escape(token['fingerprint'])}</code>{grant}"


def _change(report: Mapping[str, Any]) -> str:
    """The Developer Hub change as a diff: what to replace, add and remove."""
    lines = change_lines(report)
    if not lines:
        if report.get("change") is not None and report["overall"]["requests"]:
            return "<h2>Change in Developer Hub</h2><p>None: the declaration fits the calls.</p>"
        return ""
    css = {"~": "replace", "+": "add", "-": "remove"}
    items = "".join(f'<li class="{css[line[0]]}">{escape(line)}</li>' for line in lines)
    return f'<h2>Change in Developer Hub</h2><ul class="change" id="change">{items}</ul>'


def _cost_chart(section: Mapping[str, Any]) -> str:
    """Token cost by endpoint, the ten costliest, as bars: where the daily budget goes."""
    by_endpoint: dict[str, int] = {}
    for entry in section["endpoints"]:  # an endpoint both allowed and refused is one bar
        label = endpoint_label(entry)
        by_endpoint[label] = by_endpoint.get(label, 0) + entry["token_cost"]
    costly = sorted(((c, label) for label, c in by_endpoint.items() if c), reverse=True)[:10]
    if not costly:
        return ""
    top = costly[0][0]
    rows = "".join(
        f"<tr><td><code>{escape(label)}</code></td>"
        f'<td class="num">{cost}</td>'
        f'<td style="width:40%"><div class="bar" style="width:{100 * cost / top:.0f}%">'
        "</div></td></tr>"
        for cost, label in costly
    )
    return (
        "<h2>Token cost by endpoint</h2>"
        '<div class="scroll"><table id="cost"><thead><tr><th>endpoint</th><th>cost</th><th></th>'
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _moving(section: Mapping[str, Any]) -> str:
    """The v1 endpoints called that v2 replaces: what each costs there, what it takes."""
    moving = section["migration"]
    if not moving["endpoints"]:
        return ""
    rows = [
        [f"<code>{escape(e['endpoint'])}</code>", str(e["count"]),
         f"<code>{escape(e['replacement'])}</code>",
         f"{e['token_cost']} → {e['replacement_token_cost']}",
         (_scopes(e["replacement_scopes"]) if e["scopes_change"] else "the same")
         + (" <em>(not declared)</em>" if e.get("app_scopes_cover") is False else "")]
        for e in moving["endpoints"]
    ]  # fmt: skip
    return '<h2 id="migration">Moving to API v2</h2>' + _table(
        ["v1 endpoint", "calls", "v2 endpoint", "token cost per call", "scopes in v2"], rows, {1}
    )


def _drift(section: Mapping[str, Any]) -> str:
    """Where Pipedrive's answers disagreed with the catalogue."""
    entries = section.get("drift") or []
    if not entries:
        return ""
    rows = [
        [escape(drift_words(e)), f"<code>{escape(str(e['endpoint']))}</code>", str(e["count"]),
         _scopes(e["granted_scopes"]), escape(str(e["first_seen"] or "?")),
         escape(str(e["last_seen"] or "?"))]
        for e in entries
    ]  # fmt: skip
    return '<h2 id="drift">Pipedrive disagreed with the catalogue</h2>' + _table(
        ["kind", "endpoint", "calls", "scopes held", "first seen", "last seen"], rows, {2}
    )


def _budget(section: Mapping[str, Any]) -> str:
    """Each company's day of the daily token budget."""
    budget = section.get("budget")
    if budget is None:
        return ""

    def shown(value: object) -> str:
        return "?" if value is None else escape(str(value))

    rows = [
        [escape(str(c["company"])), str(c["spent"]), shown(c.get("share_tokens")),
         shown(c.get("budget_left")), shown(c.get("left")),
         escape(str(c["projected_exhaustion"] or "")),
         escape(", ".join(f"{n} {kind}" for kind, n in c["throttled"].items())),
         "<br>".join(escape(costliest_words(e)) for e in c["costliest"])]
        for c in budget["companies"]
    ]  # fmt: skip
    refused = "would have refused" if budget["mode"] == "report" else "refused"
    return (
        f'<h2 id="budget">Daily token budget</h2><p class="meta">Governor: '
        f"<b>{escape(str(budget['mode']))}</b></p>"
        + _table(
            ["company", "spent", "share", "may still spend", "Pipedrive says left",
             "runs out at", refused, "costliest"],
            rows, {1, 2, 3, 4},
        )
    )  # fmt: skip


def render_html(report: Mapping[str, Any]) -> str:
    """The report for people: the change to make, the findings, tables, where tokens go."""
    app = report["app_scopes"]
    declared = _scopes(app) if app is not None else "<em>app_scopes is not set</em>"
    busiest = sorted(report["tokens"], key=lambda t: -t["requests"])
    shown, hidden = busiest[:SHOWN_TOKENS], busiest[SHOWN_TOKENS:]
    tokens = "".join(
        f"<details><summary>{_token_name(t)}: {t['requests']} "
        f"requests, needs {_scopes(t['minimal_scopes'])}</summary>{_section(t, app, 'h4')}"
        "</details>"
        for t in shown
    )
    if hidden:
        tokens += (
            f"<p>{len(hidden)} more tokens, {sum(t['requests'] for t in hidden)} requests: "
            'every token is in the <a href="/_proxy/report">JSON report</a>.</p>'
        )
    mode = report.get("mode")
    window = (
        f'<p class="meta" id="window">Mode <b>{escape(str(mode))}</b>'
        + (" (refusals are only reported)" if mode == "report" else "")
        + f" · counting since {escape(str(report.get('since') or 'start-up'))}"
        + ' · <a href="/_proxy/report">JSON</a></p>'
    )
    warnings = "".join(f'<p class="warning">{escape(w)}</p>' for w in report["warnings"])
    before = report["refused_before_decision"]
    refused_before = (
        "<h2>Refused before the scope check</h2>"
        + _table(
            ["why", "calls"],
            [[escape(r["reason"]), str(r["count"])] for r in before],
            {1},
        )
        if before
        else ""
    )
    if report.get("not_api_calls"):
        refused_before += (
            f'<p class="meta" id="not-api">{report["not_api_calls"]} requests that were no API '
            "calls (no Pipedrive prefix, or refused by one of the proxy's own endpoints) are "
            "not counted above.</p>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>Pipedrive scope report</title><link rel="icon" href="data:,">'
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Pipedrive scope report</h1>"
        f"{window}"
        f'<p>Declared scopes (<code>app_scopes</code>): <span id="declared">{declared}</span></p>'
        f"{_change(report)}{warnings}"
        f"{_section(report['overall'], app, 'h2')}"
        f"{_drift(report['overall'])}{_budget(report['overall'])}"
        f"{_cost_chart(report['overall'])}{_moving(report['overall'])}"
        f"{refused_before}"
        f"<h2>By token</h2>{tokens or '<p><em>No calls yet.</em></p>'}"
        "</body></html>"
    )
