"""SIGTERM, which SLURM sends at a time limit and on scancel, is handled like Ctrl-C.

The signal is delivered at a point the test controls: inside the first checkpoint write, once the
temporary file holds part of a checkpoint (torch.save is wrapped to write a few bytes and then signal
its own process). Python runs the handler right after `os.kill` returns, so nothing races.
"""

import os
import signal

import pytest
import torch

from cluster.durable_files import is_temp_file
from launch.cli import TERMINATED_STATUS, main
from tests.faults.fault_summary import record_case
from tests.learnable_store import write_learnable_store
from tests.tiny_runs import TINY_HEAD


@pytest.mark.integration
def test_sigterm_in_a_checkpoint_write_is_one_line_143_and_no_temporary_file(tmp_path, monkeypatch, capsys):
    """Before: the process died at once with 143, without a word, and left the temporary checkpoint file."""
    store = write_learnable_store(tmp_path / "store-000000000000")
    run_dir = tmp_path / "run"

    def partial_save_then_sigterm(obj, stream, *args, **kwargs):
        stream.write(b"the first bytes of a checkpoint")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(torch, "save", partial_save_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    status = main(["train", str(store), *TINY_HEAD, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cmroberta ")]
    left = sorted(str(path) for path in run_dir.rglob("*") if is_temp_file(path))
    record_case("SIGTERM inside a checkpoint write", traceback="Traceback" in err, silent=bool(left))
    assert status == TERMINATED_STATUS == 143
    assert lines == [
        "cmroberta train: stopped by SIGTERM (a SLURM time limit, scancel or a shutdown); temporary files were "
        "removed; run it again to continue"
    ]
    assert left == []
    assert signal.getsignal(signal.SIGTERM) == before
