"""A full disk and a read-only filesystem are one line naming the folder, exit 2, and leave no partial file.

Real filesystems: a tmpfs of a few hundred KiB mounted for the test (filled to its last bytes where
the case needs a full disk), and a tmpfs mounted read-only. Mounting needs root (or CAP_SYS_ADMIN);
without it the tests skip and say so. Permission denied (EACCES) is tried in `test_permission_denied.py`,
as an unprivileged user: the tests run as root, whom file permissions do not stop.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.durable_files import is_temp_file
from launch.cli import main
from tests.faults.fault_summary import record_case
from tests.learnable_store import write_learnable_store
from tests.tiny_runs import TINY_HEAD


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to make a full or read-only disk ({result.stderr.strip()}); run as root")


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs at `tmp_path/disk`, unmounted after the test."""
    folder = tmp_path / "disk"
    mount_tmpfs(folder, "512k")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    folder = tmp_path / "ro"
    mount_tmpfs(folder, "64k", read_only=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill the filesystem holding `folder` until `leave_bytes` or fewer remain free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave_bytes))


def leftovers(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.rglob("*") if is_temp_file(path))


SHARD_SCRIPT = """
import sys
import numpy as np
from extract.shard_files import write_shard
from extract.split_arrays import SplitArrays
n = 64
rows = SplitArrays(keys=[f"train/dia{i}_utt0" for i in range(n)], dialogue_ids=list(range(n)), utterance_ids=[0] * n,
                   speakers=["a"] * n, transcripts=["b"] * n, emotion=[0] * n, sentiment=[0] * n,
                   features={"opensmile": np.random.default_rng(0).normal(size=(n, 6552)).astype(np.float32)})
try:
    write_shard(sys.argv[1], "train", rows)
except OSError as error:
    print(f"OSError {error.errno} {error.filename}")
"""


def test_a_shard_on_a_full_disk_is_enospc_not_a_segfault(small_disk):
    """Before: h5py met the full disk itself, raised, and the next touch of the file segfaulted (exit 139).

    The 64 x 6552 random floats do not compress: 1.7 MB, more than the 512 KiB disk holds.
    """
    target = small_disk / "shards" / "train-00000.h5"
    result = subprocess.run(
        [sys.executable, "-c", SHARD_SCRIPT, str(target)], capture_output=True, text=True, timeout=120
    )
    record_case("a shard written to a full disk", traceback="Traceback" in result.stderr,
                silent=result.returncode != 0 or target.exists())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OSError 28 {target}"
    assert not target.exists() and leftovers(small_disk) == []


@pytest.fixture
def store(tmp_path):
    return write_learnable_store(tmp_path / "store-000000000000")


@pytest.mark.integration
def test_training_on_a_full_disk_is_one_line_naming_the_folder(store, small_disk, capsys):
    """Before: torch's zip writer said `unexpected pos 125596160 vs 125596052`, with no mention of space."""
    run_dir = small_disk / "run"
    fill(small_disk, leave_bytes=16 * 1024)
    status = main(["train", str(store), *TINY_HEAD, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cmroberta ")]
    record_case("train on a full disk", traceback="Traceback" in err, silent=status == 0)
    assert status == 2, err
    assert len(lines) == 1
    assert lines[0].startswith(f"cmroberta train: error: cannot use {run_dir}")
    assert "(No space left on device): the disk holding it is full: free space there" in lines[0]
    assert leftovers(small_disk) == []


@pytest.mark.parametrize("verb", ["train", "extract"])
def test_a_read_only_output_folder_is_one_line(store, read_only_disk, tmp_path, capsys, verb):
    """Before: a raw `OSError: [Errno 30] Read-only file system` traceback from train, evaluate and extract."""
    if verb == "train":
        argv = ["train", str(store), *TINY_HEAD, "--run-dir", str(read_only_disk / "run")]
    else:
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        argv = ["extract", str(corpus), f'store_root="{read_only_disk}"', 'families=["opensmile"]']
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cmroberta ")]
    record_case(f"{verb} into a read-only folder", traceback="Traceback" in err, silent=status == 0)
    assert status == 2, err
    assert len(lines) == 1
    assert lines[0].startswith(f"cmroberta {verb}: error: cannot use {read_only_disk}")
    assert "(Read-only file system): it is on a read-only filesystem: write to a writable folder" in lines[0]


@pytest.mark.integration
def test_evaluate_a_run_on_a_read_only_filesystem_is_one_line(store, tmp_path, capsys):
    run_dir = tmp_path / "ro-run"
    assert main(["train", str(store), *TINY_HEAD, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    result = subprocess.run(["mount", "--bind", str(run_dir), str(run_dir)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount the run read-only ({result.stderr.strip()}); run as root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(run_dir)], check=True)
        status = main(["evaluate", str(run_dir)])
    finally:
        subprocess.run(["umount", "-l", str(run_dir)], check=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cmroberta ")]
    after = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    record_case("evaluate a run on a read-only filesystem", traceback="Traceback" in err, silent=after != before)
    assert status == 2, err
    assert len(lines) == 1 and "read-only filesystem" in lines[0] and str(run_dir) in lines[0]
    assert after == before
