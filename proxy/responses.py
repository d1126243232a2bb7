"""Responses the proxy makes itself, all in Pipedrive's error envelope. Rendered only here."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from proxy.errors import OutOfScope, ProxyError

DECISION_HEADER = "X-Scope-Proxy-Decision"
ERROR_INFO = "Please check developers.pipedrive.com"


def envelope(error: ProxyError) -> dict[str, Any]:
    """The JSON body for a refusal: Pipedrive's keys first, the proxy's own under scope_proxy."""
    body: dict[str, Any] = {
        "success": False,
        "error": error.message,
        "errorCode": error.status,
        "error_info": ERROR_INFO,
    }
    details: dict[str, Any] = {"reason": error.reason}
    if isinstance(error, OutOfScope):
        details["endpoint"] = error.endpoint
        details["accepted_scopes"] = error.accepted_scopes
        details["granted_scopes"] = error.granted_scopes
    if error.detail:
        details["detail"] = error.detail
    body["scope_proxy"] = details
    return body


def error_response(error: ProxyError, decision: str = "deny") -> web.Response:
    headers = {DECISION_HEADER: decision}
    if error.status == 405:
        headers["Allow"] = "GET, HEAD, POST, PUT, PATCH, DELETE"
    return web.Response(
        status=error.status,
        body=json.dumps(envelope(error)).encode(),
        content_type="application/json",
        headers=headers,
    )


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={DECISION_HEADER: "allow"},
    )
