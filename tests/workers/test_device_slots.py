"""A worker machine that offers its devices to jobs of any width: `rodin worker --device cpu
--devices 2` (two CPU cores as two devices, gloo), one slot process per device sharing them
through workers/devices.py.

A 1-device job holds one device while a 2-device job is submitted: the 2-device job waits,
`queued`, held by the other slot, while one device is free, and runs once the first job ends;
both succeed, each on the devices it was handed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import Rodin, stop_process, until

TINY = ["--patches", "4", "--points", "128", "--bottleneck", "32", "--hidden", "32", "--layers", "1",
        "--batch-size", "4", "--val-fraction", "0.25", "--checkpoint-every", "1000"]

#: Fixtures that start a real worker: their tests are `slow` (tests/conftest.py).
SLOW_FIXTURES = ("two_devices",)


_until = partial(until, timeout=120, every=0.2)


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):  # type: ignore[no-untyped-def]
    """8 swords and a worker machine offering 2 CPU devices (slots s-slot0, s-slot1)."""
    rodin = Rodin(tmp_path_factory.mktemp("slots") / "home")
    rodin.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    log = (rodin.home / "slots.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "worker", "--hostname", "s",
                             "--device", "cpu", "--devices", "2", "--queues", "train,infer"],
                            env=rodin.env, stdout=log, stderr=subprocess.STDOUT, cwd=rodin.worker_cwd)
    try:
        for slot in ("s-slot0", "s-slot1"):
            rodin._wait_ready(slot, proc, log_name="slots")
        yield rodin
    finally:
        stop_process(proc)


def _job(rodin: Rodin, job_id: int) -> dict:
    return rodin.json("status", str(job_id))


def _holder_of(rodin: Rodin, job_id: int) -> str | None:
    """The slot whose heartbeat says it holds the job (running it, or waiting for devices)."""
    for w in rodin.json("workers")["workers"]:
        if w["current_job_id"] == job_id:
            return str(w["hostname"])
    return None


def test_a_two_device_job_waits_for_the_device_a_one_device_job_holds(two_devices: Rodin) -> None:
    rodin = two_devices
    narrow = rodin.json("submit", "train", "--dataset", "swords", "--epochs", "250", *TINY)["job_id"]
    _until(lambda: (_job(rodin, narrow).get("progress") or {}).get("epoch", 0) >= 1, what="the 1-device job")
    wide = rodin.json("submit", "train", "--dataset", "swords", "--epochs", "2", *TINY, "--devices", "2")["job_id"]
    # The other slot takes the wide job's message and waits for a second device: the job stays
    # queued (no attempt, no lease) while the narrow job runs on the other device.
    holder = _until(lambda: _holder_of(rodin, wide), what="a slot to take the 2-device job")
    seen = [_job(rodin, j) for j in (narrow, wide)]
    assert seen[0]["status"] == "running", "the 1-device job ended before the test saw the wait: lengthen it"
    assert seen[1]["status"] == "queued" and seen[1]["attempts"] == 0
    assert holder != seen[0]["worker"]
    done = {j: _until(lambda j=j: (v := _job(rodin, j))["status"] in ("succeeded", "failed", "cancelled") and v,
                      what=f"job {j} to end") for j in (narrow, wide)}
    assert done[narrow]["status"] == "succeeded", done[narrow]["error"]
    assert done[wide]["status"] == "succeeded", done[wide]["error"]
    assert done[wide]["attempts"] == 1 and done[wide]["worker"] == holder
    # It ran once the narrow job had given its device back, on both devices.
    assert datetime.fromisoformat(done[wide]["started_at"]) >= datetime.fromisoformat(done[narrow]["finished_at"])
    assert done[narrow]["device"] in ("cpu core 0", "cpu core 1")
    cores = sorted(os.sched_getaffinity(0))[:2]
    assert done[wide]["device"] == f"cpu cores {cores[0]},{cores[1]}"
    log = (rodin.home / "slots.log").read_text()
    assert f"job {wide} is waiting for 2 device(s): 1 free (first in line)" in log
    # Nothing left behind: every device free, nobody in line.
    from workers.devices import Allocator, Offer

    allocator = Allocator(Offer.for_home(rodin.home, "cpu", [str(c) for c in cores]))
    assert allocator.free() == [str(c) for c in cores] and os.listdir(allocator.line_folder) == []


def test_a_job_wider_than_the_machine_fails_in_one_line(two_devices: Rodin) -> None:
    out = two_devices.json("submit", "train", "--dataset", "swords", "--epochs", "1", *TINY,
                           "--devices", "4", "--batch-size", "8", "--wait", expect_code=1, timeout=120)
    assert out["status"] == "failed"
    assert out["error"].startswith("the job trains on 4 devices but this worker offers 2 (cpu cores ")
    assert "\n" not in out["error"]


def test_a_cpu_worker_offers_at_most_its_cores(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    result = Rodin(tmp_path / "home").run("worker", "--device", "cpu", "--devices", str(cores + 1), timeout=60)
    assert result.returncode != 0
    assert f"this machine offers 1 to {cores} CPU core(s)" in result.stderr and "Traceback" not in result.stderr
