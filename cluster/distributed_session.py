"""A process's torch.distributed session: its rendezvous exported for DeepSpeed for the length of a block.

Training, evaluation and prediction each run inside one `distributed_session`; the variables it sets
are put back as they were when the block ends.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cluster.rendezvous import Rendezvous, export_rendezvous, resolve_rendezvous

_DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")


@contextmanager
def distributed_session() -> Iterator[Rendezvous]:
    """This process's rendezvous, exported for DeepSpeed; on exit the variables are as they were.

    Restoring them keeps a stale RANK or MASTER_PORT from the processes this one starts later.
    The process group itself stays up until the process ends: DeepSpeed caches its groups in
    module globals, and a later `deepspeed.initialize` in this process (a second run of a
    queue, a test) fails on a destroyed one, but reuses a live one.
    """
    rendezvous = resolve_rendezvous()
    saved = {name: os.environ.get(name) for name in _DISTRIBUTED_VARIABLES}
    export_rendezvous(rendezvous)
    try:
        yield rendezvous
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
