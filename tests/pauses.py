"""The test side of `cluster.pause_points`: hold a command at a named point, deliver a fault there, let it go.

    pauses = Pauses(tmp_path / "pauses", "extract-shard-recorded-1")
    process = subprocess.Popen(command, env={**os.environ, **pauses.environment()})
    with pauses.held("extract-shard-recorded-1", lambda: process.poll() is None):
        os.killpg(process.pid, signal.SIGINT)   # lands while the command waits at that point

Only the points named here are held; the command passes every other point without waiting.
"""

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.pause_points import PAUSES_VARIABLE

# Only a command that never reaches its point (a hang) meets this: reaching it ends the wait at once.
REACH_TIMEOUT_S = 300
_POLL_S = 0.01


class Pauses:
    """A folder of FIFOs, one per point to hold."""

    def __init__(self, folder: Path, *names: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.mkfifo(self.folder / name)

    def environment(self) -> dict[str, str]:
        """What the command's environment needs for its pause points to look here."""
        return {PAUSES_VARIABLE: str(self.folder)}

    def reach(self, name: str, alive: Callable[[], bool]) -> int:
        """Wait until the command waits at `name`; return the FIFO's write end, which holds it there until closed.

        The open succeeds only once the command has opened the FIFO for reading, so what the test does
        next happens with the command at that point. `alive` tells a command that ended first (an error).
        """
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while True:
            try:
                return os.open(self.folder / name, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
            assert alive(), f"the command ended before it reached pause point {name}"
            assert time.monotonic() < deadline, f"the command never reached pause point {name}"
            time.sleep(_POLL_S)

    @contextmanager
    def held(self, name: str, alive: Callable[[], bool]) -> Iterator[None]:
        """The block runs while the command waits at `name`; leaving it lets the command go on."""
        fd = self.reach(name, alive)
        try:
            yield
        finally:
            os.close(fd)


def interrupt_as_in_a_terminal() -> None:
    """For Popen's `preexec_fn`: SIGINT at its default action, as a terminal's foreground command has it.

    A test session started in the background of a non-interactive shell (`... &`, nohup) inherits SIGINT
    ignored, and a Python started with SIGINT ignored installs no KeyboardInterrupt handler: a Ctrl-C test
    would then wait for a command that never sees the signal (seen when this suite ran under nohup).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def killed_at(
    point: str,
    command: list[str],
    environment: dict[str, str],
    folder: Path,
    kill: Callable[[subprocess.Popen], None] = lambda child: child.send_signal(signal.SIGKILL),
) -> None:
    """Run `command` in a process of its own and kill it (SIGKILL unless `kill` says how) while it waits at `point`."""
    pauses = Pauses(folder, point)
    child = subprocess.Popen(command, env=environment | pauses.environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    with pauses.held(point, lambda: child.poll() is None):
        kill(child)
        child.wait()
