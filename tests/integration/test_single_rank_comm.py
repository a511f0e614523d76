"""A process alone in its world starts DeepSpeed without building its shared-memory all-reduce op.

The op is C++ that DeepSpeed compiles with g++ into TORCH_EXTENSIONS_DIR on first use (30-90 s); with world
size 1 it would never run. The engine starts in a fresh process (the skip is per process) with an empty
extensions folder, so a build would leave its folder there and print DeepSpeed's "built successfully" line.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.distributed_session import SHARED_MEMORY_COMM_OP

pytestmark = pytest.mark.integration

# One SGD step of a 4 -> 2 linear layer through a DeepSpeed engine, inside the session every run uses.
ENGINE_STEP = """
import deepspeed
import torch

from cluster.distributed_session import distributed_session

with distributed_session():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config={"train_micro_batch_size_per_gpu": 1}
    )
    loss = engine(torch.ones(1, 4)).sum()
    engine.backward(loss)
    engine.step()
    print("compatible", deepspeed.ops.__compatible_ops__[{op!r}])
"""


def test_a_single_rank_builds_no_shared_memory_op(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    # World size 1: no rank variables from a launcher around the test.
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    environment = {name: value for name, value in os.environ.items() if name not in launcher}
    environment.update(TORCH_EXTENSIONS_DIR=str(extensions), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_STEP.replace("{op!r}", repr(SHARED_MEMORY_COMM_OP))],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compatible False" in result.stdout
    assert "built successfully" not in result.stdout + result.stderr
    assert not list(extensions.rglob(f"{SHARED_MEMORY_COMM_OP}*"))
