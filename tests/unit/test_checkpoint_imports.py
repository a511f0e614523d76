"""The checkpoint manager is handed what it saves: importing it loads no trainer, run config or evaluation.

Checked in a fresh interpreter, since this test process has imported the rest of `model` already.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Prints the project's `model` modules that importing the checkpoint manager loaded, sorted.
PROBE = "import sys, model.checkpoint; print(*sorted(m for m in sys.modules if m.split('.')[0] == 'model'))"


def test_the_checkpoint_manager_imports_no_other_model_module_than_its_file_format():
    loaded = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert loaded == ["model", "model.checkpoint", "model.checkpoint_files"]
