"""Structured logging: one JSON event per request, with stable field names.

Tokens never reach a log: requests are identified by ``token_fp``, the first 12 hex characters
of the token's SHA-256, and the query string (which can hold ``api_token``) is never logged.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from proxy.errors import ProxyError

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class _DropMalformedRequests(logging.Filter):
    """aiohttp logs each request its HTTP parser rejects, request line (and query) included.

    Those requests are answered 400 and are the client's fault; their text may hold an
    ``api_token``, so they are kept out of the logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


def configure_logging(format: str = "json", level: str = "info") -> None:
    """Send structlog events to stdout as JSON lines (or readable lines for ``console``)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _DropMalformedRequests) for f in server_log.filters):
        server_log.addFilter(_DropMalformedRequests())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger() -> Any:
    return structlog.get_logger("pipedrive-scope-proxy")


@dataclass(slots=True)
class RequestRecord:
    """What one request came to, filled in as the pipeline runs, logged once at the end."""

    method: str | None  # None: the request could not be parsed
    decision: str = "deny"
    reason: str = "internal_error"
    endpoint: str | None = None
    version: str | None = None
    status: int = 500
    upstream_status: int | None = None
    token_fp: str | None = None
    accepted_scopes: tuple[str, ...] = ()
    granted_scopes: list[str] = field(default_factory=list)
    token_cost: int | None = None
    error: str | None = None  # what went wrong after the decision (upstream failure, client gone)
    problem: str | None = None  # why a request was refused, in words that never quote it

    def refused(self, error: ProxyError) -> None:
        self.decision, self.reason, self.problem = "deny", error.reason, error.detail

    def fields(self, duration_ms: float) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "method": self.method,
            "endpoint": self.endpoint,
            "version": self.version,
            "status": self.status,
            "upstream_status": self.upstream_status,
            "duration_ms": round(duration_ms, 3),
            "token_fp": self.token_fp,
            "accepted_scopes": self.accepted_scopes,
            "granted_scopes": self.granted_scopes,
            "token_cost": self.token_cost,
            "error": self.error,
            "problem": self.problem,
        }
