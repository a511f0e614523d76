"""What importing a module loads: `predict` scores dialogues without Ray or DeepSpeed loaded at import.

Each check runs in a fresh interpreter, since this test process has long imported Ray through other tests.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules_loaded_by(statement: str) -> set[str]:
    """Top-level package names in `sys.modules` after a fresh interpreter runs `statement`."""
    listing = "import sys; print('\\n'.join(sorted({name.split('.')[0] for name in sys.modules})))"
    done = subprocess.run(
        [sys.executable, "-c", f"{statement}\n{listing}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


@pytest.mark.parametrize("module", ["model.predict", "launch.commands.predict", "extract.shard_extraction"])
def test_predict_and_the_per_shard_extractors_import_neither_ray_nor_deepspeed(module):
    loaded = modules_loaded_by(f"import {module}")
    assert "ray" not in loaded
    assert "deepspeed" not in loaded


def test_the_extraction_driver_does_import_ray():
    """The check above can fail: the module that runs Ray does load it in the same kind of interpreter."""
    assert "ray" in modules_loaded_by("import extract.pipeline")
