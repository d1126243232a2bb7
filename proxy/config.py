"""The proxy's configuration: parsed once from YAML into frozen dataclasses.

Every problem raises ``ConfigError`` naming the key path and what is wrong with it
(``upstream.api_url: not an absolute http(s) URL``); the CLI prints that line and exits 2.
Reading the config (``load_config``) and checking its scope names against the catalogue it
names (``catalogue_for``) are two steps; ``load`` does both.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import yaml

from proxy.core.bodies import DEFAULT_BOUND
from proxy.core.budget import BUDGET_MODES, BudgetPolicy
from proxy.core.catalog import (
    Catalogue,
    CatalogueError,
    api_route,
    load_catalogue,
    unknown_scope,
)
from proxy.core.credentials import fingerprint, token_digest
from proxy.core.decision import (
    DECLARED_GRANT,
    ENDPOINT_FALLBACKS,
    FALLBACKS,
    MODES,
    Grant,
    Mode,
    Policy,
)
from proxy.core.oauth import company_of

ENV_CONFIG = "PIPEDRIVE_SCOPE_PROXY_CONFIG"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")
C = TypeVar("C", bound=str)
StoreKind = Literal["memory", "sqlite", "redis"]


class ConfigError(ValueError):
    """A config value that cannot be used. ``str()`` is the one line the user sees."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class FromEnvironment:
    """The ``PIPEDRIVE_SCOPE_PROXY_*`` variables read: each applied one with the key it set,
    and each ignored one with why."""

    applied: tuple[tuple[str, str], ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TlsFiles:
    """A listener's certificate chain and key (PEM files), read again on every SIGHUP."""

    cert_file: Path
    key_file: Path

    def context(self, key: str = "listen.tls") -> ssl.SSLContext:
        """A server context with modern defaults (TLS 1.2 and later, the system's ciphers),
        holding this certificate; ``load_into`` swaps it in a running one."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.load_into(context, key)
        return context

    def load_into(self, context: ssl.SSLContext, key: str = "listen.tls") -> None:
        """Load the files into ``context``: handshakes from now on present them."""
        for name, path in (("cert_file", self.cert_file), ("key_file", self.key_file)):
            if not path.is_file():
                raise ConfigError(f"{key}.{name}", f"cannot read {path}: no such file")
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            problem = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
            raise ConfigError(
                key, f"cannot use {self.cert_file} with {self.key_file}: {problem}"
            ) from None


@dataclass(frozen=True)
class Listen:
    host: str = "0.0.0.0"
    port: int = 8080
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        """Where a client on this machine reaches it: a wildcard address is asked on loopback."""
        host = _LOOPBACK.get(self.host, self.host)
        scheme = "https" if self.tls is not None else "http"
        return (
            f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"
        )


_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class UpstreamSettings:
    api_url: str = "https://api.pipedrive.com"
    oauth_url: str = "https://oauth.pipedrive.com"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    # A forward proxy for upstream calls: None, the environment's (HTTPS_PROXY, HTTP_PROXY,
    # NO_PROXY, as curl reads them); "none", none whatever the environment says; else its URL.
    proxy: str | None = None


@dataclass(frozen=True)
class Limits:
    """What one client may hold: time to send a head, idle time, body stalls, connections."""

    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    body_timeout: float = 30.0
    max_connections: int = 1024
    report_tokens: int = 100  # tokens with a report section of their own; the rest: "other"
    # The largest form, multipart or JSON request body read (and held) before it is forwarded,
    # in bytes: it is checked for method overrides and credentials (proxy.core.bodies).
    max_checked_body: int = DEFAULT_BOUND


@dataclass(frozen=True)
class StaticGrant:
    name: str
    digest: str
    scopes: frozenset[str]
    company: str | None = None  # the company's API host (acme.pipedrive.com), for the budget


@dataclass(frozen=True)
class Logging:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class StoreUrl:
    """Where learned tokens live, parsed once: ``memory``, ``sqlite://PATH``, ``redis://...``."""

    url: str = "memory"

    @property
    def kind(self) -> StoreKind:
        scheme = self.url.split("://", 1)[0]
        return (
            "sqlite" if scheme == "sqlite" else "redis" if scheme.startswith("redis") else "memory"
        )

    @property
    def sqlite_path(self) -> str:
        """``sqlite:///var/lib/t.db`` -> ``/var/lib/t.db``; ``sqlite://t.db`` -> ``t.db``."""
        return self.url.removeprefix("sqlite://")

    @property
    def redacted(self) -> str:
        """The URL as logs and messages show it: any password replaced by ``***``."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))

    @classmethod
    def parse(cls, value: Any) -> StoreUrl:
        text = _require(value, str, "store", "memory, sqlite:///path or redis://host:port/db")
        if text == "memory":
            return cls(text)
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme == "sqlite" and len(text) > len("sqlite://"):
            return cls(text)
        if scheme in ("redis", "rediss") and urlsplit(text).hostname:
            return cls(text)
        raise ConfigError("store", "expected memory, sqlite:///path/file.db or redis://host:6379/0")


@dataclass(frozen=True)
class Overrides:
    """What ``serve`` flags set over the file, for as long as the process runs (reloads too)."""

    mode: Mode | None = None
    log_level: str | None = None

    def apply(self, config: Config) -> Config:
        if self.mode is not None:
            config = replace(config, policy=replace(config.policy, mode=self.mode))
        if self.log_level is not None:
            config = replace(config, logging=replace(config.logging, level=self.log_level))
        return config


NO_OVERRIDES = Overrides()


@dataclass(frozen=True)
class Config:
    listen: Listen = field(default_factory=Listen)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    policy: Policy = field(default_factory=Policy)
    tokens: tuple[StaticGrant, ...] = ()
    store: StoreUrl = field(default_factory=StoreUrl)
    public_url: str | None = None
    rewrite_api_domain: bool = True
    catalog_extra: tuple[Path, ...] = ()
    logging: Logging = field(default_factory=Logging)
    limits: Limits = field(default_factory=Limits)
    admin_listen: Listen | None = None  # where /_proxy/* is served instead of the main port
    # Seconds after start during which unknown tokens are taken to hold app_scopes (0: none).
    warmup: float = 0.0
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    source: str = "<defaults>"
    environment: FromEnvironment = field(default_factory=FromEnvironment, compare=False)
    # Every list of scope names, with its key path, for ``check_scopes``.
    scope_lists: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), compare=False)

    def static_grants(self) -> dict[str, Grant]:
        """Static grants by token digest, ready for lookup."""
        return {t.digest: Grant(t.scopes, f"static:{t.name}", t.company) for t in self.tokens}

    def shown(self) -> dict[str, Any]:
        """The config in effect as ``/_proxy/config`` shows it: every key, secrets left out
        (a static grant by its token's fingerprint, passwords in URLs as ``***``), and where
        the environment set a value."""

        def listener(listen: Listen | None) -> dict[str, Any] | None:
            if listen is None:
                return None
            tls = listen.tls
            shown_tls = None if tls is None else {
                "cert_file": str(tls.cert_file), "key_file": str(tls.key_file)
            }  # fmt: skip
            return {"host": listen.host, "port": listen.port, "tls": shown_tls}

        policy = self.policy
        proxy = self.upstream.proxy
        return {
            "source": self.source,
            "listen": listener(self.listen),
            "admin_listen": listener(self.admin_listen),
            "upstream": {
                "api_url": self.upstream.api_url,
                "oauth_url": self.upstream.oauth_url,
                "connect_timeout": self.upstream.connect_timeout,
                "read_timeout": self.upstream.read_timeout,
                "proxy": StoreUrl(proxy).redacted if proxy not in (None, "none") else proxy,
            },
            "mode": policy.mode,
            "app_scopes": sorted(policy.app_scopes) if policy.app_scopes is not None else None,
            "tokens": [
                {
                    "name": t.name,
                    "token_fp": fingerprint(t.digest) if t.digest else None,
                    "scopes": sorted(t.scopes),
                    "company": t.company,
                }
                for t in self.tokens
            ],
            "unknown_tokens": policy.unknown_tokens,
            "api_tokens": policy.api_tokens,
            "unknown_endpoints": policy.unknown_endpoints,
            "warmup": self.warmup,
            "budget": shown_budget(self.budget),
            "store": self.store.redacted,
            "public_url": self.public_url,
            "rewrite_api_domain": self.rewrite_api_domain,
            "catalog_extra": [str(path) for path in self.catalog_extra],
            "logging": {"format": self.logging.format, "level": self.logging.level},
            "limits": {name: getattr(self.limits, name) for name in Limits.__dataclass_fields__},
            "from_environment": dict(self.environment.applied),
            "ignored_environment": [variable for variable, _ in self.environment.ignored],
        }


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


def _choice(value: Any, key: str, choices: tuple[C, ...]) -> C:
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigError(key, f"expected one of {' | '.join(choices)}, got {value!r}")


def _url(value: Any, key: str) -> str:
    text = _require(value, str, key, "a URL")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "not an absolute http(s) URL")
    try:
        parts.port  # noqa: B018 - raises for a port that is not one
    except ValueError:
        raise ConfigError(key, "not a valid port in the URL") from None
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(key, "must not carry a query, fragment or credentials")
    return text.rstrip("/")


def _origin(value: Any, key: str) -> str:
    """A ``scheme://host[:port]``: the request's own path is appended to it as it is, so a path
    here (``https://api.pipedrive.com/v1``, a common paste) would double it (``/v1/v1/...``)."""
    text = _url(value, key)
    path = urlsplit(text).path
    if path:
        raise ConfigError(
            key,
            f"must be an origin (scheme://host[:port]) without a path, not one ending in {path!r}",
        )
    return text


def _forward_proxy(value: Any) -> str | None:
    """``upstream.proxy``: null (the environment's), ``none``, or ``http://[user:pass@]host:port``
    (an HTTP proxy; https targets go through it with CONNECT)."""
    if value is None:
        return None
    text = _require(value, str, "upstream.proxy", "none or http://host:port").strip()
    if text.lower() == "none":
        return "none"
    parts = urlsplit(text)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError("upstream.proxy", "expected none or http://[user:password@]host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("upstream.proxy", "a forward proxy is an origin: no path or query")
    return text


def _numeric(value: Any) -> Any:
    """A number written as a string (``port: "8080"``, as Helm and envsubst write it, and every
    value from the environment) as the number; anything else as it is."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return float(text) if "." in text else int(text)
    return value


_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


def _listen(value: Any, key: str, defaults: Listen, base_dir: Path = Path(".")) -> Listen:
    raw = _mapping(value, key, {"host", "port", "tls"})
    port = _require(_numeric(raw.get("port", defaults.port)), int, f"{key}.port", "a port number")
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}.port", "expected a port number between 0 and 65535")
    tls = None
    if raw.get("tls") is not None:
        files = _mapping(raw["tls"], f"{key}.tls", {"cert_file", "key_file"})
        paths = []
        for name in ("cert_file", "key_file"):
            if name not in files:
                raise ConfigError(f"{key}.tls.{name}", "missing: a PEM file")
            paths.append(base_dir / _require(files[name], str, f"{key}.tls.{name}", "a file path"))
        tls = TlsFiles(paths[0], paths[1])
        tls.context(f"{key}.tls")  # the files are there and belong together: or say which not
    host = _require(raw.get("host", defaults.host), str, f"{key}.host", "a host")
    return Listen(host, port, tls)


def _seconds(value: Any, key: str) -> float:
    number: float = _require(_numeric(value), (int, float), key, "a number of seconds")
    if not 0 < number <= 3600:
        raise ConfigError(key, "expected more than 0 and at most 3600 seconds")
    return float(number)


TOKEN_LIFETIME = 3600.0  # seconds: a Pipedrive access token's life, the warm-up's default


def _warmup(value: Any) -> float:
    """``warmup``: off (null, false, 0), one token lifetime (true), or a number of seconds."""
    value = _numeric(value)
    if isinstance(value, str) and value.strip().lower() in _FLAGS:  # from the environment
        value = _FLAGS[value.strip().lower()]
    if value is None or value is False:
        return 0.0
    if value is True:
        return TOKEN_LIFETIME
    seconds: float = _require(
        _numeric(value), (int, float), "warmup", "true or a number of seconds"
    )
    if not 0 <= seconds <= 86400:
        raise ConfigError("warmup", "expected between 0 and 86400 seconds (true: 3600)")
    return float(seconds)


def _scope_names(value: Any, key: str) -> tuple[str, ...]:
    names = _require(value, list, key, "a list of scope names")
    for index, name in enumerate(names):
        _require(name, str, f"{key}[{index}]", "a scope name")
    return tuple(names)


def _grant(
    raw: Any,
    key: str,
    env: Mapping[str, str] | None,
    scope_lists: list[tuple[str, tuple[str, ...]]],
) -> StaticGrant:
    entry = _mapping(raw, key, {"name", "sha256", "token_env", "scopes", "company"})
    name = _require(entry.get("name"), str, f"{key}.name", "a name for this grant")
    if name == DECLARED_GRANT:
        raise ConfigError(f"{key}.name", f"{name} names tokens taken to hold app_scopes")
    if ("sha256" in entry) == ("token_env" in entry):
        raise ConfigError(key, "give exactly one of sha256 or token_env")
    if "sha256" in entry:
        digest = _require(entry["sha256"], str, f"{key}.sha256", "64 hex characters").lower()
        if not _SHA256.match(digest):
            raise ConfigError(f"{key}.sha256", "expected the token's SHA-256 as 64 hex characters")
    else:
        variable = _require(entry["token_env"], str, f"{key}.token_env", "a variable name")
        if env is None:
            digest = ""  # not read: this config will not decide on tokens (no digest is "")
        else:
            token = env.get(variable, "")
            if not token:
                raise ConfigError(
                    f"{key}.token_env", f"environment variable {variable} is not set (or empty)"
                )
            digest = token_digest(token)
    if "scopes" not in entry:
        raise ConfigError(f"{key}.scopes", "missing: list the scopes this token holds")
    names = _scope_names(entry["scopes"], f"{key}.scopes")
    scope_lists.append((f"{key}.scopes", names))
    company = None
    if entry.get("company") is not None:
        text = _require(entry["company"], str, f"{key}.company", "a company's API host")
        company = company_of(text if "://" in text else f"https://{text}")
        if company is None:
            raise ConfigError(f"{key}.company", "expected its API host, e.g. acme.pipedrive.com")
    return StaticGrant(name, digest, frozenset(names), company)


_TOP = {
    "listen", "upstream", "mode", "app_scopes", "tokens", "unknown_tokens", "api_tokens",
    "unknown_endpoints", "store", "public_url", "rewrite_api_domain", "catalog_extra", "logging",
    "limits", "admin_listen", "warmup", "budget",
}  # fmt: skip


def shown_budget(budget: BudgetPolicy) -> dict[str, Any]:
    """The ``budget`` section as the config file writes it."""
    burst = None
    if budget.burst_oauth is not None or budget.burst_api_token is not None:
        burst = {"oauth": budget.burst_oauth, "api_token": budget.burst_api_token}
    return {
        "mode": budget.mode, "app": budget.app, "daily_tokens": budget.daily_tokens,
        "share": budget.share, "reserve": budget.reserve, "critical": sorted(budget.critical),
        "burst": burst,
    }  # fmt: skip


_APP_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _budget(value: Any) -> BudgetPolicy:
    """The ``budget`` section: the governor of Pipedrive's daily token budget (off unless set)."""
    raw = _mapping(
        value, "budget", {"mode", "app", "daily_tokens", "share", "reserve", "critical", "burst"}
    )
    mode = raw.get("mode", "off")
    if mode is False or (isinstance(mode, str) and mode.strip().lower() == "off"):
        mode = "off"  # YAML reads an unquoted off (or no, false) as false
    if mode is True:
        raise ConfigError(
            "budget.mode", "expected off | report | enforce: YAML read an unquoted on, yes or "
            "true as true; write report or enforce",
        )  # fmt: skip
    mode = _choice(mode, "budget.mode", BUDGET_MODES)
    app = _require(raw.get("app", "default"), str, "budget.app", "a name")
    if not _APP_NAME.fullmatch(app):
        raise ConfigError("budget.app", "expected 1 to 64 letters, digits, '.', '_' or '-'")
    daily = _require(
        _numeric(raw.get("daily_tokens", 30_000)), int, "budget.daily_tokens", "a number of tokens"
    )
    if not 1 <= daily <= 10**9:
        raise ConfigError("budget.daily_tokens", "expected between 1 and 1000000000 tokens")
    share = _fraction(raw.get("share", 1.0), "budget.share")
    if share == 0:
        raise ConfigError("budget.share", "expected more than 0 (mode: off turns the governor off)")
    reserve = _fraction(raw.get("reserve", 0.0), "budget.reserve")
    if reserve == 1:
        raise ConfigError("budget.reserve", "expected less than 1: the rest of the share is for "
                          "the endpoints not named critical")  # fmt: skip
    critical = _require(raw.get("critical") or [], list, "budget.critical", "a list of endpoints")
    for index, name in enumerate(critical):
        _require(name, str, f"budget.critical[{index}]", 'an endpoint, e.g. "GET /v1/users/me"')
    if reserve > 0 and not critical:
        raise ConfigError("budget.reserve", "a reserve is kept for budget.critical: name them")
    burst_oauth = burst_api_token = None
    if raw.get("burst") is not None:
        burst = _mapping(raw["burst"], "budget.burst", {"oauth", "api_token"})
        burst_oauth = _burst(burst.get("oauth"), "budget.burst.oauth")
        burst_api_token = _burst(burst.get("api_token"), "budget.burst.api_token")
    return BudgetPolicy(
        mode, app, daily, share, reserve, frozenset(critical), burst_oauth, burst_api_token,
        tuple(critical),
    )  # fmt: skip


def _fraction(value: Any, key: str) -> float:
    number: float = _require(_numeric(value), (int, float), key, "a fraction between 0 and 1")
    if not 0 <= number <= 1:
        raise ConfigError(key, f"expected a fraction between 0 and 1, got {number!r}")
    return float(number)


def _burst(value: Any, key: str) -> int | None:
    if value is None:
        return None
    number = _require(_numeric(value), int, key, "a number of requests per 2 seconds")
    if not 1 <= number <= 100_000:
        raise ConfigError(key, "expected between 1 and 100000 requests per 2 seconds")
    return number


def _limits(value: Any) -> Limits:
    raw = _mapping(value, "limits", set(Limits.__dataclass_fields__))
    defaults = Limits()
    connections = _require(
        _numeric(raw.get("max_connections", defaults.max_connections)),
        int,
        "limits.max_connections",
        "a number of connections",
    )
    if not 1 <= connections <= 1_000_000:
        raise ConfigError("limits.max_connections", "expected between 1 and 1000000")
    report_tokens = _require(
        _numeric(raw.get("report_tokens", defaults.report_tokens)),
        int,
        "limits.report_tokens",
        "a number of tokens",
    )
    if not 1 <= report_tokens <= 100_000:
        raise ConfigError("limits.report_tokens", "expected between 1 and 100000")
    checked_body = _require(
        _numeric(raw.get("max_checked_body", defaults.max_checked_body)),
        int,
        "limits.max_checked_body",
        "a number of bytes",
    )
    if not 1024 <= checked_body <= 1024**3:
        raise ConfigError("limits.max_checked_body", "expected between 1024 and 1073741824 bytes")
    return Limits(
        report_tokens=report_tokens,
        max_checked_body=checked_body,
        header_timeout=_seconds(
            raw.get("header_timeout", defaults.header_timeout), "limits.header_timeout"
        ),
        keepalive_timeout=_seconds(
            raw.get("keepalive_timeout", defaults.keepalive_timeout), "limits.keepalive_timeout"
        ),
        body_timeout=_seconds(
            raw.get("body_timeout", defaults.body_timeout), "limits.body_timeout"
        ),
        max_connections=connections,
    )


def parse_config(
    document: Any,
    base_dir: Path = Path("."),
    source: str = "<defaults>",
    env: Mapping[str, str] | None = None,
    read_tokens: bool = True,
) -> Config:
    """Validate a parsed YAML document into a ``Config`` (scope names are checked apart).
    ``read_tokens=False``: for commands that decide on no token (``explain``, ``envoy-config``,
    ``health``), the ``token_env`` variables are not read, so they need not be set."""
    env = os.environ if env is None else env
    top = _mapping(document, "", _TOP)
    listen = _listen(top.get("listen"), "listen", Listen(), base_dir)
    admin_listen = None
    if top.get("admin_listen") is not None:
        admin_listen = _listen(
            top["admin_listen"], "admin_listen", Listen("127.0.0.1", 0), base_dir
        )
        if admin_listen.port == 0:
            raise ConfigError("admin_listen.port", "expected a port number (probes must find it)")
        if admin_listen.port == listen.port:
            raise ConfigError("admin_listen.port", f"the main port is {listen.port} already")

    up = _mapping(
        top.get("upstream"),
        "upstream",
        {"api_url", "oauth_url", "connect_timeout", "read_timeout", "proxy"},
    )
    defaults = UpstreamSettings()
    upstream = UpstreamSettings(
        _origin(up.get("api_url", defaults.api_url), "upstream.api_url"),
        _origin(up.get("oauth_url", defaults.oauth_url), "upstream.oauth_url"),
        _seconds(up.get("connect_timeout", 5), "upstream.connect_timeout"),
        _seconds(up.get("read_timeout", 60), "upstream.read_timeout"),
        _forward_proxy(up.get("proxy")),
    )

    extra_raw = _require(top.get("catalog_extra") or [], list, "catalog_extra", "a list of files")
    extra = tuple(
        base_dir / _require(item, str, f"catalog_extra[{index}]", "a file path")
        for index, item in enumerate(extra_raw)
    )

    scope_lists: list[tuple[str, tuple[str, ...]]] = []
    app_scopes = None
    if top.get("app_scopes") is not None:
        declared = _scope_names(top["app_scopes"], "app_scopes")
        scope_lists.append(("app_scopes", declared))
        app_scopes = frozenset(declared)
    policy = Policy(
        mode=_choice(top.get("mode", "enforce"), "mode", MODES),
        app_scopes=app_scopes,
        unknown_tokens=_choice(top.get("unknown_tokens", "deny"), "unknown_tokens", FALLBACKS),
        api_tokens=_choice(top.get("api_tokens", "deny"), "api_tokens", FALLBACKS),
        unknown_endpoints=_choice(
            top.get("unknown_endpoints", "deny"), "unknown_endpoints", ENDPOINT_FALLBACKS
        ),
    )
    for key in ("unknown_tokens", "api_tokens"):
        if getattr(policy, key) == "app_scopes" and app_scopes is None:
            raise ConfigError(key, "app_scopes needs the top-level app_scopes list to be set")
    warmup = _warmup(top.get("warmup"))
    if warmup and app_scopes is None:
        raise ConfigError("warmup", "a warm-up takes unknown tokens to hold app_scopes: set them")

    tokens_raw = _require(top.get("tokens") or [], list, "tokens", "a list of static grants")
    tokens = tuple(
        _grant(raw, f"tokens[{i}]", env if read_tokens else None, scope_lists)
        for i, raw in enumerate(tokens_raw)
    )
    digests = [t.digest for t in tokens if t.digest]  # a token_env not read has none
    if len(set(digests)) != len(digests):
        raise ConfigError("tokens", "the same token is granted twice")

    public_url = top.get("public_url")
    if public_url is not None:
        public_url = _url(public_url, "public_url")
    log_raw = _mapping(top.get("logging"), "logging", {"format", "level"})
    logging = Logging(
        _choice(log_raw.get("format", "json"), "logging.format", LOG_FORMATS),
        _choice(log_raw.get("level", "info"), "logging.level", LOG_LEVELS),
    )
    return Config(
        listen=listen,
        upstream=upstream,
        policy=policy,
        tokens=tokens,
        store=StoreUrl.parse(top.get("store", "memory")),
        public_url=public_url,
        rewrite_api_domain=_require(
            top.get("rewrite_api_domain", True), bool, "rewrite_api_domain", "true or false"
        ),
        catalog_extra=extra,
        logging=logging,
        limits=_limits(top.get("limits")),
        admin_listen=admin_listen,
        warmup=warmup,
        budget=_budget(top.get("budget")),
        source=source,
        scope_lists=tuple(scope_lists),
    )


ENV_PREFIX = "PIPEDRIVE_SCOPE_PROXY_"
# What the environment may set: each key of the schema but ``tokens``, a leaf's kind (how its
# text is read: ``list`` comma-separated, ``flag`` true or false, the rest as the file's values
# are, numbers included), or a mapping of its keys.
ENV_SCHEMA: dict[str, Any] = {
    "listen": {"host": "text", "port": "number",
               "tls": {"cert_file": "text", "key_file": "text"}},
    "upstream": {"api_url": "text", "oauth_url": "text", "connect_timeout": "number",
                 "read_timeout": "number", "proxy": "text"},
    "mode": "text", "app_scopes": "list", "unknown_tokens": "text", "api_tokens": "text",
    "unknown_endpoints": "text", "store": "text", "public_url": "text",
    "rewrite_api_domain": "flag", "catalog_extra": "list",
    "logging": {"format": "text", "level": "text"},
    "limits": dict.fromkeys(Limits.__dataclass_fields__, "number"),
    "admin_listen": {"host": "text", "port": "number",
                     "tls": {"cert_file": "text", "key_file": "text"}},
    "warmup": "text",
    "budget": {"mode": "text", "app": "text", "daily_tokens": "number", "share": "number",
               "reserve": "number", "critical": "list",
               "burst": {"oauth": "number", "api_token": "number"}},
}  # fmt: skip
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
_FLAGS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}  # fmt: skip


def environment_settings(env: Mapping[str, str]) -> tuple[dict[str, Any], FromEnvironment]:
    """The config keys ``PIPEDRIVE_SCOPE_PROXY_<KEY>`` variables set (nested keys joined by
    ``_`` and found by the schema: ``..._LISTEN_PORT`` is ``listen.port``, ``..._UNKNOWN_TOKENS``
    is ``unknown_tokens``), as a document to lay over the file's; and which were read or not.
    A variable that names no key (Kubernetes' service links: ``..._PORT=tcp://...``) is ignored
    and said so, never fatal; ``tokens`` is never read from the environment."""
    settings: dict[str, Any] = {}
    applied: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX) or variable == ENV_CONFIG:
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        if name == "tokens" or name.startswith("tokens_"):
            ignored.append((variable, "tokens are never read from the environment (token_env)"))
            continue
        path = _env_key(name, ENV_SCHEMA)
        if path is None:
            ignored.append((variable, "names no config key"))
            continue
        *parents, leaf = path
        kind = _schema_kind(path)
        text = env[variable]
        value: Any = text
        if kind == "list":
            value = [item.strip() for item in text.split(",") if item.strip()]
        elif kind == "flag":
            value = _FLAGS.get(text.strip().lower(), text)
        elif text.strip() == "" or text.strip().lower() == "null":
            value = None  # unset: the default
        target = settings
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
        applied.append((variable, ".".join(path)))
    return settings, FromEnvironment(tuple(applied), tuple(ignored))


def _env_key(
    name: str, schema: Mapping[str, Any], path: tuple[str, ...] = ()
) -> tuple[str, ...] | None:
    for key, inner in schema.items():
        if isinstance(inner, dict):
            if name.startswith(key + "_"):
                found = _env_key(name[len(key) + 1 :], inner, (*path, key))
                if found is not None:
                    return found
        elif name == key:
            return (*path, key)
    return None


def _schema_kind(path: Sequence[str]) -> str:
    kind: Any = ENV_SCHEMA
    for key in path:
        kind = kind[key]
    return str(kind)


def _laid_over(document: Any, settings: Mapping[str, Any]) -> Any:
    """``document`` with ``settings`` laid over it, mapping by mapping (a value of None takes
    the key away: its default holds). A document that is no mapping is left for the checks."""
    if not settings:
        return document
    if document is None:
        document = {}
    if not isinstance(document, dict):
        return document
    merged = dict(document)
    for key, value in settings.items():
        if isinstance(value, dict):
            merged[key] = _laid_over(
                merged.get(key) if isinstance(merged.get(key), dict) else {}, value
            )
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | None = None, env: Mapping[str, str] | None = None, read_tokens: bool = True
) -> Config:
    """Read the config: ``--config``, else ``$PIPEDRIVE_SCOPE_PROXY_CONFIG``, else defaults;
    with the ``PIPEDRIVE_SCOPE_PROXY_<KEY>`` variables laid over it (``environment_settings``).
    A value from the environment that cannot be used names its variable."""
    env = os.environ if env is None else env
    settings, from_environment = environment_settings(env)
    path = path or env.get(ENV_CONFIG) or None
    base_dir, source, document = Path("."), "<defaults>", None
    if path is not None:
        file = Path(path)
        document = _read_yaml(file)
        base_dir, source = file.parent, str(file)
    try:
        config = parse_config(_laid_over(document, settings), base_dir, source, env, read_tokens)
    except ConfigError as error:
        raise _named(error, from_environment) from None
    return replace(config, environment=from_environment)


def _named(error: ConfigError, from_environment: FromEnvironment) -> ConfigError:
    """``error``, naming the variable when the value came from the environment."""
    variable = next(
        (name for name, key in from_environment.applied
         if error.key == key or error.key.startswith((key + ".", key + "["))),
        None,
    )  # fmt: skip
    return ConfigError(f"{variable} ({error.key})", error.problem) if variable else error


def _read_yaml(file: Path) -> Any:
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
    return document


def catalogue_for(
    config: Config, loader: Callable[[Sequence[Path]], Catalogue] = load_catalogue
) -> Catalogue:
    """The catalogue a config names (shipped, plus ``catalog_extra``), with every scope name
    the config uses checked against it."""
    try:
        catalogue = loader(config.catalog_extra)
    except CatalogueError as error:
        raise ConfigError("catalog_extra", str(error)) from None
    check_scopes(config, catalogue)
    return catalogue


def check_scopes(config: Config, catalogue: Catalogue) -> None:
    """Every scope name in the config is one the catalogue knows (``app_scopes[1]: ...``), and
    every critical endpoint of the budget one it has."""
    for key, names in config.scope_lists:
        for index, name in enumerate(names):
            if name not in catalogue.scopes:
                raise ConfigError(f"{key}[{index}]", unknown_scope(name, catalogue.scopes))
    for index, name in enumerate(config.budget.critical_listed):
        if name not in catalogue.by_name:
            hint = _endpoint_hint(name, catalogue)
            raise ConfigError(
                f"budget.critical[{index}]",
                f"{name!r} is no endpoint of the catalogue: name it as the report does, "
                f'e.g. "GET /v1/users/me"{hint}',
            )


def _endpoint_hint(name: str, catalogue: Catalogue) -> str:
    """For a name no endpoint has: the endpoint a path written with ids calls (``GET
    /v1/deals/42``: ``GET /v1/deals/{id}``), else the closest name."""
    method, _, path = name.strip().partition(" ")
    route = api_route(path.strip()) if path.startswith("/") else None
    endpoint = catalogue.match(route, method.upper()) if route is not None else None
    if endpoint is not None:
        return f" (did you mean {endpoint.name!r}?)"
    close = get_close_matches(name, list(catalogue.by_name), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load(
    path: str | None = None, env: Mapping[str, str] | None = None, read_tokens: bool = True
) -> tuple[Config, Catalogue]:
    """The config and its catalogue, both checked: what ``serve``, ``check`` and ``explain`` use."""
    config = load_config(path, env, read_tokens)
    try:
        return config, catalogue_for(config)
    except ConfigError as error:  # a scope name the environment gave, say
        raise _named(error, config.environment) from None


# What each key of the config does, as the configuration reference says
# (docs/reference/configuration.md, written from this table by tools/reference.py and
# checked in CI; a key of the schema missing here fails a test).
MEANINGS: dict[str, str] = {
    "listen.host": ("the address the proxy listens on"),
    "listen.port": ("the port it listens on"),
    "upstream.api_url": (
        "where API calls go: this origin + the request's path and query, byte for byte. An "
        "origin only: `https://api.pipedrive.com/v1` is a config error, not a doubled "
        "`/v1/v1/...`"
    ),
    "upstream.oauth_url": (
        "where `POST /oauth/token` and `/oauth/revoke` go, and where `GET /oauth/authorize` "
        "redirects; an origin too"
    ),
    "upstream.connect_timeout": ("seconds to connect before answering 502"),
    "upstream.proxy": (
        "a forward proxy for upstream calls: not set, the environment's (`HTTPS_PROXY`, "
        "`HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, the lower-case spellings first, as curl and "
        "requests read them); `none`, none whatever the environment says; or "
        "`http://[user:password@]host:port` (an https upstream goes through it with `CONNECT`, "
        "end to end TLS)"
    ),
    "upstream.read_timeout": (
        "seconds without upstream bytes before answering 504 (checked a few times per timeout: "
        "it may fire up to a quarter of it, at most 1 s, late)"
    ),
    "mode": (
        "`enforce` refuses out-of-scope calls; `report` forwards them marked "
        "`X-Scope-Proxy-Decision: report`"
    ),
    "app_scopes": (
        "the scopes the app declares in Developer Hub; when set it is a ceiling: a call must be"
        " accepted by one of these too"
    ),
    "tokens": (
        "static grants: `{name, sha256: <SHA-256 of the token>, scopes}` or `{name, token_env: "
        "VAR, scopes}` (either may name its `company`, the API host `acme.pipedrive.com`) (the "
        "token is read from that environment variable and only its digest is kept)"
    ),
    "unknown_tokens": (
        "a Bearer token the proxy does not know: `deny` (401) or `app_scopes` (treat it as "
        "holding the app's declared scopes)"
    ),
    "api_tokens": (
        "personal API tokens (`x-api-token`, `?api_token=`) are not scoped: `deny` (403 saying "
        "so) or `app_scopes`"
    ),
    "unknown_endpoints": (
        "a path under an API prefix that no catalogue entry matches: `deny` (404, reason "
        "`unknown_endpoint`; a known path called with a method it does not take too) or `allow`"
        " (forward it)"
    ),
    "store": (
        "where learned tokens live: `memory`, `sqlite:///path/file.db` or `redis://host:6379/0`"
    ),
    "public_url": (
        "how apps reach the proxy (used when rewriting OAuth responses); default: the request's"
        " scheme and Host"
    ),
    "rewrite_api_domain": ("point `api_domain` in token responses at the proxy"),
    "catalog_extra": ("extra catalogue files, relative to the config file (see Catalogue)"),
    "logging.format": ("`json` lines, or `console` for people"),
    "logging.level": ("`debug`, `info`, `warning` or `error`"),
    "limits.header_timeout": (
        "seconds for a client to send a whole request head (from its connection, or from the "
        "first byte of a later request); then 408 and closed (slowloris)"
    ),
    "limits.keepalive_timeout": ("seconds an idle client connection stays open"),
    "limits.body_timeout": (
        "seconds without request-body bytes before 408, the upstream call cancelled with it "
        "(slow POST)"
    ),
    "limits.max_connections": (
        "client connections per process; one more gets 503 (`too_many_connections`) and is "
        "closed at once, the others served as ever"
    ),
    "limits.max_checked_body": (
        "bytes (1024 to 1073741824): the largest form (or body with no `Content-Type`, whatever"
        " the method), multipart or JSON request body, read whole (once the call is authorized)"
        " and checked for a method override or a credential before it is forwarded; over it: "
        "413. Bodies of other types stream unread, whatever their size. Raise it for larger "
        "file uploads (`POST /v1/files` is multipart): each upload in flight holds up to this "
        "much memory"
    ),
    "warmup": (
        "`true` (one token lifetime, 3600 s) or a number of seconds: for that long after the "
        "process starts, a token the proxy does not know is taken to hold `app_scopes` (set "
        "them: without, the config is refused), then refused again; see Restarts and rollouts"
    ),
    "limits.report_tokens": (
        "tokens with a report section of their own, the busiest; the rest are counted together "
        "as `other`"
    ),
    "budget.mode": (
        "the budget governor: `off`, `report` (count what it would refuse) or `enforce`; see "
        "The daily token budget"
    ),
    "budget.app": (
        "this app's name for its count in a shared store (apps sharing a Redis keep apart)"
    ),
    "budget.daily_tokens": (
        "a company's daily budget until Pipedrive's `x-daily-ratelimit-token-limit` says otherwise"
    ),
    "budget.share": ("the part (0 to 1) of each company's daily budget this app may spend"),
    "budget.reserve": ("the part (0 to 1) of that share kept for `budget.critical`"),
    "budget.critical": (
        'endpoints named as the report names them (`"GET /v1/users/me"`) that may spend the '
        "reserve; checked against the catalogue"
    ),
    "listen.tls.cert_file": (
        "with `listen.tls.key_file`: the certificate chain and its key (PEM, relative to the "
        "config file): serve HTTPS (TLS 1.2 and later); both are read again on `SIGHUP` (a "
        "renewed certificate, in place)"
    ),
    "listen.tls.key_file": ("the private key of `listen.tls.cert_file`"),
    "admin_listen.host": (
        "with `admin_listen.port`: serve `/_proxy/*` there instead of on the main port (the "
        "host defaults to `127.0.0.1`)"
    ),
    "admin_listen.port": ("the admin listener's port"),
    "admin_listen.tls.cert_file": ("as `listen.tls.cert_file`, for the admin listener"),
    "admin_listen.tls.key_file": ("as `listen.tls.key_file`, for the admin listener"),
    "budget.burst.oauth": (
        "calls an OAuth token may make in any 2-second span (Pipedrive's Lite plan: 80)"
    ),
    "budget.burst.api_token": (
        "calls a personal API token may make in any 2-second span (Lite: 20)"
    ),
}
