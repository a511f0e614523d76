"""A process's torch.distributed session: its rendezvous exported for DeepSpeed for the length of a block.

Training, evaluation and prediction each run inside one `distributed_session`; the variables it sets
are put back as they were when the block ends. A process alone in its world (world size 1) does not build
DeepSpeed's shared-memory all-reduce op (see `skip_shared_memory_comm`).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cluster.rendezvous import Rendezvous, export_rendezvous, resolve_rendezvous

_DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
# DeepSpeed's CPU op that all-reduces between ranks of one node through shared memory (ShareMemCommBuilder.NAME).
SHARED_MEMORY_COMM_OP = "deepspeed_shm_comm"


def skip_shared_memory_comm() -> None:
    """Keep DeepSpeed from building and loading its shared-memory all-reduce op in this process.

    On a CPU, DeepSpeed's comm backend builds that C++ op with g++ when it first starts (30-60 s once
    per environment, then a locked check of the cached build in every process, which waits behind any
    other process building it). A process of world size 1 reduces with no peer, so the op would never
    run: DeepSpeed skips an op its compatibility table marks False and reduces through torch.distributed's
    gloo instead, and a reduction over one rank returns its input either way, so the numbers are the same
    bit for bit.
    """
    # deferred: deepspeed takes seconds to import, and the CLI imports this module for every verb
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHARED_MEMORY_COMM_OP] = False


@contextmanager
def distributed_session() -> Iterator[Rendezvous]:
    """This process's rendezvous, exported for DeepSpeed; on exit the variables are as they were.

    Restoring them keeps a stale RANK or MASTER_PORT from the processes this one starts later.
    The process group itself stays up until the process ends: DeepSpeed caches its groups in
    module globals, and a later `deepspeed.initialize` in this process (a second run of a
    queue, a test) fails on a destroyed one, but reuses a live one.
    """
    rendezvous = resolve_rendezvous()
    if rendezvous.world_size == 1:
        skip_shared_memory_comm()
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
