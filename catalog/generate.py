"""Build the endpoint catalogue shipped in ``proxy/data/catalog.json``.

Inputs, all in ``catalog/sources/`` (copies of Pipedrive's published material):

- ``scopes-and-permissions.txt``: Pipedrive's page "Scopes and permission explanations", the
  founding document. Its entries are API v1 paths written without the version prefix.
- ``openapi-v1.yaml`` and ``openapi-v2.yaml``: Pipedrive's official OpenAPI files. Each operation
  lists the OAuth scopes that accept it, its ``x-token-cost`` and whether it is deprecated.
- ``spec-scopes-history.tsv``: v1 operations Pipedrive removed from the spec that may remain
  functional, with their last known scopes and token cost.
- ``overlay.yaml``: what Pipedrive changed that its OpenAPI files do not say (new scopes, endpoint
  lifecycle, the v2 endpoint that replaces a v1 one: ``v2-replacements.tsv``), each change with
  its date and the Pipedrive page that says so. Reviewed by hand.

For each (version, method, path shape) the accepted scopes are the union over all sources.
Run ``python catalog/generate.py`` to rewrite the data file, ``--check`` to compare only.
"""

from __future__ import annotations

import argparse
import csv
import datetime
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
OVERLAY = "overlay.yaml"
REPLACEMENTS = "v2-replacements.tsv"  # named by the overlay
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
    lifecycle: dict[str, str | None] | None = None  # {state, since, change}; None: current
    replacement: str | None = None  # the v2 endpoint Pipedrive names in its place
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
            "lifecycle": self.lifecycle,
            "replacement": self.replacement,
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
            last = f" (last in its official Node client {row['npm_last_seen']})"
            entry.notes.append(
                "Pipedrive removed it from its OpenAPI file; it may still be answered"
                + (last if row["npm_last_seen"] else "")
            )


def load_founding(catalogue: Catalogue, path: Path, declared: dict[str, str]) -> None:
    for scope, method, printed_path in parse_founding(path.read_text(encoding="utf-8")):
        printed = f"{method} {printed_path}"
        fixed, note = FOUNDING_FIXES.get(printed, (printed, FOUNDING_NOTES.get(printed, "")))
        fixed_method, fixed_path = fixed.split(" ", 1)
        declared.setdefault(scope, "")
        entry = catalogue.add("v1", fixed_method, fixed_path, {scope}, "founding-document", rank=2)
        if note and note not in entry.notes:
            entry.notes.append(note)


LIFECYCLE_STATES = ("deprecated", "out_of_support", "removed")  # each further than the one before
_CHANGE_KEYS = {"id", "title", "source", "announced", "since", "reviewed", "says"}
_EFFECTS = {"scopes", "accept", "lifecycle", "replacements"}


class OverlayError(SystemExit):
    """A change in overlay.yaml that cannot be merged; the message names the entry."""


def load_overlay(
    catalogue: Catalogue, path: Path, declared: dict[str, str]
) -> list[dict[str, str]]:
    changes = _load_changes(catalogue, path, declared)
    for entry in catalogue.entries.values():  # marked deprecated, and no change says more
        if entry.deprecated and entry.lifecycle is None:
            entry.lifecycle = {"state": "deprecated", "since": None, "change": None}
    return changes


def _load_changes(
    catalogue: Catalogue, path: Path, declared: dict[str, str]
) -> list[dict[str, str]]:
    """Merge the reviewed overlay of what Pipedrive changed; the changes, for the catalogue's
    ``changes`` list (what ``explain`` cites)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or set(document) != {"changes"}:
        raise OverlayError(f"{OVERLAY}: expected a mapping with the one key 'changes'")
    changes: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, raw in enumerate(document["changes"] or []):
        where = f"{OVERLAY}: changes[{index}]"
        if not isinstance(raw, dict):
            raise OverlayError(f"{where}: expected a mapping")
        unknown = set(raw) - _CHANGE_KEYS - _EFFECTS
        if unknown:
            raise OverlayError(f"{where}.{sorted(unknown)[0]}: unknown key")
        missing = sorted({"id", "title", "source", "since", "reviewed", "says"} - set(raw))
        if missing:
            raise OverlayError(f"{where}: missing {', '.join(missing)}")
        if not set(raw) & _EFFECTS:
            raise OverlayError(
                f"{where}: changes nothing (give scopes, accept, lifecycle or replacements)"
            )
        change_id = str(raw["id"])
        where = f"{OVERLAY}: {change_id}"
        if change_id in seen:
            raise OverlayError(f"{where}: a second change with this id")
        seen.add(change_id)
        if not str(raw["source"]).startswith("https://"):
            raise OverlayError(f"{where}.source: expected the https:// address of Pipedrive's page")
        since = _date(raw["since"], f"{where}.since")
        change = {
            "id": change_id,
            "title": str(raw["title"]),
            "source": str(raw["source"]),
            "since": since,
            "reviewed": _date(raw["reviewed"], f"{where}.reviewed"),
            "says": " ".join(str(raw["says"]).split()),
        }
        if raw.get("announced") is not None:
            change["announced"] = _date(raw["announced"], f"{where}.announced")
        changes.append(change)
        for scope, description in (raw.get("scopes") or {}).items():
            declared.setdefault(str(scope), str(description))
        for number, accept in enumerate(raw.get("accept") or []):
            entry = _overlay_entry(catalogue, accept, f"{where}.accept[{number}]")
            scopes = accept.get("scopes")
            if not isinstance(scopes, list) or not scopes:
                raise OverlayError(f"{where}.accept[{number}].scopes: expected scope names")
            entry.scopes |= set(scopes)
            entry.sources.add(f"overlay:{change_id}")
            entry.notes.append(
                f"{' and '.join(scopes)} accept{'s' if len(scopes) == 1 else ''} it since "
                f'{change["since"]}: Pipedrive, "{change["title"]}" ({change["source"]})'
            )
        lifecycle = raw.get("lifecycle")
        if lifecycle is not None:
            _set_lifecycle(catalogue, lifecycle, where, change_id, since)
        if raw.get("replacements") is not None:
            _set_replacements(catalogue, path.parent / str(raw["replacements"]), where, change_id)
    return changes


def _set_lifecycle(
    catalogue: Catalogue, lifecycle: Any, where: str, change_id: str, since: str
) -> None:
    """The state a change gives the endpoints it names (or selects); the further state holds
    where another change gives one too."""
    state = lifecycle.get("state") if isinstance(lifecycle, dict) else None
    if state not in LIFECYCLE_STATES:
        raise OverlayError(
            f"{where}.lifecycle.state: expected one of {', '.join(LIFECYCLE_STATES)}"
        )
    selected = lifecycle.get("select")
    if selected is not None and selected != "deprecated":
        raise OverlayError(f"{where}.lifecycle.select: expected deprecated")
    if selected:
        entries = [entry for entry in catalogue.entries.values() if entry.deprecated]
    else:
        entries = [
            _overlay_entry(catalogue, named, f"{where}.lifecycle.endpoints[{number}]")
            for number, named in enumerate(lifecycle.get("endpoints") or [])
        ]
    for entry in entries:
        given = {"state": state, "since": since, "change": change_id}
        held = entry.lifecycle
        if held is not None and held["state"] == state:
            raise OverlayError(
                f"{where}: {entry.method} {entry.template} is {state} already, by {held['change']}"
            )
        if held is None or LIFECYCLE_STATES.index(state) > LIFECYCLE_STATES.index(
            str(held["state"])
        ):
            entry.lifecycle = given
        entry.sources.add(f"overlay:{change_id}")


def _set_replacements(catalogue: Catalogue, path: Path, where: str, change_id: str) -> None:
    """The v2 endpoint that replaces each v1 one the file names; both must be catalogued."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    except OSError as error:
        raise OverlayError(f"{where}.replacements: cannot read {path.name}: {error}") from None
    rows = [line.split("\t") for line in lines if not line.startswith("#")][1:]  # the header
    for number, row in enumerate(rows, start=1):
        if len(row) != 4:
            raise OverlayError(f"{path.name}:{number}: expected 4 tab-separated columns")
        old_method, old_path, new_method, new_path = row
        named = f"{path.name}:{number}"
        entry = _overlay_entry(
            catalogue, {"version": "v1", "method": old_method, "path": old_path}, named
        )
        _overlay_entry(
            catalogue,
            {"version": "v2", "method": new_method, "path": new_path.partition("?")[0]},
            named,
        )
        entry.replacement = f"{new_method} /api/v2{new_path}"
        entry.sources.add(f"overlay:{change_id}")


def _overlay_entry(catalogue: Catalogue, raw: Any, where: str) -> Entry:
    """The catalogue entry an overlay change names; it must be there already."""
    if not isinstance(raw, dict) or not {"version", "method", "path"} <= set(raw):
        raise OverlayError(f"{where}: expected version, method and path")
    key = (str(raw["version"]), str(raw["method"]), shape(str(raw["path"])))
    entry = catalogue.entries.get(key)
    if entry is None:
        raise OverlayError(
            f"{where}: {raw['version']} {raw['method']} {raw['path']} is in no other source"
        )
    return entry


def _date(value: Any, where: str) -> str:
    """A date as YAML reads ``2024-01-26``, written back the same way."""
    if not isinstance(value, datetime.date):
        raise OverlayError(f"{where}: expected a date such as 2024-01-26")
    return value.isoformat()


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
    changes = load_overlay(catalogue, sources / OVERLAY, declared)
    unknown = {s for e in catalogue.entries.values() for s in e.scopes} - set(declared)
    if unknown:
        raise SystemExit(f"entries name undeclared scopes: {sorted(unknown)}")
    entries = sorted(catalogue.entries.values(), key=lambda e: (e.version, e.template, e.method))
    names = [FOUNDING, *OPENAPI.values(), HISTORY, OVERLAY, REPLACEMENTS]
    return {
        "format": 2,
        "inputs": {name: digest(sources / name) for name in names},
        "changes": changes,
        "scopes": {name: declared[name] for name in sorted(declared)},
        "endpoints": [entry.as_json() for entry in entries],
    }


def render(document: dict[str, Any]) -> str:
    lines = ["{"]
    lines.append(f'"format": {json.dumps(document["format"])},')
    lines.append(f'"inputs": {json.dumps(document["inputs"], sort_keys=True)},')
    lines.append(f'"changes": {json.dumps(document["changes"], sort_keys=True)},')
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
