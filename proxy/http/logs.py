"""Structured logging: JSON lines on stdout, one event per request (see ``proxy.http.observe``).

Tokens never reach a log: requests are identified by ``token_fp``, the first 12 hex characters
of the token's SHA-256, and the query string (which can hold ``api_token``) is never logged.

Logging never breaks serving. The sink writes each line with one ``os.write``; when that fails
(a closed pipe: ``serve | head``, a ``tee`` that died; a full disk) the line is dropped and
counted (``scope_proxy_log_errors_total``), stderr says so once, and the request is answered
exactly as it would have been. After a broken pipe, stdout points at ``/dev/null`` so that
nothing else in the process trips over it.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class LogSink:
    """A structlog logger that writes lines to a stream and never raises.

    Inside a running event loop the lines of one loop iteration are written together, with one
    ``os.write``, at the end of it (a busy proxy finishes many requests per iteration); outside
    one, and for a stream with no descriptor, each line is written as it comes.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.errors = 0
        self.on_error: Callable[[int], None] | None = None  # counts into the app's metrics
        self._broken = False
        self._said = False
        self._pending: list[bytes] = []

    def msg(self, message: str) -> None:
        self.line(message.encode("utf-8", "backslashreplace"))

    log = debug = info = warn = warning = msg
    error = err = critical = exception = fatal = msg

    def line(self, data: bytes) -> None:
        """One line, already encoded (without its newline)."""
        if self._broken:
            self._count(1)
            return
        pending = self._pending
        pending.append(data)
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running: now
                self.flush()

    def flush(self) -> None:
        """Write the pending lines (the loop calls this once per iteration that logged)."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        if self._broken:
            self._count(len(lines))
            return
        data = b"\n".join(lines) + b"\n"
        try:
            self._write(data)
        except (OSError, ValueError) as error:
            self._failed(error, len(lines))

    def _write(self, data: bytes) -> None:
        try:
            descriptor = self.stream.fileno()
        except (OSError, ValueError, AttributeError):  # a stream with no descriptor (tests)
            self.stream.write(data.decode("utf-8"))
            self.stream.flush()
            return
        view = memoryview(data)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]

    def _failed(self, error: Exception, lines: int) -> None:
        self._count(lines)
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

    def _count(self, lines: int) -> None:
        self.errors += lines
        if self.on_error is not None:
            self.on_error(lines)


def _point_at_devnull(stream: TextIO) -> None:
    try:
        descriptor = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, descriptor)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


SINK = LogSink(sys.stdout)
atexit.register(SINK.flush)  # what the last loop iteration logged, should it not have run
_fast_requests = False  # render request events directly (JSON lines at level info or below)
_second, _second_text = -1, ""


def configure_logging(format: str = "json", level: str = "info") -> None:
    """Send structlog events to stdout as JSON lines (or readable lines for ``console``)."""
    global _fast_requests
    _fast_requests = format == "json" and _LEVELS.get(level, logging.ERROR) <= logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
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


def log_request(fields: dict[str, Any]) -> None:
    """The one event of a request. It is written on every call, so with JSON lines it skips
    structlog's pipeline and renders the very line structlog would (the same keys, in the same
    order: the fields, then ``event``, ``level`` and ``timestamp``), with the timestamp's
    seconds formatted once a second. Otherwise (console, or a level above info, or structlog
    reconfigured by tests) it goes through structlog."""
    if not _fast_requests:
        get_logger().info("request", **fields)
        return
    fields["event"] = "request"
    fields["level"] = "info"
    fields["timestamp"] = timestamp()
    SINK.line(_request_line(fields))


def _dumps_stdlib(event: Any, default: Callable[[Any], Any] | None = None) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=default)


def _dumps_orjson(event: Any, default: Callable[[Any], Any] | None = None) -> str:
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson will not take (an integer over 64 bits): the slow way
        return _dumps_stdlib(event, default)


def _request_line_stdlib(event: dict[str, Any]) -> bytes:
    return _dumps_stdlib(event).encode("utf-8", "backslashreplace")


def _request_line_orjson(event: dict[str, Any]) -> bytes:
    """A request event (its keys are all strings) as its line's bytes, straight from orjson."""
    try:
        return orjson.dumps(event)
    except TypeError:  # a string orjson will not encode (a lone surrogate): the slow way
        return _request_line_stdlib(event)


# A log line is the same compact UTF-8 JSON whichever renders it: orjson (the ``fast`` extra),
# about ten times quicker, or the standard library.
try:
    import orjson
except ImportError:  # pragma: no cover - the fast extra is not installed
    _dumps = _dumps_stdlib
    _request_line = _request_line_stdlib
else:
    _dumps = _dumps_orjson
    _request_line = _request_line_orjson


# Every character a client value may hold that is not printable ASCII, written as an escape;
# and '\\' itself, so that an escape in the log cannot be faked by sending one.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {ord("\\"): "\\\\"}


def printable(value: str) -> str:
    """``value`` (a request id a client sent, or one Pipedrive sent back) as printable ASCII:
    control characters, C1 controls (U+009B is a terminal's CSI), U+2028 and every other
    character past ASCII escaped (``\\x9b``, ``\\u2028``), and ``\\`` doubled; so that no log
    format, viewer or terminal reads a client's bytes as anything but text."""
    if value.isascii() and value.isprintable() and "\\" not in value:
        return value  # nearly every id: nothing to escape
    return value.translate(_ESCAPES).encode("ascii", "backslashreplace").decode("ascii")


def timestamp() -> str:
    """UTC now as structlog's ISO stamp: ``2026-11-29T04:43:35.142136Z``."""
    global _second, _second_text
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_text}.{micro:06d}Z"
