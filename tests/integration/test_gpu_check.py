"""bench/gpu_check.py refuses cleanly where no GPU is visible (as on this CPU machine and in CI)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: gpu_check would measure, not refuse")
def test_gpu_check_refuses_in_one_line_without_a_gpu():
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU is visible")
