"""The benchmark's own instruments: what they report is what the README's figures rest on."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_harness", ROOT / "bench" / "harness.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


# Spins half a second on the first CPU it may use, then sleeps: two of them, a parent and its
# child, take that CPU from each other until they sleep.
_SPIN = """import os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
if len(sys.argv) > 1:
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
end = time.monotonic() + 0.5
while time.monotonic() < end:
    pass
if len(sys.argv) > 1:
    child.stdout.readline()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def family() -> Iterator[subprocess.Popen[bytes]]:
    """A process with a child of its own, as nginx has its workers; both spun on one CPU."""
    parent = subprocess.Popen([sys.executable, "-c", _SPIN, _SPIN], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"ready\n"
    yield parent
    for pid in reversed(_family(parent.pid)):
        os.kill(pid, 9)
    parent.wait()
    parent.stdout.close()


def _family(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(kid) for kid in kids)]


def test_schedule_makes_every_process_of_a_family_batch_and_back(
    harness: ModuleType, family: subprocess.Popen[bytes]
) -> None:
    pids = _family(family.pid)
    assert len(pids) == 2
    harness.schedule(family.pid, batch=True)
    assert [os.sched_getscheduler(pid) for pid in pids] == [os.SCHED_BATCH] * 2
    harness.schedule(family.pid, batch=False)
    assert [os.sched_getscheduler(pid) for pid in pids] == [os.SCHED_OTHER] * 2


def test_preemptions_counts_involuntary_switches_of_the_whole_family(
    harness: ModuleType, family: subprocess.Popen[bytes]
) -> None:
    each = []
    for pid in _family(family.pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                each.append(int(line.split()[1]))
    assert len(each) == 2
    assert all(count > 0 for count in each), each  # they took the CPU from each other
    # Asleep now, neither is preempted while the count is read: the sum of both.
    assert harness.preemptions(family.pid) == sum(each)
