"""Which Ray a job runs on: the config alone, without importing Ray.

It sits apart from `cluster.ray_runtime`, which starts or joins Ray, so that configs holding a
`RayConfig` (the extraction config, which `cmroberta predict` reads back from a store) load without
Ray's start-up cost.
"""

from dataclasses import dataclass

# Ray refuses an object store smaller than this.
MIN_OBJECT_STORE_MB = 75


@dataclass(kw_only=True)
class RayConfig:
    """Which Ray to run on: a local one started here, or an existing cluster."""

    address: str | None = None
    """Address of a running Ray cluster ('auto', 'HOST:6379' or 'ray://HOST:10001'); None starts
    a local Ray inside this process, stopped when the job ends."""
    num_workers: int = 2
    """Local Ray only: CPUs it offers, so at most this many one-CPU tasks run at once."""
    num_gpus: int | None = None
    """Local Ray only: GPUs it offers; None lets Ray count the visible GPUs."""
    object_store_mb: int = 80
    """Local Ray only: object store size in MiB (Ray's floor is 75); results beyond it spill to disk."""
    tmp_dir: str | None = None
    """Local Ray only: folder under which this job's Ray temp folder is made (None: the system temp folder)."""

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise ValueError("address must be a Ray address such as 'auto' or 'HOST:6379', or left unset")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, not {self.num_workers}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"num_gpus must be 0 or more, not {self.num_gpus}")
        if self.object_store_mb < MIN_OBJECT_STORE_MB:
            raise ValueError(
                f"object_store_mb must be at least {MIN_OBJECT_STORE_MB} (Ray's floor), not {self.object_store_mb}"
            )
