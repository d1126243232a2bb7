"""The README's examples, run: every YAML block parses and every config among them passes
``check``; the decision-log line has the fields a real line has, in its order; the report
example has the real report's keys; ``explain`` prints what the README shows. (The Node snippet
runs in tests/test_node_client.py, the Deploy section's commands in tests/test_deploy.py, the
staging walkthrough in tests/test_staging.py.)"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import _TOP
from proxy.credentials import Credential
from proxy.decision import Decision, Grant
from proxy.observe import Outcome
from proxy.reasons import Reason
from proxy.report import Call, build_report
from tests.conftest import CATALOGUE
from tests.processes import ROOT, run

README = (ROOT / "README.md").read_text()
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
    if "endpoints" in document:  # a catalogue extra file: checked through a config naming it
        (tmp_path / "extra.yaml").write_text(text)
        config.write_text("catalog_extra: [extra.yaml]\n")
    else:
        assert set(document) <= _TOP, f"line {line}: not a config: {sorted(set(document) - _TOP)}"
        config.write_text(text)
    variables = {key["token_env"]: "a-token" for key in document.get("tokens", ())}
    checked = run("check", "--config", str(config), env=variables)
    assert checked.returncode == 0, f"README line {line}: {checked.stderr}"


def test_the_readme_has_the_blocks_these_tests_read() -> None:
    assert len(YAML) >= 4
    assert any(text.startswith("# staging-report.yaml") for text, _ in YAML)


def real_request_line() -> dict[str, Any]:
    """A request event as the proxy writes it: ``Outcome.fields`` and then the three keys the
    log adds (see ``logs.log_request``)."""
    endpoint = CATALOGUE.endpoints[0]
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


def test_explain_prints_what_the_readme_shows() -> None:
    [(example, _)] = [(t, n) for t, n in blocks("console") if "explain DELETE" in t]
    command, *expected = example.rstrip("\n").splitlines()
    assert command.startswith("$ pipedrive-scope-proxy ")
    result = run(*command.removeprefix("$ pipedrive-scope-proxy ").split())
    assert result.stdout.splitlines() == expected
