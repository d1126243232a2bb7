"""What the benchmarks share: starting the proxy as users do, driving it with wrk, and reading
a process's memory, CPU and descriptors from /proc."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require(*binaries: str) -> None:
    """Stop with one clear line when a tool the benchmark drives is not installed."""
    missing = [binary for binary in binaries if shutil.which(binary) is None]
    if missing:
        sys.exit(
            f"bench: {', '.join(missing)} not found: "
            f"apt-get install -y {' '.join(missing)} (Debian's packages)"
        )


def wait_ready(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {url} did not answer within {seconds:g} s")


@contextmanager
def proxy(
    document: dict[str, Any],
    workers: int = 1,
    stdout: int | IO[bytes] = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``pipedrive-scope-proxy serve`` on a config written from ``document``, until the block ends."""
    with tempfile.TemporaryDirectory(prefix="scope-proxy-bench-") as folder:
        config = Path(folder) / "proxy.yaml"
        config.write_text(yaml.safe_dump(document))
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config),
             "--workers", str(workers)],
            cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
        )  # fmt: skip
        listen = document["listen"]
        try:
            wait_ready(f"http://{listen['host']}:{listen['port']}/_proxy/health")
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def sequential_calls(port: int, request: bytes, count: int) -> None:
    """``count`` calls of ``request`` (a whole HTTP/1.1 request), one after the other, on one
    kept-alive connection; each must be answered 200, or the benchmark stops saying what came."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        pending = b""
        for _ in range(count):
            connection.sendall(request)
            while True:
                head_end = pending.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = pending[:head_end]
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    end = head_end + 4 + length
                    if len(pending) >= end:
                        if not head.startswith(b"HTTP/1.1 200 "):
                            sys.exit(f"bench: answered {head[:40]!r}")
                        pending = pending[end:]
                        break
                chunk = connection.recv(65536)
                if not chunk:
                    sys.exit("bench: the proxy closed the connection")
                pending += chunk


def children(pid: int) -> list[int]:
    """The process and its descendants (a supervisor and its workers)."""
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                for child in handle.read().split():
                    found += children(int(child))
    except OSError:
        pass
    return found


def tasks(pid: int) -> Iterator[int]:
    """The thread ids of a process and its descendants, those that ended meanwhile left out."""
    for each in children(pid):
        try:
            found = os.listdir(f"/proc/{each}/task")
        except FileNotFoundError:
            continue
        yield from (int(task) for task in found)


def _status(task: int, field: str) -> int:
    """A number from ``/proc/<task>/status`` (0 for a process that has ended)."""
    try:
        with open(f"/proc/{task}/status") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, in MiB."""
    return sum(_status(each, "VmRSS:") for each in children(pid)) / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its descendants so far."""
    return sum(cpu_times(pid))


def cpu_times(pid: int) -> tuple[float, float]:
    """CPU time of a process and its descendants so far: in user space (the process's own
    instructions, those valgrind counts) and in the kernel on its behalf."""
    user = system = 0
    for each in children(pid):
        try:
            with open(f"/proc/{each}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / TICKS, system / TICKS


def open_descriptors(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{each}/fd")) for each in children(pid))


@dataclass
class Load:
    """What wrk measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    socket_errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# Counts every status and prints them as JSON when the run ends, with latency percentiles.
_REPORTING = """
local statuses = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  counts = {}
  if prepare then prepare() end
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local all = {}
  for _, thread in ipairs(threads) do
    local counted = thread:get("counts")
    for status, n in pairs(counted) do all[tostring(status)] = (all[tostring(status)] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(all) do table.insert(parts, string.format('"%s": %d', status, n)) end
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "micros": %d, "p50": %d, "p99": %d, "errors": %d, "statuses": {%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.timeout, table.concat(parts, ", ")))
end
"""


# A process that only sleeps, 5 ms at a time, on one CPU, and notes how late it wakes: how long
# that CPU itself was not available (the host, the kernel), whatever runs on it.
_STALL_PROBE = r"""
import os, signal, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
longest = 0.0
def report(*_):
    print(f"{longest:.3f}", flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, report)
print("ready", flush=True)
while True:
    started = time.perf_counter()
    time.sleep(0.005)
    longest = max(longest, (time.perf_counter() - started - 0.005) * 1000)
"""


@dataclass
class Stalls:
    """How long, at most, a CPU was not available."""

    longest_ms: float = 0.0


@contextmanager
def stalls(cpu: int) -> Iterator[Stalls]:
    """Watch ``cpu`` for stalls while the block runs (about 0.5% of it, 200 wake-ups a second)."""
    found = Stalls()
    probe = subprocess.Popen(
        [sys.executable, "-c", _STALL_PROBE, str(cpu)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert probe.stdout is not None
        probe.stdout.readline()  # ready
        yield found
    finally:
        probe.terminate()
        out, _ = probe.communicate(timeout=10)
        if out.strip():
            found.longest_ms = float(out)


def preemptions(pid: int) -> int:
    """How many times a process and its descendants were preempted so far (involuntary context
    switches: made to give up the CPU while they had work, all their threads counted)."""
    return sum(_status(task, "nonvoluntary_ctxt_switches:") for task in tasks(pid))


def schedule(pid: int, batch: bool) -> None:
    """Run a process, its threads and its children as ``SCHED_BATCH`` (``batch``), or as
    ordinary processes again. A batch process gets its fair share of the CPU, but when it wakes
    it does not preempt the process running: it waits for that one's slice to end."""
    policy = os.SCHED_BATCH if batch else os.SCHED_OTHER
    for task in tasks(pid):
        with suppress(ProcessLookupError):  # ended meanwhile: nothing to schedule
            os.sched_setscheduler(task, policy, os.sched_param(0))


def pin(pid: int, cpus: set[int]) -> None:
    """Keep a process, its threads and its children on these CPUs."""
    for task in tasks(pid):
        os.sched_setaffinity(task, cpus)


def starting(cpus: set[int] | None, batch: bool) -> Callable[[], None] | None:
    """What a child process runs before its program: on ``cpus`` only, as ``SCHED_BATCH``."""
    if not cpus and not batch:
        return None

    def start() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if batch:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

    return start


def wrk(
    url: str,
    connections: int,
    seconds: float,
    threads: int = 1,
    script: str = "",
    cpus: set[int] | None = None,
    batch: bool = False,
) -> Load:
    """Drive ``url`` with wrk; ``script`` (Lua) may define ``request()`` to vary the calls, and
    ``prepare()`` to build them once per thread (where ``wrk.format`` knows the Host). With
    ``cpus``, wrk runs on those CPUs only; with ``batch``, as ``SCHED_BATCH`` (see
    ``schedule``)."""

    if not float(seconds).is_integer():
        raise ValueError(f"wrk runs for whole seconds, not {seconds:g}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script + _REPORTING)
        lua = handle.name
    try:
        result = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
             "-s", lua, url],
            capture_output=True, text=True, check=False, timeout=seconds + 60,
            preexec_fn=starting(cpus, batch),
        )  # fmt: skip
    finally:
        os.unlink(lua)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"bench: wrk failed: {result.stderr.strip() or result.stdout.strip()}")
    found = json.loads(line.removeprefix("RESULT "))
    return Load(
        requests=found["requests"],
        seconds=found["micros"] / 1e6,
        p50_ms=found["p50"] / 1000,
        p99_ms=found["p99"] / 1000,
        statuses=found["statuses"],
        socket_errors=found["errors"],
    )
