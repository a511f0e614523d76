"""What the SLURM tests ask the real cluster (cluster/slurm/start-local-cluster.sh) before they submit:
which of its nodes can take jobs. `tests/conftest.py`'s `slurm_cluster` fixture skips on the same answer."""

import subprocess

START_HINT = "start one with `sudo bash cluster/slurm/start-local-cluster.sh`"
USABLE_NODE_STATES = {"idle", "mixed", "allocated"}


def usable_nodes() -> list[str]:
    """The cluster's nodes that can take jobs, sorted by name."""
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=15)
    return sorted({name for name, state in (line.split() for line in sinfo.stdout.splitlines())
                   if state.rstrip("*") in USABLE_NODE_STATES})
