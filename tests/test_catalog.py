"""The shipped catalogue: regenerated from its inputs, complete, and faithful to each source."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from proxy.catalog import (
    API_PREFIXES,
    CatalogueError,
    Route,
    api_route,
    load_catalogue,
    shipped_document,
)
from tests.conftest import CATALOGUE

ROOT = Path(__file__).parent.parent
SOURCES = ROOT / "catalog" / "sources"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "catalog" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_shipped_file_equals_a_fresh_regeneration_from_the_inputs() -> None:
    gen = generator()
    shipped = (ROOT / "proxy" / "data" / "catalog.json").read_text()
    assert gen.render(gen.build(SOURCES)) == shipped


def test_all_28_scopes_are_known() -> None:
    assert len(CATALOGUE.scopes) == 28
    assert {"base", "project-fields:full", "messengers-integration", "video-calls"} <= set(
        CATALOGUE.scopes
    )


def find(version: str, method: str, template: str) -> Any:
    for endpoint in CATALOGUE.endpoints:
        if (endpoint.version, endpoint.method, endpoint.template) == (version, method, template):
            return endpoint
    raise AssertionError(f"{version} {method} {template} is not catalogued")


def test_v1_and_v2_are_separate_tables() -> None:
    assert find("v1", "GET", "/activityFields").scopes == {"activities:read", "activities:full"}
    assert find("v2", "GET", "/activityFields").scopes == {"admin"}
    assert CATALOGUE.count("v2") == 158


def test_founding_document_typos_are_fixed_with_a_note() -> None:
    participants = find("v1", "POST", "/deals/{id}/participants")
    assert "founding-document" in participants.sources
    assert any("{id}participants" in note for note in participants.notes)
    teams = find("v1", "GET", "/teams/user/{id}")
    assert any("/teams/users/{id}" in note for note in teams.notes)
    assert any("trailing comma" in note for note in find("v1", "GET", "/users/me").notes)
    summary = find("v1", "GET", "/deals/summary")
    assert summary.scopes == {"deals:read", "deals:full"}
    assert summary.notes


def test_in_segment_parameter_from_the_founding_document_is_kept() -> None:
    goal = find("v1", "GET", "/goals/count/by-{goalAssignee}")
    assert goal.sources == ("founding-document",)
    assert CATALOGUE.match(Route("v1", ("goals", "count", "by-user")), "GET") == goal


def test_every_openapi_operation_is_catalogued_with_its_scopes_cost_and_deprecation() -> None:
    for version in ("v1", "v2"):
        spec = yaml.load((SOURCES / f"openapi-{version}.yaml").read_text(), Loader=yaml.CSafeLoader)
        for template, item in spec["paths"].items():
            for method, operation in item.items():
                if method not in ("get", "post", "put", "patch", "delete"):
                    continue
                scopes = {s for req in operation.get("security", []) for s in req.get("oauth2", [])}
                if not scopes:
                    continue
                entry = find(version, method.upper(), template)
                assert scopes <= entry.scopes
                assert entry.token_cost == operation.get("x-token-cost")
                assert entry.deprecated == bool(operation.get("deprecated")), template


def test_removed_but_functional_v1_operations_are_catalogued_as_deprecated() -> None:
    with (SOURCES / "spec-scopes-history.tsv").open() as handle:
        removed = [
            r for r in csv.DictReader(handle, delimiter="\t") if r["status"].startswith("removed")
        ]
    assert len(removed) == 71
    for row in removed:
        entry = CATALOGUE.match(Route("v1", tuple(row["path"][1:].split("/"))), row["method"])
        assert entry is not None, row["path"]
        assert set(row["scopes"].split(",")) <= entry.scopes
        assert "removed-v1" in entry.sources
        assert entry.deprecated == (row["deprecated"] == "yes")


def test_catalogue_entries_keep_sources_and_format() -> None:
    document = shipped_document()
    assert document["format"] == 1
    assert all(entry["sources"] for entry in document["endpoints"])
    assert set(document["inputs"]) == {
        "scopes-and-permissions.txt", "openapi-v1.yaml", "openapi-v2.yaml",
        "spec-scopes-history.tsv",
    }  # fmt: skip


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "extra.yaml"
    path.write_text(json.dumps(document))
    return path


def test_extra_file_adds_and_overrides_entries(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        {
            "scopes": ["beta:read"],
            "endpoints": [
                {
                    "version": "v1",
                    "method": "GET",
                    "path": "/betaThings/{id}",
                    "scopes": ["beta:read"],
                },
                {"version": "v1", "method": "GET", "path": "/deals/{x}/files", "scopes": ["admin"]},
            ],
        },
    )
    catalogue = load_catalogue([extra])
    assert catalogue.match(Route("v1", ("betaThings", "1")), "GET") is not None
    overridden = catalogue.match(Route("v1", ("deals", "1", "files")), "GET")
    assert overridden is not None
    assert overridden.scopes == {"admin"}
    assert overridden.sources == ("extra:extra.yaml",)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"endpoints": [{"version": "v3", "method": "GET", "path": "/x", "scopes": ["base"]}]},
         r"endpoints\[0\]\.version"),
        ({"endpoints": [{"version": "v1", "method": "GET", "path": "/x", "scopes": ["nope"]}]},
         r"endpoints\[0\]\.scopes: unknown scope 'nope'"),
        ({"endpoints": [{"version": "v1", "method": "GET", "path": "/x", "scopes": ["base"],
                         "colour": 1}]}, r"endpoints\[0\]\.colour: unknown key"),
        ({"endpoints": [{"version": "v1", "method": "GET", "path": "x", "scopes": ["base"]}]},
         r"endpoints\[0\]\.path"),
        ({"endpoints": [{"version": "v1", "method": "GET", "path": "/deals/by-{x}",
                         "scopes": ["base"]}]}, "no literal segment decides"),
        ({"other": 1}, "expected a mapping with keys"),
    ],
    ids=["bad version", "unknown scope", "unknown key", "relative path", "ambiguous", "bad shape"],
)  # fmt: skip
def test_bad_extra_files_are_refused_naming_the_entry(
    tmp_path: Path, document: Any, message: str
) -> None:
    with pytest.raises(CatalogueError, match=message):
        load_catalogue([write(tmp_path, document)])


@pytest.mark.parametrize(
    "path",
    ["/v1", "/v1/", "/v1/deals", "/api/v1", "/api/v1/", "/api/v1/x/y", "/api/v2/", "/api/v3/x",
     "/api/v2", "/v2/x", "/", "/api", "/apiv1/x", "/v1x/y", "/api/v2/deals/1", "//v1/x"],
)  # fmt: skip
def test_api_route_is_the_path_after_one_of_the_api_prefixes(path: str) -> None:
    expected = next(
        (Route(version, tuple(path[len(prefix) :].split("/")))
         for prefix, version in API_PREFIXES if path.startswith(prefix)),
        None,
    )  # fmt: skip
    assert api_route(path) == expected
