"""Permission denied (EACCES) is one line naming the folder, exit 2, as a full or read-only disk is.

The tests run as root, whom file permissions do not stop, so each command runs for real as the
unprivileged user `nobody` (`setpriv --reuid=nobody --regid=nogroup --clear-groups`), writing into a
folder that root owns and `nobody` may read but not write. Without root, setpriv or that user, the
tests skip and say why.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.faults.fault_summary import record_case
from tests.learnable_store import write_learnable_store
from tests.tiny_runs import TINY_HEAD

UNPRIVILEGED_USER, UNPRIVILEGED_GROUP = "nobody", "nogroup"
ADVICE = (
    "(Permission denied): permission denied: make it readable and writable for you (chmod/chown), or use another "
    "folder"
)


@pytest.fixture
def shared_folder():
    """A folder `nobody` can read and enter (the pytest tmp_path is root's alone): (it, a root-only subfolder)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a command as another user; as a user without root, permissions already apply")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed; it runs the command as an unprivileged user")
    probe = subprocess.run(["id", "-u", UNPRIVILEGED_USER], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no user {UNPRIVILEGED_USER!r} on this machine to run the command as")
    with tempfile.TemporaryDirectory(prefix="cmroberta-eacces-", dir="/tmp") as name:
        base = Path(name)
        base.chmod(0o755)
        home = base / "home"
        home.mkdir()
        home.chmod(0o777)
        forbidden = base / "forbidden"
        forbidden.mkdir(mode=0o755)
        yield base, forbidden


def as_nobody(argv: list[str], base: Path) -> subprocess.CompletedProcess:
    """`cmroberta ARGV` run as `nobody` from `base`, with a home of its own there."""
    cmroberta = str(Path(sys.executable).parent / "cmroberta")
    env = {"PATH": os.environ["PATH"], "HOME": str(base / "home"), "MPLCONFIGDIR": str(base / "home")}
    command = ["setpriv", f"--reuid={UNPRIVILEGED_USER}", f"--regid={UNPRIVILEGED_GROUP}", "--clear-groups",
               cmroberta, *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=base, env=env, timeout=600)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("cmroberta ")]


@pytest.mark.integration
def test_extract_into_a_folder_it_may_not_write_is_one_line(shared_folder):
    """Before: untested; the EACCES mapping in launch/cli.py had never run."""
    base, forbidden = shared_folder
    corpus = base / "corpus"
    corpus.mkdir(mode=0o755)
    result = as_nobody(["extract", str(corpus), f'store_root="{forbidden}"', 'families=["opensmile"]'], base)
    record_case("extract into a folder without write permission", traceback="Traceback" in result.stderr,
                silent=result.returncode == 0)
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"cmroberta extract: error: cannot use {forbidden} {ADVICE}"]
    assert list(forbidden.iterdir()) == []


@pytest.mark.integration
def test_train_into_a_folder_it_may_not_write_is_one_line(shared_folder):
    base, forbidden = shared_folder
    store = write_learnable_store(base / "store-000000000000")
    run_dir = forbidden / "run"
    result = as_nobody(["train", str(store), *TINY_HEAD, "--run-dir", str(run_dir)], base)
    record_case("train into a folder without write permission", traceback="Traceback" in result.stderr,
                silent=result.returncode == 0)
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"cmroberta train: error: cannot use {forbidden} {ADVICE}"]
    assert list(forbidden.iterdir()) == []
