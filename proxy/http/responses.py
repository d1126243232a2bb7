"""Responses the proxy makes itself, all in Pipedrive's error envelope. Rendered only here.

The decision header is not set here: ``proxy.http.observe`` sets it on every response it
renders or is handed, and the forwarder on the answers it streams, from the request's decision.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web

from proxy.core.errors import (
    DECISION_HEADER,
    BudgetExceeded,
    MethodNotAllowed,
    ProxyError,
    envelope,
)

__all__ = ["DECISION_HEADER", "envelope", "error_response", "json_response", "raw_refusal"]


def error_response(error: ProxyError) -> web.Response:
    """A refusal in Pipedrive's envelope; a 405 says which methods the path does take."""
    response = json_response(envelope(error), status=error.status)
    if isinstance(error, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(error.allowed)
    elif isinstance(error, BudgetExceeded):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


def raw_refusal(error: ProxyError) -> bytes:
    """A whole HTTP/1.1 refusal as bytes, for a connection the proxy answers before any request
    exists (a connection over the limit, a head that never arrived). It closes the connection."""
    body = json.dumps(envelope(error)).encode()
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{DECISION_HEADER}: deny\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
