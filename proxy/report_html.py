"""The overreach report as one self-contained HTML page: no scripts, no external assets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from proxy.report import OTHER_TOKENS, endpoint_label, findings

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
code { font-family: ui-monospace, monospace; }
.deny, .report { color: #b3261e; font-weight: 600; } .allow { color: #1e7b34; }
ul.findings li { margin: .3rem 0; }
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
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
                ["endpoint", "calls", "reason", "accepted by"],
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
                    f'<span class="{escape(e["decision"])}">{escape(e["decision"])}</span>',
                    _scopes(e["accepted_scopes"]),
                    str(e["token_cost"]),
                ]
                for e in section["endpoints"]
            ],
            {1, 4},
        )
    )
    return "\n".join(parts)


def _token_name(fingerprint: str) -> str:
    if fingerprint == OTHER_TOKENS:
        return "Other tokens (beyond the busiest)"
    return f"Token <code>{escape(fingerprint)}</code>"


def render_html(report: Mapping[str, Any]) -> str:
    """The report for people: tables, the recommended scope set, a sentence per finding."""
    app = report["app_scopes"]
    declared = _scopes(app) if app is not None else "<em>app_scopes is not set</em>"
    busiest = sorted(report["tokens"], key=lambda t: -t["requests"])
    shown, hidden = busiest[:SHOWN_TOKENS], busiest[SHOWN_TOKENS:]
    tokens = "".join(
        f"<details><summary>{_token_name(t['fingerprint'])}: {t['requests']} "
        f"requests, needs {_scopes(t['minimal_scopes'])}</summary>{_section(t, app, 'h4')}"
        "</details>"
        for t in shown
    )
    if hidden:
        tokens += (
            f"<p>{len(hidden)} more tokens, {sum(t['requests'] for t in hidden)} requests: "
            'every token is in the <a href="/_proxy/report">JSON report</a>.</p>'
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>Pipedrive scope report</title><link rel="icon" href="data:,">'
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Pipedrive scope report</h1>"
        f'<p>Declared scopes (<code>app_scopes</code>): <span id="declared">{declared}</span></p>'
        f"{_section(report['overall'], app, 'h2')}"
        f"<h2>By token</h2>{tokens or '<p><em>No calls yet.</em></p>'}"
        "</body></html>"
    )
