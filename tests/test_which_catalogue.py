"""Which catalogue is running: ``check``, ``/_proxy/health``, the ``startup`` and ``reloaded``
events and ``scope_proxy_build_info`` name its version (the date it was last reviewed against
Pipedrive and a digest of its sources), so that an operator sees a replica on an old one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from proxy import __version__
from proxy.cli import main
from proxy.config import load
from proxy.core.catalog import load_catalogue, shipped_document
from proxy.http.app import create_app
from proxy.http.serving import reload
from proxy.http.state import METRICS, RUNTIME
from tests.conftest import ProxyFactory, grants
from tests.processes import write_config

SHIPPED = load_catalogue().provenance
EXTRA = "endpoints:\n  - {version: v1, method: GET, path: /betaThings, scopes: [deals:read]}\n"


def build_info(text: str) -> dict[tuple[str, str], float]:
    found = re.findall(
        r'^scope_proxy_build_info\{catalogue="([^"]+)",version="([^"]+)"\} (\S+)$',
        text, re.MULTILINE,
    )  # fmt: skip
    return {(version, catalogue): float(value) for catalogue, version, value in found}


def test_the_version_is_the_review_date_and_a_digest_of_every_source() -> None:
    document = shipped_document()
    reviewed = max(change["reviewed"] for change in document["changes"])
    assert re.fullmatch(rf"{reviewed}\.[0-9a-f]{{8}}", SHIPPED.version)
    assert dict(SHIPPED.sources) == {
        name: digest[:12] for name, digest in document["inputs"].items()
    }
    assert set(dict(SHIPPED.sources)) >= {"openapi-v1.yaml", "openapi-v2.yaml", "overlay.yaml"}
    # Another source (one byte of one file) is another version.
    changed = dict(document, inputs={**document["inputs"], "overlay.yaml": "0" * 64})
    from proxy.core.catalog import provenance

    assert provenance(changed).version != SHIPPED.version
    assert provenance(changed).version.startswith(f"{reviewed}.")


def test_check_names_the_catalogue_and_the_extra_files_that_change_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", write_config(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"catalogue: {SHIPPED.described()}"
    (tmp_path / "extra.yaml").write_text(EXTRA)
    assert main(["check", "--config", write_config(tmp_path, catalog_extra=["extra.yaml"])]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert re.match(rf"catalogue: {re.escape(SHIPPED.version)}\+extra\.[0-9a-f]{{8}}, ", line)
    assert line.endswith(f"; extra: {tmp_path / 'extra.yaml'})")


async def test_health_and_the_startup_event_name_the_running_catalogue(
    make_proxy: ProxyFactory,
) -> None:
    with capture_logs() as events:
        client = await make_proxy()
    health = await (await client.get("/_proxy/health")).json()
    assert health["catalogue"] == {
        "version": SHIPPED.version, "reviewed": SHIPPED.reviewed,
        "sources": dict(SHIPPED.sources), "extra": [],
    }  # fmt: skip
    [startup] = [e for e in events if e["event"] == "startup"]
    assert startup["catalogue"] == SHIPPED.version
    metrics = await (await client.get("/_proxy/metrics")).text()
    assert build_info(metrics) == {(__version__, SHIPPED.version): 1.0}


def test_a_reload_that_changes_the_catalogue_moves_build_info_to_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, upstream={"api_url": "http://127.0.0.1:9"}, tokens=grants(t=[]))
    config, catalogue = load(path)
    app = create_app(config, catalogue)
    (tmp_path / "extra.yaml").write_text(EXTRA)
    write_config(tmp_path, upstream={"api_url": "http://127.0.0.1:9"}, tokens=grants(t=[]),
                 catalog_extra=["extra.yaml"])  # fmt: skip
    with capture_logs() as events:
        reload(app, path, config)
    running = app[RUNTIME].current.catalogue.provenance.version
    assert running.startswith(f"{SHIPPED.version}+extra.")
    [reloaded] = [e for e in events if e["event"] == "reloaded"]
    assert reloaded["catalogue"] == running
    assert build_info(app[METRICS].render().decode()) == {
        (__version__, SHIPPED.version): 0.0, (__version__, running): 1.0,
    }  # fmt: skip
