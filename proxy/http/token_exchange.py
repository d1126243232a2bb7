"""The OAuth endpoints: the token exchange passed through to Pipedrive's OAuth server and read
on the way back; the browser's consent page redirected there.

A successful exchange teaches the proxy the new access token's scopes (see ``proxy.core.oauth`` for
the reading itself); a revocation makes it forget the token; ``api_domain`` is pointed at the
proxy so that clients keep calling through it. The OAuth server is asked only for content
codings the proxy reads, and a successful token answer it cannot read is a 502: passed on
unread, it would teach nothing and send the client around the proxy.
"""

from __future__ import annotations

from aiohttp import web

from proxy.core import oauth
from proxy.core.canonical import CanonicalRequest
from proxy.core.credentials import fingerprint
from proxy.core.decision import Decision
from proxy.core.errors import (
    AmbiguousRequest,
    MethodNotAllowed,
    RequestTooLarge,
    UpstreamUnreadable,
)
from proxy.core.reasons import Reason
from proxy.http.forward import Fetched, end_to_end, read_limited, send_continue
from proxy.http.logs import get_logger
from proxy.http.state import (
    CLOCK,
    MADE_REQUEST_ID,
    METRICS,
    STORE,
    UNKNOWN_TOKENS,
    UPSTREAM,
    Handled,
    Runtime,
    answered,
    store_answered,
    store_failed,
)
from proxy.stores import StoreError


async def handle_oauth(
    request: web.Request, runtime: Runtime, canonical: CanonicalRequest
) -> Handled:
    """Pass a token exchange or revocation through, learning the scopes it grants."""
    if canonical.method != "POST":
        raise MethodNotAllowed(("POST",))
    if "Content-Encoding" in request.headers:
        raise AmbiguousRequest("an OAuth request body must not be content-encoded")
    await send_continue(request)
    too_large = RequestTooLarge(f"an OAuth request body over {oauth.MAX_BODY} bytes")
    stall = runtime.config.limits.body_timeout
    form = await read_limited(request.content, oauth.MAX_BODY, too_large, stall)
    decision = Decision("allow", Reason.OAUTH_PASSTHROUGH, canonical.method)
    return Handled(decision, _exchange(request, runtime, canonical, form))


async def _exchange(
    request: web.Request, runtime: Runtime, canonical: CanonicalRequest, form: bytes
) -> web.Response:
    headers = end_to_end(request.headers)
    headers["Accept-Encoding"] = oauth.ACCEPT_ENCODING
    made = request.get(MADE_REQUEST_ID)
    if made is not None:
        headers["X-Request-Id"] = made
    url = runtime.config.upstream.oauth_url + canonical.target
    answer = await request.app[UPSTREAM].fetch("POST", url, headers, form, oauth.MAX_BODY)

    if not 200 <= answer.status < 300:
        return _respond(answer, answer.body)  # a failed exchange teaches nothing
    if canonical.path == oauth.REVOKE_PATH:
        await _forget(request, oauth.revoked_token_digest(form))
        return _respond(answer, answer.body)
    plain = oauth.decode_body(answer.body, answer.headers.get("Content-Encoding", ""))
    if plain is None or not oauth.is_json_object(plain):
        get_logger().warning(
            "oauth_response_unreadable", encoding=answer.headers.get("Content-Encoding")
        )
        raise UpstreamUnreadable("the OAuth server's answer could not be read")
    await _learn(request, plain)
    if not runtime.config.rewrite_api_domain or b'"api_domain"' not in plain:
        return _respond(answer, answer.body)
    public_url = runtime.config.public_url or f"{request.scheme}://{request.host}"
    answer.headers.popall("Content-Encoding", None)
    return _respond(answer, oauth.rewrite_api_domain(plain, public_url))


def redirect_to_consent(
    request: web.Request, runtime: Runtime, canonical: CanonicalRequest
) -> Handled:
    """``GET /oauth/authorize``: an SDK whose OAuth host is the proxy builds the browser's consent
    URL from it, and the browser must reach Pipedrive's consent page. A redirect to the OAuth
    server, path and query as they came; nothing is forwarded."""
    if canonical.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(("GET", "HEAD"))
    decision = Decision("allow", Reason.OAUTH_REDIRECT, canonical.method)
    location = runtime.config.upstream.oauth_url + canonical.target
    return Handled(decision, answered(web.Response(status=302, headers={"Location": location})))


async def _learn(request: web.Request, plain: bytes) -> None:
    """Store the scopes a token answer grants, if it grants any the proxy can trust."""
    log = get_logger()
    now = request.app[CLOCK]()
    try:
        learned = oauth.read_token_response(plain, now)
    except oauth.UntrustedTokenResponse as problem:
        log.warning("token_not_learned", problem=str(problem))
        return
    if learned is None:
        return
    token_fp = fingerprint(learned.digest)
    try:
        await request.app[STORE].put(
            learned.digest, learned.scopes, learned.expires_at, learned.company
        )
    except StoreError as error:
        store_failed(request.app, "put", str(error))
        log.error("token_not_learned", token_fp=token_fp, problem=str(error))
        return
    store_answered(request.app)
    request.app[METRICS].tokens_learned.inc()
    request.app[UNKNOWN_TOKENS].learned(learned.digest)
    log.info(
        "token_learned",
        token_fp=token_fp,
        granted_scopes=sorted(learned.scopes),
        expires_in=round(learned.expires_at - now),
        company=learned.company,
    )


async def _forget(request: web.Request, digest: str | None) -> None:
    if digest is None:
        return
    try:
        await request.app[STORE].forget(digest)
    except StoreError as error:
        store_failed(request.app, "forget", str(error))
        get_logger().error("token_not_forgotten", token_fp=fingerprint(digest), problem=str(error))
        return
    store_answered(request.app)
    request.app[UNKNOWN_TOKENS].learned(digest)
    get_logger().info("token_forgotten", token_fp=fingerprint(digest))  # revoked: unknown now


def _respond(answer: Fetched, body: bytes) -> web.Response:
    headers = answer.headers
    headers.popall("Content-Length", None)
    return web.Response(status=answer.status, reason=answer.reason, headers=headers, body=body)
