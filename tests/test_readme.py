"""The README's examples, run: every YAML block parses and every config among them passes
``check``; the decision-log line has the fields a real line has, in its order; the report
example has the real report's keys; ``explain`` prints what the README shows. (The Node snippet
runs in tests/test_node_client.py, the Deploy section's commands in tests/test_deploy.py, the
staging walkthrough in tests/test_staging.py; the Quickstart's curl calls here.)"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import _TOP
from proxy.core.credentials import Credential
from proxy.core.decision import Decision, Grant
from proxy.core.reasons import Reason
from proxy.http.observe import Outcome
from proxy.report.model import Call, build_report
from tests.conftest import CATALOGUE, free_port
from tests.docs import DOCS
from tests.fakes import FakePipedrive
from tests.processes import ROOT, certificate, run, serving, wait_ready

README = DOCS  # the README and the pages of docs/
# Fenced blocks, also those indented under a list item.
BLOCKS = [
    (match.group(2), textwrap.dedent(match.group(3)), README[: match.start()].count("\n") + 1)
    for match in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```$", README, flags=re.MULTILINE | re.DOTALL)
]


def blocks(language: str) -> list[tuple[str, int]]:
    return [(text, line) for kind, text, line in BLOCKS if kind == language]


YAML = blocks("yaml")


@pytest.mark.parametrize(("text", "line"), YAML, ids=[f"line {line}" for _, line in YAML])
def test_every_yaml_block_parses_and_each_config_passes_check(
    text: str, line: int, tmp_path: Path
) -> None:
    document = yaml.safe_load(text)
    assert isinstance(document, dict), line
    config = tmp_path / "proxy.yaml"
    if "changes" in document:  # an overlay change: merged by the generator into the sources
        sources = tmp_path / "sources"
        shutil.copytree(ROOT / "catalog" / "sources", sources)
        overlay = yaml.safe_load((sources / "overlay.yaml").read_text())
        overlay["changes"] += document["changes"]
        (sources / "overlay.yaml").write_text(yaml.safe_dump(overlay))
        from tests.test_catalog import generator

        built = generator().build(sources)
        [change] = document["changes"]
        assert change["id"] in {c["id"] for c in built["changes"]}, line
        return
    if "endpoints" in document:  # a catalogue extra file: checked through a config naming it
        (tmp_path / "extra.yaml").write_text(text)
        config.write_text("catalog_extra: [extra.yaml]\n")
    else:
        assert set(document) <= _TOP, f"line {line}: not a config: {sorted(set(document) - _TOP)}"
        config.write_text(text)
    variables = {key["token_env"]: "a-token" for key in document.get("tokens", ())}
    for listener in ("listen", "admin_listen"):  # TLS files, made where the block names them
        tls = (document.get(listener) or {}).get("tls")
        if tls is not None:
            made_cert, made_key = certificate(tmp_path / "made")
            for name, made in (("cert_file", made_cert), ("key_file", made_key)):
                (tmp_path / tls[name]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(made, tmp_path / tls[name])
    checked = run("check", "--config", str(config), env=variables)
    assert checked.returncode == 0, f"README line {line}: {checked.stderr}"


def test_the_readme_has_the_blocks_these_tests_read() -> None:
    assert len(YAML) >= 4
    assert any(text.startswith("# staging-report.yaml") for text, _ in YAML)


def real_request_line() -> dict[str, Any]:
    """A request event as the proxy writes it: ``Outcome.fields`` and then the three keys the
    log adds (see ``logs.log_request``)."""
    endpoint = CATALOGUE.by_name["DELETE /api/v2/deals/{id}"]  # the example's, current
    credential = Credential("oauth", "0" * 64)
    decision = Decision(
        "deny", Reason.OUT_OF_SCOPE, "DELETE", "v2", endpoint, credential,
        Grant(frozenset({"deals:read"}), "static:me"),
    )  # fmt: skip
    outcome = Outcome("DELETE", decision, None, 403, 0.0002, None, False, "id", None)
    return {**outcome.fields(), "event": "request", "level": "info", "timestamp": "t"}


def test_the_decision_log_example_has_the_fields_of_a_real_line_in_their_order() -> None:
    [example] = [text for text, _ in blocks("json") if text.startswith('{"decision"')]
    shown = json.loads(example)
    assert list(shown) == list(real_request_line())


def test_the_report_example_has_the_keys_of_a_real_report() -> None:
    [example] = [text for text, _ in blocks("json") if text.startswith('{"mode"')]
    shown = json.loads(re.sub(r", \.\.\.\]", "]", example))
    call = Call("2bd806c97f0e", "GET", "v1", "GET /v1/deals/{id}", "allow", "in_scope",
                ("deals:full", "deals:read"), 2)  # fmt: skip
    real = build_report({call: 1}, frozenset({"deals:read"}))
    assert set(shown) == set(real)
    assert set(shown["change"]) == set(real["change"])
    assert set(shown["overall"]) == set(real["overall"])
    assert set(shown["overall"]["endpoints"][0]) == set(real["overall"]["endpoints"][0])
    assert set(shown["tokens"][0]) - {"..."} <= set(real["tokens"][0])
    drifted = dataclasses.replace(call, drift="too_generous", granted_scopes=("deals:read",))
    [real_drift] = build_report({drifted: 1}, None)["overall"]["drift"]
    assert set(shown["overall"]["drift"][0]) == set(real_drift)


def test_explain_prints_what_the_readme_shows() -> None:
    [(example, _)] = [(t, n) for t, n in blocks("console") if "explain DELETE" in t]
    command, *expected = example.rstrip("\n").splitlines()
    assert command.startswith("$ pipedrive-scope-proxy ")
    result = run(*command.removeprefix("$ pipedrive-scope-proxy ").split())
    assert result.stdout.splitlines() == expected


def test_check_prints_what_the_readme_shows() -> None:
    [example] = [t for t, _ in blocks("console") if t.startswith("$ pipedrive-scope-proxy check")]
    command, *expected = example.rstrip("\n").splitlines()
    result = run(*shlex.split(command.removeprefix("$ pipedrive-scope-proxy ")))
    assert result.stdout.splitlines() == expected


def header_lines(text: str) -> tuple[str, dict[str, str], str]:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    status, *fields = head.splitlines()
    return status, {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}, body


async def test_the_quickstart_curl_calls_answer_as_the_readme_shows(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """The Quickstart's try.yaml and its two curl calls (curl itself), the upstream played by
    the fake Pipedrive: the refusal byte for byte as shown, the pass forwarded and marked."""
    [(try_yaml, _)] = [(t, n) for t, n in blocks("yaml") if t.startswith("# try.yaml")]
    document = yaml.safe_load(try_yaml)
    port = free_port()
    document["upstream"] = {"api_url": upstream.url, "oauth_url": upstream.url}
    config = tmp_path / "try.yaml"
    config.write_text(yaml.safe_dump(document))
    token = "v1u:cXVpY2tzdGFydA==:dG9rZW4="
    examples = [t for t, _ in blocks("console") if t.startswith("$ curl -i")]
    assert len(examples) == 2
    curl = shutil.which("curl")
    assert curl is not None
    with serving(str(config), port, env={"PIPEDRIVE_TOKEN": token}):
        await wait_ready(port)
        answers = []
        for example in examples:
            command, _, shown = example.partition("\n")
            words = shlex.split(command.removeprefix("$ ").replace("$TOKEN", token))
            words = [w.replace("localhost:8080", f"127.0.0.1:{port}") for w in words]
            done = await asyncio.to_thread(
                subprocess.run, [curl, "-s", *words[1:]], capture_output=True, text=True,
                timeout=30, check=False,
            )  # fmt: skip
            answers.append((shown, done.stdout))
    (refusal_shown, refusal), (pass_shown, passed) = answers
    status, headers, body = header_lines(refusal)
    shown_status, shown_headers, shown_body = header_lines(refusal_shown)
    assert status == shown_status == "HTTP/1.1 403 Forbidden"
    assert {k: headers[k] for k in shown_headers} == shown_headers
    assert json.loads(body) == json.loads(shown_body)
    status, headers, _ = header_lines(passed)
    shown_status, shown_headers, _ = header_lines(pass_shown)
    assert status == shown_status
    assert headers["x-scope-proxy-decision"] == shown_headers["x-scope-proxy-decision"] == "allow"
    assert [(r.method, r.raw_path) for r in upstream.received] == [("GET", "/v1/deals/42")]
