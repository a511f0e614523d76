"""Files that are either whole or absent, and folders that one writer holds at a time.

Every file the project renames into place goes through `publish`: written under a name unique to
this host and process, fsynced, renamed, and its folder fsynced, so that neither a crash nor a
power cut leaves a file that looks whole but is not, and two writers never share a temporary
name. `exclusive_lock` holds a folder (a feature store, a run folder) for one writer with
flock(2); the lock file names the holder's host and pid, so a second writer is told who holds it.

flock is advisory and, on some parallel filesystems, local to a node; the lock guards against
the common mistake (two commands on the same folder), not against a hostile writer.
"""

import errno
import fcntl
import hashlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
TEMP_SUFFIX = ".tmp"
_HASH_BLOCK = 1 << 20


class LockHeldError(Exception):
    """Another process holds the folder's lock; the message names its host and pid."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks: the one checksum of shards, checkpoints and weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def unique_temp_path(path: Path) -> Path:
    """A hidden sibling of `path` that no other host, process or call uses: `.NAME.HOST.PID.RANDOM.tmp`."""
    path = Path(path)
    host = socket.gethostname().replace(os.sep, "_")
    return path.with_name(f".{path.name}.{host}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_file(path: Path) -> bool:
    """Whether `path` is a temporary name made by `unique_temp_path` (a leftover of an interrupted write)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(temp: Path, path: Path) -> None:
    """Move a finished temporary file to `path` durably: fsync it, rename it, fsync the folder."""
    fsync_file(temp)
    os.replace(temp, path)
    fsync_folder(Path(path).parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    temp = unique_temp_path(path)
    try:
        with open(temp, "wb") as stream:
            stream.write(data)
        publish(temp, path)
    except OSError as error:
        # A failed write or fsync names no file; the message a person reads must name the one meant.
        if error.errno is None or error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """`atomic_write_bytes` for one JSON document."""
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def atomic_write_json_lines(path: Path, records: Iterable[Any]) -> None:
    """`atomic_write_bytes` for JSON lines, one record a line."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "an unknown process"


@contextmanager
def exclusive_lock(
    folder: Path, what: str, wait_seconds: float = 0.0, lock_name: str = LOCK_NAME
) -> Iterator[None]:
    """Hold `folder` for this process alone; a LockHeldError names the holder when another has it.

    `what` names the folder for the message ('feature store', 'run folder'); `lock_name` is the lock file in
    it, for a folder that has more than one thing to hold (a run's training, and its claim by a queue). With
    `wait_seconds` the call waits that long for the holder to finish before giving up. The lock is released when
    the block ends or the process dies (the kernel drops flock locks with the descriptor), so a
    killed writer never leaves a folder locked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / lock_name
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockHeldError(
                        f"{what} {folder} is in use by {_holder(lock_path)}; wait for it to finish, "
                        "or stop that process"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        os.fsync(descriptor)
        yield
    finally:
        os.close(descriptor)
