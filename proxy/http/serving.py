"""Running the proxy: one worker's life (listen, reload on SIGHUP, drain on SIGTERM/SIGINT), and
the supervisor of several workers sharing one port.

The CLI's ``serve`` checks what the user asked for and hands over to ``serve`` here.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.config import NO_OVERRIDES, Config, ConfigError, Listen, Overrides, load, load_config
from proxy.core.catalog import Catalogue, CatalogueError
from proxy.http import private
from proxy.http.app import create_app
from proxy.http.logs import SINK, configure_logging, get_logger
from proxy.http.metrics import MULTIPROCESS_DIR
from proxy.http.server import ProxyRunner
from proxy.http.state import BUDGET, LISTENERS, METRICS, RUNTIME, Runtime

SHUTDOWN_SECONDS = 30.0


class ServeError(Exception):
    """Why the proxy could not start serving: printed as one line, exit 2."""


def serve(
    config_path: str | None,
    config: Config,
    catalogue: Catalogue,
    workers: int,
    overrides: Overrides = NO_OVERRIDES,
) -> int:
    """Serve until told to stop; with ``workers`` > 1, as that many processes on one port."""
    if workers == 1:
        run(run_worker(config_path, config, catalogue, supervised=False, overrides=overrides))
        return 0
    return supervise(config_path, config, workers, overrides)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the event loop: uvloop's where it is installed (the ``fast`` extra: about 10% less
    CPU per request, see bench/performance.py), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def run_worker(
    config_path: str | None,
    config: Config,
    catalogue: Catalogue,
    supervised: bool,
    overrides: Overrides = NO_OVERRIDES,
) -> None:
    """Serve until SIGTERM or SIGINT; finish in-flight requests (bounded); SIGHUP reloads.
    A supervised worker shares its port with its siblings, and stops if its supervisor dies."""
    configure_logging(config.logging.format, config.logging.level)
    fenced()
    app = create_app(config, catalogue)
    app[STARTED_WITH] = _as_the_file_says(config_path, config)
    runner = ProxyRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await runner.setup()
    contexts = app[TLS_CONTEXTS] = _tls_contexts(config)
    site = web.TCPSite(
        runner, config.listen.host, config.listen.port, reuse_port=supervised or None,
        ssl_context=contexts.get("listen"),
    )  # fmt: skip
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        where = f"{config.listen.host}:{config.listen.port}"
        problem = os.strerror(error.errno) if error.errno else str(error)
        raise ServeError(f"cannot listen on {where}: {problem}") from None
    main_addresses = list(runner.addresses)
    admin = config.admin_listen
    if admin is not None:
        admin_site = web.TCPSite(
            runner, admin.host, admin.port, reuse_port=supervised or None,
            ssl_context=contexts.get("admin_listen"),
        )  # fmt: skip
        try:
            await admin_site.start()
        except OSError as error:
            await runner.cleanup()
            problem = os.strerror(error.errno) if error.errno else str(error)
            raise ServeError(
                f"cannot listen on {admin.host}:{admin.port} (admin_listen): {problem}"
            ) from None
        app[LISTENERS].admin_ports = frozenset({admin.port})
    settle_heap()
    for address in runner.addresses:
        listener = "main" if address in main_addresses else "admin"
        get_logger().info(
            "listening", host=address[0], port=address[1], pid=os.getpid(), listener=listener
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app, config_path, config, overrides)
    watching = asyncio.create_task(_watch_parent(stop)) if supervised else None
    try:
        await stop.wait()
        get_logger().info("shutting_down", grace_seconds=SHUTDOWN_SECONDS)
    finally:
        if watching is not None:
            watching.cancel()
        await runner.cleanup()
        SINK.flush()


def fenced() -> None:
    """Check aiohttp's private parts the proxy uses (``proxy.http.private``): a missing one it
    needs for its guarantees stops it (exit 2, naming it); a missing speed bypass is said once
    and the public way taken."""
    try:
        missing = private.verify()
    except private.FenceError as error:
        raise ServeError(str(error)) from None
    for item in missing:
        get_logger().warning("public_way_taken", name=item.name, bypass=item.key, use=item.use)


def settle_heap() -> None:
    """Move what start-up (or a reload) built, the catalogue above all, out of the garbage
    collector's sight: it lives as long as the process, and a full collection walking its ~55,000
    objects stalls every request in flight (about 15 ms on a 2-core machine; under 1 ms once
    frozen). What an earlier call froze is released first, so that a reload's old catalogue
    can still be reclaimed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when the supervisor is gone (killed, say): no worker outlives it."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells of a parent's death
        await asyncio.sleep(1.0)
    stop.set()


# The config as its file gave it at start, before --host and --port: what a reload compares with.
STARTED_WITH = web.AppKey("started_with", Config)
# Each TLS listener's server context, by its config key: a reload loads renewed files into it.
TLS_CONTEXTS: web.AppKey[dict[str, ssl.SSLContext]] = web.AppKey("tls_contexts")


def _as_the_file_says(config_path: str | None, running: Config) -> Config:
    try:
        return load_config(config_path)
    except ConfigError:  # changed since serve read it a moment ago: compare with what runs
        return running


def reload(
    app: web.Application,
    config_path: str | None,
    running: Config,
    overrides: Overrides = NO_OVERRIDES,
) -> None:
    """Swap in a new config and catalogue; keep the old ones if the new ones are invalid.

    What a running process cannot change (where it listens, its upstream client, its store,
    its logging) stays as it started, and the ``reloaded`` event names those the file now sets
    differently from the file the process started with: they take a restart. (``--host`` and
    ``--port`` override the file's ``listen`` for as long as the process runs.)"""
    try:
        config, catalogue = load(config_path)
        _reload_certificates(app, running)
    except (ConfigError, CatalogueError) as error:
        app[METRICS].reloads.labels("failed").inc()
        get_logger().error("reload_failed", problem=str(error))
        return
    app[METRICS].reloads.labels("applied").inc()
    app[METRICS].last_reload.set_to_current_time()
    started = app.get(STARTED_WITH, running)
    restart_only = [key for key in RESTART_ONLY if getattr(config, key) != getattr(started, key)]
    config = overrides.apply(config)  # serve --mode and --log-level still hold
    config = replace(config, **{key: getattr(running, key) for key in RESTART_ONLY})
    before = app[RUNTIME].current
    applied = _changed(before.config, config)
    if app.get(TLS_CONTEXTS):
        applied.append("tls")  # each listener's certificate and key, read again
    if (
        catalogue.provenance != before.catalogue.provenance
        or len(catalogue) != len(before.catalogue)
    ) and "catalog_extra" not in applied:
        applied.append("catalogue")
    app[RUNTIME].current = Runtime.build(config, catalogue)
    app[BUDGET].reconfigure(config.budget)
    app[METRICS].running(__version__, catalogue.provenance.version)
    settle_heap()
    app_scopes = config.policy.app_scopes
    get_logger().info(
        "reloaded",
        mode=config.policy.mode,
        app_scopes=sorted(app_scopes) if app_scopes is not None else None,
        catalogue_size=len(catalogue),
        catalogue=catalogue.provenance.version,
        applied=applied,
        needs_restart=restart_only,
        budget=config.budget.mode,
    )


def _tls_contexts(config: Config) -> dict[str, ssl.SSLContext]:
    """A server context for each listener with ``tls``, by its key in the config."""
    contexts = {}
    for key, listen in (("listen", config.listen), ("admin_listen", config.admin_listen)):
        if listen is not None and listen.tls is not None:
            contexts[key] = listen.tls.context(f"{key}.tls")
    return contexts


def _reload_certificates(app: web.Application, running: Config) -> None:
    """Read each listener's certificate and key files again into its running context (a
    renewed certificate, in place): new connections present it. Both load first, so that a
    bad pair changes neither."""
    running_tls = [
        (key, getattr(running, key).tls, context)
        for key, context in app.get(TLS_CONTEXTS, {}).items()
    ]
    for key, tls, _ in running_tls:
        tls.context(f"{key}.tls")  # each pair loads: or the reload fails, naming the file
    for key, tls, context in running_tls:
        tls.load_into(context, f"{key}.tls")


# What a running process keeps as it started: where it listens, its upstream client and
# timeouts, its store, its logging, its connection limits.
RESTART_ONLY = ("listen", "admin_listen", "upstream", "store", "logging", "limits")
_POLICY = ("mode", "app_scopes", "unknown_tokens", "api_tokens", "unknown_endpoints")
_APPLIED = ("tokens", "public_url", "rewrite_api_domain", "catalog_extra", "warmup", "budget")


def _changed(before: Config, after: Config) -> list[str]:
    """The config keys a reload changes, as the YAML names them."""
    changed = [key for key in _POLICY if getattr(before.policy, key) != getattr(after.policy, key)]
    return changed + [key for key in _APPLIED if getattr(before, key) != getattr(after, key)]


def _worker_main(config_path: str | None, listen: Listen, overrides: Overrides) -> None:
    try:
        config, catalogue = load(config_path)
        config = replace(overrides.apply(config), listen=listen)
        run(run_worker(config_path, config, catalogue, supervised=True, overrides=overrides))
    except (ConfigError, ServeError) as error:
        print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
        sys.exit(WORKER_CANNOT_START)


WORKER_CANNOT_START = 2  # a worker's exit status that restarting would not mend
RESTART_FIRST, RESTART_MOST = 0.5, 30.0  # seconds before restarting a worker that died
STABLE_AFTER = 30.0  # a worker that ran this long starts its backoff afresh when it dies


@dataclass
class _Slot:
    """One of the N workers the supervisor keeps."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


def supervise(
    config_path: str | None, config: Config, workers: int, overrides: Overrides = NO_OVERRIDES
) -> int:
    """Keep ``workers`` processes serving one port (SO_REUSEPORT): one that dies is restarted,
    with backoff, and the others serve meanwhile. SIGTERM and SIGINT stop them all (each drains
    its in-flight calls), SIGHUP reaches every one. Exit 0, or 2 when a worker cannot start."""
    ensure_free(config.listen)
    if config.admin_listen is not None:
        ensure_free(config.admin_listen, " (admin_listen)")
    # Workers count into files in one directory, so any of them can report the sum.
    try:
        metrics_dir = tempfile.mkdtemp(prefix="pipedrive-scope-proxy-metrics-")
    except OSError as error:  # a read-only root file system with nothing mounted on /tmp
        raise ServeError(
            f"--workers: cannot make the workers' metrics directory in {tempfile.gettempdir()}: "
            f"{error.strerror or error}; mount a writable directory there or set TMPDIR"
        ) from None
    configure_logging(config.logging.format, config.logging.level)
    fenced()  # said once here, before any worker starts (each checks again for itself)
    log = get_logger()
    os.environ[MULTIPROCESS_DIR] = metrics_dir
    context = multiprocessing.get_context("spawn")
    slots = [_Slot(index) for index in range(workers)]
    stopping: list[int] = []
    status = 0

    def start(slot: _Slot) -> None:
        process = context.Process(
            target=_worker_main,
            args=(config_path, config.listen, overrides),
            name=f"worker-{slot.index}",
        )
        process.start()
        slot.process, slot.started = process, time.monotonic()
        log.info("worker_started", worker=slot.index, pid=process.pid)

    def signal_all(signum: int) -> None:
        for slot in slots:
            process = slot.process
            if process is not None and process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    def on_signal(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        signal_all(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        for slot in slots:
            start(slot)
        while True:
            now = time.monotonic()
            for slot in slots:
                process = slot.process
                if process is not None and process.exitcode is not None:
                    slot.process = None
                    if stopping:
                        continue
                    if process.exitcode == WORKER_CANNOT_START:
                        status = WORKER_CANNOT_START
                        stopping.append(signal.SIGTERM)
                        signal_all(signal.SIGTERM)
                        continue
                    slot.failures = 1 if now - slot.started > STABLE_AFTER else slot.failures + 1
                    delay = min(RESTART_FIRST * 2 ** (slot.failures - 1), RESTART_MOST)
                    slot.restart_at = now + delay
                    log.warning(
                        "worker_exited",
                        worker=slot.index,
                        pid=process.pid,
                        exit=_exit_description(process.exitcode),
                        restart_in=delay,
                    )
                if slot.process is None and not stopping and now >= slot.restart_at:
                    if not any(other.process is not None for other in slots):
                        # Every worker is down, so the port is free for anyone: another
                        # server may have taken it meanwhile, and would be joined.
                        try:
                            ensure_free(config.listen)
                            if config.admin_listen is not None:
                                ensure_free(config.admin_listen, " (admin_listen)")
                        except ServeError as error:
                            log.error("port_taken", problem=str(error))
                            print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
                            status = WORKER_CANNOT_START
                            stopping.append(signal.SIGTERM)
                            continue
                    start(slot)
            alive = [slot.process for slot in slots if slot.process is not None]
            if stopping and not alive:
                return status
            sentinels = [process.sentinel for process in alive]
            multiprocessing.connection.wait(sentinels, timeout=0.2)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def ensure_free(listen: Listen, which: str = "") -> None:
    """Refuse a port another server listens on, as a single process does.

    Workers share their port with SO_REUSEPORT, which would just as well let them join another
    server's workers there (a second ``serve --workers N``, in another mode, say) and split its
    traffic. So the supervisor first binds each address once, as a lone server would (with
    SO_REUSEADDR, which a listening socket still refuses, but not one in TIME_WAIT), and lets
    it go. Two supervisors started in the same instant can still both pass; a running one is
    never joined.
    """
    if listen.port == 0:
        return  # a free port of the system's choosing: nothing to share
    where = f"{listen.host}:{listen.port}{which}"
    try:
        addresses = socket.getaddrinfo(
            listen.host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        raise ServeError(f"cannot listen on {where}: {error.strerror or error}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio binds it
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                problem = os.strerror(error.errno) if error.errno else str(error)
                raise ServeError(f"cannot listen on {where}: {problem}") from None


def _exit_description(code: int) -> str:
    """``status 1``, or ``signal SIGKILL`` for a worker a signal ended."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
