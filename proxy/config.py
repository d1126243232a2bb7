"""The proxy's configuration: parsed once from YAML into frozen dataclasses.

Every problem raises ``ConfigError`` naming the key path and what is wrong with it
(``upstream.api_url: not an absolute http(s) URL``); the CLI prints that line and exits 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from proxy.catalog import Catalogue, CatalogueError, load_catalogue
from proxy.credentials import token_digest
from proxy.decision import Grant, Policy

ENV_CONFIG = "PIPEDRIVE_SCOPE_PROXY_CONFIG"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot be used. ``str()`` is the one line the user sees."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class Listen:
    host: str = "0.0.0.0"
    port: int = 8080


@dataclass(frozen=True)
class Upstream:
    api_url: str = "https://api.pipedrive.com"
    oauth_url: str = "https://oauth.pipedrive.com"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class StaticGrant:
    name: str
    digest: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Logging:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class Config:
    listen: Listen = field(default_factory=Listen)
    upstream: Upstream = field(default_factory=Upstream)
    policy: Policy = field(default_factory=Policy)
    tokens: tuple[StaticGrant, ...] = ()
    store: str = "memory"
    public_url: str | None = None
    rewrite_api_domain: bool = True
    catalog_extra: tuple[Path, ...] = ()
    logging: Logging = field(default_factory=Logging)
    source: str = "<defaults>"

    def static_grants(self) -> dict[str, Grant]:
        """Static grants by token digest, ready for lookup."""
        return {t.digest: Grant(t.scopes, f"static:{t.name}") for t in self.tokens}


def _require(value: Any, kind: type[T] | tuple[type, ...], key: str, expected: str) -> T:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(key, f"expected {expected}, got {value!r}")
    return cast(T, value)


def _mapping(value: Any, key: str, allowed: set[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    mapping = _require(value, dict, key or "config", "a mapping")
    for name in mapping:
        if name not in allowed:
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")
    return mapping


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, f"expected one of {' | '.join(choices)}, got {value!r}")
    return cast(str, value)


def _url(value: Any, key: str) -> str:
    text = _require(value, str, key, "a URL")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "not an absolute http(s) URL")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(key, "must not carry a query, fragment or credentials")
    return text.rstrip("/")


def _seconds(value: Any, key: str) -> float:
    number: float = _require(value, (int, float), key, "a number of seconds")
    if not 0 < number <= 3600:
        raise ConfigError(key, "expected seconds between 0 and 3600")
    return float(number)


def _scopes(value: Any, key: str, known: Mapping[str, str]) -> frozenset[str]:
    names = _require(value, list, key, "a list of scope names")
    for index, name in enumerate(names):
        if name not in known:
            raise ConfigError(f"{key}[{index}]", f"unknown scope {name!r}")
    return frozenset(names)


def _store(value: Any) -> str:
    text = _require(value, str, "store", "memory, sqlite:///path or redis://host:port/db")
    if text == "memory":
        return text
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "sqlite" and len(text) > len("sqlite://"):
        return text
    if scheme in ("redis", "rediss") and urlsplit(text).hostname:
        return text
    raise ConfigError("store", "expected memory, sqlite:///path/file.db or redis://host:6379/0")


def _grant(raw: Any, key: str, known: Mapping[str, str], env: Mapping[str, str]) -> StaticGrant:
    entry = _mapping(raw, key, {"name", "sha256", "token_env", "scopes"})
    name = _require(entry.get("name"), str, f"{key}.name", "a name for this grant")
    if ("sha256" in entry) == ("token_env" in entry):
        raise ConfigError(key, "give exactly one of sha256 or token_env")
    if "sha256" in entry:
        digest = _require(entry["sha256"], str, f"{key}.sha256", "64 hex characters").lower()
        if not _SHA256.match(digest):
            raise ConfigError(f"{key}.sha256", "expected the token's SHA-256 as 64 hex characters")
    else:
        variable = _require(entry["token_env"], str, f"{key}.token_env", "a variable name")
        token = env.get(variable, "")
        if not token:
            raise ConfigError(f"{key}.token_env", f"environment variable {variable} is not set")
        digest = token_digest(token)
    if "scopes" not in entry:
        raise ConfigError(f"{key}.scopes", "missing: list the scopes this token holds")
    return StaticGrant(name, digest, _scopes(entry["scopes"], f"{key}.scopes", known))


_TOP = {
    "listen", "upstream", "mode", "app_scopes", "tokens", "unknown_tokens", "api_tokens",
    "unknown_endpoints", "store", "public_url", "rewrite_api_domain", "catalog_extra", "logging",
}  # fmt: skip


def parse_config(
    document: Any,
    base_dir: Path = Path("."),
    source: str = "<defaults>",
    env: Mapping[str, str] | None = None,
    catalogue_loader: Callable[[tuple[Path, ...]], Catalogue] = load_catalogue,
) -> tuple[Config, Catalogue]:
    """Validate a parsed YAML document; return the config and the catalogue it names."""
    env = os.environ if env is None else env
    top = _mapping(document, "", _TOP)
    listen_raw = _mapping(top.get("listen"), "listen", {"host", "port"})
    port = _require(listen_raw.get("port", 8080), int, "listen.port", "a port number")
    if not 0 <= port <= 65535:
        raise ConfigError("listen.port", "expected a port number between 0 and 65535")
    listen = Listen(_require(listen_raw.get("host", "0.0.0.0"), str, "listen.host", "a host"), port)

    up = _mapping(
        top.get("upstream"), "upstream", {"api_url", "oauth_url", "connect_timeout", "read_timeout"}
    )
    upstream = Upstream(
        _url(up.get("api_url", Upstream.api_url), "upstream.api_url"),
        _url(up.get("oauth_url", Upstream.oauth_url), "upstream.oauth_url"),
        _seconds(up.get("connect_timeout", 5), "upstream.connect_timeout"),
        _seconds(up.get("read_timeout", 60), "upstream.read_timeout"),
    )

    extra_raw = _require(top.get("catalog_extra") or [], list, "catalog_extra", "a list of files")
    extra = []
    for index, item in enumerate(extra_raw):
        name = _require(item, str, f"catalog_extra[{index}]", "a file path")
        extra.append(base_dir / name)
    try:
        catalogue = catalogue_loader(tuple(extra))
    except CatalogueError as error:
        raise ConfigError("catalog_extra", str(error)) from None
    known = catalogue.scopes

    app_scopes = None
    if top.get("app_scopes") is not None:
        app_scopes = _scopes(top["app_scopes"], "app_scopes", known)
    fallbacks = ("deny", "app_scopes")
    policy = Policy(
        mode=_choice(top.get("mode", "enforce"), "mode", ("enforce", "report")),  # type: ignore[arg-type]
        app_scopes=app_scopes,
        unknown_tokens=_choice(top.get("unknown_tokens", "deny"), "unknown_tokens", fallbacks),  # type: ignore[arg-type]
        api_tokens=_choice(top.get("api_tokens", "deny"), "api_tokens", fallbacks),  # type: ignore[arg-type]
        unknown_endpoints=_choice(
            top.get("unknown_endpoints", "deny"), "unknown_endpoints", ("deny", "allow")
        ),  # type: ignore[arg-type]
    )
    for key in ("unknown_tokens", "api_tokens"):
        if getattr(policy, key) == "app_scopes" and app_scopes is None:
            raise ConfigError(key, "app_scopes needs the top-level app_scopes list to be set")

    tokens_raw = _require(top.get("tokens") or [], list, "tokens", "a list of static grants")
    tokens = tuple(_grant(raw, f"tokens[{i}]", known, env) for i, raw in enumerate(tokens_raw))
    digests = [t.digest for t in tokens]
    if len(set(digests)) != len(digests):
        raise ConfigError("tokens", "the same token is granted twice")

    public_url = top.get("public_url")
    if public_url is not None:
        public_url = _url(public_url, "public_url")
    log_raw = _mapping(top.get("logging"), "logging", {"format", "level"})
    logging = Logging(
        _choice(log_raw.get("format", "json"), "logging.format", ("json", "console")),
        _choice(
            log_raw.get("level", "info"), "logging.level", ("debug", "info", "warning", "error")
        ),
    )
    config = Config(
        listen=listen,
        upstream=upstream,
        policy=policy,
        tokens=tokens,
        store=_store(top.get("store", "memory")),
        public_url=public_url,
        rewrite_api_domain=_require(
            top.get("rewrite_api_domain", True), bool, "rewrite_api_domain", "true or false"
        ),
        catalog_extra=tuple(extra),
        logging=logging,
        source=source,
    )
    return config, catalogue


def load_config(
    path: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[Config, Catalogue]:
    """Read the config: ``--config``, else ``$PIPEDRIVE_SCOPE_PROXY_CONFIG``, else defaults."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_CONFIG) or None
    if path is None:
        return parse_config({}, env=env)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(file), f"cannot read config file: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ConfigError(str(file), f"malformed YAML: {where}{problem}") from None
    return parse_config(document, file.parent, str(file), env)
