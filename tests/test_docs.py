"""The documentation as a newcomer meets it: a short README, and reference pages written from
the code that go stale (and fail CI) the moment a config key or a command-line option changes
without them."""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from proxy.cli.parser import build_parser
from proxy.config import ENV_SCHEMA, MEANINGS
from tests.docs import DOC_FILES, ROOT
from tests.processes import load_script


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    return load_script(ROOT / "tools" / "reference.py", "reference")


def test_the_readme_is_read_in_ten_minutes() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_every_page_is_in_the_site() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [path.relative_to(ROOT / "docs").as_posix() for path in DOC_FILES[1:]]
    assert pages
    assert [page for page in pages if f" {page}" not in nav] == []


def test_the_reference_pages_are_as_the_code_writes_them(reference: ModuleType) -> None:
    assert (ROOT / "docs/reference/configuration.md").read_text() == reference.configuration()
    assert (ROOT / "docs/reference/cli.md").read_text() == reference.cli()


def test_every_key_of_the_schema_has_its_meaning_and_a_row(reference: ModuleType) -> None:
    keys = {key for key, _ in reference.leaves(ENV_SCHEMA)} | {"tokens"}
    assert keys == set(MEANINGS)
    page = reference.configuration()
    assert all(f"| `{key}` |" in page for key in keys)


def test_a_new_key_without_its_meaning_stops_the_reference(
    reference: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ENV_SCHEMA, "new_key", "text")
    with pytest.raises(SystemExit, match="new_key has no meaning"):
        reference.configuration()


def test_a_changed_option_makes_the_cli_reference_stale(
    reference: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = reference.cli()
    original = build_parser

    def changed() -> object:
        parser = original()
        [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        subparsers.choices["check"].add_argument("--strict-new", help="a new option")
        return parser

    monkeypatch.setattr(reference, "build_parser", changed)
    assert reference.cli() != written
    assert "`--strict-new`" in reference.cli()
