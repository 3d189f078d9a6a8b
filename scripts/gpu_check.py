"""The GPU check (`scripts/gpu_check.sh`, `make gpu-check`): rodin's CUDA paths on this machine's
GPUs, in at most 8 minutes, ending with one table; the exit code is non-zero if anything failed.

    bash scripts/gpu_check.sh                      # on a machine with a CUDA GPU
    bash scripts/gpu_check.sh --rehearse-on-cpu    # the same steps on the CPU, to check the script

1. the CUDA tests (`pytest -m cuda tests/cuda`: GPU Chamfer against brute force, the fused layers
   against the plain ones, bf16 autocast, training on the GPU, two NCCL ranks against one process);
2. `python -m benchmarks.train_step --device cuda`, fp32 and bf16 autocast: the paper's
   configuration (batch 32, 2,500 points, 25 patches), its step time and samples/s against the
   same GPU's matrix-multiply peak in the same precision;
3. a worker pinned with `--gpus 0` (a fresh RODIN_HOME in a temporary folder, the embedded
   default broker and registry) trains a tiny swords dataset through the queue and reconstructs
   with the registered model;
4. `--devices N` with every GPU it finds: a worker offering them all (`--gpus all`) trains one job
   on N ranks (NCCL); skipped with one line when there is one GPU.

Without a GPU it says so, runs the CUDA tests to show that they skip cleanly, and skips the rest:
nothing is reported as having run on a GPU that did not. `--rehearse-on-cpu` runs every step on
the CPU instead (the CUDA tests with RODIN_CUDA_REHEARSAL=1, the benchmark's quick configuration,
workers with `--device cpu --devices 1` and `--devices 2`), labelled as a rehearsal: it checks
this script and the queue's plumbing, and proves nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0  # 8 minutes, all steps together
PY = sys.executable

TINY = ["--patches", "4", "--points", "256", "--bottleneck", "64", "--hidden", "64", "--layers", "1",
        "--val-fraction", "0.25", "--checkpoint-every", "1"]


@dataclass
class Row:
    check: str
    result: str  # PASS, FAIL, SKIP
    figures: str = ""


@dataclass
class Check:
    rehearsal: bool
    deadline: float
    rows: list[Row] = field(default_factory=list)
    log: Path = Path(".")

    def left(self, reserve: float = 0.0) -> float:
        return self.deadline - time.monotonic() - reserve

    def add(self, check: str, result: str, figures: str = "") -> None:
        self.rows.append(Row(check, result, figures))
        print(f"[{result}] {check}: {figures}", flush=True)


def _env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment without any RODIN_ setting (never a shared registry or broker), with a
    home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RODIN_")}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    if home is not None:
        env["RODIN_HOME"] = str(home)
    return env


def _run(cmd: list[str], timeout: float, env: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    """A command's result; its output also goes to the log. A timeout is rc 124."""
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        done = subprocess.CompletedProcess(cmd, 124, out, err + f"\ntimed out after {timeout:.0f} s")
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}   ({time.monotonic() - started:.1f} s, rc {done.returncode})\n")
        fh.write(done.stdout + done.stderr)
    return done


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def detect() -> dict:
    """The GPUs torch sees, asked in a subprocess (this process never touches CUDA)."""
    code = ("import json, torch; n = torch.cuda.device_count() if torch.cuda.is_available() else 0; "
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'count': n, "
            "'names': [torch.cuda.get_device_name(i) for i in range(n)]}))")
    done = subprocess.run([PY, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    if done.returncode:
        return {"torch": "?", "cuda": None, "count": 0, "names": [], "error": _last_line(done.stderr)}
    return json.loads(_last_line(done.stdout))


# ------------------------------------------------------------------------------------- steps


def cuda_tests(check: Check, gpus: int) -> None:
    env = _env()
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/cuda"]
    if check.rehearsal:
        env["RODIN_CUDA_REHEARSAL"] = "1"
        cmd += ["-k", "not nccl and not training_on"]  # the slow ones; the CPU has its own tests
    done = _run(cmd, min(240.0, check.left(reserve=60)), env, check.log)
    summary = _last_line(done.stdout).strip("= ")
    if gpus == 0 and not check.rehearsal:
        ok = done.returncode == 5 or (done.returncode == 0 and "passed" not in summary and "failed" not in summary)
        check.add("CUDA tests", "SKIP" if ok else "FAIL", f"no GPU: {summary} (skipped cleanly)" if ok else summary)
        return
    check.add("CUDA tests", "PASS" if done.returncode == 0 else "FAIL", summary)


def benchmark(check: Check, bf16: bool) -> None:
    name = f"benchmarks.train_step {'bf16' if bf16 else 'fp32'}"
    cmd = [PY, "-m", "benchmarks.train_step", "--json", "--repeats", "5"]
    if check.rehearsal:
        if bf16:
            check.add(name, "SKIP", "rehearsal: bf16 autocast is for CUDA")
            return
        cmd += ["--device", "cpu", "--quick", "--repeats", "2"]
    else:
        cmd += ["--device", "cuda"] + (["--bf16"] if bf16 else [])
    done = _run(cmd, min(150.0, check.left(reserve=30)), _env(), check.log)
    if done.returncode:
        check.add(name, "FAIL", _last_line(done.stderr) or f"exit code {done.returncode}")
        return
    r = json.loads(_last_line(done.stdout))
    samples = r["config"]["batch"] / r["step_s"]
    figures = (f"{r['device_name']}: step {r['step_s'] * 1000:.1f} ms ({samples:.0f} samples/s), "
               f"{_rate(r['step_gflops'])} = {100 * r['step_fraction_of_peak']:.1f}% of the "
               f"{_rate(r['peak_gflops'])} {'bf16' if bf16 else 'fp32'} matmul peak; "
               f"baseline {r['speedup']:.1f}x slower; Chamfer {r['chamfer_s'] * 1000:.1f} ms, "
               f"{r['chamfer_peak_mb']:.0f} MB, neighbours = brute force: {'yes' if r['chamfer_nn_identical'] else 'NO'}")
    if check.rehearsal:
        figures = "quick configuration on the CPU: " + figures
    check.add(name, "PASS" if r["chamfer_nn_identical"] else "FAIL", figures)


def _rate(gflops: float) -> str:
    return f"{gflops / 1000:.1f} TFLOP/s" if gflops >= 1000 else f"{gflops:.1f} GFLOP/s"


class Worker:
    """`rodin worker` in its own process group, under a home of its own."""

    def __init__(self, check: Check, home: Path, args: list[str]):
        self.check, self.home = check, home
        self.log = home / "worker.log"
        home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([PY, "-m", "orchestrator.cli", "worker", "--hostname", "gpucheck", *args],
                                         cwd=ROOT, env=_env(home), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def rodin(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return _run([PY, "-m", "orchestrator.cli", *args], timeout, _env(self.home), self.check.log)

    def wait_live(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            done = self.rodin("workers", "--json", timeout=60)
            if done.returncode == 0:
                live = [w for w in json.loads(_last_line(done.stdout))["workers"] if w.get("state") == "live"]
                if len(live) >= count:
                    return True
            time.sleep(1.0)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.rodin("down", "--timeout", "10", timeout=60)  # a background worker a command started
        with self.check.log.open("a") as fh, self.log.open() as worker_log:
            fh.write(f"\n--- worker log ({self.home})\n{worker_log.read()[-20000:]}")


def _submit_train(worker: Worker, devices: int, timeout: float) -> tuple[dict | None, str]:
    args = ["submit", "train", "--dataset", "swords", "--epochs", "3", *TINY, "--batch-size", str(4 * devices)]
    if devices > 1:
        args += ["--devices", str(devices)]
    done = worker.rodin(*args, "--wait", "--json", timeout=timeout)
    try:
        out = json.loads(_last_line(done.stdout))
    except ValueError:
        return None, _last_line(done.stderr) or f"exit code {done.returncode}"
    status = worker.rodin("status", str(out["job_id"]), "--json", timeout=60)
    job = json.loads(_last_line(status.stdout)) if status.returncode == 0 else out
    return job, ""


def _seconds(job: dict) -> str:
    from datetime import datetime

    try:
        took = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
        return f"{took.total_seconds():.1f} s"
    except (KeyError, TypeError, ValueError):
        return "?"


def pinned_worker(check: Check, tmp: Path) -> None:
    name = "queue: worker --devices 1 (cpu)" if check.rehearsal else "queue: worker --gpus 0"
    if check.left() < 60:
        check.add(name, "FAIL", "not run: the 8 minutes were spent")
        return
    home = tmp / "pinned"
    home.mkdir(parents=True)
    made = _run([PY, "-m", "orchestrator.cli", "datasets", "make", "swords", "--count", "16", "--points-per-shape",
                 "1000", "--json"], 120, _env(home), check.log)
    if made.returncode:
        check.add(name, "FAIL", "datasets make: " + _last_line(made.stderr))
        return
    worker = Worker(check, home, ["--device", "cpu", "--devices", "1"] if check.rehearsal else ["--gpus", "0"])
    try:
        if not worker.wait_live(1, min(120.0, check.left(reserve=30))):
            check.add(name, "FAIL", f"the worker did not start: see {worker.log}")
            return
        job, error = _submit_train(worker, 1, min(180.0, check.left(reserve=30)))
        if job is None or job.get("status") != "succeeded":
            check.add(name, "FAIL", "train: " + (error or str(job and job.get("error"))))
            return
        model = str(job["final_model_id"])
        rec = worker.rodin("reconstruct", "--model", model, "--refine", "20", "--wait", "--json",
                           "--out", str(tmp / "reconstructions"), timeout=min(120.0, check.left(reserve=20)))
        try:
            rec_job = json.loads(_last_line(rec.stdout))
        except ValueError:
            rec_job = {"status": "?", "error": _last_line(rec.stderr)}
        ok = rec_job.get("status") == "succeeded"
        device = job.get("device") or "?"
        on_gpu = check.rehearsal or "cuda" in device
        check.add(name, "PASS" if ok and on_gpu else "FAIL",
                  f"trained on {device} in {_seconds(job)} (model {model}); reconstruct "
                  f"{rec_job.get('status')}" + ("" if ok else f": {rec_job.get('error')}")
                  + ("" if on_gpu else "; the job did not run on a GPU"))
    finally:
        worker.stop()


def all_devices(check: Check, gpus: int) -> None:
    n = 2 if check.rehearsal else gpus
    name = f"queue: --devices {n}" + (" (cpu)" if check.rehearsal else "")
    if n < 2:
        check.add("queue: --devices N", "SKIP", f"{gpus} GPU on this machine: a multi-device job needs two or more")
        return
    if check.left() < 60:
        check.add(name, "FAIL", "not run: the 8 minutes were spent")
        return
    home = Path(tempfile.mkdtemp(prefix="rodin-gpu-check-n-"))
    try:
        made = _run([PY, "-m", "orchestrator.cli", "datasets", "make", "swords", "--count", str(8 * n),
                     "--points-per-shape", "1000", "--json"], 120, _env(home), check.log)
        if made.returncode:
            check.add(name, "FAIL", "datasets make: " + _last_line(made.stderr))
            return
        worker = Worker(check, home, ["--device", "cpu", "--devices", "2"] if check.rehearsal else ["--gpus", "all"])
        try:
            if not worker.wait_live(n, min(150.0, check.left(reserve=30))):
                check.add(name, "FAIL", f"the worker's {n} slots did not start: see {worker.log}")
                return
            job, error = _submit_train(worker, n, min(240.0, check.left(reserve=15)))
            if job is None or job.get("status") != "succeeded":
                check.add(name, "FAIL", "train: " + (error or str(job and job.get("error"))))
                return
            check.add(name, "PASS", f"{n} ranks on {job.get('device')} in {_seconds(job)} (model "
                                    f"{job.get('final_model_id')}, attempts {job.get('attempts')})")
        finally:
            worker.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------------------------ report


def table(rows: list[Row], width: int = 100) -> str:
    import textwrap

    name_w = max(len(r.check) for r in rows)
    lines = [f"{'check':<{name_w}}  result  figures", f"{'-' * name_w}  ------  {'-' * 7}"]
    for r in rows:
        wrapped = textwrap.wrap(r.figures, max(30, width - name_w - 10)) or [""]
        lines.append(f"{r.check:<{name_w}}  {r.result:<6}  {wrapped[0]}")
        lines += [f"{'':<{name_w}}  {'':<6}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse-on-cpu", action="store_true",
                        help="run every step on the CPU (to check this script; proves nothing about a GPU)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rodin-gpu-check-"))
    check = Check(args.rehearse_on_cpu, started + BUDGET_S, log=tmp / "gpu_check.log")
    found = detect()
    gpus = int(found["count"])
    names = ", ".join(f"{i}: {name}" for i, name in enumerate(found["names"]))
    if gpus:
        print(f"{gpus} CUDA GPU(s): {names} (torch {found['torch']}, CUDA {found['cuda']})", flush=True)
    else:
        print(f"No CUDA GPU on this machine (torch {found['torch']}, CUDA build {found['cuda']}"
              f"{'; ' + found['error'] if found.get('error') else ''}): the GPU parts are skipped"
              + (", and every step is rehearsed on the CPU instead." if check.rehearsal else "."), flush=True)
    print(f"Log: {check.log}", flush=True)
    try:
        cuda_tests(check, gpus)
        if gpus or check.rehearsal:
            benchmark(check, bf16=False)
            benchmark(check, bf16=True)
            pinned_worker(check, tmp)
            all_devices(check, gpus)
        else:
            for what in ("benchmarks.train_step fp32", "benchmarks.train_step bf16", "queue: worker --gpus 0",
                         "queue: --devices N"):
                check.add(what, "SKIP", "no GPU")
    except KeyboardInterrupt:
        check.add("(interrupted)", "FAIL", "Ctrl-C")
    elapsed = time.monotonic() - started
    failed = [r for r in check.rows if r.result == "FAIL"]
    if check.rehearsal:
        where = "CPU REHEARSAL: nothing here ran on a GPU"
    elif gpus:
        where = f"on {names}"
    else:
        where = "NO GPU: nothing ran on a GPU"
    print(f"\nrodin GPU check, {where}; {elapsed:.0f} s of the {BUDGET_S:.0f} s budget; log {check.log}")
    print(table(check.rows))
    print(f"\n{len(failed)} check(s) failed." if failed else "\nNothing failed.")
    return 1 if failed or elapsed > BUDGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
