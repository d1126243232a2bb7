"""The proxy's own endpoints under ``/_proxy/``: health, readiness, metrics and the report."""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web
from yarl import URL

from proxy import __version__
from proxy.core.canonical import CanonicalRequest
from proxy.core.catalog import Catalogue
from proxy.core.errors import MethodNotAllowed, NotFound, StoreUnavailable, UnsupportedMediaType
from proxy.http.budget import Budget
from proxy.http.forward import forward_proxy
from proxy.http.logs import get_logger
from proxy.http.metrics import CONTENT_TYPE
from proxy.http.responses import json_response
from proxy.http.state import (
    BUDGET,
    METRICS,
    RECORDER,
    RUNTIME,
    STORE,
    UNKNOWN_TOKENS,
    store_failed,
)
from proxy.report.budget import with_alternatives
from proxy.report.html import render_html
from proxy.report.model import build_report
from proxy.stores import StoreError

_READ = ("GET", "HEAD")
# Each endpoint and the methods it takes.
ENDPOINTS = {
    "/_proxy/health": _READ,
    "/_proxy/ready": _READ,
    "/_proxy/metrics": _READ,
    "/_proxy/report": _READ,
    "/_proxy/report.html": _READ,
    "/_proxy/report/reset": ("POST",),
    "/_proxy/config": _READ,
}


async def handle_internal(request: web.Request, canonical: CanonicalRequest) -> web.StreamResponse:
    path = canonical.path
    methods = ENDPOINTS.get(path)
    if methods is None:
        raise NotFound("not one of the proxy's endpoints")
    if canonical.method not in methods:
        raise MethodNotAllowed(methods)
    if path == "/_proxy/health":
        catalogue = request.app[RUNTIME].current.catalogue.provenance.document()
        return json_response(
            {"status": "ok", "version": __version__, "pid": os.getpid(), "catalogue": catalogue}
        )
    if path == "/_proxy/ready":
        runtime = request.app[RUNTIME].current
        try:
            await request.app[STORE].ping()
            store_ok = True
        except StoreError:
            store_ok = False
        body = {"catalogue": len(runtime.catalogue), "store": "ok" if store_ok else "unavailable"}
        return json_response(body, status=200 if store_ok else 503)
    if path == "/_proxy/config":  # the running config, as Envoy's config_dump shows its own
        runtime = request.app[RUNTIME].current
        shown = runtime.config.shown()
        shown["catalogue"] = runtime.catalogue.provenance.version
        upstream = runtime.config.upstream
        shown["egress"] = {  # which forward proxy each upstream goes through, environment's too
            origin: _shown_proxy(forward_proxy(upstream.proxy, URL(origin))[0])
            for origin in dict.fromkeys((upstream.api_url, upstream.oauth_url))
        }
        return json_response(shown)
    if path == "/_proxy/metrics":
        response = web.Response(body=request.app[METRICS].render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response
    return await handle_report(request, path)


async def handle_report(request: web.Request, path: str) -> web.StreamResponse:
    """The overreach report (JSON or HTML), and ``POST /_proxy/report/reset``."""
    recorder = request.app[RECORDER]
    resetting = path.endswith("/reset")
    if resetting and request.content_type != "application/json":
        # A browser sends a cross-site POST without asking first only with a "simple" type
        # (text/plain, a form): requiring JSON makes any other origin's page ask, and fail.
        raise UnsupportedMediaType("send the reset as Content-Type: application/json")
    try:
        if resetting:
            since = await recorder.reset()
            get_logger().info("report_reset", since=since)  # report --log starts over here too
            return json_response({"reset": True, "since": since})
        calls = await recorder.calls()
        seen = await recorder.seen()
    except StoreError as error:
        store_failed(request.app, "report", str(error))
        raise StoreUnavailable("cannot read the report's counters now") from error
    runtime = request.app[RUNTIME].current
    config = runtime.config
    report = build_report(
        calls,
        config.policy.app_scopes,
        config.limits.report_tokens,
        mode=config.policy.mode,
        since=recorder.since,
        catalogue=runtime.catalogue,
        seen=seen,
        unknown_tokens=request.app[UNKNOWN_TOKENS].count(),
        budget=_budget(request.app[BUDGET], runtime.catalogue),
    )
    if path.endswith(".html"):
        return web.Response(text=render_html(report), content_type="text/html")
    return json_response(report)


def _budget(budget: Budget, catalogue: Catalogue) -> dict[str, Any] | None:
    """The report's budget section, with a budget configured."""
    if budget.governor.policy.mode == "off":
        return None
    section = budget.section()
    section["companies"] = with_alternatives(section["companies"], catalogue)
    return section


def _shown_proxy(proxy: URL | None) -> str | None:
    return str(proxy.with_user(None)) if proxy is not None else None
