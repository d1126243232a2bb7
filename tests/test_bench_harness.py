"""The benchmark's own instruments: what they report is what the README's figures rest on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.processes import load_script

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_script(ROOT / "bench" / "harness.py", "bench_harness")


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


def test_schedule_reaches_every_thread(harness: ModuleType) -> None:
    """nginx may run threads (its thread pools): each thread has its own policy."""
    threaded = subprocess.Popen(
        [sys.executable, "-c", "import threading, time\n"
         "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert threaded.stdout is not None
        assert threaded.stdout.readline() == b"ready\n"
        tasks = [int(task) for task in os.listdir(f"/proc/{threaded.pid}/task")]
        assert len(tasks) == 2
        harness.schedule(threaded.pid, batch=True)
        assert [os.sched_getscheduler(task) for task in tasks] == [os.SCHED_BATCH] * 2
    finally:
        threaded.kill()
        threaded.wait()
        assert threaded.stdout is not None
        threaded.stdout.close()


def test_schedule_passes_over_a_process_that_has_ended(harness: ModuleType) -> None:
    """The bench restores nginx's scheduling in a ``finally``: if nginx died, what went wrong
    first is what the run reports, not the restoring."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    harness.schedule(ended.pid, batch=False)


@pytest.mark.parametrize(("batch", "policy"), [(True, os.SCHED_BATCH), (False, os.SCHED_OTHER)])
def test_wrk_starts_as_a_batch_process_when_asked(
    harness: ModuleType, batch: bool, policy: int
) -> None:
    cpu = min(os.sched_getaffinity(0))
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        preexec_fn=harness.starting({cpu}, batch),
    )
    try:
        assert os.sched_getscheduler(child.pid) == policy
        assert os.sched_getaffinity(child.pid) == {cpu}
    finally:
        child.kill()
        child.wait()
    assert harness.starting(None, False) is None  # nothing to do before wrk starts
