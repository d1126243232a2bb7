"""Structured logging: JSON lines on stdout, one event per request (see ``proxy.observe``).

Tokens never reach a log: requests are identified by ``token_fp``, the first 12 hex characters
of the token's SHA-256, and the query string (which can hold ``api_token``) is never logged.

Logging never breaks serving. The sink writes each line with one ``os.write``; when that fails
(a closed pipe: ``serve | head``, a ``tee`` that died; a full disk) the line is dropped and
counted (``scope_proxy_log_errors_total``), stderr says so once, and the request is answered
exactly as it would have been. After a broken pipe, stdout points at ``/dev/null`` so that
nothing else in the process trips over it.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class LogSink:
    """A structlog logger that writes lines to a stream and never raises."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.errors = 0
        self.on_error: Callable[[], None] | None = None  # counts into the app's metrics
        self._broken = False
        self._said = False

    def msg(self, message: str) -> None:
        if self._broken:
            self._count()
            return
        line = (message + "\n").encode("utf-8", "backslashreplace")
        try:
            self._write(line)
        except (OSError, ValueError) as error:
            self._failed(error)

    log = debug = info = warn = warning = msg
    error = err = critical = exception = fatal = msg

    def _write(self, line: bytes) -> None:
        try:
            descriptor = self.stream.fileno()
        except (OSError, ValueError, AttributeError):  # a stream with no descriptor (tests)
            self.stream.write(line.decode("utf-8"))
            self.stream.flush()
            return
        view = memoryview(line)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]

    def _failed(self, error: Exception) -> None:
        self._count()
        if isinstance(error, OSError) and error.errno == errno.EPIPE:
            self._broken = True  # a pipe whose reader is gone does not come back
            _point_at_devnull(self.stream)
        if not self._said:
            self._said = True
            problem = error.strerror if isinstance(error, OSError) else str(error)
            sys.stderr.write(
                f"pipedrive-scope-proxy: the log sink failed ({problem}); log lines are "
                "dropped and counted in scope_proxy_log_errors_total, serving goes on\n"
            )
            sys.stderr.flush()

    def _count(self) -> None:
        self.errors += 1
        if self.on_error is not None:
            self.on_error()


def _point_at_devnull(stream: TextIO) -> None:
    try:
        descriptor = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, descriptor)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


SINK = LogSink(sys.stdout)


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
        logger_factory=lambda *_: SINK,
        cache_logger_on_first_use=True,
    )


def get_logger() -> Any:
    return structlog.get_logger("pipedrive-scope-proxy")
