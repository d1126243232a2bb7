"""Write the reference pages of the documentation from the code itself:

- ``docs/reference/configuration.md``: every key of the config (its schema, ``ENV_SCHEMA`` and
  ``tokens``), its type, default (a default ``Config``'s), allowed values, environment variable,
  whether a ``SIGHUP`` applies it (``RESTART_ONLY``), and what it does (``MEANINGS``);
- ``docs/reference/cli.md``: every command and option, from the argument parser.

    python tools/reference.py           # write both pages
    python tools/reference.py --check   # exit 1, naming the page, when one is out of date
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.cli.parser import build_parser  # noqa: E402
from proxy.config import (  # noqa: E402
    ENV_PREFIX,
    ENV_SCHEMA,
    LOG_FORMATS,
    LOG_LEVELS,
    MEANINGS,
    Config,
)
from proxy.core.budget import BUDGET_MODES  # noqa: E402
from proxy.core.decision import ENDPOINT_FALLBACKS, FALLBACKS, MODES  # noqa: E402
from proxy.http.serving import RESTART_ONLY  # noqa: E402

PAGES = {
    "configuration": ROOT / "docs" / "reference" / "configuration.md",
    "cli": ROOT / "docs" / "reference" / "cli.md",
}
ALLOWED: dict[str, tuple[str, ...]] = {
    "mode": MODES,
    "unknown_tokens": FALLBACKS,
    "api_tokens": FALLBACKS,
    "unknown_endpoints": ENDPOINT_FALLBACKS,
    "logging.format": LOG_FORMATS,
    "logging.level": LOG_LEVELS,
    "budget.mode": BUDGET_MODES,
}
KINDS = {"text": "text", "number": "number", "list": "list", "flag": "true or false"}
# Where the schema's kind (how the environment's text is read) says less than the file takes.
TYPES = {"warmup": "true, false or seconds"}
DEFAULTS = {"warmup": "off"}
GENERATED = "<!-- Written by tools/reference.py from the code: edit the code, then run it. -->"


def leaves(schema: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    for key, inner in schema.items():
        if isinstance(inner, dict):
            yield from leaves(inner, (*path, key))
        else:
            yield ".".join((*path, key)), str(inner)


def shown_default(key: str, shown: Mapping[str, Any]) -> str:
    value: Any = shown
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return "not set"
        value = value[part]
    if value is None or value == []:
        return "not set" if value is None else "`[]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def configuration() -> str:
    shown = Config().shown()
    shown["tokens"] = []
    rows = [
        "| key | type | default | allowed | environment variable | on `SIGHUP` | what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = list(leaves(ENV_SCHEMA))
    keys.insert(next(i for i, (k, _) in enumerate(keys) if k == "unknown_tokens"),
                ("tokens", "static grants"))  # fmt: skip
    for key, kind in keys:
        meaning = MEANINGS.get(key)
        if meaning is None:
            raise SystemExit(f"tools/reference.py: {key} has no meaning in proxy.config.MEANINGS")
        top = key.split(".")[0]
        variable = "" if key == "tokens" else f"`{ENV_PREFIX}{key.replace('.', '_').upper()}`"
        allowed = " \\| ".join(f"`{v}`" for v in ALLOWED.get(key, ()))
        reload = "restart" if top in RESTART_ONLY else "applied"
        if key.startswith(("listen.tls", "admin_listen.tls")):
            reload = "files read again"
        default = DEFAULTS.get(key) or shown_default(key, shown)
        cells = [f"`{key}`", TYPES.get(key) or KINDS.get(kind, kind), default, allowed, variable,
                 reload,
                 meaning.replace("|", "\\|")]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        GENERATED, "", "# Configuration reference", "",
        "Every key of the config file, as the code defines it. A key of a mapping is written "
        "with dots (`listen.port` is `port` under `listen`). *Environment variable*: the "
        "variable that sets the key over the file (lists comma-separated; see "
        "[Configuration](../configuration.md)). *On `SIGHUP`*: whether a reload applies a "
        "change, or it takes a restart.", "",
        *rows, "",
    ])  # fmt: skip


def cli() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: not to this one's
    parser = build_parser()
    out = [GENERATED, "", "# Command-line reference", "",
           f"`{parser.prog}` [`--version`] *command* ...: {parser.description}", ""]  # fmt: skip
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    for name, command in subparsers.choices.items():
        out += [f"## `{name}`", "", f"{helps.get(name) or ''}".strip() + ".", ""]
        out += ["```", command.format_usage().strip().removeprefix("usage: "), "```", ""]
        rows = ["| argument | what it does |", "|---|---|"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
            if action.option_strings and action.nargs != 0:
                label += f" *{action.metavar or action.dest.upper()}*"
            text = action.help or ""
            if action.choices:
                text += " (" + ", ".join(f"`{c}`" for c in action.choices) + ")"
            if action.default not in (None, [], False, argparse.SUPPRESS):
                text += f"; default `{action.default}`"
            rows.append(f"| {label} | {text.replace('|', chr(92) + '|')} |")
        out += [*rows, ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description="Write the reference pages from the code.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is out of date")
    args = parser.parse_args()
    written = {"configuration": configuration(), "cli": cli()}
    stale = []
    for name, text in written.items():
        page = PAGES[name]
        if args.check:
            if not page.exists() or page.read_text() != text:
                stale.append(str(page.relative_to(ROOT)))
        else:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}: run python tools/reference.py", file=sys.stderr)
        return 1
    if args.check:
        print("docs/reference is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
