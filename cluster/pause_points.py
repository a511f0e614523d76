"""Pause points: places where a test can hold a running command, to deliver a fault exactly there.

Fault tests kill or interrupt real commands (`cmroberta extract`, `cmroberta train`) in their own
processes. Waiting for a file to appear and then signalling races the command, which may finish
first on a fast machine, or be far past the point on a slow one. A pause point removes the race:

- the test sets `CMROBERTA_TEST_PAUSES` to a folder of its own and makes a FIFO in it named after
  each point it wants to hold (`mkfifo FOLDER/extract-shard-recorded-2`);
- a command that reaches a point whose FIFO exists opens it for reading, which blocks until the test
  opens it for writing, and then waits for the test to close it, looking every `POLL_S` seconds;
- so the test knows the command is at the point once its non-blocking open for writing succeeds
  (before, it fails with ENXIO), a signal sent while it holds the FIFO open lands at that point,
  and closing it lets the command go on.

The points, each reached once per name:

- `extract-shard-written-<n>`: the driver has renamed its n-th shard of this run into place, and not
  yet recorded it in the manifest;
- `extract-shard-recorded-<n>`: the manifest records it;
- `checkpoint-saved-<tag>`: rank 0 has pointed `progress.json` at checkpoint `<tag>`.

Without the variable, or without a FIFO of that name, a point does nothing (one environment lookup).
What the test writes into the FIFO is read and discarded, never interpreted.

Why the wait looks every `POLL_S` seconds rather than blocking in one read: Python runs a signal's handler
(Ctrl-C's KeyboardInterrupt) in the main thread between bytecodes, and a blocking read returns to do so only
when the signal interrupts it. A signal that lands after the open returned and before the read began is
caught, but the read it never interrupted then waits for the test, which waits for the command: a Ctrl-C
test hung that way under load (the command sleeping in the FIFO's read, no signal pending). A bounded wait
returns to Python, which raises the exception, however late the signal came; the period bounds how soon,
not whether, so nothing races.
"""

import os
import select
import stat
from pathlib import Path

PAUSES_VARIABLE = "CMROBERTA_TEST_PAUSES"
POLL_S = 0.05


def pause_point(name: str) -> None:
    """Wait here while a test holds the FIFO `name` in the folder `CMROBERTA_TEST_PAUSES` names (module docstring)."""
    folder = os.environ.get(PAUSES_VARIABLE)
    if not folder:
        return
    fifo = Path(folder) / name
    try:
        if not stat.S_ISFIFO(fifo.stat().st_mode):
            return
    except OSError:
        return
    fd = os.open(fifo, os.O_RDONLY)
    try:
        while True:
            readable, _, _ = select.select([fd], [], [], POLL_S)
            if readable and not os.read(fd, 4096):
                return
    finally:
        os.close(fd)
