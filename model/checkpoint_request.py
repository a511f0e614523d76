"""A signal's request to checkpoint the step in progress and stop training (preemption, a time limit).

A Submitit job installs `CheckpointRequest.handle` for its requeue signal (`installed`); the training
loop reads the request after each optimizer step, saves a checkpoint and stops with
`TrainingInterrupted`, and the job requeues itself to resume from that checkpoint.
"""

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Training stopped, as a signal asked, right after saving a checkpoint that resumes it."""



class CheckpointRequest:
    """A signal's request to checkpoint after the step in progress and stop (preemption, a time limit).

    Install `handle` as the signal's handler. While the training loop runs (`armed`), the signal only
    sets a flag that the loop reads after each optimizer step; at any other moment there is no step
    to save, and `fallback` (Submitit's own handler, which requeues from the last checkpoint) runs.
    """

    def __init__(self, fallback: Callable[[int, Any], Any] | None = None):
        self.fallback = fallback
        """What the signal does outside the training loop."""
        self.signal: int | None = None
        """The signal received while armed."""
        self._armed = False

    def handle(self, signum: int, frame: Any = None) -> None:
        if self._armed:
            log.warning("received signal %d: checkpointing after this step, then stopping", signum)
            self.signal = signum
        elif self.fallback is not None:
            self.fallback(signum, frame)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @contextmanager
    def armed(self) -> Iterator[None]:
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


@contextmanager
def installed(request: CheckpointRequest, signum: int) -> Iterator[None]:
    """`request.handle` as `signum`'s handler in the block; the previous handler becomes its fallback."""
    previous = signal.signal(signum, request.handle)
    if request.fallback is None and callable(previous):
        request.fallback = previous
    try:
        yield
    finally:
        signal.signal(signum, previous)

