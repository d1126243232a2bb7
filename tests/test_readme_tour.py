"""The README's staging report, its two commands as written (but for a free port, and the
upstream set by the environment, as the configuration reference says it may be): the proxy in
report mode on config/staging.yaml, calls in and out of the declared scopes, then the report
from the log it wrote, failing CI on the call production would refuse."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port
from tests.docs import ROOT
from tests.fakes import FakePipedrive
from tests.processes import wait_ready

pytestmark = pytest.mark.slow


def readme_staging_commands() -> tuple[list[str], list[str]]:
    readme = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"^```sh\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
               if "config/staging.yaml" in b]  # fmt: skip
    serve_line, report_line = [line for line in block.splitlines() if line.strip()]
    serve, _, tee = serve_line.partition(" | ")
    assert tee.split() == ["tee", "decisions.jsonl"]
    return shlex.split(serve), shlex.split(report_line, comments=True)


async def test_the_readme_staging_report_runs_as_written(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    serve, report = readme_staging_commands()
    assert serve[:2] == ["pipedrive-scope-proxy", "serve"]
    assert report[:2] == ["pipedrive-scope-proxy", "report"]
    port = free_port()
    log = tmp_path / "decisions.jsonl"
    env = {"PIPEDRIVE_SCOPE_PROXY_UPSTREAM_API_URL": upstream.url, "PATH": "/usr/bin:/bin"}
    with log.open("w") as out:
        proxy = subprocess.Popen(  # noqa: ASYNC220 - started once, awaited by its port
            [sys.executable, "-m", "proxy", *serve[1:], "--port", str(port), "--host", "127.0.0.1"],
            stdout=out, stderr=subprocess.PIPE, cwd=ROOT, env=env,
        )  # fmt: skip
        try:
            await wait_ready(port)
            async with aiohttp.ClientSession() as session:
                token = {"Authorization": "Bearer staging-token"}
                for method, path in (("GET", "/v1/deals/1"), ("GET", "/v1/persons/2"),
                                     ("DELETE", "/api/v2/deals/3")):  # fmt: skip
                    async with session.request(
                        method, f"http://127.0.0.1:{port}{path}", headers=token
                    ) as answer:
                        assert answer.status == 200  # report mode: forwarded all the same
            await asyncio.sleep(0.2)  # the last lines reach the file
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
            assert proxy.stderr is not None
            proxy.stderr.close()
    assert len(upstream.received) == 3
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "proxy", *report[1:]], capture_output=True,
        text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # the DELETE: deals:read does not allow it
    assert "DELETE /api/v2/deals/{id}" in result.stdout
