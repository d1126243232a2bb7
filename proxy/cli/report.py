"""``report --log``: the overreach report from a JSON decision log, and the CI gate on it."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from proxy.cli.usage import UsageError, parse_scopes
from proxy.core.catalog import load_catalogue
from proxy.core.drift import GATING
from proxy.report.junit import render_junit
from proxy.report.markdown import render_markdown
from proxy.report.model import build_report, rejudge
from proxy.report.replay import calls_from_log
from proxy.report.text import render_text

FAIL_ON = ("denied", "unused", "deprecated", "drift")


def report(log: str, format: str, app_scopes: str | None, fail_on: Sequence[str] = ()) -> int:
    """The overreach report computed from a JSON decision log, as the live proxy serves it.
    Exit 0, or 1 when a ``--fail-on`` finding is there (a CI gate)."""
    gates = {gate.strip() for text in fail_on for gate in text.split(",") if gate.strip()}
    for gate in sorted(gates - set(FAIL_ON)):
        expected = ", ".join(FAIL_ON[:-1]) + f" or {FAIL_ON[-1]}"
        raise UsageError(f"--fail-on: expected {expected}, not {gate!r}")
    source = "standard input" if log == "-" else log
    try:
        if log == "-":
            run = calls_from_log(sys.stdin)
        else:
            with open(log, encoding="utf-8", errors="replace") as handle:
                run = calls_from_log(handle)
    except OSError as error:
        raise UsageError(f"--log: cannot read {log}: {error.strerror}") from None
    if not run.request_events:
        raise UsageError(
            f"--log: no request events in {source}: expected the proxy's JSON decision log "
            "(logging.format: json, at level info or debug)"
        )
    if run.unreadable:
        print(
            f"pipedrive-scope-proxy: skipped {run.unreadable} "
            f"{'line that is' if run.unreadable == 1 else 'lines that are'} not JSON",
            file=sys.stderr,
        )
    calls = run.calls
    catalogue = load_catalogue()
    if app_scopes is not None:
        known = catalogue.scopes.keys() | {
            scope for call in calls for scope in call.accepted_scopes
        }
        declared: frozenset[str] | None = parse_scopes(app_scopes, known, "--app-scopes")
        assert declared is not None
        calls = rejudge(calls, declared, run.mode)
    else:
        declared = frozenset(run.app_scopes) if run.app_scopes is not None else None
    document = build_report(calls, declared, mode=run.mode, since=run.since, catalogue=catalogue,
                            seen=run.seen, budget=run.budget.section(catalogue))  # fmt: skip
    overall = document["overall"]
    refused_before = document["refused_before_decision"]
    if gates and not overall["requests"] and not refused_before:
        window = f" since {run.since}" if run.since else ""
        raise UsageError(f"--fail-on: no calls in the run {source} ends with{window}")
    renderers = {"json": lambda d: json.dumps(d, indent=2) + "\n", "text": render_text,
                 "markdown": render_markdown, "junit": render_junit}  # fmt: skip
    print(renderers[format](document), end="")
    found = (
        ("denied" in gates and (overall["denied"] or refused_before))
        or ("unused" in gates and overall["unused_app_scopes"])
        or ("deprecated" in gates and overall["lifecycle"])
        or ("drift" in gates and any(entry["kind"] in GATING for entry in overall["drift"]))
    )
    return 1 if found else 0
