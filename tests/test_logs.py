"""The log line: one rendering whichever path or serializer writes it, and a sink that never
raises."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from proxy.core.catalog import load_catalogue
from proxy.core.credentials import Credential
from proxy.core.decision import Decision, Grant
from proxy.core.errors import UpstreamTimeout
from proxy.core.reasons import Reason
from proxy.http import logs, observe
from proxy.http.observe import Outcome
from proxy.report.model import Call

# A request event as ``Outcome.fields`` builds it: tuples, a StrEnum, None, a float.
REQUEST = {
    "decision": "deny", "reason": Reason.OUT_OF_SCOPE, "method": "DELETE",
    "endpoint": "DELETE /v1/deals/{id}", "version": "v1", "status": 403, "upstream_status": None,
    "duration_ms": 0.412, "token_fp": "0123456789ab", "grant": "crm-sync",
    "accepted_scopes": ("deals:full",), "granted_scopes": ("deals:read", "contacts:read"),
    "token_cost": 3, "error": None, "problem": None,
}  # fmt: skip

EVENTS: list[dict[str, Any]] = [
    REQUEST,
    {"event": "config_loaded", "path": "/etc/proxy/ünïcode.yaml", "workers": 2},
    {"event": "x", "nested": {"a": [1, 2.5, None, True]}, "by_status": {200: 3, 403: 1}},
    {
        "event": "x",
        "quote": 'say "hi"\n\tand\\go',
        "control": "\x00\x1f\x7f",
        "emoji": "\U0001f600",
    },
    {"event": "x", "huge": 2**70, "negative": -(2**63)},
]


@pytest.fixture
def sink() -> Iterator[io.StringIO]:
    """The process sink writing to a buffer; logging configured as ``serve`` does."""
    stream, saved = io.StringIO(), logs.SINK.stream
    logs.SINK.stream = stream
    logs.configure_logging("json", "info")
    yield stream
    logs.SINK.flush()
    logs.SINK.stream = saved
    structlog.reset_defaults()
    logs._fast_requests = False  # as before configure_logging: request events through structlog


def test_the_request_fast_path_writes_the_line_structlog_would(
    sink: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.log_request(dict(REQUEST))
    monkeypatch.setattr(logs, "_fast_requests", False)
    logs.get_logger().info("request", **REQUEST)
    logs.SINK.flush()
    fast, slow = sink.getvalue().splitlines()
    fast_event, slow_event = json.loads(fast), json.loads(slow)
    assert list(fast_event) == list(slow_event), "the same keys in the same order"
    del fast_event["timestamp"], slow_event["timestamp"]
    assert fast_event == slow_event
    assert fast_event["reason"] == "out_of_scope"
    assert fast_event["granted_scopes"] == ["deals:read", "contacts:read"]


def test_timestamps_are_utc_iso_with_microseconds(sink: io.StringIO) -> None:
    logs.log_request(dict(REQUEST))
    logs.SINK.flush()
    stamp = json.loads(sink.getvalue())["timestamp"]
    assert len(stamp) == len("2026-11-29T04:43:35.142136Z")
    assert (stamp[4], stamp[10], stamp[19], stamp[-1]) == ("-", "T", ".", "Z")


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: str(event.get("event", "request")))
def test_orjson_and_the_standard_library_write_the_same_line(event: dict[str, Any]) -> None:
    pytest.importorskip("orjson")
    line = logs._dumps_orjson(event)
    assert line == logs._dumps_stdlib(event)
    assert "\n" not in line, "one event, one line"
    assert json.loads(line) == json.loads(json.dumps(event)), "and it reads back as the event"


@pytest.mark.parametrize(
    "request_id",
    [
        "4be0b5a0e8f44a41a4c1b7f2d0c6e2aa",
        'quo"te\\ \x00\x1f\x7f ünï \U0001f600',
        "lone \udc80 half",
    ],
)
def test_a_request_line_is_the_same_bytes_from_orjson_and_the_standard_library(
    request_id: str,
) -> None:
    pytest.importorskip("orjson")
    event = {**REQUEST, "request_id": request_id, "event": "request", "level": "info"}
    line = logs._request_line_orjson(event)
    assert line == logs._request_line_stdlib(event)
    assert b"\n" not in line, "one event, one line"
    assert json.loads(line)["reason"] == "out_of_scope"


def test_what_neither_serializer_knows_is_rendered_by_the_fallback() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    event = {"event": "x", "thing": Opaque()}
    for dumps in (logs._dumps_stdlib, logs._dumps_orjson):
        assert json.loads(dumps(event, default=repr))["thing"] == "<opaque>"


def test_a_sink_whose_reader_is_gone_drops_and_counts_lines_and_says_so_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    sink = logs.LogSink(stream)
    counted: list[int] = []
    sink.on_error = counted.append
    try:
        sink.msg("first")  # no loop running: written at once, and the pipe is broken
        sink.msg("second")
        sink.msg("third")
    finally:
        stream.close()
    assert sink.errors == 3
    assert sum(counted) == 3
    said = capsys.readouterr().err
    assert said.count("the log sink failed") == 1
    assert "Broken pipe" in said


def _outcomes() -> list[Outcome]:
    """Calls whose decisions repeat, each ending another way."""
    endpoint = load_catalogue().endpoints[0]
    credential = Credential("oauth", "0" * 64)
    grant = Grant(frozenset({"deals:read"}), "static:crm-sync")
    allowed = Decision("allow", Reason.IN_SCOPE, "GET", "v1", endpoint, credential, grant)
    refused = Decision("deny", Reason.OUT_OF_SCOPE, "GET", "v1", endpoint, credential, grant)
    redirect = Decision("allow", Reason.OAUTH_REDIRECT, "GET", None, credential=credential)
    unknown = Decision("deny", Reason.UNKNOWN_TOKEN, "GET", "v1", endpoint, credential)
    late = UpstreamTimeout("no bytes", kind="timeout")
    return [
        Outcome("GET", allowed, None, 200, 0.0012, None, False, "a", "pipedrive-1"),
        Outcome("GET", allowed, None, 404, 0.5, None, False, "b", None),
        Outcome("GET", allowed, None, 499, 0.01, "client_gone", False, "c", None),
        Outcome("GET", allowed, late, 504, 30.0, None, False, "d", None),
        Outcome("GET", allowed, None, 200, 0.002, "disconnect", False, "e", None),
        Outcome("GET", allowed, None, 200, 0.0001, None, True, "f", None),  # Envoy's check
        Outcome("GET", allowed, None, 200, 0.0001, "client_gone", True, "g", None),
        Outcome("GET", refused, refused.refusal(), 403, 0.0003, None, False, "h", None),
        Outcome("GET", refused, refused.refusal(), 403, 0.0003, None, True, "i", None),
        Outcome("GET", redirect, None, 302, 0.0001, None, False, "j", None),
        Outcome("GET", unknown, unknown.refusal(), 401, 0.0, None, False, "k", None),
    ]


def test_a_decision_logged_again_gets_this_calls_fields_not_the_last_ones() -> None:
    """What a decision logs alike is kept from its first call; the rest is each call's own.
    Every outcome, logged after all the others (their decisions known), logs what it logs
    first (none known)."""
    outcomes = _outcomes()
    first = []
    for outcome in outcomes:
        observe._DECIDED_FIELDS.clear()
        first.append(outcome.fields())
    for outcome in outcomes:
        outcome.fields()
    assert [outcome.fields() for outcome in reversed(outcomes)] == first[::-1]
    assert [fields["request_id"] for fields in first] == list("abcdefghijk")
    assert [fields["status"] for fields in first] == [outcome.status for outcome in outcomes]
    assert [fields["duration_ms"] for fields in first][:4] == [1.2, 500.0, 10.0, 30000.0]
    allowed, client_gone, timeout, check = first[0], first[2], first[3], first[5]
    assert (allowed["upstream_status"], allowed["correlation_id"]) == (200, "pipedrive-1")
    assert (client_gone["upstream_status"], client_gone["error"]) == (None, "client_gone")
    assert (timeout["upstream_status"], timeout["error"]) == (None, "upstream_timeout")
    assert (check["upstream_status"], check["via"]) == (None, "ext_authz")
    assert first[9]["upstream_status"] is None, "an OAuth redirect is answered here"
    assert first[10]["endpoint"] == load_catalogue().endpoints[0].name, "the call it was for"


def test_the_fields_kept_by_decision_stay_within_their_bound() -> None:
    endpoint = load_catalogue().endpoints[0]
    grant = Grant(frozenset({"deals:read"}), "static:crm-sync")
    for number in range(observe.DECIDED_FIELDS_KEPT + 10):
        credential = Credential("oauth", f"{number:064x}")
        decision = Decision("allow", Reason.IN_SCOPE, "GET", "v1", endpoint, credential, grant)
        fields = Outcome("GET", decision, None, 200, 0.001, None, False, "x", None).fields()
        assert fields["token_fp"] == f"{number:064x}"[:12]
        assert len(observe._DECIDED_FIELDS) <= observe.DECIDED_FIELDS_KEPT


def test_what_the_report_counts_of_a_call_is_what_its_log_line_says() -> None:
    """One record of a call: ``Call.of`` a decision, read back from the request's log line,
    and from the store's counter key, are the same value, for every kind of outcome."""
    counted = 0
    for outcome in _outcomes():
        line = {"event": "request", **json.loads(json.dumps(outcome.fields()))}
        from_log = Call.from_event(line)
        assert from_log == outcome.call(), outcome
        if outcome.decision is not None:
            assert from_log == Call.of(outcome.decision)
        if from_log is not None:
            assert Call.from_key(from_log.key()) == from_log
            counted += 1
    assert counted >= 8
