"""The package's layers are checked, not only drawn: `lint-imports` (run by .ci/run) holds the
contracts in pyproject.toml, and fails on a copy of the package that breaks one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )  # fmt: skip


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_contracts(tmp_path: Path) -> None:
    result = lint(copy_of_the_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/decision.py", "import aiohttp", "The core and the report are pure"),
        ("report/model.py", "import structlog", "The core and the report are pure"),
        ("core/catalog.py", "import proxy.http.app", "Layers"),
        ("report/model.py", "import proxy.stores", "Layers"),
        ("config.py", "import proxy.report.model", "Layers"),
        ("envoy/bootstrap.py", "import aiohttp", "Only the HTTP edge"),
    ],
    ids=["the-core-imports-aiohttp", "the-report-imports-structlog",
         "the-core-imports-the-server", "the-report-imports-a-sibling",
         "config-imports-the-report", "envoy-config-imports-aiohttp"],
)  # fmt: skip
def test_a_copy_that_breaks_a_layer_fails_naming_the_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    tree = copy_of_the_package(tmp_path)
    target = tree / "proxy" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert broken in result.stdout.replace("\n", " ")
