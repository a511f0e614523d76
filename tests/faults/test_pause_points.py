"""A pause point acts on a signal however late it lands: the race behind a Ctrl-C test that hung under load."""

import signal
import subprocess
import sys
from pathlib import Path

from tests.pauses import Pauses, interrupt_as_in_a_terminal

REPO = Path(__file__).resolve().parents[2]
# Only a hang meets this: the command raises within one `POLL_S` of the signal.
HANG_S = 60

# The main thread blocks SIGINT, so the kernel hands the process's SIGINT to the other thread: Python's handler
# runs there and marks the signal, and the main thread's wait is not interrupted. That is the state a signal
# leaves when it lands between the FIFO's open and the read after it, made certain here rather than by chance.
HELD_WITH_SIGINT_ELSEWHERE = """
import signal, sys, threading
from cluster.pause_points import pause_point
idle = threading.Event()
threading.Thread(target=idle.wait, daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
try:
    pause_point("held")
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(1)
"""


def test_a_signal_that_interrupts_no_read_still_ends_the_wait(tmp_path):
    pauses = Pauses(tmp_path / "pauses", "held")
    child = subprocess.Popen([sys.executable, "-c", HELD_WITH_SIGINT_ELSEWHERE], cwd=REPO,
                             env={**pauses.environment(), "PYTHONPATH": str(REPO)},
                             preexec_fn=interrupt_as_in_a_terminal)
    with pauses.held("held", lambda: child.poll() is None):
        child.send_signal(signal.SIGINT)
        # Inside the block: the test still holds the point, so only the signal can end the wait.
        assert child.wait(timeout=HANG_S) == 130
