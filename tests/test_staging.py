"""The README's staging walkthrough, end to end, as a user runs it: ``serve`` in report mode on
the README's own config, traffic, the report, the declaration fixed as the report says (SIGHUP),
a reset, traffic again, and ``report --fail-on denied`` passing. At every step the live report
(``/_proxy/report``) and the one ``report --log`` computes from the decision log are the same
document."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import free_port
from tests.docs import DOCS
from tests.fakes import FakePipedrive, ScopedPipedrive
from tests.processes import ROOT, run, serving, wait_ready

pytestmark = pytest.mark.slow

README = DOCS  # the README and the pages of docs/


def readme_config() -> dict[str, Any]:
    """The walkthrough's ``staging-report.yaml``, as the README shows it."""
    [block] = re.findall(
        r"^( *)```yaml\n(\1# staging-report\.yaml\n.*?)^\1```$", README, re.MULTILINE | re.DOTALL
    )
    document: dict[str, Any] = yaml.safe_load(textwrap.dedent(block[1]))
    return document


# An app's end-to-end tests: what it calls, with which token ("" for none).
TRAFFIC = [
    ("GET", "/v1/deals/1", "app-token-1"),
    ("GET", "/v1/deals/2", "app-token-1"),
    ("GET", "/v1/deals/3", "app-token-2"),
    ("DELETE", "/api/v2/deals/4", "app-token-1"),
    ("GET", "/v1/persons/5", "app-token-2"),
    ("GET", "/api/v2/activities", "app-token-2"),
    ("GET", "/api/v2/products", "app-token-1"),
    ("GET", "/v1/deals", ""),  # refused before the scope check: no credential
]


async def traffic(port: int, calls: list[tuple[str, str, str]] = TRAFFIC) -> list[str]:
    decisions = []
    async with aiohttp.ClientSession() as client:
        for method, path, token in calls:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with client.request(
                method, f"http://127.0.0.1:{port}{path}", headers=headers
            ) as r:
                await r.read()
                decisions.append(r.headers["X-Scope-Proxy-Decision"])
    return decisions


async def live_report(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{port}/_proxy/report") as response,
    ):
        assert response.status == 200
        found: dict[str, Any] = await response.json()
        return found


def log_report(log: Path, *options: str) -> tuple[int, str]:
    result = run("report", "--log", str(log), *options)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stdout


def readme_shows(printed: str) -> bool:
    """Step 3's console block is this text report (its time aside)."""
    [block] = re.findall(
        r"^   ```console\n   \$ pipedrive-scope-proxy report --log decisions.jsonl\n(.*?)^   ```$",
        README, re.MULTILINE | re.DOTALL,
    )  # fmt: skip
    shown = textwrap.dedent(block)
    assert re.sub(r"since: \S+", "since: T", shown) == re.sub(r"since: \S+", "since: T", printed)
    return True


async def same_reports(port: int, log: Path) -> dict[str, Any]:
    """The live report, once the log says the same (its last lines may be a moment behind)."""
    for _ in range(40):
        live = await live_report(port)
        _, printed = log_report(log, "--format", "json")
        # the tokens still unknown: the live process's own count, none from a log
        if json.loads(printed) == {**live, "unknown_tokens": None}:
            return live
        await asyncio.sleep(0.05)
    assert json.loads(printed) == {**live, "unknown_tokens": None}  # shows the difference
    return live


async def test_the_readme_staging_walkthrough_from_report_mode_to_a_passing_gate(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    document = readme_config()
    assert document["mode"] == "report"
    # Pipedrive as it decides: the app's tokens hold the scopes the app declares (here they are
    # taken to, unknown_tokens: app_scopes), so a call they do not cover is refused upstream too.
    tokens = {token for _, _, token in TRAFFIC if token}
    pipedrive = ScopedPipedrive(held=dict.fromkeys(tokens, frozenset(document["app_scopes"])))
    upstream.respond = pipedrive.respond
    port = free_port()
    document["upstream"] = {"api_url": upstream.url, "oauth_url": upstream.url}
    config, log = tmp_path / "staging-report.yaml", tmp_path / "decisions.jsonl"
    config.write_text(yaml.safe_dump(document))
    with serving(str(config), port, log=log) as process:
        await wait_ready(port)

        # 1-2. Report mode: every authenticated call is forwarded, the overreach marked.
        decisions = await traffic(port)
        first = await same_reports(port, log)
        overall = first["overall"]
        assert decisions == ["allow"] * 3 + ["report", "allow", "allow", "report", "deny"]
        assert first["mode"] == "report"
        assert (overall["requests"], len(overall["denied"])) == (7, 2)
        assert first["refused_before_decision"] == [{"reason": "missing_credential", "count": 1}]
        # The change to make in Developer Hub, and a word on the broad scope it takes.
        assert first["change"] == {
            "add": ["products:read"],
            "remove": [],
            "replace": [["contacts:full", "contacts:read"], ["deals:read", "deals:full"]],
        }
        assert first["warnings"] == [
            "deals:full is recommended only because of DELETE /api/v2/deals/{id}: make sure the "
            "app needs that call, since the scope grants much more"
        ]
        print(
            decisions, json.dumps({k: first[k] for k in ("change", "warnings")}), overall["denied"]
        )
        # 3. The CI gate fails on the overreach, in every format.
        code, _ = log_report(log, "--fail-on", "denied")
        assert code == 1
        code, junit = log_report(log, "--format", "junit", "--fail-on", "denied")
        suite = ET.fromstring(junit).find("testsuite")  # noqa: S314 - our own output
        assert suite is not None
        assert (code, suite.get("failures")) == (
            1,
            "3",
        )  # two endpoints, and the call without a token
        code, markdown = log_report(log, "--format", "markdown")
        assert code == 0
        code, text = log_report(log)
        assert readme_shows(text)
        # The v1 endpoints Pipedrive no longer supports, in the live report and at the gate.
        assert [(e["endpoint"], e["lifecycle"], e["since"], e["replacement"], e["count"])
                for e in overall["lifecycle"]] == [
            ("GET /v1/deals/{id}", "out_of_support", "2026-08-01", "GET /api/v2/deals/{id}", 3),
            ("GET /v1/persons/{id}", "out_of_support", "2026-08-01", "GET /api/v2/persons/{id}", 1),
        ]  # fmt: skip
        assert log_report(log, "--fail-on", "deprecated")[0] == 1
        assert "**2 calls would be refused by Pipedrive.**" in markdown

        # 4. Fix the declaration as the report says, reload, start a new run.
        document["app_scopes"] = sorted({"base", *first["overall"]["minimal_scopes"]})
        pipedrive.held = dict.fromkeys(tokens, frozenset(document["app_scopes"]))  # installed anew
        step_4 = re.search(r"here: `app_scopes: \[(.*?)\]`", README, re.DOTALL)
        assert step_4 is not None
        assert [s.strip() for s in step_4.group(1).split(",")] == document["app_scopes"]
        config.write_text(yaml.safe_dump(document))
        process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if '"reloaded"' in log.read_text():
                break
            await asyncio.sleep(0.05)
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"http://127.0.0.1:{port}/_proxy/report/reset",
                headers={"Content-Type": "application/json"},
            ) as reset,
        ):
            assert reset.status == 200
        empty = await same_reports(port, log)
        assert empty["overall"]["requests"] == 0
        assert empty["app_scopes"] == document["app_scopes"]
        assert empty["since"] != first["since"]

        # Traffic again (the app's tests fixed too: every call with a token): nothing would be
        # refused, nothing declared goes unused.
        decisions = await traffic(port, [call for call in TRAFFIC if call[2]])
        assert decisions == ["allow"] * 7
        second = await same_reports(port, log)
        assert second["overall"]["denied"] == []
        assert first["overall"]["drift"] == second["overall"]["drift"] == []  # Pipedrive agreed
        assert second["overall"]["unused_app_scopes"] == []
        assert second["change"] == {"add": [], "remove": [], "replace": []}
        code, _ = log_report(log, "--fail-on", "denied", "--fail-on", "unused")
        assert code == 0
        assert log_report(log, "--fail-on", "deprecated")[0] == 1  # still v1 endpoints

        # The app moved to v2: the same calls, to the endpoints that replace them.
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"http://127.0.0.1:{port}/_proxy/report/reset",
                headers={"Content-Type": "application/json"},
            ) as reset,
        ):
            assert reset.status == 200
        moved = [(m, p.replace("/v1/", "/api/v2/"), t) for m, p, t in TRAFFIC if t]
        assert await traffic(port, moved) == ["allow"] * 7
        third = await same_reports(port, log)
        assert third["overall"]["lifecycle"] == []
        assert third["overall"]["migration"]["endpoints"] == []
        assert third["overall"]["token_cost"] < second["overall"]["token_cost"]
        assert log_report(log, "--fail-on", "deprecated,denied")[0] == 0
    # 5. (enforce is the next run's config.)


WORKFLOW = ROOT / ".github" / "workflows" / "scopes.yml"


async def test_the_example_ci_workflow_runs_the_proxy_and_fails_the_job_on_overreach(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """The workflow's own shell steps, run here in order as a job runner would run them (the
    app's tests replaced by calls, pip by a stand-in that records what it would install)."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    [job] = workflow["jobs"].values()
    steps = {step.get("name"): step for step in job["steps"]}
    port = free_port()
    config = yaml.safe_load((ROOT / job["env"]["SCOPE_PROXY_CONFIG"]).read_text())
    assert config["mode"] == "report"
    config["upstream"] = {"api_url": upstream.url, "oauth_url": upstream.url}
    config["listen"]["port"] = port
    (tmp_path / "scopes.yaml").write_text(yaml.safe_dump(config))
    checked = run("check", "--config", str(ROOT / job["env"]["SCOPE_PROXY_CONFIG"]))
    assert checked.returncode == 0, checked.stderr
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/../pip-args"\n')
    (bin_dir / "pip").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SCOPE_PROXY_CONFIG": str(tmp_path / "scopes.yaml"),
        "SCOPE_PROXY_PACKAGE": job["env"]["SCOPE_PROXY_PACKAGE"],
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }

    bash = shutil.which("bash") or "/bin/bash"

    def step(name: str) -> tuple[int, str]:
        """A step's script as the runner runs it (``bash -e -o pipefail``); its output goes to
        a file, as a server it starts in the background keeps writing to it."""
        script = steps[name]["run"]
        output = tmp_path / f"{name}.out"
        with output.open("w") as sink:
            code = subprocess.run(
                [bash, "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env, stdout=sink,
                stderr=subprocess.STDOUT, timeout=120, check=False, start_new_session=True,
            ).returncode  # fmt: skip
        return code, output.read_text()

    started, said = await asyncio.to_thread(step, "Start pipedrive-scope-proxy in report mode")
    try:
        assert started == 0, said
        recorded = (tmp_path / "pip-args").read_text().strip()
        assert recorded == f"install {job['env']['SCOPE_PROXY_PACKAGE']}"
        app = steps["Run the app's tests through the proxy"]
        shipped = yaml.safe_load((ROOT / job["env"]["SCOPE_PROXY_CONFIG"]).read_text())
        assert app["env"]["PIPEDRIVE_BASE_URL"] == f"http://127.0.0.1:{shipped['listen']['port']}"
        await traffic(port)  # the app's tests
        gate, said = await asyncio.to_thread(step, "Gate on the scope report")
    finally:
        pkill = shutil.which("pkill") or "/usr/bin/pkill"
        await asyncio.to_thread(
            subprocess.run, [pkill, "-f", str(tmp_path / "scopes.yaml")], check=False
        )
    assert gate == 1, said  # the job fails: calls would be refused
    assert "would be refused by Pipedrive" in (tmp_path / "summary.md").read_text()
    junit = ET.parse(tmp_path / "pipedrive-scopes.xml").getroot()  # noqa: S314 - our own output
    assert int(junit.get("failures", "0")) > 0
