"""Cluster profiles: what a job asks the scheduler for, in the terms people know from SLURM.

A profile is a TOML file (see launch/profiles/) read strictly by `cluster.config`, so a
misspelt key is an error that names it. `kind = "local"` runs jobs as processes on this
machine through Submitit's local executor and needs no scheduler; `kind = "slurm"` submits
them with sbatch. `LOCAL_PROFILE` is the built-in default, used when no profile is given.

Sizes follow SLURM's meaning: `nodes` x `tasks_per_node` processes, each with
`cpus_per_task` CPUs; training runs one task per GPU, so `tasks_per_node` defaults to
`gpus_per_node` when that is set. Memory is in GB and time in minutes.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cluster.config import refuse_control_characters

# sbatch's own syntax for node names and lists: letters, digits, '-', '_', '.', brackets and commas.
_NODE_LIST = re.compile(r"^[A-Za-z0-9_.\-\[\],]+$")
# What a partition, account or QoS name may hold; anything else would break the sbatch line.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Fields that only a scheduler understands: a local profile that sets them is a mistake.
_SLURM_ONLY = ("partition", "account", "qos", "constraint", "exclude", "mem", "mem_per_gpu")


@dataclass(kw_only=True)
class ClusterProfile:
    """Where and with what resources jobs run: this machine, or a SLURM partition."""

    name: str
    """Short name shown in logs and job names, e.g. 'local' or 'mycluster-a100'."""
    kind: Literal["local", "slurm"] = "slurm"
    """'local' runs jobs as processes here (Submitit's local executor); 'slurm' submits them with sbatch."""
    partition: str | None = None
    """SLURM partition (sbatch --partition); None: the cluster's default partition."""
    account: str | None = None
    """SLURM account charged for the jobs (sbatch --account); None: the user's default."""
    qos: str | None = None
    """SLURM quality of service (sbatch --qos); None: the partition's default."""
    nodes: int = 1
    """Nodes per job. Training spreads its ranks over them; extraction runs one Ray node on each."""
    gpus_per_node: int = 0
    """GPUs per node (sbatch --gpus-per-node); 0 asks for none. Local jobs see this many GPUs, so 0 hides them."""
    tasks_per_node: int | None = None
    """Processes per node; None: one per GPU, or one when the job asks for no GPU."""
    cpus_per_task: int = 1
    """CPU cores per process (sbatch --cpus-per-task); data loading and Ray tasks use them."""
    mem: float | None = None
    """Memory per node in GB (sbatch --mem); None: the partition's default. Exclusive with mem_per_gpu."""
    mem_per_gpu: float | None = None
    """Memory per allocated GPU in GB (sbatch --mem-per-gpu); needs gpus_per_node > 0. Exclusive with mem."""
    time: int = 60
    """Time limit of one job in minutes; a job that reaches it is checkpointed and requeued."""
    constraint: str | None = None
    """Node features the job needs (sbatch --constraint), e.g. 'a100|h100'."""
    exclude: str | None = None
    """Nodes never to use (sbatch --exclude), in SLURM's list syntax, e.g. 'gpu[03-04],gpu09'."""
    array_parallelism: int = 8
    """At most this many runs of a sweep at once (the %N of a SLURM job array; local: parallel processes)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job starts, e.g. 'module load cuda/12.4' or 'source ~/venv/bin/activate'."""
    signal_delay_s: int = 90
    """Seconds before the time limit at which the job is told to checkpoint (USR2), so it can be requeued."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name must be a short label for the profile, such as 'local' or 'mycluster'")
        refuse_control_characters(self.name, "name")
        if self.kind not in ("local", "slurm"):
            raise ValueError(f"kind must be 'local' or 'slurm', not {self.kind!r}")
        for key in ("partition", "account", "qos"):
            value = getattr(self, key)
            if value is not None and not _SLURM_NAME.match(value):
                raise ValueError(f"{key} must be a plain SLURM name (letters, digits, '-', '_', '.'), not {value!r}")
        if self.exclude is not None and not _NODE_LIST.match(self.exclude):
            raise ValueError(f"exclude must be a SLURM node list such as 'gpu[03-04],gpu09', not {self.exclude!r}")
        if self.constraint is not None:
            if not self.constraint.strip():
                raise ValueError(
                    f"constraint must be a SLURM feature expression such as 'a100|h100', not {self.constraint!r}"
                )
            refuse_control_characters(self.constraint, "constraint")
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1, not {self.nodes}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be 0 or more, not {self.gpus_per_node}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ValueError(f"tasks_per_node must be at least 1 (or unset: one per GPU), not {self.tasks_per_node}")
        if self.cpus_per_task < 1:
            raise ValueError(f"cpus_per_task must be at least 1, not {self.cpus_per_task}")
        if self.mem is not None and self.mem_per_gpu is not None:
            raise ValueError("set mem (per node) or mem_per_gpu, not both: SLURM accepts only one of them")
        if self.mem is not None and not self.mem > 0:
            raise ValueError(f"mem must be a positive number of GB, not {self.mem}")
        if self.mem_per_gpu is not None:
            if not self.mem_per_gpu > 0:
                raise ValueError(f"mem_per_gpu must be a positive number of GB, not {self.mem_per_gpu}")
            if self.gpus_per_node == 0:
                raise ValueError("mem_per_gpu needs gpus_per_node > 0; use mem for a job without GPUs")
        if self.time < 1:
            raise ValueError(f"time must be at least 1 minute, not {self.time}")
        if self.array_parallelism < 1:
            raise ValueError(f"array_parallelism must be at least 1, not {self.array_parallelism}")
        for i, line in enumerate(self.setup):
            # Setup lines are shell the user writes, copied into the job script as they are: one line each.
            if not line.strip():
                raise ValueError(f"setup[{i}] must be one non-empty shell line, not {line!r}")
            refuse_control_characters(line, f"setup[{i}]")
        if self.signal_delay_s < 0:
            raise ValueError(f"signal_delay_s must be 0 or more, not {self.signal_delay_s}")
        if self.signal_delay_s >= self.time * 60:
            raise ValueError(
                f"signal_delay_s={self.signal_delay_s} must be shorter than the time limit ({self.time} min), "
                "or the job is told to checkpoint before it starts"
            )
        if self.kind == "local":
            set_slurm_only = [key for key in _SLURM_ONLY if getattr(self, key) is not None]
            if set_slurm_only:
                raise ValueError(
                    f"{', '.join(set_slurm_only)} only mean something to SLURM; remove them from this local "
                    "profile, or set kind = 'slurm'"
                )
            if self.nodes != 1:
                raise ValueError(f"a local profile runs on this machine only: nodes must be 1, not {self.nodes}")

    @property
    def tasks(self) -> int:
        """Processes per node: tasks_per_node, else one per GPU, else one."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        """Processes in one job, over all its nodes."""
        return self.nodes * self.tasks

    def sbatch_options(self) -> dict[str, Any]:
        """The request as sbatch long options without their dashes (`cpus-per-task` -> 4); unset ones left out."""
        options: dict[str, Any] = {
            "nodes": self.nodes,
            "ntasks-per-node": self.tasks,
            "cpus-per-task": self.cpus_per_task,
            "time": self.time,
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "exclude": self.exclude,
            "gpus-per-node": self.gpus_per_node or None,
            "mem": _megabytes(self.mem),
            "mem-per-gpu": _megabytes(self.mem_per_gpu),
        }
        options.update({key: value for key, value in optional.items() if value is not None})
        return options


def _megabytes(gigabytes: float | None) -> str | None:
    """SLURM's memory syntax in whole megabytes (GB x 1024), so fractional GB survive."""
    return None if gigabytes is None else f"{int(round(gigabytes * 1024))}M"


LOCAL_PROFILE = ClusterProfile(name="local", kind="local", time=24 * 60, array_parallelism=2, signal_delay_s=30)
"""The built-in profile: jobs run as processes on this machine, at most two runs of a sweep at once."""
