"""The shipped catalogue: regenerated from its inputs, complete, and faithful to each source."""

from __future__ import annotations

import csv
import datetime
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from proxy.core.catalog import (
    API_PREFIXES,
    CatalogueError,
    Route,
    api_route,
    load_catalogue,
    path_shape,
    shipped_document,
)
from proxy.core.errors import AmbiguousRequest
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


def test_all_30_scopes_are_known_the_webhooks_ones_from_the_overlay() -> None:
    assert len(CATALOGUE.scopes) == 30
    assert {
        "base", "project-fields:full", "messengers-integration", "video-calls",
        "webhooks:read", "webhooks:full",
    } <= set(CATALOGUE.scopes)  # fmt: skip


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
    assert document["format"] == 2
    assert all(entry["sources"] for entry in document["endpoints"])
    assert set(document["inputs"]) == {
        "scopes-and-permissions.txt", "openapi-v1.yaml", "openapi-v2.yaml",
        "spec-scopes-history.tsv", "overlay.yaml", "v2-replacements.tsv",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("method", "template", "accepted"),
    [
        ("GET", "/webhooks", {"admin", "webhooks:read", "webhooks:full"}),
        ("POST", "/webhooks", {"admin", "webhooks:full"}),
        ("DELETE", "/webhooks/{id}", {"admin", "webhooks:full"}),
    ],
    ids=["listing-takes-either-webhooks-scope", "creating-takes-full", "deleting-takes-full"],
)
def test_the_webhooks_scopes_accept_the_webhook_endpoints_beside_admin(
    method: str, template: str, accepted: set[str]
) -> None:
    endpoint = find("v1", method, template)
    assert endpoint.scopes == accepted
    assert "overlay:webhooks-scopes" in endpoint.sources
    assert any(
        "2024-01-26" in note and "developers.pipedrive.com" in note for note in endpoint.notes
    )
    assert endpoint.lifecycle is None


def test_the_channels_api_is_removed_since_2026_02_01_with_its_source() -> None:
    channels = [e for e in CATALOGUE.endpoints if e.template.startswith("/channels")]
    assert len(channels) == 4
    for endpoint in channels:
        assert endpoint.lifecycle is not None
        assert (endpoint.lifecycle.state, endpoint.lifecycle.since) == ("removed", "2026-02-01")
        assert endpoint.lifecycle.change is not None
        change = CATALOGUE.changes[endpoint.lifecycle.change]
        assert change.title == "Breaking change: Deprecation of Channels API"
        assert change.source.startswith("https://developers.pipedrive.com/")
        assert endpoint.scopes == {"messengers-integration"}  # the decision is unchanged
    assert sum(1 for e in CATALOGUE.endpoints if e.state == "removed") == 4


def test_the_deprecated_v1_endpoints_are_out_of_support_since_2026_08_01() -> None:
    deprecated = [e for e in CATALOGUE.endpoints if e.deprecated]
    assert len(deprecated) == 86
    assert {e.version for e in deprecated} == {"v1"}
    states = {(e.state, e.lifecycle.since if e.lifecycle else None) for e in deprecated}
    assert states == {("out_of_support", "2026-08-01"), ("removed", "2026-02-01")}
    assert all(e.state == "current" for e in CATALOGUE.endpoints if not e.deprecated)


def test_the_v2_replacements_pipedrives_node_client_names_are_all_catalogued() -> None:
    """56 pairs (client-nodejs 32.0.0): both ends catalogued; v2 costs 411 tokens where v1
    cost 782; two pairs take other scopes in v2."""
    replaced = [e for e in CATALOGUE.endpoints if e.replacement is not None]
    assert len(replaced) == 56
    old_cost = new_cost = 0
    changed_scopes = []
    for endpoint in replaced:
        assert endpoint.version == "v1"
        assert endpoint.replacement is not None
        method, _, path = endpoint.replacement.partition(" ")
        route = api_route(
            path.partition("?")[0].replace("{id}", "7").replace("{product_attachment_id}", "8")
        )
        assert route is not None, endpoint.replacement
        new = CATALOGUE.match(route, method)
        assert new is not None, endpoint.replacement
        assert new.state == "current"
        old_cost += endpoint.token_cost or 0
        new_cost += new.token_cost or 0
        if new.scopes != endpoint.scopes:
            changed_scopes.append(endpoint.name)
    assert (old_cost, new_cost) == (782, 411)
    assert sorted(changed_scopes) == [
        "GET /v1/deals/{id}/products", "PUT /v1/deals/{id}/products/{product_attachment_id}",
    ]  # fmt: skip


def test_every_overlay_change_says_when_and_where_pipedrive_said_it() -> None:
    overlay = yaml.safe_load((SOURCES / "overlay.yaml").read_text())
    assert [change["id"] for change in overlay["changes"]] == list(CATALOGUE.changes)
    for change in CATALOGUE.changes.values():
        assert change.source.startswith("https://")
        assert change.since
        assert change.reviewed
        assert change.says


OVERLAY_CHANGE = {
    "id": "x", "title": "T", "source": "https://developers.pipedrive.com/changelog",
    "since": "2026-01-01", "reviewed": "2026-12-01", "says": "something",
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"accept": [{"version": "v1", "method": "GET", "path": "/nothing", "scopes": ["admin"]}]},
         "x.accept[0]: v1 GET /nothing is in no other source"),
        ({"lifecycle": {"state": "gone", "endpoints": []}},
         "x.lifecycle.state: expected one of deprecated, out_of_support, removed"),
        ({"accept": [], "source": "developers.pipedrive.com"},
         "x.source: expected the https:// address"),
        ({"accept": [], "since": "soon"}, "x.since: expected a date"),
        ({}, "changes nothing"),
        ({"accept": [], "says": None, "extra": 1}, "changes[0].extra: unknown key"),
    ],
    ids=["an-endpoint-no-source-has", "an-unknown-state", "a-source-that-is-no-address",
         "a-date-that-is-not-one", "a-change-that-changes-nothing", "an-unknown-key"],
)  # fmt: skip
def test_an_overlay_change_that_cannot_be_merged_is_refused_naming_it(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    gen = generator()
    catalogue = gen.Catalogue()
    catalogue.add("v1", "GET", "/webhooks", {"admin"}, "openapi-v1", rank=0)
    entry = {**OVERLAY_CHANGE, **change}
    if entry.get("since") == "2026-01-01":  # written as YAML writes a date
        entry["since"] = datetime.date(2026, 1, 1)
    entry["reviewed"] = datetime.date(2026, 12, 1)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"changes": [entry]}))
    with pytest.raises(SystemExit, match=re.escape(problem)):
        gen.load_overlay(catalogue, overlay, {"admin": ""})


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
    bare = {prefix.rstrip("/"): version for prefix, version in API_PREFIXES}
    if path in bare:  # the prefix alone: a route to no endpoint
        expected = Route(bare[path], ())
    if path.startswith("//"):
        with pytest.raises(AmbiguousRequest):
            api_route(path)
        return
    assert api_route(path) == expected


@pytest.mark.parametrize("path", ["/V1/deals", "/API/v1/deals", "/api/V2/deals", "/Api/v2"])
def test_an_api_prefix_in_other_letter_case_is_refused(path: str) -> None:
    with pytest.raises(AmbiguousRequest, match="spelled /v1, /api/v1 or /api/v2 exactly"):
        api_route(path)


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/betaThings/42", "GET /v1/betaThings/{id}"),
        ("/api/v2/deals/a%40b.example/x", "GET /api/v2/deals/{id}/x"),
        ("/v1/" + "/".join(["word"] * 100), "GET /v1/" + "/".join(["word"] * 8) + "/..."),
        ("/v1/" + "a" * 41, "GET /v1/{id}"),
    ],
    ids=["an-id", "an-encoded-segment", "a-hundred-segments", "an-overlong-word"],
)
def test_a_paths_shape_is_bounded_whatever_the_client_sends(path: str, shape: str) -> None:
    route = api_route(path)
    assert route is not None
    assert path_shape("GET", route) == shape
    assert len(path_shape("DELETE", Route("v2", ("w" * 40,) * 1000))) < 400


def test_the_further_lifecycle_holds_where_two_changes_give_one() -> None:
    gen = generator()
    catalogue = gen.Catalogue()
    old = catalogue.add("v1", "POST", "/channels", {"admin"}, "openapi-v1", rank=0)
    old.deprecated = True
    plain = catalogue.add("v1", "GET", "/deals", {"deals:read"}, "openapi-v1", rank=0)
    gen._set_lifecycle(catalogue, {"state": "removed", "endpoints": [
        {"version": "v1", "method": "POST", "path": "/channels"}]}, "x", "gone", "2026-02-01")  # fmt: skip
    gen._set_lifecycle(catalogue, {"state": "out_of_support", "select": "deprecated"}, "y",
                       "late", "2026-08-01")  # fmt: skip
    assert old.lifecycle == {"state": "removed", "since": "2026-02-01", "change": "gone"}
    assert plain.lifecycle is None
    with pytest.raises(SystemExit, match="is removed already, by gone"):
        gen._set_lifecycle(catalogue, {"state": "removed", "select": "deprecated"}, "z", "again",
                           "2026-03-01")  # fmt: skip
