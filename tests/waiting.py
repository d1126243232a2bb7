"""Waiting for a condition, never for a fixed time: a test polls what it waits for (a log line
written, a listener closed, a count flushed) and fails, saying what, if it does not come."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, within: float = 10.0
) -> None:
    """Return as soon as ``check()`` is true; fail naming ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.02)


def log_events(log: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON events in a log file so far (those named ``event``, if given)."""
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue  # a line being written
            if event is None or parsed.get("event") == event:
                found.append(parsed)
    return found


async def refused(port: int) -> bool:
    """Whether a connection to the port is refused: nothing listens there (any more)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # accepted into the backlog of a listener closing: ask again
        return False
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    return False
