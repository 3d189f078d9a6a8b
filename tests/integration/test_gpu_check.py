"""`scripts/gpu_check.sh` on a machine without a GPU: it says so, shows the CUDA tests skipping
cleanly, skips every GPU part, claims nothing ran on a GPU, and exits 0 (nothing failed)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from tests.conftest import ROOT


def test_without_a_gpu_the_check_says_so_and_skips_the_gpu_parts() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: `make gpu-check` runs the real thing")
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("No CUDA GPU on this machine")
    assert "NO GPU: nothing ran on a GPU" in out
    table = out[out.index("check "):]
    assert "PASS" not in table and "FAIL" not in table
    for check in ("CUDA tests", "benchmarks.train_step fp32", "benchmarks.train_step bf16", "queue: worker --gpus 0",
                  "queue: --devices N"):
        assert any(line.startswith(check) and " SKIP " in line for line in table.splitlines()), check
    assert "skipped cleanly" in table
