"""The OAuth token endpoints: passed through to Pipedrive's OAuth server, read on the way back.

A successful exchange teaches the proxy the new access token's scopes (see ``proxy.oauth`` for
the reading itself); a revocation makes it forget the token; ``api_domain`` is pointed at the
proxy so that clients keep calling through it.
"""

from __future__ import annotations

import time

from aiohttp import web
from multidict import CIMultiDict

from proxy import oauth
from proxy.canonical import CanonicalRequest
from proxy.credentials import fingerprint
from proxy.errors import MethodNotAllowed, RequestTooLarge
from proxy.forward import read_limited, send_continue
from proxy.logs import get_logger
from proxy.state import METRICS, RECORD, STORE, UPSTREAM, Runtime
from proxy.stores import StoreError


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
