"""The aiohttp application: one handler that runs the pipeline top to bottom.

canonical request -> the pre-check (route, method) -> the one credential -> its scopes ->
``authorize`` (endpoint and decision) -> forward, or raise the refusal; or, for Envoy's check
of a call (``/_proxy/authz/<target>``), the same decision answered without forwarding. The
handler returns what it decided and what answers the request (``Handled``), or raises a refusal
carrying its decision; ``proxy.http.observe`` runs both, renders refusals in Pipedrive's
envelope, sets the decision header, and records one log event, the metrics and the report entry
for every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import HttpVersion10, HttpVersion11, web

from proxy import __version__
from proxy.config import Config
from proxy.core import bodies, oauth
from proxy.core.canonical import BODYLESS_METHODS, CanonicalRequest, canonicalize
from proxy.core.catalog import (
    API_PREFIXES,
    AUTHZ_PREFIX,
    CHECK_PATH,
    Catalogue,
    Route,
    api_route,
    api_version,
)
from proxy.core.credentials import Credential, extract_credential
from proxy.core.decision import Decision, authorize, precheck, refused_before
from proxy.core.drift import peeks
from proxy.core.errors import (
    AmbiguousRequest,
    MalformedRequest,
    NotFound,
    ProxyError,
    RequestTooLarge,
    StoreUnavailable,
    WrongListener,
)
from proxy.core.reasons import Reason
from proxy.http.budget import Budget
from proxy.http.forward import UpstreamClient, read_limited, send_continue
from proxy.http.internal import handle_internal
from proxy.http.logs import SINK, get_logger
from proxy.http.metrics import Metrics
from proxy.http.observe import observe
from proxy.http.recorder import Recorder
from proxy.http.state import (
    BUDGET,
    CLOCK,
    LISTENERS,
    MADE_REQUEST_ID,
    METRICS,
    RECORDER,
    RUNTIME,
    STARTED_AT,
    STORE,
    UNKNOWN_TOKENS,
    UPSTREAM,
    Handled,
    Listeners,
    Runtime,
    RuntimeHolder,
    answered,
    store_answered,
    store_failed,
)
from proxy.http.token_exchange import handle_oauth, redirect_to_consent
from proxy.http.unknown_tokens import UnknownTokens
from proxy.stores import Clock, Learned, Store, StoreError, open_store

OAUTH_PATHS = oauth.TOKEN_PATHS | {oauth.REVOKE_PATH}
_HTTP_VERSIONS = (HttpVersion10, HttpVersion11)
_API_PATHS = ", ".join(prefix for prefix, _ in API_PREFIXES)


async def serve_request(request: web.Request) -> web.StreamResponse:
    """Every request: handled, its refusal rendered, and recorded once (``observe``)."""
    return await observe(request, handle)


async def handle(request: web.Request) -> Handled:
    app = request.app
    runtime = app[RUNTIME].current
    if request.version not in _HTTP_VERSIONS:  # llhttp reads a request line with none as 0.9
        raise MalformedRequest("HTTP version other than 1.0 or 1.1")
    raw_path = request.raw_path
    admin_ports = app[LISTENERS].admin_ports
    if admin_ports and _local_port(request) in admin_ports:
        return await handle_admin(request, raw_path)
    if raw_path.startswith(CHECK_PATH):
        return await handle_check(request, runtime, raw_path[len(AUTHZ_PREFIX) :])
    canonical = canonicalize(request.method, raw_path, request.raw_headers)
    route = api_route(canonical.path)
    if route is not None:  # an API call: decided, then forwarded
        found = bodies.readings(request.raw_headers) if request.body_exists else ()
        decision = await authorize_call(request, runtime, canonical, route)
        held = await read_checked(request, runtime, decision, found) if found else None
        budget = app[BUDGET]
        note = None
        if budget.on:  # charged now that nothing else refuses it (take: the common case)
            note = budget.take(decision) or await budget.admitted(decision, check=False)
        url = runtime.config.upstream.api_url + canonical.target
        made_id = request.get(MADE_REQUEST_ID)
        forwarding = app[UPSTREAM].forward(
            request, url, made_id, decision.verdict, peeks(decision), held
        )
        return Handled(decision, forwarding, note)
    if canonical.path in OAUTH_PATHS or canonical.path == oauth.AUTHORIZE_PATH:
        try:
            if canonical.path == oauth.AUTHORIZE_PATH:
                return redirect_to_consent(request, runtime, canonical)
            return await handle_oauth(request, runtime, canonical)
        except ProxyError as refusal:
            raise at_endpoint(refusal, canonical) from None
    if canonical.path.startswith("/_proxy/"):
        if admin_ports:
            raise NotFound("the proxy's own endpoints are served on its admin listener")
        return await _internal(request, canonical)
    raise NotFound(f"not a Pipedrive API path: the proxy serves {_API_PATHS}")


async def handle_admin(request: web.Request, raw_path: str) -> Handled:
    """A request on the admin listener: the proxy's own endpoints, and nothing else."""
    if api_version(raw_path) is not None:  # the API, or Envoy's check: the main port's
        raise WrongListener("API calls and Envoy's checks go to the main port, not the admin one")
    canonical = canonicalize(request.method, raw_path, request.raw_headers)
    if not canonical.path.startswith("/_proxy/"):
        raise NotFound("the admin listener serves the proxy's own endpoints (/_proxy/...) only")
    return await _internal(request, canonical)


async def _internal(request: web.Request, canonical: CanonicalRequest) -> Handled:
    """The proxy's own endpoints: not traffic when answered. A request one of them refuses (a
    reset without its JSON type, a method it does not take) is logged naming the endpoint,
    and counted with the requests that are no API calls, never as an API call refused."""
    try:
        response = await handle_internal(request, canonical)
    except ProxyError as refusal:
        if refusal.reason is Reason.NOT_FOUND:  # a mistyped path: no endpoint of the proxy's
            raise
        raise at_endpoint(refusal, canonical) from None
    return Handled(Decision("allow", Reason.INTERNAL, canonical.method), answered(response))


def at_endpoint(refusal: ProxyError, canonical: CanonicalRequest) -> ProxyError:
    """A refusal by one of the proxy's own endpoints (OAuth, ``/_proxy/``), carrying a decision
    that names the endpoint (a fixed path: safe to log), so that the log and the report can
    tell it from a refused API call."""
    if refusal.decision is None:
        own = f"{canonical.method} {canonical.path}"
        refusal.decision = Decision("deny", refusal.reason, canonical.method, shape=own)
    return refusal


def _local_port(request: web.Request) -> int | None:
    transport = request.transport
    address = transport.get_extra_info("sockname") if transport is not None else None
    return address[1] if isinstance(address, tuple) else None


async def handle_check(request: web.Request, runtime: Runtime, target: str) -> Handled:
    """Envoy's external-authorization check of the call ``target`` (its path and query), with
    the call's method and headers: decided exactly as forwarding would decide it, and recorded
    alike; 200 when the call may go on, else the refusal, which Envoy hands to the client.

    Envoy sends at most one byte of the call's body (the bootstrap asks for that much), so
    that a body on a GET shows in the check's own framing and is refused as it would be here.
    An empty body stream (``Transfer-Encoding: chunked`` and ``0``, or an empty HTTP/2 DATA
    frame) shows only as Envoy's ``x-envoy-auth-partial-body``, which clients cannot send
    through Envoy; Envoy would forward it chunked, so it is refused too.
    """
    canonical = canonicalize(request.method, target, request.raw_headers)
    if canonical.method in BODYLESS_METHODS and any(
        name.lower() == _BODY_STREAM for name, _ in request.raw_headers
    ):
        raise AmbiguousRequest(f"{canonical.method} takes no body (an empty one is still a body)")
    route = api_route(canonical.path)
    if route is None:
        raise NotFound(f"not a Pipedrive API path: checks are for {_API_PATHS}")
    found = bodies.readings(request.raw_headers) if request.body_exists else ()
    decision = await authorize_call(request, runtime, canonical, route)
    if found:  # Envoy sends the body, up to limits.max_checked_body, to be read here
        partial = request.headers.get(_BODY_STREAM_HEADER, "").lower() == "true"
        await read_checked(request, runtime, decision, found, partial)
    budget = request.app[BUDGET]
    note = None
    if budget.on:  # counted, never refused: no answer comes back
        note = budget.take(decision) or await budget.admitted(decision, check=True)
    return Handled(decision, answered(web.Response()), note)


_BODY_STREAM = b"x-envoy-auth-partial-body"
_BODY_STREAM_HEADER = _BODY_STREAM.decode()
_CHECKED_ON_THE_LOOP = 64 * 1024  # bytes of a body checked on the event loop; larger: a thread
# Threads of their own for large bodies' checks: they never hold up the store's or others'.
_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="body-check")


async def read_checked(
    request: web.Request,
    runtime: Runtime,
    decision: Decision,
    found: tuple[bodies.Reading, ...],
    partial: bool = False,
) -> bytes:
    """The body of an authorized call that a server on the way may read fields from, read
    whole (``limits.max_checked_body`` at most: else 413) and checked (``proxy.core.bodies``);
    a refusal carries the call's decision, turned to ``deny``. ``partial``: Envoy could not
    send the whole body to its check. Envoy is asked for one byte more than the bound, so a
    body over it shows as too long here even when Envoy does not mark it partial (it marks a
    body partial only when it holds more than it was asked for)."""
    limits = runtime.config.limits
    bound = limits.max_checked_body
    too_large = RequestTooLarge(
        f"a {' and '.join(found)} body over {bound} bytes (limits.max_checked_body): it is read "
        "for method overrides and credentials before it is forwarded"
    )
    try:
        if partial or (request.content_length or 0) > bound:
            raise too_large
        await send_continue(request)  # only now that the call is authorized
        body = await read_limited(request.content, bound, too_large, limits.body_timeout)
        declared = bodies.content_type(request.raw_headers)
        if len(body) > _CHECKED_ON_THE_LOOP:  # a large one is read beside the loop, not on it
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(_CHECKS, bodies.check, found, body, declared)
        else:
            bodies.check(found, body, declared)
    except ProxyError as refusal:
        refusal.decision = decision._replace(verdict="deny", reason=refusal.reason)
        raise
    return body


async def authorize_call(
    request: web.Request, runtime: Runtime, canonical: CanonicalRequest, route: Route
) -> Decision:
    """Decide an API call; raise its refusal, which carries the decision."""
    catalogue, policy, method = runtime.catalogue, runtime.config.policy, canonical.method
    app = request.app
    if runtime.warm_policy is not None and app[CLOCK]() < app[STARTED_AT] + runtime.config.warmup:
        policy = runtime.warm_policy  # the warm-up: unknown tokens hold the declared scopes
    precheck(catalogue, policy, route, method)
    credential = None
    try:
        credential = extract_credential(canonical.credential_headers, canonical.query_pairs)
        static = runtime.grants.get(credential.digest)
        learned = None
        if static is None and credential.kind == "oauth":
            learned = await _learned(app, credential)
    except ProxyError as refusal:  # no credential, two, the store down: which call it was for
        raise refused_before(catalogue, route, method, refusal, credential)  # noqa: B904
    stored = learned.scopes if learned is not None else None
    company = learned.company if learned is not None else None
    decision = authorize(catalogue, policy, route, method, credential, static, stored, company)
    if static is None and credential.kind == "oauth":
        unknown = app[UNKNOWN_TOKENS]
        if stored is None:  # refused as unknown, or let through on the declared scopes
            unknown.saw(credential.digest)
        elif unknown:
            unknown.learned(credential.digest)  # learned since (here, or by another replica)
    if not decision.forwards:
        raise decision.refusal()
    return decision


async def _learned(app: web.Application, credential: Credential) -> Learned | None:
    try:
        learned = await app[STORE].get(credential.digest)
    except StoreError as error:
        store_failed(app, "get", str(error))
        raise StoreUnavailable("cannot resolve this token's scopes now") from error
    store_answered(app)
    return learned


async def _no_early_continue(request: web.Request) -> None:
    """Do not answer ``100 Continue`` before the call is authorized (see UpstreamClient), should
    the app ever be served through aiohttp's router (``ProxyRunner`` matches its one route once)."""


def create_app(
    config: Config, catalogue: Catalogue, store: Store | None = None, clock: Clock = time.time
) -> web.Application:
    """The proxy as an aiohttp application; tests and ``serve`` both start here, and both
    serve it with ``proxy.http.server.ProxyRunner``, whose one route (``serve_request``) runs
    every request inside ``observe``."""
    # Request bodies are forwarded as received: never inflated (see proxy.http.server).
    app = web.Application(handler_args={"auto_decompress": False})
    app[RUNTIME] = RuntimeHolder(Runtime.build(config, catalogue))
    app[METRICS] = Metrics()
    app[METRICS].running(__version__, catalogue.provenance.version)
    app[METRICS].last_reload.set_to_current_time()  # the config in effect was loaded now
    SINK.on_error = app[METRICS].log_errors.inc
    app[UPSTREAM] = UpstreamClient(config.upstream, config.limits.body_timeout)
    app[STORE] = store if store is not None else open_store(config.store, clock)
    app[RECORDER] = Recorder(app[STORE], config.limits.report_tokens)
    app[CLOCK] = clock
    app[STARTED_AT] = clock()
    app[UNKNOWN_TOKENS] = UnknownTokens(clock)
    app[METRICS].unknown_tokens_count = app[UNKNOWN_TOKENS].count
    app[BUDGET] = Budget(config.budget, app[STORE], app[METRICS], clock)
    app[LISTENERS] = Listeners()
    app.cleanup_ctx.append(_resources)
    app.router.add_route("*", "/{tail:.*}", serve_request, expect_handler=_no_early_continue)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    await app[UPSTREAM].start()
    await app[RECORDER].start()
    await app[METRICS].start()
    config = app[RUNTIME].current.config
    app_scopes = config.policy.app_scopes
    log = get_logger()
    log.info(
        "startup",
        version=__version__,
        mode=config.policy.mode,
        app_scopes=sorted(app_scopes) if app_scopes is not None else None,
        catalogue_size=len(app[RUNTIME].current.catalogue),
        catalogue=app[RUNTIME].current.catalogue.provenance.version,
        store=config.store.kind,
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        since=app[RECORDER].since,  # when the report's counting began
        from_environment=[key for _, key in config.environment.applied],
        warmup_seconds=config.warmup if app[RUNTIME].current.warm_policy is not None else None,
        budget=config.budget.mode,
    )
    for variable, why in config.environment.ignored:  # never fatal: Kubernetes' service links
        log.warning("environment_ignored", variable=variable, why=why)
    try:
        await app[STORE].ping()
    except StoreError as error:
        # Serve anyway: static grants work, the rest is refused (503) until the store answers.
        log.warning("store_unavailable", store=config.store.redacted, problem=str(error))
    yield
    await app[BUDGET].close()
    await app[METRICS].stop()
    await app[RECORDER].stop()
    await app[UPSTREAM].close()
    await app[STORE].close()
