"""The device allocator of a machine that offers its devices (workers/devices.py): all or nothing,
first come first served (a wide job is not starved by narrow ones), a job wider than the machine
refused at once, and a dead process's devices and place in line freed by the kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import ROOT, until
from workers.devices import Allocator, Grant, Line, Offer, TooWide


def _offer(tmp_path: Path, count: int, kind: str = "cpu") -> Offer:
    return Offer(kind, tuple(str(i) for i in range(count)), tmp_path / "locks")


class Waiter(threading.Thread):
    """A job waiting in line in a thread of this process (flock is per open file, so threads
    of one process compete for the locks as processes do)."""

    def __init__(self, allocator: Allocator, count: int):
        super().__init__(daemon=True)
        self.allocator, self.count = allocator, count
        self.lines: list[Line] = []
        self.grant: Grant | None = None
        self.done = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        self.grant = self.allocator.acquire(self.count, wanted=lambda: not self.stop.is_set(),
                                            on_wait=self.lines.append, poll_s=0.02, check_every_s=0.05)
        self.done.set()


_until = partial(until, timeout=10.0, every=0.02)


def test_all_or_nothing_in_the_offers_order(tmp_path: Path) -> None:
    allocator = Allocator(_offer(tmp_path, 3))
    first = allocator.try_acquire(2)
    assert first is not None and first.ids == ("0", "1") and first.label() == "cpu cores 0,1"
    assert allocator.try_acquire(2) is None  # one is free: it takes none
    assert allocator.free() == ["2"]
    second = allocator.try_acquire(1)
    assert second is not None and second.ids == ("2",)
    first.release()
    assert allocator.free() == ["0", "1"]
    third = allocator.try_acquire(2)
    assert third is not None and third.ids == ("0", "1")
    for grant in (second, third):
        grant.release()
    assert allocator.free() == ["0", "1", "2"]


def test_a_job_wider_than_the_machine_is_refused_at_once(tmp_path: Path) -> None:
    allocator = Allocator(_offer(tmp_path, 2, "cuda"))
    with pytest.raises(TooWide, match=r"trains on 3 devices but this worker offers 2 \(cuda GPUs 0,1\)"):
        allocator.acquire(3)
    assert allocator.free() == ["0", "1"] and os.listdir(allocator.line_folder) == []


def test_a_wide_job_waits_and_narrow_jobs_behind_it_do_not_take_its_devices(tmp_path: Path) -> None:
    allocator = Allocator(_offer(tmp_path, 2))
    narrow = allocator.try_acquire(1)
    assert narrow is not None
    wide = Waiter(allocator, 2)
    wide.start()
    _until(lambda: wide.lines)
    assert wide.lines[0] == Line(wanted=2, free=1, ahead=0)
    # A device is free, but the wide job is in line: a narrower job behind it waits.
    assert allocator.try_acquire(1) is None
    late = Waiter(allocator, 1)
    late.start()
    _until(lambda: late.lines)
    assert late.lines[0] == Line(wanted=1, free=1, ahead=1)
    time.sleep(0.3)
    assert not wide.done.is_set() and not late.done.is_set()
    narrow.release()  # the first job ends: its device goes to the wide job, not to the late one
    assert wide.done.wait(10) and wide.grant is not None and wide.grant.ids == ("0", "1")
    time.sleep(0.2)
    assert not late.done.is_set()
    wide.grant.release()
    assert late.done.wait(10) and late.grant is not None and late.grant.ids == ("0",)
    late.grant.release()
    assert os.listdir(allocator.line_folder) == []


def test_a_waiter_no_longer_wanted_leaves_the_line(tmp_path: Path) -> None:
    allocator = Allocator(_offer(tmp_path, 1))
    held = allocator.try_acquire(1)
    assert held is not None
    waiter = Waiter(allocator, 1)
    waiter.start()
    _until(lambda: waiter.lines)
    waiter.stop.set()  # cancelled, or run by another worker
    assert waiter.done.wait(10) and waiter.grant is None
    assert os.listdir(allocator.line_folder) == []
    held.release()


HOLDER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from workers.devices import Allocator, Offer
    folder, count, ids = sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3].split(","))
    allocator = Allocator(Offer("cpu", ids, Path(folder)))
    grant = allocator.acquire(count, on_wait=lambda line: print("waiting", flush=True), poll_s=0.02)
    print("held", flush=True)
    time.sleep(600)
''')


def _holder(offer: Offer, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(offer.folder), str(count), ",".join(offer.ids)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_a_dead_process_frees_its_devices_and_its_place_in_line(tmp_path: Path) -> None:
    offer = _offer(tmp_path, 2)
    allocator = Allocator(offer)
    holder = _holder(offer, 2)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert allocator.free() == []
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops its locks
        holder.wait(10)
        grant = allocator.acquire(2, timeout_s=10, poll_s=0.02)
        assert grant is not None and grant.ids == ("0", "1")
        # A waiter that dies in line: its ticket is left behind, and found dead.
        waiter = _holder(offer, 1)
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "waiting"
        assert len(os.listdir(allocator.line_folder)) == 1
        os.kill(waiter.pid, signal.SIGKILL)
        waiter.wait(10)
        grant.release()
        again = allocator.try_acquire(1)  # not behind the dead waiter
        assert again is not None
        assert os.listdir(allocator.line_folder) == []
        again.release()
    finally:
        for proc in (holder, locals().get("waiter")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_helper_processes_that_inherit_a_grant_keep_its_devices(tmp_path: Path) -> None:
    allocator = Allocator(_offer(tmp_path, 1))
    grant = allocator.try_acquire(1)
    assert grant is not None
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], pass_fds=grant.fds)
    try:
        grant.release()  # rank 0 is done; its helper still runs on the device
        assert allocator.free() == []
    finally:
        helper.kill()
        helper.wait()
    assert allocator.free() == ["0"]


def test_an_offer_travels_to_its_slots_by_environment(tmp_path: Path) -> None:
    offer = Offer.for_home(tmp_path, "cuda", ["2", "3"])
    assert offer.folder == tmp_path / "devices" / os.uname().nodename
    assert Offer.from_env(offer.env()) == offer
    assert Offer.from_env({}) is None
    assert offer.label() == "cuda GPUs 2,3" and offer.label(("3",)) == "cuda GPU 3"
    for bad in ((), ("0", "0"), ("",)):
        with pytest.raises(ValueError):
            Offer("cpu", bad, tmp_path)


def test_what_a_worker_offers_from_its_options(tmp_path: Path) -> None:
    from orchestrator.errors import RodinError
    from orchestrator.settings import load_settings
    from workers.main import _offer, cpu_offer_ids

    settings = load_settings({"RODIN_HOME": str(tmp_path)})
    assert _offer(settings, "auto", None, None) is None  # a plain worker offers nothing
    offer = _offer(settings, "auto", "1,3", None)
    assert offer is not None and (offer.kind, offer.ids) == ("cuda", ("1", "3"))
    cores = sorted(os.sched_getaffinity(0))
    offer = _offer(settings, "cpu", None, 1)
    assert offer is not None and (offer.kind, offer.ids) == ("cpu", (str(cores[0]),))
    assert cpu_offer_ids(len(cores)) == [str(c) for c in cores]
    for device, gpus, devices, message in (("auto", "0", 2, "not both"), ("cpu", "0", None, "leave out --device"),
                                           ("cuda:0", None, 2, "offer GPUs with --gpus"),
                                           ("cpu", None, 0, "offers 1 to"), ("cpu", None, len(cores) + 1, "offers 1 to")):
        with pytest.raises(RodinError, match=message):
            _offer(settings, device, gpus, devices)
