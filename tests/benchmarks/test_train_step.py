"""The training-step benchmark runs (--quick, a small configuration) and reports what it promises.
No timing assertions: speed targets live in the benchmark's output, never in tests."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from atlas_core.chamfer import chamfer_brute_force
from atlas_core.config import ModelConfig
from benchmarks.train_step import QUICK, BaselineAtlasNet, chamfer_broadcast, step_flops

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"step_s", "step_gflops", "peak_gflops", "baseline_step_s", "chamfer_s", "chamfer_peak_mb",
        "chamfer_baseline_s", "threads", "torch", "cpu", "chamfer_nn_identical"}


def test_quick_json():
    # As documented: a module run from the repository root.
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--quick", "--json", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout)
    assert KEYS <= set(result)
    assert result["chamfer_nn_identical"] is True
    assert result["step_s"] > 0 and result["baseline_step_s"] > 0 and result["peak_gflops"] > 0
    assert result["chamfer_peak_mb"] >= 0


def test_reference_flops():
    # The figure quoted in the issue: about 572 GFLOP per reference training step.
    assert abs(step_flops(ModelConfig(), batch=32, n_input=2500) / 1e9 - 572.4) < 0.1


def test_baseline_model_and_chamfer():
    model = BaselineAtlasNet(QUICK.model)
    points = torch.rand(3, 100, 3)
    pred = model(points)
    assert pred.shape == (3, QUICK.model.n_points, 3)
    x, y = torch.rand(2, 30, 3), torch.rand(2, 40, 3)
    torch.testing.assert_close(chamfer_broadcast(x, y), chamfer_brute_force(x, y))
