"""Endpoints Pipedrive deprecated, no longer supports or removed, as a user meets them: in
``explain``, the decision log line, the metrics, the report in every format, the v2 migration
plan, and the gate ``report --fail-on deprecated``. The lifecycle never changes a decision."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy.cli import main
from proxy.core.catalog import load_catalogue
from proxy.report.html import render_html
from proxy.report.junit import render_junit
from proxy.report.markdown import render_markdown
from proxy.report.model import Call, build_report
from proxy.report.text import render_text
from tests.conftest import ProxyFactory, sha
from tests.fakes import FakePipedrive

CATALOGUE = load_catalogue()
TOKEN = "lifecycle-token-0123456789"


def explained(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, list[str]]]:
    code = main(["explain", *argv])
    lines: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        name, _, said = line.strip().partition(":")
        lines.setdefault(name, []).append(said.strip())
    return code, lines


def test_explain_gives_a_deprecated_v1_calls_state_date_page_and_v2_replacement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, said = explained(capsys, "GET", "/v1/deals/1", "--scopes", "deals:read")
    assert code == 0
    [state] = said["lifecycle"]
    assert state.startswith("out of support since 2026-08-01: Pipedrive, ")
    assert "https://developers.pipedrive.com/changelog" in state
    assert said["replaced by"] == ["GET /api/v2/deals/{id} (token cost 1 there, 2 here)"]
    assert said["decision"] == ["allow (in_scope)"], "the lifecycle never changes the decision"
    # Sources in a user's words, never the generator's names for them.
    assert not any(
        re.search(r"removed_from_spec|last in raw|[0-9a-f]{8}", s) for s in said["source"]
    )
    # A replacement that takes other scopes says so at a glance, by its cost and its line.
    code, said = explained(capsys, "PUT", "/v1/deals/1", "--scopes", "deals:full")
    assert said["replaced by"] == ["PATCH /api/v2/deals/{id} (token cost 5 there, 10 here)"]


@pytest.mark.parametrize(
    ("scopes", "decision"),
    [("messengers-integration", "allow (in_scope)"), ("admin", "deny (out_of_scope)")],
)
def test_the_channels_endpoints_are_removed_since_2026_02_01_and_still_decided_by_scope(
    capsys: pytest.CaptureFixture[str], scopes: str, decision: str
) -> None:
    for method, path in (("POST", "/v1/channels"), ("DELETE", "/v1/channels/7"),
                         ("POST", "/v1/channels/messages/receive"),
                         ("DELETE", "/v1/channels/7/conversations/9")):  # fmt: skip
        _, said = explained(capsys, method, path, "--scopes", scopes)
        [state] = said["lifecycle"]
        assert state.startswith("removed since 2026-02-01: Pipedrive, "), (method, path)
        assert "Channels API" in state
        assert "replaced by" not in said
        assert said["decision"] == [decision]


async def test_the_log_line_and_the_metrics_name_the_lifecycle_of_an_endpoint_not_current(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(
        tokens=[
            {"name": "t", "sha256": sha(TOKEN), "scopes": ["deals:full", "messengers-integration"]}
        ]
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with capture_logs() as events:
        for method, path in (("GET", "/v1/deals/1"), ("GET", "/api/v2/deals/1"),
                             ("POST", "/v1/channels"), ("GET", "/v1/deals/2")):  # fmt: skip
            assert (await client.request(method, path, headers=auth)).status == 200
    lines = [e for e in events if e["event"] == "request"]
    assert [(e["endpoint"], e.get("lifecycle")) for e in lines] == [
        ("GET /v1/deals/{id}", "out_of_support"),
        ("GET /api/v2/deals/{id}", None),  # current: no field at all
        ("POST /v1/channels", "removed"),
        ("GET /v1/deals/{id}", "out_of_support"),
    ]
    assert "lifecycle" not in lines[1]
    assert [f"{r.method} {r.raw_path}" for r in upstream.received] == [
        "GET /v1/deals/1", "GET /api/v2/deals/1", "POST /v1/channels", "GET /v1/deals/2",
    ], "every call forwarded: Pipedrive answers a removed endpoint"  # fmt: skip
    metrics = await (await client.get("/_proxy/metrics")).text()
    counted = dict(re.findall(r'^scope_proxy_lifecycle_calls_total\{lifecycle="(\w+)"\} (\S+)$',
                              metrics, re.MULTILINE))  # fmt: skip
    assert counted == {"out_of_support": "2.0", "removed": "1.0", "deprecated": "0.0"}


def call(endpoint: str, count_token: str = "aaaaaaaaaaaa", granted: tuple[str, ...] = ()) -> Call:
    found = CATALOGUE.by_name[endpoint]
    return Call(count_token, found.method, "v1" if "/v1/" in endpoint else "v2", endpoint,
                "allow", "in_scope", tuple(sorted(found.scopes)), found.token_cost, None,
                granted)  # fmt: skip


def sample_report(app_scopes: frozenset[str] | None = frozenset({"deals:read"})) -> dict[str, Any]:
    calls = {
        call("GET /v1/deals/{id}", granted=("deals:read",)): 3,
        call("PUT /v1/deals/{id}", granted=("deals:read",)): 1,
        call("POST /v1/channels", "bbbbbbbbbbbb", ("messengers-integration",)): 2,
        call("GET /api/v2/deals/{id}", granted=("deals:read",)): 5,
    }
    return build_report(calls, app_scopes, mode="report", since="2026-12-01T00:00:00Z",
                        catalogue=CATALOGUE)  # fmt: skip


def test_the_report_lists_endpoints_not_current_with_since_replacement_and_count() -> None:
    overall = sample_report()["overall"]
    assert overall["lifecycle"] == [
        {"endpoint": "GET /v1/deals/{id}", "lifecycle": "out_of_support", "since": "2026-08-01",
         "replacement": "GET /api/v2/deals/{id}", "count": 3},
        {"endpoint": "POST /v1/channels", "lifecycle": "removed", "since": "2026-02-01",
         "replacement": None, "count": 2},
        {"endpoint": "PUT /v1/deals/{id}", "lifecycle": "out_of_support", "since": "2026-08-01",
         "replacement": "PATCH /api/v2/deals/{id}", "count": 1},
    ]  # fmt: skip


def test_the_migration_plan_gives_each_sides_cost_and_whether_the_scopes_cover_v2() -> None:
    report = sample_report()
    moving = report["overall"]["migration"]
    assert [(e["endpoint"], e["replacement"], e["count"], e["token_cost"],
             e["replacement_token_cost"], e["app_scopes_cover"]) for e in moving["endpoints"]] == [
        ("GET /v1/deals/{id}", "GET /api/v2/deals/{id}", 3, 2, 1, True),
        ("PUT /v1/deals/{id}", "PATCH /api/v2/deals/{id}", 1, 10, 5, False),
    ]  # fmt: skip
    assert (moving["token_cost"], moving["replacement_token_cost"]) == (3 * 2 + 10, 3 * 1 + 5)
    # Each token's section says whether the scopes it held cover the replacement.
    [token] = [t for t in report["tokens"] if t["fingerprint"] == "aaaaaaaaaaaa"]
    assert [e["granted_scopes_cover"] for e in token["migration"]["endpoints"]] == [True, False]
    # Without a declaration, nothing to say of it.
    undeclared = sample_report(None)["overall"]["migration"]["endpoints"]
    assert [e["app_scopes_cover"] for e in undeclared] == [None, None]


def test_the_two_pairs_that_change_scopes_say_so() -> None:
    changed = []
    for endpoint in CATALOGUE.endpoints:
        if endpoint.replacement is None:
            continue
        calls = {call(endpoint.name): 1}
        [entry] = build_report(calls, None, catalogue=CATALOGUE)["overall"]["migration"][
            "endpoints"
        ]
        if entry["scopes_change"]:
            changed.append((entry["endpoint"], entry["replacement"], entry["replacement_scopes"]))
    assert len(changed) == 2, changed


def test_every_format_shows_the_lifecycle_and_the_move_to_v2() -> None:
    report = sample_report()
    text = render_text(report)
    assert "GET /v1/deals/{id}  out of support since 2026-08-01  -> GET /api/v2/deals/{id}" in text
    assert "POST /v1/channels  removed since 2026-02-01" in text
    assert "moving to v2: token cost 16 -> 8 for these calls" in text
    assert "PUT /v1/deals/{id} -> PATCH /api/v2/deals/{id}  cost 10 -> 5 per call" in text
    assert "not covered by the declared scopes" in text
    markdown = render_markdown(report)
    assert ("| `GET /v1/deals/{id}` | 3 | out of support since 2026-08-01 | "
            "`GET /api/v2/deals/{id}` |") in markdown  # fmt: skip
    assert "| `POST /v1/channels` | 2 | removed since 2026-02-01 |" in markdown
    html = render_html(report)
    assert '<h2 id="migration">Moving to API v2</h2>' in html
    assert "<code>PATCH /api/v2/deals/{id}</code>" in html
    assert "removed since 2026-02-01" in html
    suite = ET.fromstring(render_junit(report)).find("testsuite")  # noqa: S314 - our own output
    assert suite is not None
    skipped = {case.get("name"): case.find("skipped") for case in suite
               if case.get("classname") == "pipedrive.lifecycle"}  # fmt: skip
    assert set(skipped) == {"GET /v1/deals/{id}", "PUT /v1/deals/{id}", "POST /v1/channels"}
    message = skipped["POST /v1/channels"]
    assert message is not None
    assert "removed since 2026-02-01" in (message.get("message") or "")
    assert (suite.get("skipped"), suite.get("failures")) == ("3", "0")


LOG_LINE = (
    '{{"event": "request", "decision": "allow", "reason": "in_scope", "method": "GET", '
    '"endpoint": "{endpoint}", "version": "{version}", "token_fp": "aaaaaaaaaaaa", '
    '"accepted_scopes": ["deals:read", "deals:full"], "granted_scopes": ["deals:read"], '
    '"token_cost": 2}}\n'
)


@pytest.mark.parametrize(
    ("endpoints", "code"),
    [(["GET /v1/deals/{id}"], 1), (["GET /api/v2/deals/{id}", "GET /v1/deals/{id}"], 1),
     (["GET /api/v2/deals/{id}"], 0), (["GET /v1/deals/summary"], 0)],
    ids=["a-v1-call", "v1-among-v2", "v2-only", "a-current-v1-endpoint"],
)  # fmt: skip
def test_fail_on_deprecated_from_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], endpoints: list[str], code: int
) -> None:
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(
        LOG_LINE.format(endpoint=e, version="v2" if "/v2/" in e else "v1") for e in endpoints
    ))  # fmt: skip
    assert main(["report", "--log", str(log), "--fail-on", "deprecated"]) == code
    capsys.readouterr()
    assert main(["report", "--log", str(log), "--format", "json"]) == 0
    lifecycle = json.loads(capsys.readouterr().out)["overall"]["lifecycle"]
    assert bool(lifecycle) == bool(code)
