"""`rodin worker --gpus 0,1`: one worker process (a slot) per GPU, each seeing every offered
GPU and told the machine's offer (its job processes share the GPUs through workers/devices.py).

No GPU is needed: the supervisor is run with a stand-in for the slot's `rodin worker` command,
which records what it was given and waits to be stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.errors import RodinError
from tests.conftest import ROOT, Rodin

CHILD = textwrap.dedent('''
    import json, os, signal, sys, time
    out, name, queues = sys.argv[1:4]
    tag = f"{out}/{name}-{os.getpid()}"
    def stop(signum, _frame):
        open(tag + ".stopped", "w").write(str(signum))
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    with open(tag + ".tmp", "w") as fh:
        json.dump({"name": name, "queues": queues, "pid": os.getpid(),
                   "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "offer": os.environ.get("RODIN_OFFER"), "locks": os.environ.get("RODIN_DEVICE_LOCKS"),
                   "worker_name": os.environ.get("RODIN_WORKER_NAME")}, fh)
    os.rename(tag + ".tmp", tag + ".json")
    while True:
        time.sleep(0.05)
''')

SUPERVISOR = textwrap.dedent('''
    import sys
    from pathlib import Path
    from workers.devices import Offer
    from workers.supervisor import run_slots
    out = sys.argv[1]
    stand_in = lambda queues, name, loglevel: [sys.executable, "-c", sys.argv[2], out, name, queues]
    offer = Offer("cuda", ("0", "1"), Path(out) / "locks")
    sys.exit(run_slots(offer, "train,infer", "box", "INFO", command=stand_in, restart_delay_s=0.2))
''')


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _wait(predicate, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_one_process_per_gpu_restarted_when_it_dies_and_stopped_together(tmp_path: Path) -> None:
    out = tmp_path / "children"
    out.mkdir()
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(out), CHILD], cwd=ROOT,
                           stderr=subprocess.PIPE, text=True)
    try:
        first = _wait(lambda: r if len(r := _records(out)) == 2 else None)
        by_name = {r["name"]: r for r in first}
        assert set(by_name) == {"box-slot0", "box-slot1"}
        for slot in ("0", "1"):
            r = by_name[f"box-slot{slot}"]
            # Every slot sees both GPUs; a job process narrows them to those it is handed.
            assert r["cuda"] == "0,1" and r["worker_name"] == f"box-slot{slot}"
            assert r["offer"] == "cuda:0,1" and r["locks"] == str(out / "locks")
            assert r["queues"] == "train,infer"
        # A worker that dies is started again under the same name.
        os.kill(by_name["box-slot1"]["pid"], signal.SIGKILL)
        again = _wait(lambda: [r for r in _records(out)
                               if r["name"] == "box-slot1" and r["pid"] != by_name["box-slot1"]["pid"]])
        assert again[0]["cuda"] == "0,1"
        # A stop signal reaches every worker once, and the supervisor ends when they have.
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
        stopped = {p.name.split("-")[1] for p in out.glob("*.stopped")}
        assert stopped == {"slot0", "slot1"}
        assert (out / f"box-slot0-{by_name['box-slot0']['pid']}.stopped").read_text() == str(int(signal.SIGTERM))
    finally:
        if sup.poll() is None:
            sup.kill()


def test_gpu_ids() -> None:
    from workers.main import gpu_ids as _gpu_ids

    assert _gpu_ids("0,1") == ["0", "1"]
    assert _gpu_ids(" 3 ") == ["3"]
    for bad in ("", "0,,1", "0,0"):
        with pytest.raises(RodinError):
            _gpu_ids(bad)


def test_gpus_all_follows_cuda_visible_devices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from workers.main import gpu_ids as _gpu_ids

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert _gpu_ids("all") == ["2", "3"]


def test_a_worker_asked_for_a_missing_gpu_stops_with_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = Rodin(tmp_path / "home").run("worker", "--device", "cuda:0", timeout=120)
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr and "Traceback" not in result.stderr
