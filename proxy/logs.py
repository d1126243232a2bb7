"""Structured logging: JSON lines on stdout, one event per request (see ``proxy.observe``).

Tokens never reach a log: requests are identified by ``token_fp``, the first 12 hex characters
of the token's SHA-256, and the query string (which can hold ``api_token``) is never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure_logging(format: str = "json", level: str = "info") -> None:
    """Send structlog events to stdout as JSON lines (or readable lines for ``console``)."""
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
