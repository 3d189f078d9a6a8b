"""
How fast rodin trains AtlasNet, against the matrix-multiply peak of the same machine and against a
straightforward implementation kept here for comparison.

    python -m benchmarks.train_step                # the reference configuration, a table
    python -m benchmarks.train_step --json         # the same as one JSON object on stdout
    python -m benchmarks.train_step --quick        # a small configuration: a smoke run in seconds
    python -m benchmarks.train_step --device cuda --bf16
    python -m benchmarks.train_step --device cuda --json   # what scripts/gpu_check.sh runs, fp32 and --bf16

What is measured, for the reference configuration (batch 32, 2500 points per shape, 25 square
patches, bottleneck 1024, hidden 512, 2 hidden layers, ReLU, BatchNorm, Adam):

- a training step: forward, Chamfer loss, backward, Adam step; the median of --repeats steps after
  two warm-up steps, for rodin's AtlasNet and for the baseline below;
- its rate in GFLOP/s, from FLOPs counted from the layer shapes (2 in out per point per Linear,
  the backward counted as twice the forward), whatever the implementation actually computes;
- the matrix-multiply peak in the step's precision (fp32, or bf16 with --bf16): a 2048^3
  product on the CPU, 8192^3 on CUDA (a 2048^3 product takes well under a millisecond on a large GPU,
  too short to time against the launch and synchronisation; --peak-n sets it), timed between
  the steps, so that it sees the same machine load, and reported as the median rate. On CUDA
  fp32 means fp32 (torch's default: no TF32 in matrix products; the JSON says `matmul_tf32`);
- Chamfer forward + backward at batch 32, 2500 x 2500 points: the median time, and the peak
  memory. On the CPU (Linux) that is the high-water mark of the resident set of a fresh subprocess
  (VmHWM, reset just before the call) minus its resident size just before the call, after a small
  warm-up call so that it does not count torch's lazily loaded kernels and thread pools; on CUDA,
  torch.cuda.max_memory_allocated above the memory allocated before the call. Also checked:
  rodin's nearest neighbours are those of brute force, index for index.

Every figure is sensitive to other processes on the machine (on 2 cores, one busy neighbour
slows the many small memory-bound operations of a step far more than one large matrix product):
the table prints the spread of the repeats and the load average; compare runs on a quiet machine.

The baseline is what a newcomer would write from the paper and the authors' code: Conv1d layers
on (B, C, N) tensors with BatchNorm1d, a max over the points, 25 separate decoder modules, and
the Chamfer distance through the full (B, N, M) distance matrix, broadcast from
|x|^2 + |y|^2 - 2 x.y. (Broadcasting the coordinate differences instead, a (B, N, M, 3) tensor,
peaks near 10 GB at the reference size and takes ~13 s on the 2-core development machine; not
something to run on a shared machine at every benchmark.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from atlas_core.chamfer import chamfer_distance, nearest_neighbors
from atlas_core.config import ModelConfig
from atlas_core.model import AtlasNet

#: Where `python -m benchmarks.train_step` runs from: the Chamfer memory subprocesses start there.
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchConfig:
    batch: int = 32
    n_input: int = 2500  # points per input shape
    model: ModelConfig = None  # type: ignore[assignment]
    chamfer_batch: int = 32
    chamfer_points: int = 2500

    def __post_init__(self):
        if self.model is None:
            self.model = ModelConfig()  # the paper's reference configuration


REFERENCE = BenchConfig()
QUICK = BenchConfig(batch=4, n_input=256, chamfer_batch=4, chamfer_points=256,
                    model=ModelConfig(n_patches=4, bottleneck=64, hidden=32, layers=2, n_points=256))


# -----------------------------------------------------------------------------
# the baseline: a straightforward AtlasNet


class BaselineEncoder(nn.Module):
    def __init__(self, bottleneck: int):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 64, 1)
        self.conv2 = nn.Conv1d(64, 128, 1)
        self.conv3 = nn.Conv1d(128, 1024, 1)
        self.bn1 = nn.BatchNorm1d(64)
        self.bn2 = nn.BatchNorm1d(128)
        self.bn3 = nn.BatchNorm1d(1024)
        self.lin1 = nn.Linear(1024, bottleneck)
        self.lin2 = nn.Linear(bottleneck, bottleneck)
        self.bn4 = nn.BatchNorm1d(bottleneck)
        self.bn5 = nn.BatchNorm1d(bottleneck)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, N)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = torch.max(x, 2)[0]
        x = F.relu(self.bn4(self.lin1(x)))
        return F.relu(self.bn5(self.lin2(x)))


class BaselineDecoder(nn.Module):
    def __init__(self, dim: int, bottleneck: int, hidden: int, layers: int):
        super().__init__()
        self.conv1 = nn.Conv1d(dim, bottleneck, 1)
        self.conv2 = nn.Conv1d(bottleneck, hidden, 1)
        self.conv_list = nn.ModuleList([nn.Conv1d(hidden, hidden, 1) for _ in range(layers)])
        self.last_conv = nn.Conv1d(hidden, 3, 1)
        self.bn1 = nn.BatchNorm1d(bottleneck)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.bn_list = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in range(layers)])

    def forward(self, template: Tensor, latent: Tensor) -> Tensor:  # (1, dim, P), (B, D)
        x = self.conv1(template) + latent[:, :, None]
        x = F.relu(self.bn1(x))
        x = F.relu(self.bn2(self.conv2(x)))
        for conv, bn in zip(self.conv_list, self.bn_list):
            x = F.relu(bn(conv(x)))
        return self.last_conv(x)  # (B, 3, P)


class BaselineAtlasNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = BaselineEncoder(config.bottleneck)
        self.decoders = nn.ModuleList([
            BaselineDecoder(2, config.bottleneck, config.hidden, config.layers) for _ in range(config.n_patches)
        ])

    def forward(self, points: Tensor) -> Tensor:  # (B, N, 3) -> (B, K*P, 3)
        latent = self.encoder(points.transpose(1, 2))
        P = self.config.n_points // self.config.n_patches
        outs = [decoder(torch.rand(1, 2, P, device=points.device), latent) for decoder in self.decoders]
        return torch.cat(outs, dim=2).transpose(1, 2)


def chamfer_broadcast(x: Tensor, y: Tensor) -> Tensor:
    """Chamfer distance through the full (B, N, M) matrix of squared distances, broadcast from
    |x|^2 + |y|^2 - 2 x.y as in AtlasNet's pure-PyTorch reference, min over each axis."""
    d = (x * x).sum(-1)[:, :, None] + (y * y).sum(-1)[:, None, :] - 2 * torch.bmm(x, y.transpose(1, 2))
    return (d.min(dim=2)[0].mean(1) + d.min(dim=1)[0].mean(1)).mean()


# -----------------------------------------------------------------------------
# FLOPs and timing


def step_flops(config: ModelConfig, batch: int, n_input: int, dim: int = 2) -> float:
    """FLOPs of one training step from the layer shapes: 2 in out per point per Linear (or kernel-1
    convolution), backward = 2 x forward. Decoder layers count every generated point."""
    D, H, L = config.bottleneck, config.hidden, config.layers
    P = config.n_points // config.n_patches
    encoder = batch * n_input * (3 * 64 + 64 * 128 + 128 * 1024) + batch * (1024 * D + D * D)
    decoders = batch * config.n_patches * P * (dim * D + D * H + L * H * H + H * 3)
    return 3 * 2 * float(encoder + decoders)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def matmul_seconds(device: torch.device, n: int = 2048, repeats: int = 3, bf16: bool = False) -> list[float]:
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return [_time(lambda: a @ b, device) for _ in range(repeats)]


def training_step(model: nn.Module, loss_fn, points: Tensor, device: torch.device, bf16: bool):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        with _autocast(device, bf16):
            pred = model(points)
            loss = loss_fn(pred.float(), points)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_steps(steps: dict, device: torch.device, repeats: int, peak_n: int, bf16: bool,
               warmup: int = 2) -> tuple[dict, list]:
    """Seconds per step of each of `steps`, interleaved, and matmul samples taken between them."""
    times = {name: [] for name in steps}
    matmul = []
    for step in steps.values():
        for _ in range(warmup):
            step()
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_time(step, device))
        matmul += matmul_seconds(device, peak_n, bf16=bf16)
    return times, matmul


# -----------------------------------------------------------------------------
# Chamfer


def _chamfer_inputs(batch: int, points: int, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, points, 3, generator=g).to(device).requires_grad_()
    y = torch.rand(batch, points, 3, generator=g).to(device)
    return x, y


CHAMFERS = {
    "rodin": lambda x, y: chamfer_distance(x, y),
    "broadcast": chamfer_broadcast,
}


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def chamfer_peak_child(kind: str, batch: int, points: int) -> float:
    """Runs in a fresh process: peak RSS increase (MB) over one Chamfer forward + backward.

    The peak is the kernel's high-water mark of this process's resident set (VmHWM), reset just
    before the call (/proc/self/clear_refs); ru_maxrss would not do, it also remembers the parent's
    size at fork.
    """
    fn = CHAMFERS[kind]
    x, y = _chamfer_inputs(2, 64, torch.device("cpu"))
    fn(x, y).backward()  # warm-up: kernels, thread pools
    x, y = _chamfer_inputs(batch, points, torch.device("cpu"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    before = _status_mb("VmRSS")
    fn(x, y).backward()
    return _status_mb("VmHWM") - before


def chamfer_peak_mb(batch: int, points: int, device: torch.device) -> dict[str, float]:
    """Peak memory (MB) of one Chamfer forward + backward, for each of CHAMFERS."""
    if device.type == "cuda":
        peaks = {}
        for kind, fn in CHAMFERS.items():
            x, y = _chamfer_inputs(batch, points, device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            fn(x, y).backward()
            torch.cuda.synchronize(device)
            peaks[kind] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return peaks
    # One fresh process per measurement, run side by side (only their memory is measured).
    children = {
        kind: subprocess.Popen(
            [sys.executable, "-m", "benchmarks.train_step", "--chamfer-child", kind, str(batch), str(points),
             "--threads", str(torch.get_num_threads())],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for kind in CHAMFERS
    }
    peaks = {}
    for kind, child in children.items():
        out, err = child.communicate()
        if child.returncode:
            raise RuntimeError(f"Chamfer memory measurement ({kind}) failed: {err.strip()[-500:]}")
        peaks[kind] = float(out.strip().splitlines()[-1])
    return peaks


def chamfer_seconds(kind: str, batch: int, points: int, device: torch.device, repeats: int) -> list[float]:
    x, y = _chamfer_inputs(batch, points, device)
    fn = CHAMFERS[kind]

    def run():
        x.grad = None
        fn(x, y).backward()

    run()
    return [_time(run, device) for _ in range(repeats)]


def neighbours_match_brute_force(batch: int, points: int, device: torch.device) -> bool:
    """rodin's nearest neighbours (both directions) against an argmin over all pairs."""
    x, y = _chamfer_inputs(batch, points, device)
    x = x.detach()
    for a, c in [(x, y), (y, x)]:
        idx, _ = nearest_neighbors(a, c)
        for b in range(batch):
            brute = ((a[b, :, None, :] - c[b, None, :, :]) ** 2).sum(-1).argmin(dim=1)
            if not torch.equal(idx[b], brute):
                return False
    return True


# -----------------------------------------------------------------------------
# the report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> float | None:
    """The 1-minute load average: other processes on the machine make every figure noisier."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run(config: BenchConfig, device: torch.device, repeats: int, bf16: bool = False, peak_n: int = 2048,
        warmup: int = 2) -> dict:
    torch.manual_seed(0)
    m = config.model
    points = torch.rand(config.batch, config.n_input, 3, generator=torch.Generator().manual_seed(0)).to(device)
    rodin = AtlasNet(m).to(device).train()
    baseline = BaselineAtlasNet(m).to(device).train()
    steps = {
        "rodin": training_step(rodin, chamfer_distance, points, device, bf16),
        "baseline": training_step(baseline, chamfer_broadcast, points, device, bf16),
    }
    times, matmul = time_steps(steps, device, repeats, peak_n, bf16, warmup)
    flops = step_flops(m, config.batch, config.n_input)
    peak = 2 * peak_n**3 / _median(matmul) / 1e9
    step_s, baseline_s = _median(times["rodin"]), _median(times["baseline"])

    cb, cp = config.chamfer_batch, config.chamfer_points
    chamfer = {kind: chamfer_seconds(kind, cb, cp, device, repeats) for kind in CHAMFERS}
    peaks = chamfer_peak_mb(cb, cp, device)

    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
        "config": {"batch": config.batch, "n_input": config.n_input, **asdict(m)},
        "repeats": repeats,
        "loadavg_1min": _loadavg(),
        "step_s": step_s,
        "step_s_min": min(times["rodin"]),
        "step_s_max": max(times["rodin"]),
        "step_gflop": flops / 1e9,
        "step_gflops": flops / step_s / 1e9,
        "peak_gflops": peak,
        "peak_n": peak_n,
        "peak_gflops_min": 2 * peak_n**3 / max(matmul) / 1e9,
        "peak_gflops_max": 2 * peak_n**3 / min(matmul) / 1e9,
        "step_fraction_of_peak": flops / step_s / 1e9 / peak,
        "floor_s": flops / 1e9 / peak,
        "baseline_step_s": baseline_s,
        "baseline_step_s_min": min(times["baseline"]),
        "baseline_step_s_max": max(times["baseline"]),
        "baseline_gflops": flops / baseline_s / 1e9,
        "speedup": baseline_s / step_s,
        "chamfer_batch": cb,
        "chamfer_points": cp,
        "chamfer_s": _median(chamfer["rodin"]),
        "chamfer_peak_mb": peaks["rodin"],
        "chamfer_baseline_s": _median(chamfer["broadcast"]),
        "chamfer_baseline_peak_mb": peaks["broadcast"],
        "chamfer_memory": "CUDA max_memory_allocated increase" if device.type == "cuda"
        else "peak RSS increase in a fresh subprocess (VmHWM reset before the call, minus VmRSS before it)",
        "chamfer_nn_identical": neighbours_match_brute_force(cb, cp, device),
    }


def table(r: dict) -> str:
    rows = [
        ("device", f"{r['device']} ({r['device_name']})"),
        ("cpu", r["cpu"]),
        ("threads", f"{r['threads']} (load average {r['loadavg_1min']:.2f} at the end; other processes add noise)"
                    if r["loadavg_1min"] is not None else str(r["threads"])),
        ("torch", f"{r['torch']} (Python {r['python']})"),
        ("precision", r["dtype"]),
        ("config", ", ".join(f"{k} {v}" for k, v in r["config"].items())),
        ("matmul peak", f"{r['peak_gflops']:.1f} GFLOP/s ({r['peak_n']}^3 {'bf16' if 'bf16' in r['dtype'] else 'fp32'}, median; {r['peak_gflops_min']:.1f} to {r['peak_gflops_max']:.1f})"),
        ("step FLOPs", f"{r['step_gflop']:.1f} GFLOP (floor at peak: {r['floor_s']:.3f} s)"),
        ("rodin step", f"{r['step_s']:.3f} s median of {r['repeats']} ({r['step_s_min']:.3f} to {r['step_s_max']:.3f}), "
                       f"{r['step_gflops']:.1f} GFLOP/s, {100 * r['step_fraction_of_peak']:.0f}% of peak"),
        ("baseline step", f"{r['baseline_step_s']:.3f} s median ({r['baseline_step_s_min']:.3f} to {r['baseline_step_s_max']:.3f}), "
                          f"{r['baseline_gflops']:.1f} GFLOP/s; rodin is {r['speedup']:.2f}x faster"),
        ("rodin Chamfer", f"{r['chamfer_s']:.3f} s, {r['chamfer_peak_mb']:.0f} MB peak "
                           f"(fwd+bwd, B={r['chamfer_batch']}, N=M={r['chamfer_points']}); "
                           f"neighbours identical to brute force: {'yes' if r['chamfer_nn_identical'] else 'NO'}"),
        ("broadcast Chamfer", f"{r['chamfer_baseline_s']:.3f} s, {r['chamfer_baseline_peak_mb']:.0f} MB peak"),
        ("memory measured as", r["chamfer_memory"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="a small configuration, for a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only; fp32 on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--peak-n", type=int, default=None,
                        help="size of the matrix product that measures the peak (default 2048; 8192 on CUDA)")
    parser.add_argument("--chamfer-child", nargs=3, metavar=("KIND", "BATCH", "POINTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.chamfer_child:
        kind, batch, points = args.chamfer_child
        print(chamfer_peak_child(kind, int(batch), int(points)))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.bf16 and device.type != "cuda":
        parser.error("--bf16 is for CUDA; on the CPU bf16 autocast is slower than fp32")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        result = run(QUICK, device, args.repeats, bf16=args.bf16, peak_n=args.peak_n or 512, warmup=1)
    else:
        peak_n = args.peak_n or (8192 if device.type == "cuda" else 2048)
        result = run(REFERENCE, device, args.repeats, bf16=args.bf16, peak_n=peak_n)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
