"""Every request's one log event, its metrics and its report entry, built from its outcome.

``observe`` runs the handler, which returns the request's ``Decision`` and what answers it
(``Handled``) or raises a refusal carrying its decision; then the answer. It renders refusals in
Pipedrive's envelope, puts the decision header on the response, and, once the answer is known,
records the request exactly once, from one ``Outcome`` value.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, NamedTuple

from aiohttp import web

from proxy.core.budget import quietly
from proxy.core.canonical import canonicalize
from proxy.core.catalog import CHECK_PATH, api_version
from proxy.core.decision import Decision, Verdict
from proxy.core.drift import Drift, drift, is_scope_refusal
from proxy.core.errors import (
    BudgetExceeded,
    MalformedRequest,
    NotFound,
    ProxyError,
    UpstreamFailure,
)
from proxy.core.reasons import DECIDED, Reason
from proxy.http.budget import Note
from proxy.http.forward import PEEKED, UPSTREAM_SECONDS, StreamAborted
from proxy.http.logs import get_logger, log_request, printable, timestamp
from proxy.http.private import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from proxy.http.responses import DECISION_HEADER, error_response
from proxy.http.state import BUDGET, MADE_REQUEST_ID, METRICS, RECORDER, Handled
from proxy.report.model import Call, logged

_LOG = get_logger()  # bound once configured; cheap on the hot path
# Answers cut off mid-body by the client's side rather than the upstream's.
_CUT_OFF = {"client_gone": "client_gone", "client_stalled": "request_timeout_mid_body"}


class Outcome(NamedTuple):
    """How a request ended: its decision (when one was made), the refusal or upstream failure
    that answered it instead, the status the client got, how long it took, and, when the answer
    was cut off mid-body, why."""

    method: str | None
    decision: Decision | None
    refusal: ProxyError | None
    status: int
    seconds: float
    cut_off: str | None = None  # timeout | disconnect | client_gone
    check: bool = False  # Envoy's check of a call: decided, never forwarded
    request_id: str | None = None  # the client's X-Request-Id, else the one the proxy made
    correlation_id: str | None = None  # Pipedrive's x-correlation-id, from its answer
    # For a request refused before any decision: the API version its target was meant for,
    # read leniently; None for one that was no API call (what the report counts apart).
    version: str | None = None
    drift: Drift | None = None  # what Pipedrive's answer says of the catalogue (core.drift)
    client_addr: str | None = None  # the socket's peer: never a header a client could write
    user_agent: str | None = None  # as printable ASCII
    bytes_in: int = 0  # request body bytes read from the client
    bytes_out: int = 0  # response body bytes sent to it
    upstream_seconds: float | None = None  # from sending the call to the upstream's answer head
    # With a budget governor: the call's company, what was left after it, and the kind of
    # refusal it met (or in report mode would have met); None without one.
    budget: tuple[str | None, int | None, str | None] | None = None

    @property
    def verdict(self) -> Verdict:
        return self.decision.verdict if self.decision is not None else "deny"

    @property
    def reason(self) -> Reason:
        if self.decision is not None:
            return self.decision.reason  # a failure after it does not undo the decision
        if self.refusal is not None:
            return self.refusal.reason
        return Reason.CLIENT_GONE if self.cut_off == "client_gone" else Reason.INTERNAL_ERROR

    @property
    def upstream_failed(self) -> UpstreamFailure | None:
        return self.refusal if isinstance(self.refusal, UpstreamFailure) else None

    @property
    def error(self) -> str | None:
        """What went wrong after the decision, if anything."""
        if self.cut_off is not None:
            return _CUT_OFF.get(self.cut_off, f"upstream_{self.cut_off}_mid_body")
        if self.refusal is not None and self.decision is not None and self.decision.forwards:
            return str(self.refusal.reason)
        return None

    def call(self) -> Call | None:
        """What the report counts of this request, if anything: its decided call, or the reason
        it was refused before its scope check (or was no API call)."""
        return self.logged()[1]

    def fields(self) -> dict[str, Any]:
        """The request event's fields (their names are a contract: docs/operations.md)."""
        return self.logged()[0]

    def logged(self) -> tuple[dict[str, Any], Call | None]:
        """The request event's fields, and what the report counts of the request."""
        decision, refusal, status = self.decision, self.refusal, self.status
        duration_ms = int(self.seconds * 1_000_000 + 0.5) / 1000  # round(ms, 3), quicker
        fields: dict[str, Any]
        call: Call | None = None
        if decision is None:
            reason = self.reason
            fields = dict(_UNDECIDED)
            fields["reason"] = reason
            fields["method"] = self.method
            fields["version"] = self.version
            fields["status"] = status
            fields["duration_ms"] = duration_ms
            fields["request_id"] = self.request_id
            fields["correlation_id"] = self.correlation_id
            call = Call.read(fields)  # read as report --log reads the line
        else:  # the common case: what the decision says is the same for each of its calls
            key = (decision, self.check)
            decided = _DECIDED_FIELDS.get(key)
            if decided is None:
                decided = _decided_fields(decision, self.check)
                if len(_DECIDED_FIELDS) >= DECIDED_FIELDS_KEPT:
                    _DECIDED_FIELDS.clear()  # decisions of a reloaded catalogue, or many tokens
                _DECIDED_FIELDS[key] = decided
            template, goes_upstream, call = decided
            fields = template.copy()  # in the contract's order, as the template has it
            forwarded = goes_upstream and refusal is None and status != _CLIENT_GONE
            fields["status"] = status
            fields["upstream_status"] = status if forwarded else None
            fields["duration_ms"] = duration_ms
            fields["request_id"] = self.request_id
            fields["correlation_id"] = self.correlation_id
        fields["client_addr"] = self.client_addr
        fields["user_agent"] = self.user_agent
        fields["bytes_in"] = self.bytes_in
        fields["bytes_out"] = self.bytes_out
        if self.check:
            fields["via"] = "ext_authz"
        if self.budget is not None:
            company, left, throttled = self.budget
            fields["company"] = company
            fields["budget_left"] = left
            if throttled is not None:
                fields["throttled"] = throttled
        if self.drift is not None:
            fields["drift"] = self.drift
            call = replace(call, drift=self.drift) if call is not None else None
        if self.cut_off is not None or refusal is not None:
            fields["error"] = self.error
            fields["problem"] = refusal.detail if refusal is not None else None
        return fields, call


def _decided_fields(decision: Decision, check: bool) -> _Decided:
    """The fields every call with this decision logs alike (those of each call left None),
    whether such a call is sent upstream, and what the report counts it as."""
    said = logged(decision)
    fields = {
        "decision": said["decision"],
        "reason": said["reason"],
        "method": said["method"],
        "endpoint": said["endpoint"],
        "version": said["version"],
        "status": None,
        "upstream_status": None,
        "duration_ms": None,
        "token_fp": said["token_fp"],
        "grant": said["grant"],
        "accepted_scopes": said["accepted_scopes"],
        "granted_scopes": said["granted_scopes"],
        "token_cost": said["token_cost"],
        **({"lifecycle": said["lifecycle"]} if "lifecycle" in said else {}),
        "error": None,
        "problem": None,
        "via": "proxy",
        "request_id": None,
        "correlation_id": None,
    }
    goes_upstream = (
        decision.forwards
        and not check
        and decision.reason is not Reason.OAUTH_REDIRECT  # answered here
    )
    return fields, goes_upstream, Call.read(said)


# The fields each decision logs alike, by decision (and whether it was Envoy's check): built
# once per token, endpoint and verdict rather than on every call. Each key holds its decision,
# so what it refers to stays alive, and is compared by its values.
DECIDED_FIELDS_KEPT = 1024
_Decided = tuple[dict[str, Any], bool, Call | None]
_DECIDED_FIELDS: dict[tuple[Decision, bool], _Decided] = {}
_CLIENT_GONE = 499
# The fields of a request refused before any decision: what is filled in is the same each time.
_UNDECIDED: dict[str, Any] = {
    "decision": "deny", "reason": None, "method": None, "endpoint": None, "version": None,
    "status": None, "upstream_status": None, "duration_ms": None, "token_fp": None,
    "grant": None, "accepted_scopes": (), "granted_scopes": (), "token_cost": None,
    "error": None, "problem": None, "via": "proxy", "request_id": None, "correlation_id": None,
}  # fmt: skip


def record(app: web.Application, outcome: Outcome) -> None:
    """Log the request's one event, count it, and count its call in the report."""
    reason = outcome.reason
    if reason is Reason.INTERNAL:
        return  # health checks and scrapes are not traffic
    fields, call = outcome.logged()
    log_request(fields)
    metrics = app[METRICS]
    metrics.observe(fields["decision"], reason, fields["version"], outcome.seconds)
    failed = outcome.upstream_failed
    kind = outcome.cut_off or (failed.kind if failed is not None else None)
    if kind is not None and kind != "client_stalled":
        metrics.upstream_errors.labels(kind).inc()
    state = fields.get("lifecycle")
    if state is not None:
        metrics.lifecycle_calls.labels(state).inc()
    if outcome.drift is not None:
        metrics.drift.labels(outcome.drift).inc()
    if outcome.upstream_seconds is not None:
        metrics.upstream(fields["version"], outcome.upstream_seconds)
    if call is not None and not (outcome.check and outcome.cut_off is not None):
        # A drift is dated as its log line is (report --log reads that): first and last seen.
        seen = (fields.get("timestamp") or timestamp()) if call.drift is not None else None
        app[RECORDER].record(call, seen)  # not a check whose answer Envoy never read


async def observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[Handled]]
) -> web.StreamResponse:
    """Run the handler and its answer; render refusals; record the request once, whatever
    became of it. The decision header goes on every response: forwarded, streamed or refused
    (a streamed one is marked by the forwarder, as it starts it)."""
    started = time.perf_counter()
    request_id = request.headers.get(_REQUEST_ID)
    if request_id is None:  # one is made up, and forwarded with the call
        request[MADE_REQUEST_ID] = request_id = new_request_id()
    decision: Decision | None = None
    refusal: ProxyError | None = None
    cut_off: str | None = None
    note: Note | None = None
    try:
        decision, answer, note = await handler(request)
        response = await answer
    except StreamAborted as aborted:
        response, cut_off = aborted.response, aborted.kind  # the client sees a truncated answer
    except ProxyError as error:
        refusal, response = error, error_response(error)
        decision = decision or error.decision
        if error.status in (400, 405, 408):
            response.force_close()  # the rest of what this client sends cannot be trusted either
        if error.status == 408:
            request.content.feed_eof()  # a stalled body: do not linger waiting for the rest
    except web.HTTPException as error:  # raised by aiohttp itself (a net: nothing is routed)
        refusal = _from_http(request, error)
        response = error_response(refusal)
    except asyncio.CancelledError:
        _finish(request, decision, note, request_id, None, _CLIENT_GONE, started, "client_gone")
        raise
    except Exception as error:  # the safety net: any surprise is a refusal, never a forward
        _log_unhandled(error)
        refusal = ProxyError()
        response = error_response(refusal)
    if not response.prepared:  # a failure after a call was let through keeps its verdict
        response.headers[DECISION_HEADER] = decision.verdict if decision is not None else "deny"
    correlation = response.headers.get(_CORRELATION_ID) if refusal is None else None
    drifted = (
        _drift(request, decision, response)
        if decision is not None and refusal is None and decision.forwards
        else None
    )
    _finish(
        request, decision, note, request_id, refusal, response.status, started, cut_off,
        correlation, drifted, response,
    )  # fmt: skip
    return response


def _drift(request: web.Request, decision: Decision, response: web.StreamResponse) -> Drift | None:
    """What the upstream's answer to a forwarded call says of the catalogue (``core.drift``).
    Envoy's check answers for itself: Pipedrive's answer never reaches it."""
    if request.raw_path.startswith(CHECK_PATH) or decision.reason not in DECIDED:
        return None
    status = response.status
    peeked = request.get(PEEKED) if status == 403 else None
    said = peeked is not None and is_scope_refusal(peeked, response.headers.get(_ENCODING))
    return drift(decision, status, said)


# What each of aiohttp's parser errors means, in words that never quote the request.
_PARSER_PROBLEMS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "request line or header line too long"),
    (BadHttpMethod, "malformed method"),
    (BadStatusLine, "malformed request line"),
    (InvalidURLError, "malformed request target"),
    (InvalidHeader, "malformed header"),
    (PayloadEncodingError, "malformed body framing"),
)


def refuse_unparsed(
    app: web.Application, error: BaseException | None, transport: Any = None
) -> web.Response:
    """The answer to a request aiohttp's HTTP parser refused, recorded like any other refusal.

    aiohttp's own answer would be plain text quoting the offending line (which may hold a
    token); this one is Pipedrive's envelope with a generic message, and the connection closes.
    Such a request never reaches the app, so its decision header is set here.
    """
    if isinstance(error, HttpProcessingError):
        problem = next(
            (text for kind, text in _PARSER_PROBLEMS if isinstance(error, kind)),
            "malformed request",
        )
        refusal: ProxyError = MalformedRequest(problem)
    else:
        refusal = ProxyError()
    response = error_response(refusal)
    response.headers[DECISION_HEADER] = "deny"
    response.force_close()
    record(app, Outcome(
        None, None, refusal, response.status, 0.0, None, False, new_request_id(),
        client_addr=_peer(transport), bytes_out=_sent(response),
    ))  # fmt: skip
    return response


def new_request_id() -> str:
    """A request id the proxy makes up: 32 hex digits, unique to this process (a random half,
    drawn again in every forked worker) and to this call (a count): no system call per request."""
    return f"{_ids_prefix}{next(_ids):016x}"


def _new_id_source() -> None:
    global _ids_prefix, _ids
    _ids_prefix, _ids = os.urandom(8).hex(), itertools.count(int.from_bytes(os.urandom(4)))


_ids_prefix: str
_ids: itertools.count[int]
_new_id_source()
os.register_at_fork(after_in_child=_new_id_source)
_REQUEST_ID = "X-Request-Id"
_CORRELATION_ID = "X-Correlation-Id"
_USER_AGENT = "User-Agent"
_ENCODING = "Content-Encoding"
_ID_LENGTH = 200  # what a log line keeps of an id a client or Pipedrive sent


def _finish(
    request: web.Request,
    decision: Decision | None,
    note: Note | None,
    request_id: str,
    refusal: ProxyError | None,
    status: int,
    started: float,
    cut_off: str | None = None,
    correlation: str | None = None,
    drifted: Drift | None = None,
    response: web.StreamResponse | None = None,
) -> None:
    agent = request.headers.get(_USER_AGENT)
    app = request.app
    check = decision is not None and request.raw_path.startswith(CHECK_PATH)
    budget: tuple[str | None, int | None, str | None] | None = None
    if note is not None:
        if response is None or check:  # no answer of Pipedrive's to read
            left = app[BUDGET].left(note.ledger)
        else:  # Pipedrive's answer, or the failure that stood for it
            failed = isinstance(refusal, UpstreamFailure) and refusal.kind == "connect"
            reached = not failed
            left = quietly(note, status, reached)  # the common case, without the governor
            if left < 0:
                left = app[BUDGET].read(note, status, response, reached)
        budget = (note.ledger.company, left, note.throttled)
    elif isinstance(refusal, BudgetExceeded):
        budget = (refusal.company, refusal.left, str(refusal.reason))
    outcome = Outcome(
        request.method,
        decision,
        refusal,
        status,
        time.perf_counter() - started,
        cut_off,
        check,
        printable(request_id[:_ID_LENGTH]),
        printable(correlation[:_ID_LENGTH]) if correlation is not None else None,
        api_version(request.raw_path) if decision is None else None,
        drifted,
        _peer(request.transport),
        printable(agent[:_ID_LENGTH]) if agent is not None else None,
        request.content.total_bytes,
        _sent(response),
        request.get(UPSTREAM_SECONDS),
        budget,
    )
    record(app, outcome)


def _peer(transport: Any) -> str | None:
    """The address of the socket's peer: never a header a client could write."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if isinstance(peer, tuple) else None


def _sent(response: web.StreamResponse | None) -> int:
    """Response body bytes: written so far (a streamed answer), or about to be (a whole one)."""
    if response is None:
        return 0
    if response.prepared:
        return response.body_length
    return response.content_length or 0


def _log_unhandled(error: Exception) -> None:
    """Where it happened and what kind of error, never its message (it may quote a header)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = [f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}" for frame in frames[-3:]]
    _LOG.error("unhandled_error", error_type=type(error).__name__, where=where)


def _from_http(request: web.Request, error: web.HTTPException) -> ProxyError:
    """The proxy's own refusal for a request aiohttp itself turned away."""
    try:
        canonicalize(request.method, request.raw_path, request.raw_headers)
    except ProxyError as refusal:
        return refusal
    return NotFound() if error.status == 404 else ProxyError(error.reason)
