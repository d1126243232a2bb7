"""The aiohttp application: one handler that runs the pipeline top to bottom.

canonical request -> the one credential -> granted scopes -> endpoint -> decision ->
forward or refuse. The ``observe`` middleware wraps it with the cross-cutting work: rendering
refusals in Pipedrive's envelope, the one log event and the metrics of every request.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.typedefs import Handler

from proxy import __version__, oauth
from proxy.canonical import CanonicalRequest, canonicalize
from proxy.catalog import Catalogue
from proxy.config import Config
from proxy.credentials import extract_credential
from proxy.decision import decide, resolve_grant
from proxy.errors import (
    MalformedRequest,
    NotFound,
    OutOfScope,
    ProxyError,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.forward import StreamAborted, Upstream
from proxy.internal import handle_internal
from proxy.logs import RequestRecord, get_logger
from proxy.metrics import Metrics
from proxy.recorder import Recorder
from proxy.report import Call
from proxy.responses import error_response
from proxy.state import (
    METRICS,
    RECORD,
    RECORDER,
    RUNTIME,
    STORE,
    UPSTREAM,
    Runtime,
    RuntimeHolder,
)
from proxy.stores import StoreError, TokenStore, open_store
from proxy.token_exchange import handle_oauth

_LOG = get_logger()  # bound once configured; cheap on the hot path
API_PREFIXES = (("/v1/", "v1"), ("/api/v1/", "v1"), ("/api/v2/", "v2"))
OAUTH_PATHS = oauth.TOKEN_PATHS | {oauth.REVOKE_PATH}


def api_route(path: str) -> tuple[str, tuple[str, ...]] | None:
    """(version, segments after the prefix) for an API path, else None."""
    for prefix, version in API_PREFIXES:
        if path.startswith(prefix):
            return version, tuple(path[len(prefix) :].split("/"))
    return None


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME].current
    canonical = canonicalize(request.method, request.raw_path, request.raw_headers)
    route = api_route(canonical.path)
    if route is not None:
        return await handle_api(request, runtime, canonical, *route)
    if canonical.path in OAUTH_PATHS:
        return await handle_oauth(request, runtime, canonical)
    if canonical.path.startswith("/_proxy/"):
        return await handle_internal(request, canonical.path)
    raise NotFound("not a Pipedrive API path: the proxy serves /v1/, /api/v1/ and /api/v2/")


async def handle_api(
    request: web.Request,
    runtime: Runtime,
    canonical: CanonicalRequest,
    version: str,
    segments: tuple[str, ...],
) -> web.StreamResponse:
    record = request[RECORD]
    record.version = version
    policy = runtime.config.policy
    endpoint = runtime.catalogue.match(version, canonical.method, segments)
    if endpoint is not None:
        record.endpoint = endpoint.name
        record.accepted_scopes = endpoint.scope_list
        record.token_cost = endpoint.token_cost
    credential = extract_credential(request.raw_headers, canonical.query_pairs)
    record.token_fp = credential.fingerprint
    static = runtime.grants.get(credential.digest)
    learned = None
    if static is None and credential.kind == "oauth":
        try:
            learned = await request.app[STORE].get(credential.digest)
        except StoreError as error:
            request.app[METRICS].store_errors.labels("get").inc()
            raise StoreUnavailable("cannot resolve this token's scopes now") from error
    stored = learned.scopes if learned is not None else None
    grant = resolve_grant(credential.kind, static, stored, policy)
    record.granted_scopes = sorted(grant.scopes)
    decision = decide(policy, endpoint, grant.scopes)
    record.decision, record.reason = decision.verdict, decision.reason
    request.app[RECORDER].record(
        Call(
            record.token_fp, canonical.method, version, record.endpoint, decision.verdict,
            decision.reason, record.accepted_scopes, record.token_cost,
        )
    )  # fmt: skip
    if not decision.forwards:
        raise OutOfScope(
            decision.reason,
            record.endpoint,
            decision.accepted_scopes,
            grant.scopes,
            detail=None if endpoint else "no catalogue entry matches this path",
        )
    origin = runtime.config.upstream.api_url
    return await request.app[UPSTREAM].forward(request, origin, canonical.target, record)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render refusals, then log one event and update the metrics, for every request."""
    started = time.perf_counter()
    record = RequestRecord(method=request.method)
    request[RECORD] = record
    try:
        response = await handler(request)
    except (UpstreamUnavailable, UpstreamTimeout) as error:
        record.error = error.reason  # the decision that let the call through stands
        response = error_response(error, record.decision)
    except ProxyError as error:
        record.refused(error)
        response = error_response(error)
        if error.status in (400, 405):
            response.force_close()  # the rest of what this client sends cannot be trusted either
    except web.HTTPException as error:  # raised by aiohttp itself, e.g. a target it cannot route
        refusal = _from_http(request, error)
        record.refused(refusal)
        response = error_response(refusal)
    except StreamAborted as aborted:
        response = aborted.response  # cut off mid-body: the client sees a truncated answer
    except asyncio.CancelledError:
        record.status, record.error = 499, "client_gone"
        _finish(request, record, started)
        raise
    except Exception as error:  # the safety net: any surprise is a refusal, never a forward
        _log_unhandled(error)
        record.refused(ProxyError())
        response = error_response(ProxyError())
    record.status = response.status
    _finish(request, record, started)
    return response


def _log_unhandled(error: Exception) -> None:
    """Where it happened and what kind of error, never its message (it may quote a header)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = [f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}" for frame in frames[-3:]]
    _LOG.error("unhandled_error", error_type=type(error).__name__, where=where)


def _from_http(request: web.Request, error: web.HTTPException) -> ProxyError:
    """The proxy's own refusal for a request aiohttp's router turned away."""
    try:
        canonicalize(request.method, request.raw_path, request.raw_headers)
    except ProxyError as refusal:
        return refusal
    return NotFound() if error.status == 404 else ProxyError(error.reason)


def _finish(request: web.Request, record: RequestRecord, started: float) -> None:
    if record.reason == "internal":
        return  # health checks and scrapes are not traffic
    seconds = time.perf_counter() - started
    _LOG.info("request", **record.fields(seconds * 1000))
    request.app[METRICS].observe(record, seconds)


# What each of aiohttp's parser errors means, in words that never quote the request.
_PARSER_PROBLEMS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "request line or header line too long"),
    (BadHttpMethod, "malformed method"),
    (BadStatusLine, "malformed request line"),
    (InvalidURLError, "malformed request target"),
    (InvalidHeader, "malformed header"),
    (PayloadEncodingError, "malformed body framing"),
)


def refuse_unparsed(app: web.Application, error: BaseException | None) -> web.Response:
    """The answer to a request aiohttp's HTTP parser refused, logged like any other refusal.

    aiohttp's own answer would be plain text quoting the offending line (which may hold a
    token); this one is Pipedrive's envelope with a generic message, and the connection closes.
    """
    if isinstance(error, HttpProcessingError):
        problem = next(
            (text for kind, text in _PARSER_PROBLEMS if isinstance(error, kind)),
            "malformed request",
        )
        refusal: ProxyError = MalformedRequest(problem)
    else:
        refusal = ProxyError()
    record = RequestRecord(method=None)
    record.refused(refusal)
    response = error_response(refusal)
    response.force_close()
    record.status = response.status
    _LOG.info("request", **record.fields(0.0))
    app[METRICS].observe(record, 0.0)
    return response


async def _no_early_continue(request: web.Request) -> None:
    """Do not answer ``100 Continue`` before the call is authorized (see Upstream.forward)."""


def create_app(
    config: Config, catalogue: Catalogue, store: TokenStore | None = None
) -> web.Application:
    """The proxy as an aiohttp application; tests and ``serve`` both start here."""
    # Request bodies are forwarded as received: never inflated (see proxy.server).
    app = web.Application(middlewares=[observe], handler_args={"auto_decompress": False})
    metrics = Metrics()
    app[RUNTIME] = RuntimeHolder(Runtime.build(config, catalogue))
    app[METRICS] = metrics
    app[UPSTREAM] = Upstream(config.upstream, metrics)
    app[STORE] = store if store is not None else open_store(config.store)
    app[RECORDER] = Recorder(app[STORE])
    app.cleanup_ctx.append(_resources)
    app.router.add_route("*", "/{tail:.*}", handle, expect_handler=_no_early_continue)
    return app


def _sorted_or_none(scopes: frozenset[str] | None) -> list[str] | None:
    return sorted(scopes) if scopes is not None else None


async def _resources(app: web.Application) -> AsyncIterator[None]:
    await app[UPSTREAM].start()
    await app[RECORDER].start()
    get_logger().info(
        "startup",
        version=__version__,
        mode=app[RUNTIME].current.config.policy.mode,
        app_scopes=_sorted_or_none(app[RUNTIME].current.config.policy.app_scopes),
        catalogue_size=len(app[RUNTIME].current.catalogue),
        store=app[RUNTIME].current.config.store.split("://", 1)[0],
    )
    if not await app[STORE].ping():
        # Serve anyway: static grants work, the rest is refused (503) until the store answers.
        _LOG.warning("store_unavailable", store=app[RUNTIME].current.config.store.split("@")[-1])
    yield
    await app[RECORDER].stop()
    await app[UPSTREAM].close()
    await app[STORE].close()
