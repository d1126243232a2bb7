"""Running the proxy: one worker's life (listen, reload on SIGHUP, drain on SIGTERM/SIGINT), and
the supervisor of several workers sharing one port.

The CLI's ``serve`` checks what the user asked for and hands over to ``serve`` here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace

from aiohttp import web

from proxy.app import create_app
from proxy.catalog import Catalogue, CatalogueError
from proxy.config import Config, ConfigError, Listen, load
from proxy.logs import configure_logging, get_logger
from proxy.metrics import MULTIPROCESS_DIR
from proxy.server import ProxyRunner
from proxy.state import RUNTIME, Runtime

SHUTDOWN_SECONDS = 30.0


class ServeError(Exception):
    """Why the proxy could not start serving: printed as one line, exit 2."""


def serve(config_path: str | None, config: Config, catalogue: Catalogue, workers: int) -> int:
    """Serve until told to stop; with ``workers`` > 1, as that many processes on one port."""
    if workers == 1:
        asyncio.run(run_worker(config_path, config, catalogue, reuse_port=False))
        return 0
    return supervise(config_path, config.listen, workers)


async def run_worker(
    config_path: str | None, config: Config, catalogue: Catalogue, reuse_port: bool
) -> None:
    """Serve until SIGTERM or SIGINT; finish in-flight requests (bounded); SIGHUP reloads."""
    configure_logging(config.logging.format, config.logging.level)
    app = create_app(config, catalogue)
    runner = ProxyRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await runner.setup()
    site = web.TCPSite(
        runner, config.listen.host, config.listen.port, reuse_port=reuse_port or None
    )
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        where = f"{config.listen.host}:{config.listen.port}"
        problem = os.strerror(error.errno) if error.errno else str(error)
        raise ServeError(f"cannot listen on {where}: {problem}") from None
    for address in runner.addresses:
        get_logger().info("listening", host=address[0], port=address[1], pid=os.getpid())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app, config_path, config)
    try:
        await stop.wait()
        get_logger().info("shutting_down", grace_seconds=SHUTDOWN_SECONDS)
    finally:
        await runner.cleanup()


def reload(app: web.Application, config_path: str | None, running: Config) -> None:
    """Swap in a new config and catalogue; keep the old ones if the new ones are invalid."""
    try:
        config, catalogue = load(config_path)
    except (ConfigError, CatalogueError) as error:
        get_logger().error("reload_failed", problem=str(error))
        return
    config = replace(config, listen=running.listen)
    app[RUNTIME].current = Runtime.build(config, catalogue)
    restart_only = [
        key
        for key in ("upstream", "store", "logging")
        if getattr(config, key) != getattr(running, key)
    ]
    get_logger().info(
        "reloaded",
        mode=config.policy.mode,
        catalogue_size=len(catalogue),
        needs_restart=restart_only,
    )


def _worker_main(config_path: str | None, listen: Listen) -> None:
    try:
        config, catalogue = load(config_path)
        config = replace(config, listen=listen)
        asyncio.run(run_worker(config_path, config, catalogue, reuse_port=True))
    except (ConfigError, ServeError) as error:
        print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
        sys.exit(2)


def supervise(config_path: str | None, listen: Listen, workers: int) -> int:
    """Run ``workers`` processes on one port (SO_REUSEPORT); stop them all together."""
    # Workers count into files in one directory, so any of them can report the sum.
    metrics_dir = tempfile.mkdtemp(prefix="pipedrive-scope-proxy-metrics-")
    os.environ[MULTIPROCESS_DIR] = metrics_dir
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(config_path, listen), name=f"worker-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = 0
    try:
        while any(process.is_alive() for process in processes):
            for process in processes:
                process.join(timeout=0.5)
                if process.exitcode not in (None, 0) and status == 0:
                    status = process.exitcode if process.exitcode > 0 else 1
                    forward(signal.SIGTERM, None)  # one worker failed: stop the rest
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
