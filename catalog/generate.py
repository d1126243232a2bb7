"""Build the endpoint catalogue shipped in ``proxy/data/catalog.json``.

Inputs, all in ``catalog/sources/`` (copies of Pipedrive's published material):

- ``scopes-and-permissions.txt``: Pipedrive's page "Scopes and permission explanations", the
  founding document. Its entries are API v1 paths written without the version prefix.
- ``openapi-v1.yaml`` and ``openapi-v2.yaml``: Pipedrive's official OpenAPI files. Each operation
  lists the OAuth scopes that accept it, its ``x-token-cost`` and whether it is deprecated.
- ``spec-scopes-history.tsv``: v1 operations Pipedrive removed from the spec that may remain
  functional, with their last known scopes and token cost.

For each (version, method, path shape) the accepted scopes are the union over all sources.
Run ``python catalog/generate.py`` to rewrite the data file, ``--check`` to compare only.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "catalog" / "sources"
OUTPUT = ROOT / "proxy" / "data" / "catalog.json"

FOUNDING = "scopes-and-permissions.txt"
OPENAPI = {"v1": "openapi-v1.yaml", "v2": "openapi-v2.yaml"}
HISTORY = "spec-scopes-history.tsv"
METHODS = ("get", "post", "put", "patch", "delete")

# Corrections to the founding document, each with the reason it is made. The key is the entry as
# printed, the value the entry the catalogue keeps.
FOUNDING_FIXES: dict[str, tuple[str, str]] = {
    "POST /deals/{id}participants": (
        "POST /deals/{id}/participants",
        "founding document prints 'POST /deals/{id}participants' (missing '/'); "
        "the API and every client use POST /deals/{id}/participants",
    ),
    "GET /teams/users/{id}": (
        "GET /teams/user/{id}",
        "founding document prints 'GET /teams/users/{id}'; clients call GET /teams/user/{id} "
        "(today GET /legacyTeams/user/{id}, same scopes)",
    ),
}
# Entries that are printed correctly but need a word of explanation.
FOUNDING_NOTES: dict[str, str] = {
    "GET /users/me": "founding document prints this entry without its trailing comma",
    "GET /deals/summary": (
        "founding document lists it under deals:read only; the OpenAPI spec also accepts "
        "deals:full, like every other deals read endpoint"
    ),
}

_BLOCK = re.compile(r'^"(?P<scope>[a-z][a-z:-]*)": \[$')
_ENTRY = re.compile(r'^"(?P<method>[A-Z]+) (?P<path>/[^"\s]*)",?$')
_PARAM = re.compile(r"\{[^{}/]+\}")


def shape(path: str) -> str:
    """The path with every parameter name erased: templates are matched by position."""
    return _PARAM.sub("{}", path)


@dataclass
class Entry:
    version: str
    method: str
    template: str
    scopes: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)
    deprecated: bool = False
    token_cost: int | None = None
    operation_id: str | None = None
    notes: list[str] = field(default_factory=list)
    template_rank: int = 99

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "method": self.method,
            "template": self.template,
            "scopes": sorted(self.scopes),
            "sources": sorted(self.sources),
            "deprecated": self.deprecated,
            "token_cost": self.token_cost,
            "operation_id": self.operation_id,
            "notes": self.notes,
        }


class Catalogue:
    """Entries keyed by (version, method, shape), merged across sources."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str, str], Entry] = {}

    def add(
        self,
        version: str,
        method: str,
        template: str,
        scopes: set[str],
        source: str,
        rank: int,
    ) -> Entry:
        key = (version, method, shape(template))
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(version, method, template)
        # The template's parameter names come from the most authoritative source.
        if rank < entry.template_rank:
            entry.template, entry.template_rank = template, rank
        entry.scopes |= scopes
        entry.sources.add(source)
        return entry


def parse_founding(text: str) -> list[tuple[str, str, str]]:
    """(scope, method, path) for every entry of the founding document, as printed."""
    found: list[tuple[str, str, str]] = []
    scope: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if scope is None:
            block = _BLOCK.match(line)
            if block:
                scope = block["scope"]
            continue
        if line == "]":
            scope = None
            continue
        entry = _ENTRY.match(line)
        if entry is None:
            raise SystemExit(f"{FOUNDING}:{number}: cannot read entry {line!r}")
        found.append((scope, entry["method"], entry["path"]))
    if scope is not None:
        raise SystemExit(f"{FOUNDING}: block {scope!r} is never closed")
    return found


def oauth_scopes(operation: dict[str, Any]) -> set[str]:
    scopes: set[str] = set()
    for requirement in operation.get("security") or []:
        scopes.update(requirement.get("oauth2", []))
    return scopes


def load_openapi(catalogue: Catalogue, version: str, path: Path, declared: dict[str, str]) -> None:
    spec = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    flows = spec["components"]["securitySchemes"]["oauth2"]["flows"]
    for flow in flows.values():
        for scope, description in flow["scopes"].items():
            declared.setdefault(scope, description)
    for template, item in spec["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            scopes = oauth_scopes(operation)
            if not scopes:
                continue  # the OAuth server's own endpoints (authorize, token)
            entry = catalogue.add(
                version, method.upper(), template, scopes, f"openapi-{version}", rank=0
            )
            entry.deprecated = entry.deprecated or bool(operation.get("deprecated"))
            entry.token_cost = operation.get("x-token-cost", entry.token_cost)
            entry.operation_id = operation.get("operationId", entry.operation_id)


def load_history(catalogue: Catalogue, path: Path) -> None:
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if not row["status"].startswith("removed_from_spec"):
                continue  # current operations come from the OpenAPI files themselves
            entry = catalogue.add(
                row["version"],
                row["method"],
                row["path"],
                set(filter(None, row["scopes"].split(","))),
                "removed-v1",
                rank=1,
            )
            entry.deprecated = entry.deprecated or row["deprecated"] == "yes"
            if row["x_token_cost"] and entry.token_cost is None:
                entry.token_cost = int(row["x_token_cost"])
            entry.operation_id = entry.operation_id or row["operationId"]
            entry.notes.append(f"removed from the spec: {row['status']}")


def load_founding(catalogue: Catalogue, path: Path, declared: dict[str, str]) -> None:
    for scope, method, printed_path in parse_founding(path.read_text(encoding="utf-8")):
        printed = f"{method} {printed_path}"
        fixed, note = FOUNDING_FIXES.get(printed, (printed, FOUNDING_NOTES.get(printed, "")))
        fixed_method, fixed_path = fixed.split(" ", 1)
        declared.setdefault(scope, "")
        entry = catalogue.add("v1", fixed_method, fixed_path, {scope}, "founding-document", rank=2)
        if note and note not in entry.notes:
            entry.notes.append(note)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(sources: Path = SOURCES) -> dict[str, Any]:
    """The catalogue document, built from the files in ``sources``."""
    catalogue = Catalogue()
    declared: dict[str, str] = {}
    for version, name in OPENAPI.items():
        load_openapi(catalogue, version, sources / name, declared)
    load_history(catalogue, sources / HISTORY)
    load_founding(catalogue, sources / FOUNDING, declared)
    unknown = {s for e in catalogue.entries.values() for s in e.scopes} - set(declared)
    if unknown:
        raise SystemExit(f"entries name undeclared scopes: {sorted(unknown)}")
    entries = sorted(catalogue.entries.values(), key=lambda e: (e.version, e.template, e.method))
    names = [FOUNDING, *OPENAPI.values(), HISTORY]
    return {
        "format": 1,
        "inputs": {name: digest(sources / name) for name in names},
        "scopes": {name: declared[name] for name in sorted(declared)},
        "endpoints": [entry.as_json() for entry in entries],
    }


def render(document: dict[str, Any]) -> str:
    lines = ["{"]
    lines.append(f'"format": {json.dumps(document["format"])},')
    lines.append(f'"inputs": {json.dumps(document["inputs"], sort_keys=True)},')
    lines.append(f'"scopes": {json.dumps(document["scopes"], sort_keys=True)},')
    lines.append('"endpoints": [')
    rows = [json.dumps(entry, sort_keys=True) for entry in document["endpoints"]]
    lines.append(",\n".join(rows))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the shipped file, write nothing"
    )
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python catalog/generate.py")
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    count = text.count('"method"')
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {count} endpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
