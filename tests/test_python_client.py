"""The README's Python client, verbatim but for the proxy's address: an app with ``requests``
that exchanges its code through a real ``serve`` process, calls the API, and, when the proxy
has lost its tokens (a restart with a memory store), recovers with one refresh."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.docs import DOCS
from tests.fakes import FakeOAuth, FakePipedrive
from tests.processes import serving, wait_ready, write_config

pytestmark = pytest.mark.slow


def readme_snippet() -> str:
    readme = DOCS
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "class Pipedrive" in block]  # fmt: skip
    return str(snippet)


async def test_the_readme_python_client_runs_and_recovers_from_a_restart_with_one_refresh(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth(scope="base,deals:read")
    upstream.respond = oauth.respond
    port = free_port()
    config = write_config(tmp_path, upstream={"api_url": upstream.url, "oauth_url": upstream.url})
    snippet = readme_snippet()
    code = snippet.replace('"http://localhost:8080"', repr(f"http://127.0.0.1:{port}"))
    assert code != snippet, "the snippet names the proxy as http://localhost:8080"
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    with serving(config, port, log=tmp_path / "first.log"):
        await wait_ready(port)
        app = await asyncio.to_thread(namespace["Pipedrive"], "id", "secret", "code", "https://app")
        first = await asyncio.to_thread(app.get, "/api/v2/deals")
        assert first.status_code == 200
        assert app.tokens["api_domain"] == f"http://127.0.0.1:{port}"
    with serving(config, port, log=tmp_path / "second.log"):  # restarted: its tokens lost
        await wait_ready(port)
        again = await asyncio.to_thread(app.get, "/api/v2/deals")
        refused = await asyncio.to_thread(app.get, "/v1/activities")  # beyond deals:read
    assert again.status_code == 200
    assert len(oauth.issued) == 2  # the exchange, and one refresh after the restart
    assert refused.status_code == 403
    assert refused.json()["error"] == "Scope and URL mismatch"
    calls = [
        (seen.method, seen.raw_path) for seen in upstream.received if "/oauth/" not in seen.raw_path
    ]
    assert calls == [("GET", "/api/v2/deals"), ("GET", "/api/v2/deals")]
