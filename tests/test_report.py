"""The overreach report's pure parts: scope minimisation, call keys, the document's shape."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from proxy.core.decision import DECLARED_GRANT
from proxy.report.html import render_html
from proxy.report.model import (
    UNKNOWN_SHAPES,
    Call,
    build_report,
    fold_shapes,
    minimal_scopes,
    refused_before,
    rejudge,
)
from proxy.report.prose import findings
from proxy.report.replay import calls_from_log
from proxy.report.text import render_text

S = frozenset


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        ([], []),
        ([S({"base"})], []),
        ([S({"deals:read", "deals:full"})], ["deals:read"]),
        ([S({"deals:read", "deals:full"}), S({"deals:full"})], ["deals:full"]),
        ([S({"deals:read", "deals:full", "search:read"}), S({"contacts:read", "contacts:full", "search:read"})],
         ["search:read"]),
        # Greedy takes search:read first (it serves three calls) and then still needs three more
        # scopes: four in all. The optimum is three.
        ([S({"deals:read", "deals:full", "search:read"}), S({"contacts:read", "contacts:full", "search:read"}),
          S({"products:read", "products:full", "search:read"}), S({"deals:read", "deals:full"}),
          S({"contacts:read", "contacts:full"}), S({"products:read", "products:full"})],
         ["contacts:read", "deals:read", "products:read"]),
        # The textbook case: X serves four calls, Y and Z three each; greedy gives {X, Y, Z}.
        ([S({"admin", "deals:read"}), S({"admin", "contacts:read"}), S({"admin", "deals:read"}),
          S({"admin", "contacts:read"}), S({"deals:read"}), S({"contacts:read"})],
         ["contacts:read", "deals:read"]),
        ([S({"admin"}), S({"admin", "deals:read"})], ["admin"]),
        ([S({"activities:read", "activities:full"}), S({"activities:full", "admin"})],
         ["activities:full"]),
    ],
    ids=[
        "nothing called", "base covers itself", "read preferred over full",
        "full when a write needs it", "one scope serving two calls",
        "greedy would pick four, the optimum is three", "greedy would pick three, the optimum is two",
        "a scope required anyway covers the rest", "fewest scopes first, then reads",
    ],
)  # fmt: skip
def test_minimal_scopes(requirements: list[frozenset[str]], expected: list[str]) -> None:
    assert minimal_scopes(requirements) == expected


def greedy(requirements: list[frozenset[str]]) -> set[str]:
    chosen: set[str] = set()
    open_needs = [r for r in requirements if "base" not in r]
    while open_needs:
        options = Counter(s for r in open_needs for s in r)
        best = max(sorted(options), key=lambda s: options[s])
        chosen.add(best)
        open_needs = [r for r in open_needs if best not in r]
    return chosen


def test_the_greedy_cases_really_defeat_greedy() -> None:
    xyz = [S({"admin", "deals:read"}), S({"admin", "contacts:read"}), S({"admin", "deals:read"}),
           S({"admin", "contacts:read"}), S({"deals:read"}), S({"contacts:read"})]  # fmt: skip
    assert len(greedy(xyz)) == 3
    assert len(minimal_scopes(xyz)) == 2


def call(**fields: object) -> Call:
    base: dict[str, object] = {
        "token_fp": "aaaaaaaaaaaa", "method": "GET", "version": "v1", "endpoint": "GET /v1/deals/{id}",
        "decision": "allow", "reason": "in_scope", "accepted_scopes": ("deals:full", "deals:read"),
        "token_cost": 2,
    }  # fmt: skip
    base.update(fields)
    return Call(**base)  # type: ignore[arg-type]


def test_call_key_round_trips() -> None:
    for value in (call(), call(endpoint=None, accepted_scopes=(), token_cost=None),
                  call(grant="nightly-sync")):  # fmt: skip
        assert Call.from_key(value.key()) == value
    # A key counted before grants were (a store from an earlier version) still reads.
    old = '{fp}\t["GET","v1","GET /v1/deals/{{id}}","allow","in_scope",["deals:read"],2]'
    assert Call.from_key(old.format(fp="a" * 12)).grant is None


def test_report_document_has_the_contract_shape() -> None:
    calls = Counter(
        {
            call(): 3,
            call(token_fp="bbbbbbbbbbbb", method="DELETE", endpoint="DELETE /v1/deals/{id}",
                 decision="deny", reason="out_of_scope", accepted_scopes=("deals:full",),
                 token_cost=6): 1,
        }
    )  # fmt: skip
    report = build_report(calls, S({"deals:read", "contacts:full"}))
    assert report["app_scopes"] == ["contacts:full", "deals:read"]
    overall = report["overall"]
    assert (overall["requests"], overall["token_cost"]) == (4, 12)
    assert overall["endpoints"][0] == {
        "endpoint": "GET /v1/deals/{id}", "method": "GET", "version": "v1", "count": 3,
        "decision": "allow", "accepted_scopes": ["deals:full", "deals:read"], "token_cost": 6,
    }  # fmt: skip
    assert overall["denied"] == [
        {"endpoint": "DELETE /v1/deals/{id}", "method": "DELETE", "version": "v1", "count": 1,
         "decision": "deny", "reason": "out_of_scope", "accepted_scopes": ["deals:full"]}
    ]  # fmt: skip
    assert overall["minimal_scopes"] == ["deals:full"]
    assert overall["unused_app_scopes"] == ["contacts:full", "deals:read"]
    assert [t["fingerprint"] for t in report["tokens"]] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert report["tokens"][0]["minimal_scopes"] == ["deals:read"]
    assert set(report["tokens"][0]) == {"fingerprint", "grant", *overall} - {"drift"}
    assert report["change"] == {"add": [], "remove": ["contacts:full"],
                                "replace": [["deals:read", "deals:full"]]}  # fmt: skip
    assert report["warnings"] == [
        "deals:full is recommended only because of DELETE /v1/deals/{id}: make sure the app "
        "needs that call, since the scope grants much more"
    ]
    assert report["refused_before_decision"] == []
    assert any("DELETE /v1/deals/{id} was refused once" in s for s in findings(overall, ["x"]))
    assert "recommended scopes: deals:full" in render_text(report)


def test_log_reading_skips_what_is_not_a_decided_call() -> None:
    lines = [
        json.dumps({"event": "startup", "app_scopes": ["deals:read"]}),
        json.dumps({"event": "request", "decision": "allow", "reason": "in_scope", "method": "GET",
                    "endpoint": "GET /v1/deals/{id}", "version": "v1", "token_fp": "aaaaaaaaaaaa",
                    "accepted_scopes": ["deals:read", "deals:full"], "token_cost": 2}),
        json.dumps({"event": "request", "decision": "deny", "reason": "unknown_token",
                    "method": "GET", "version": "v1", "token_fp": "cccccccccccc"}),
        "not json at all",
        "",
    ]  # fmt: skip
    run = calls_from_log(lines)
    assert run.calls == Counter({call(): 1, refused_before("unknown_token"): 1})
    assert (run.app_scopes, run.unreadable, run.request_events) == (["deals:read"], 1, 2)


def test_the_busiest_tokens_keep_their_sections_and_the_rest_are_other() -> None:
    calls = Counter(
        {
            Call(
                f"{n:012x}", "GET", "v1", "GET /v1/deals", "allow", "in_scope", ("deals:read",), 20
            ): n + 1
            for n in range(10)
        }
    )
    report = build_report(calls, None, max_tokens=3)
    assert [t["fingerprint"] for t in report["tokens"]] == [f"{n:012x}" for n in (7, 8, 9)] + [
        "other"
    ]
    assert report["tokens"][-1]["requests"] == sum(range(1, 8))
    assert report["overall"]["requests"] == sum(range(1, 11)), "the overall counts are unchanged"


def test_the_page_stays_small_whatever_the_number_of_tokens() -> None:
    calls = Counter(
        {
            Call(
                f"{n:012x}",
                "GET",
                "v1",
                f"GET /v1/deals/{{id}}/p{n % 50}",
                "allow",
                "in_scope",
                ("deals:read",),
                2,
            ): 1
            for n in range(5000)
        }
    )
    page = render_html(build_report(calls, frozenset({"deals:read"}), max_tokens=100))
    assert len(page) < 300_000
    assert page.count("<details>") == 20
    assert "more tokens" in page


def test_app_scopes_what_if_judges_declared_grants_and_the_ceiling() -> None:
    """``report --app-scopes``: a token taken to hold the declaration holds the new one; a
    token with a grant of its own meets the new declaration as a ceiling."""
    declared_token = call(endpoint="DELETE /api/v2/deals/{id}", method="DELETE", version="v2",
                          decision="report", reason="out_of_scope",
                          accepted_scopes=("deals:full",), grant=DECLARED_GRANT)  # fmt: skip
    own_grant = call(grant="crm-sync")  # GET /v1/deals/{id}: deals:full or deals:read
    judged = rejudge(Counter({declared_token: 1, own_grant: 2}), S({"deals:full"}), "report")
    assert {(c.endpoint, c.decision, c.reason, n) for c, n in judged.items()} == {
        ("DELETE /api/v2/deals/{id}", "allow", "in_scope", 1),
        ("GET /v1/deals/{id}", "allow", "in_scope", 2),
    }
    narrower = rejudge(Counter({declared_token: 1, own_grant: 2}), S({"contacts:read"}), "enforce")
    assert {(c.endpoint, c.decision, c.reason) for c in narrower} == {
        ("DELETE /api/v2/deals/{id}", "deny", "out_of_scope"),
        ("GET /v1/deals/{id}", "deny", "outside_app_scopes"),
    }


def unknown_call(fp: str, shape: str) -> Call:
    return Call(fp, "GET", "v1", shape, "deny", "unknown_endpoint", (), None)


def test_unknown_paths_past_the_bound_are_folded_per_method_and_version() -> None:
    calls = Counter({unknown_call("a" * 12, f"GET /v1/made{n}"): 1 for n in range(250)})
    calls[unknown_call("a" * 12, "GET /v1/dealz")] = 40
    calls[
        Call("a" * 12, "DELETE", "v2", "DELETE /api/v2/x", "deny", "unknown_endpoint", (), None)
    ] = 1
    folded = fold_shapes(calls, keep=10)
    assert sum(folded.values()) == sum(calls.values())
    names = {call.endpoint for call in folded}
    assert len(names) == 10 + 1  # the 10 busiest, one other for GET v1 (DELETE v2 is kept)
    assert "GET /v1/dealz" in names
    assert "GET /v1/(other unknown paths)" in names
    assert fold_shapes(folded, keep=10) == folded, "folding again changes nothing"


def test_unknown_paths_keep_at_most_so_many_token_entries() -> None:
    calls = Counter({unknown_call(f"{n:012x}", "GET /v1/beta"): n + 1 for n in range(50)})
    folded = fold_shapes(calls, keep=10, pairs=20)
    kept = [call for call in folded if call.endpoint == "GET /v1/beta"]
    assert len(kept) == 20
    assert {call.token_fp for call in kept} == {f"{n:012x}" for n in range(30, 50)}
    assert sum(folded.values()) == sum(calls.values())


def test_a_report_names_at_most_so_many_unknown_paths() -> None:
    calls = Counter({unknown_call("b" * 12, f"GET /v1/made{n}"): 1 for n in range(5_000)})
    report = build_report(calls, None)
    assert len(report["overall"]["endpoints"]) == UNKNOWN_SHAPES + 1
    assert len(json.dumps(report)) < 100_000
