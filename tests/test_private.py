"""aiohttp's and prometheus_client's private parts stay behind one fence (proxy/http/private.py):
every name is there, tagged, and checked at start-up; no other module touches one; and with
every speed bypass off, the proxy answers as it does with them on."""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.http import private, serving
from tests.conftest import ProxyFactory, envelope, grants, raw_request
from tests.fakes import FakePipedrive
from tests.processes import ROOT

LIBRARIES = ("aiohttp", "prometheus_client", "multidict", "yarl")
# What the standard library's named tuples call their API, underscore and all.
NAMED_TUPLE_API = {"_replace", "_fields", "_asdict", "_make"}


@pytest.mark.parametrize("item", private.NAMES, ids=[item.name for item in private.NAMES])
def test_each_fenced_name_is_in_the_installed_library(item: private.Private) -> None:
    assert item.tag in ("security", "speed")
    assert item.use
    assert item.shown_by
    assert item.present(), f"{item.name} ({item.tag}): gone or changed in this release"
    for shown in re.findall(r"(?:tests|bench)/[\w/]+\.py", item.shown_by):
        assert (ROOT / shown).exists(), shown


def test_speed_names_have_a_key_and_a_measured_gain_and_security_names_neither() -> None:
    for item in private.NAMES:
        assert bool(item.key) == (item.tag == "speed"), item.name
        assert bool(item.gain) == (item.tag == "speed"), "a speed name says what it saves"
    assert {"route_once", "headers_once"} == private.SPEED_KEYS


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if name not in ("proxy.http.private", "proxy.__main__"):
            yield name, path


def library_names(klass: type) -> set[str]:
    """The private names a library class of ``klass``'s bases defines or sets."""
    found: set[str] = set()
    for base in klass.__mro__:
        if not base.__module__.startswith(LIBRARIES):
            continue
        found |= {name for name in vars(base) if name.startswith("_")}
        found |= set(getattr(base, "__slots__", ()))
        with contextlib.suppress(OSError, TypeError):  # compiled: __dict__ and slots said it
            found |= set(re.findall(r"self\.(_\w+)\s*[:=]", inspect.getsource(base)))
    return {name for name in found if not name.startswith("__")}


def touches(name: str, tree: ast.Module) -> Iterator[str]:
    """Where module ``name`` imports an inner module of aiohttp or prometheus_client, reads a
    private name of another object, or, in a class built on a library's class, uses one of
    that class's private names."""
    module = importlib.import_module(name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            inner = (node.module or "").startswith(("aiohttp.", "prometheus_client."))
            if inner and node.module != "aiohttp.web":
                yield f"{name}:{node.lineno} imports from {node.module}"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            ours = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not (ours or node.attr.startswith("__") or node.attr in NAMED_TUPLE_API):
                yield f"{name}:{node.lineno} {ast.unparse(node)}"
        elif isinstance(node, ast.ClassDef):
            klass = getattr(module, node.name, None)
            theirs = library_names(klass) if isinstance(klass, type) else set()
            for inner_node in ast.walk(node):
                used = None
                if isinstance(inner_node, ast.Attribute) and isinstance(inner_node.value, ast.Name):
                    used = inner_node.attr if inner_node.value.id == "self" else None
                elif isinstance(inner_node, ast.FunctionDef):
                    used = inner_node.name
                if used is not None and used.startswith("_") and used in theirs:
                    yield f"{name}.{node.name}:{getattr(inner_node, 'lineno', 0)} {used}"


def test_no_module_but_the_fence_touches_a_private_name() -> None:
    touched = [
        where for name, path in modules() for where in touches(name, ast.parse(path.read_text()))
    ]
    assert touched == [], "\n".join(touched)


def test_the_fence_test_finds_a_private_name_where_one_is_touched() -> None:
    tree = ast.parse(
        "class X(aiohttp.TCPConnector):\n"
        "    def f(self):\n"
        "        return self._factory\n"
        "def g(server):\n"
        "    return server._connections\n"
    )
    found = list(touches("proxy.http.forward", tree))
    assert any("server._connections" in where for where in found)


def test_a_missing_security_name_stops_the_proxy_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [parser] = [item for item in private.NAMES if "HttpRequestParserPy" in item.name]
    gone = private.Private(parser.name, parser.tag, parser.use, parser.shown_by, lambda: False)
    monkeypatch.setattr(
        private, "NAMES", tuple(gone if item is parser else item for item in private.NAMES)
    )
    with pytest.raises(serving.ServeError, match=re.escape("HttpRequestParserPy.parse_message")):
        serving.fenced()


@pytest.fixture
def public_ways() -> Iterator[None]:
    """Every speed bypass off, as where their names are gone; on again afterwards."""
    private.turn_off(private.SPEED_KEYS)
    assert private.verify() == []
    yield
    private.turn_off(())
    private.verify()


def test_a_missing_speed_name_takes_the_public_way(monkeypatch: pytest.MonkeyPatch) -> None:
    [once] = [item for item in private.NAMES if item.key == "headers_once"]
    gone = private.Private(once.name, "speed", once.use, once.shown_by, lambda: False,
                           key="headers_once")  # fmt: skip
    monkeypatch.setattr(
        private, "NAMES", tuple(gone if item is once else item for item in private.NAMES)
    )
    try:
        assert [item.key for item in private.verify()] == ["headers_once"]
        assert not private.in_use("headers_once")
        assert private.in_use("route_once")
    finally:
        monkeypatch.undo()
        private.verify()
    assert private.in_use("headers_once")


@pytest.mark.usefixtures("public_ways")
async def test_with_every_speed_bypass_off_the_proxy_answers_alike(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    assert not any(private.in_use(key) for key in private.SPEED_KEYS)
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    auth = {"Authorization": "Bearer reader"}
    status, headers, _ = await raw_request(
        client,
        b"GET /v1/deals/1 HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer reader\r\n"
        b"X-Trace: a\r\nx-trace: b\r\nConnection: close\r\n\r\n",
    )
    assert (status, headers["x-scope-proxy-decision"]) == (200, "allow")
    refused = await client.delete("/v1/deals/1", headers=auth)
    assert refused.status == 403
    assert envelope(await refused.read())["scope_proxy"]["reason"] == "out_of_scope"
    unknown = await client.get("/v1/dealz", headers=auth)
    assert unknown.status == 404
    [seen] = upstream.received
    assert seen.header("user-agent") == []
    assert seen.header("accept") == []
    assert seen.header("x-trace") == ["a", "b"], "every spelling of a name goes up as sent"
    metrics = await (await client.get("/_proxy/metrics")).text()
    assert "scope_proxy_request_duration_seconds_count 3.0" in metrics
