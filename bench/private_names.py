"""What each speed bypass behind the fence (proxy/http/private.py) saves, against the public way.

    python bench/private_names.py            # about 10 minutes
    python bench/private_names.py --quick    # fewer, shorter rounds

A speed bypass touches a private name of aiohttp or prometheus_client to spare CPU; each has a
public way to fall back on. This runs the proxy as users do (``serve``, enforce mode, a static
grant, the JSON decision log written to /dev/null) once with every bypass on, once with every
bypass off, and once with each bypass off alone, side by side on one nginx upstream, and
measures each in two ways, in rounds (the targets in the same order every round, reversed
every other round, so that a machine getting busier or quieter favours neither side):

- CPU per call: each target driven by wrk in turn (32 connections), the proxy's CPU time over
  the calls it answered;
- instructions per call: each target run under valgrind's callgrind, 2,000 calls sent one
  after the other, the instructions it executed for them (after 300 calls to warm it up). A
  count, not a time: what the machine is doing meanwhile does not change it.

Each bypass's gain is the figure with it off over the figure with every bypass on, less one,
paired within each round: the median over the rounds, and the least and most of them. CPU
time on this shared machine varies by more than the gains it is to show (a target's CPU per
call moves by 20 % or more from one round to the next), so the decision rests on the
instructions: a bypass is worth keeping where its median gain in instructions per call is
over 2 %, and the bench exits 1 when one in use is not (the fence would then keep a private
name it need not).

It needs Debian's ``nginx``, ``wrk`` and ``valgrind`` (apt-get install -y nginx wrk valgrind).
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml
from harness import (
    ROOT,
    cpu_seconds,
    free_port,
    require,
    schedule,
    sequential_calls,
    wait_ready,
    wrk,
)

sys.path.insert(0, str(ROOT))
from proxy.http import private

TOKEN = "bench-token-" + "0" * 28
BODY = '{"success":true,"data":{"id":1,"title":"Big deal","value":5000,"currency":"EUR"}}'
AUTH = f'wrk.headers["Authorization"] = "Bearer {TOKEN}"\n'
KEEP_ABOVE = 0.02  # a bypass must save more than this share of the CPU per call
ALL_ON = "every bypass on"


def nginx_config(folder: Path, port: int) -> Path:
    config = folder / "nginx.conf"
    config.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        error_log {folder}/error.log warn;
        pid {folder}/nginx.pid;
        events {{ worker_connections 4096; }}
        http {{
          access_log off;
          keepalive_requests 1000000;
          server {{ listen 127.0.0.1:{port};
            location / {{ default_type application/json; return 200 '{BODY}'; }} }}
        }}
        """)
    )
    return config


@contextmanager
def nginx(folder: Path, port: int) -> Iterator[int]:
    """nginx on ``port``; its master's pid."""
    config = nginx_config(folder, port)
    subprocess.run(["nginx", "-c", str(config)], check=True, capture_output=True)
    wait_ready(f"http://127.0.0.1:{port}/")
    pid = int((folder / "nginx.pid").read_text())
    try:
        yield pid
    finally:
        subprocess.run(["nginx", "-c", str(config), "-s", "stop"], check=False, capture_output=True)


@contextmanager
def proxy(
    folder: Path, port: int, upstream: int, turned_off: list[str], counted: bool = False
) -> Iterator[int]:
    """``serve`` with the bypasses ``turned_off``; its pid. ``counted``: under callgrind."""
    document: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstream": {"api_url": f"http://127.0.0.1:{upstream}"},
        "tokens": [{"name": "bench", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                    "scopes": ["deals:read"]}],
        "logging": {"format": "json", "level": "info"},
    }  # fmt: skip
    config = folder / f"proxy-{port}.yaml"
    config.write_text(yaml.safe_dump(document))
    launcher = (
        "import sys; from proxy.http import private; private.turn_off(sys.argv[2:]); "
        "from proxy.cli import main; raise SystemExit(main(['serve', '--config', sys.argv[1]]))"
    )
    command = [sys.executable, "-c", launcher, str(config), *turned_off]
    if counted:
        out = folder / f"callgrind-{port}.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]
    child = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/_proxy/health", 120 if counted else 30)
        yield child.pid
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stderr is not None:
            child.stderr.close()


def measure(
    targets: dict[str, tuple[int, int]], upstream: int, rounds: int, seconds: int
) -> dict[str, list[float]]:
    """CPU seconds per 1,000 calls of each target, by round."""
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    for port, _ in targets.values():
        wrk(f"http://127.0.0.1:{port}/v1/deals/1", 16, 1, script=AUTH)  # warm up
    names = list(targets)
    schedule(upstream, batch=True)
    try:
        for number in range(rounds):
            for name in names if number % 2 == 0 else reversed(names):
                port, pid = targets[name]
                before = cpu_seconds(pid)
                load = wrk(f"http://127.0.0.1:{port}/v1/deals/1", 32, seconds, script=AUTH,
                           batch=True)  # fmt: skip
                used = cpu_seconds(pid) - before
                if set(load.statuses) != {"200"} or load.socket_errors:
                    sys.exit(f"bench: {name} answered {load.statuses}, {load.socket_errors} errors")
                cpu[name].append(1000 * used / load.requests)
            print(
                f"  round {number + 1}/{rounds}: "
                + ", ".join(f"{name} {values[-1] * 1000:.0f} us" for name, values in cpu.items()),
                flush=True,
            )
    finally:
        schedule(upstream, batch=False)
    return cpu


REQUEST = (
    b"GET /v1/deals/1 HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer "
    + TOKEN.encode()
    + b"\r\n\r\n"
)


def calls(port: int, count: int) -> None:
    """``count`` calls, one after the other, on one kept-alive connection; each must be a 200."""
    sequential_calls(port, REQUEST, count)


def instructions(
    targets: dict[str, tuple[int, int]], folder: Path, rounds: int, count: int
) -> dict[str, list[float]]:
    """Instructions per call of each target (each under callgrind), by round."""
    found: dict[str, list[float]] = {name: [] for name in targets}
    for port, _ in targets.values():
        calls(port, 300)  # warm: every path has run, its caches are full
    names = list(targets)
    for number in range(rounds):
        for name in names if number % 2 == 0 else reversed(names):
            port, pid = targets[name]
            control("--zero", pid)
            calls(port, count)
            control("--dump", pid)
            dumped = sorted(folder.glob(f"callgrind-{port}.out*"), key=lambda p: p.stat().st_mtime)
            totals = next(
                int(line.split()[1])
                for line in dumped[-1].read_text().splitlines()
                if line.startswith("totals:")
            )
            found[name].append(totals / count)
        print(
            f"  round {number + 1}/{rounds}: "
            + ", ".join(f"{name} {values[-1] / 1000:.0f}k" for name, values in found.items()),
            flush=True,
        )
    return found


def control(action: str, pid: int) -> None:
    subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True)


def gains(figures: dict[str, list[float]], unit: str, scale: float) -> dict[str, float]:
    """Print each target's median and each bypass's gain; the median gain of each."""
    base = figures[ALL_ON]
    print(f"\n{'target':<24} {'per call':>12}   gain over every bypass on (median, least to most)")
    medians = {}
    for name, values in figures.items():
        line = f"{name:<24} {statistics.median(values) * scale:>9.1f} {unit}"
        if name != ALL_ON:
            paired = [off / on - 1 for off, on in zip(values, base, strict=True)]
            medians[name] = statistics.median(paired)
            line += f"   {medians[name]:+7.1%} ({min(paired):+.1%} to {max(paired):+.1%})"
        print(line)
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    require("nginx", "wrk", "valgrind", "callgrind_control")
    rounds, seconds, counted_rounds, count = (4, 2, 2, 500) if args.quick else (10, 4, 4, 2000)
    private.verify()
    speed = [item for item in private.NAMES if item.tag == "speed"]
    variants = {ALL_ON: [], "every bypass off": sorted(private.SPEED_KEYS)}
    variants |= {f"{item.key} off": [item.key] for item in speed}
    with tempfile.TemporaryDirectory(prefix="private-names-") as scratch, ExitStack() as stack:
        folder = Path(scratch)
        upstream = free_port()
        nginx_pid = stack.enter_context(nginx(folder, upstream))
        timed, counted = {}, {}
        for name, off in variants.items():
            port = free_port()
            timed[name] = (port, stack.enter_context(proxy(folder, port, upstream, off)))
            port = free_port()
            counted[name] = (port, stack.enter_context(proxy(folder, port, upstream, off, True)))
        print(f"CPU per call: {rounds} rounds of {seconds} s per target, 32 connections")
        cpu = measure(timed, nginx_pid, rounds, seconds)
        print(f"\ninstructions per call: {counted_rounds} rounds of {count} calls per target")
        counts = instructions(counted, folder, counted_rounds, count)
    print("\nCPU per call (the machine's noise included):", end="")
    gains(cpu, "us", 1e6 / 1000)
    print("\ninstructions per call (what the decision rests on):", end="")
    by_count = gains(counts, "k", 1 / 1000)
    print()
    failed = False
    for item in speed:
        gain = by_count[f"{item.key} off"]
        keep = gain > KEEP_ABOVE
        failed |= not keep
        verdict = "keep" if keep else f"not worth its private names (at most {KEEP_ABOVE:.0%})"
        print(f"{item.key}: {gain:+.1%} of the instructions per call: {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
