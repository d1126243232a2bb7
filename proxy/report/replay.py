"""``report --log``: a JSON decision log replayed as the live proxy counted it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.drift import merge_seen
from proxy.report.budget import BudgetLog
from proxy.report.model import Call, seen_key


@dataclass
class LogRun:
    """What a decision log says of the current run: its calls since the last reset (or the
    last start, with a store that does not outlive the process), the declaration and mode in
    force, when counting began, and how much of the input was what."""

    calls: Counter[Call] = field(default_factory=Counter)
    seen: dict[str, tuple[str, str]] = field(default_factory=dict)  # drifts, by log line time
    app_scopes: list[str] | None = None
    mode: str | None = None
    since: str | None = None
    request_events: int = 0
    unreadable: int = 0
    budget: BudgetLog = field(default_factory=BudgetLog)  # the budget section, read alike


def calls_from_log(lines: Iterable[str]) -> LogRun:
    """Replay a JSON decision log as the live proxy counted it."""
    run = LogRun()
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            event = json.loads(text)
        except ValueError:
            run.unreadable += 1
            continue
        if not isinstance(event, dict):
            run.unreadable += 1
            continue
        name = event.get("event")
        run.budget.read(event)
        if name in ("startup", "reloaded"):
            declared = event.get("app_scopes")
            run.app_scopes = [str(s) for s in declared] if isinstance(declared, list) else None
            run.mode = str(event.get("mode")) if event.get("mode") is not None else None
            if name == "startup" and event.get("store") == "memory":
                run.calls, run.since = Counter(), _since(event)  # a new process counts anew
                run.seen = {}
        elif name == "report_reset":
            run.calls, run.since, run.seen = Counter(), _since(event), {}
        elif name == "request":
            run.request_events += 1
        call = Call.from_event(event)
        if call is not None:
            run.calls[call] += 1
            at = event.get("timestamp")
            if call.drift is not None and isinstance(at, str):
                merge_seen(run.seen, {seen_key(call.drift, call.endpoint): (at, at)})
    return run


def _since(event: Mapping[str, Any]) -> str | None:
    since = event.get("since", event.get("timestamp"))
    return str(since) if since is not None else None
