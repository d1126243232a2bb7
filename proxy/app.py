"""The aiohttp application: one handler that runs the pipeline top to bottom.

canonical request -> the one credential -> granted scopes -> endpoint -> decision ->
forward or refuse. The ``observe`` middleware wraps it with the cross-cutting work: rendering
refusals in Pipedrive's envelope, the one log event and the metrics of every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from proxy import __version__, oauth
from proxy.canonical import CanonicalRequest, canonicalize
from proxy.catalog import Catalogue
from proxy.config import Config
from proxy.credentials import extract_credential, fingerprint
from proxy.decision import Grant, decide, resolve_grant
from proxy.errors import (
    MethodNotAllowed,
    NotFound,
    OutOfScope,
    ProxyError,
    RequestTooLarge,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.forward import StreamAborted, Upstream, read_limited, send_continue
from proxy.logs import RequestRecord, get_logger
from proxy.metrics import CONTENT_TYPE, Metrics
from proxy.recorder import Recorder
from proxy.report import Call, build_report
from proxy.report_html import render_html
from proxy.responses import DECISION_HEADER, error_response, json_response
from proxy.stores import StoreError, TokenStore, open_store

_LOG = get_logger()  # bound once configured; cheap on the hot path
API_PREFIXES = (("/v1/", "v1"), ("/api/v1/", "v1"), ("/api/v2/", "v2"))
OAUTH_PATHS = oauth.TOKEN_PATHS | {oauth.REVOKE_PATH}


@dataclass(frozen=True)
class Runtime:
    """Everything a request reads that a config reload may replace, swapped as one value."""

    config: Config
    catalogue: Catalogue
    grants: dict[str, Grant]

    @classmethod
    def build(cls, config: Config, catalogue: Catalogue) -> Runtime:
        return cls(config, catalogue, config.static_grants())


class RuntimeHolder:
    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


RUNTIME = web.AppKey("runtime", RuntimeHolder)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", Upstream)
STORE = web.AppKey("store", TokenStore)
RECORDER = web.AppKey("recorder", Recorder)
RECORD = web.RequestKey("record", RequestRecord)


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
    raise NotFound(f"{canonical.path[:100]} is not a Pipedrive API path")


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
        record.accepted_scopes = sorted(endpoint.scopes)
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
            decision.reason, tuple(record.accepted_scopes), record.token_cost,
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


async def handle_oauth(
    request: web.Request, runtime: Runtime, canonical: CanonicalRequest
) -> web.StreamResponse:
    """Pass a token exchange or revocation through, learning the scopes it grants."""
    record = request[RECORD]
    if canonical.method != "POST":
        raise MethodNotAllowed("the OAuth token endpoints take POST")
    record.decision, record.reason = "allow", "oauth_passthrough"
    await send_continue(request)
    too_large = RequestTooLarge(f"an OAuth request body over {oauth.MAX_BODY} bytes")
    form = await read_limited(request.content, oauth.MAX_BODY, too_large)
    config = runtime.config
    store, metrics = request.app[STORE], request.app[METRICS]
    log = get_logger()

    async def learn(
        status: int, headers: CIMultiDict[str], body: bytes
    ) -> tuple[CIMultiDict[str], bytes]:
        if not 200 <= status < 300:
            return headers, body  # a failed exchange teaches nothing
        if canonical.path == oauth.REVOKE_PATH:
            for digest in oauth.revoked_token_digests(form):
                try:
                    await store.forget(digest)
                except StoreError as error:
                    metrics.store_errors.labels("forget").inc()
                    log.error(
                        "token_not_forgotten", token_fp=fingerprint(digest), problem=str(error)
                    )
            return headers, body
        plain = oauth.decode_body(body, headers.get("Content-Encoding", ""))
        if plain is None:
            log.warning("oauth_response_unreadable", encoding=headers.get("Content-Encoding"))
            return headers, body
        learned = oauth.read_token_response(plain)
        if learned is not None:
            record.token_fp = fingerprint(learned.digest)
            record.granted_scopes = sorted(learned.scopes)
            try:
                await store.put(learned.digest, learned.scopes, learned.expires_at)
            except StoreError as error:
                metrics.store_errors.labels("put").inc()
                log.error("token_not_learned", token_fp=record.token_fp, problem=str(error))
            else:
                metrics.tokens_learned.inc()
                log.info(
                    "token_learned",
                    token_fp=record.token_fp,
                    granted_scopes=record.granted_scopes,
                    expires_in=round(learned.expires_at - time.time()),
                )
        if config.rewrite_api_domain and b'"api_domain"' in plain:
            public_url = config.public_url or f"{request.scheme}://{request.host}"
            headers.popall("Content-Encoding", None)
            return headers, oauth.rewrite_api_domain(plain, public_url)
        return headers, body

    return await request.app[UPSTREAM].forward(
        request, config.upstream.oauth_url, canonical.target, record, body=form, transform=learn
    )


async def handle_internal(request: web.Request, path: str) -> web.StreamResponse:
    record = request[RECORD]
    record.decision, record.reason = "allow", "internal"
    if path in REPORT_PATHS:
        return await handle_report(request, path)
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed("the /_proxy/ endpoints take GET")
    if path == "/_proxy/health":
        return json_response({"status": "ok", "version": __version__})
    if path == "/_proxy/ready":
        runtime = request.app[RUNTIME].current
        store_ok = await request.app[STORE].ping()
        body = {"catalogue": len(runtime.catalogue), "store": "ok" if store_ok else "unavailable"}
        return json_response(body, status=200 if store_ok else 503)
    if path == "/_proxy/metrics":
        response = web.Response(body=request.app[METRICS].render())
        response.headers["Content-Type"] = CONTENT_TYPE
        response.headers[DECISION_HEADER] = "allow"
        return response
    raise NotFound(f"{path} is not one of the proxy's endpoints")


REPORT_PATHS = frozenset({"/_proxy/report", "/_proxy/report.html", "/_proxy/report/reset"})


async def handle_report(request: web.Request, path: str) -> web.StreamResponse:
    """The overreach report (JSON or HTML), and ``POST /_proxy/report/reset``."""
    recorder = request.app[RECORDER]
    wanted = "POST" if path.endswith("/reset") else "GET"
    if request.method != wanted and not (wanted == "GET" and request.method == "HEAD"):
        raise MethodNotAllowed(f"{path} takes {wanted}")
    try:
        if wanted == "POST":
            await recorder.reset()
            return json_response({"reset": True})
        calls = await recorder.calls()
    except StoreError as error:
        request.app[METRICS].store_errors.labels("report").inc()
        raise StoreUnavailable("cannot read the report's counters now") from error
    report = build_report(calls, request.app[RUNTIME].current.config.policy.app_scopes)
    if path.endswith(".html"):
        response = web.Response(text=render_html(report), content_type="text/html")
        response.headers[DECISION_HEADER] = "allow"
        return response
    return json_response(report)


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
        record.decision, record.reason = "deny", error.reason
        response = error_response(error)
    except web.HTTPException as error:  # raised by aiohttp itself, e.g. a target it cannot route
        refusal = _from_http(request, error)
        record.decision, record.reason = "deny", refusal.reason
        response = error_response(refusal)
    except StreamAborted as aborted:
        response = aborted.response  # cut off mid-body: the client sees a truncated answer
    except asyncio.CancelledError:
        record.status, record.error = 499, "client_gone"
        _finish(request, record, started)
        raise
    except Exception as error:  # the safety net: any surprise is a refusal, never a forward
        get_logger().error("unhandled_error", error_type=type(error).__name__)
        record.decision, record.reason = "deny", "internal_error"
        response = error_response(ProxyError())
    record.status = response.status
    _finish(request, record, started)
    return response


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


async def _no_early_continue(request: web.Request) -> None:
    """Do not answer ``100 Continue`` before the call is authorized (see Upstream.forward)."""


def create_app(
    config: Config, catalogue: Catalogue, store: TokenStore | None = None
) -> web.Application:
    """The proxy as an aiohttp application; tests and ``serve`` both start here."""
    app = web.Application(middlewares=[observe])
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
    yield
    await app[RECORDER].stop()
    await app[UPSTREAM].close()
    await app[STORE].close()
