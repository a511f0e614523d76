"""A Ray session for one job: a small local Ray started in this process, or an existing cluster.

Facts about Ray 2.60 that shape this module, measured on a laptop:
- a default `ray.init` takes about 735 MB and reserves a 7.4 GB object store; an
  80 MiB object store (75 MiB is Ray's floor) without the dashboard starts in about
  3 s at about 530 MB;
- Ray keeps sockets, logs and spilled objects under its temp folder, so each job gets
  its own (`RAY_TMPDIR`), removed when the job ends, and two jobs never collide;
- raylet and gcs_server ignore SIGTERM, so a job that dies without `ray.shutdown()`
  leaves them running: the session always shuts Ray down, on errors too;
- token authentication is on by default: a local Ray makes a token in
  ~/.ray/auth_token, and a process that connects to a cluster needs that cluster's
  token (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH). On SLURM,
  `cluster.ray_on_slurm` makes a token per job and connects the job's process before
  the pipeline asks for a session, so this module uses that connection.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray

from cluster.ray_config import RayConfig

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class RayResources:
    """What the cluster offers, as Ray counts it when the session starts."""

    cpus: float
    """Logical CPUs of all nodes."""
    gpus: float
    """GPUs of all nodes."""
    nodes: int
    """Live nodes."""


class RayStartError(RuntimeError):
    """Ray could not be started or reached; the message says what to check."""


def _resources() -> RayResources:
    total = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return RayResources(cpus=float(total.get("CPU", 0.0)), gpus=float(total.get("GPU", 0.0)), nodes=nodes)


@contextmanager
def ray_session(config: RayConfig) -> Iterator[RayResources]:
    """Run the body inside a Ray session and always end it.

    When this process is already connected to Ray (a caller, or a test, started it), the
    session uses that connection and leaves it open for its owner.
    """
    if ray.is_initialized():
        log.info("using the Ray session this process already has")
        yield _resources()
        return
    tmp_root = None
    saved_env = {name: os.environ.get(name) for name in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")}
    try:
        if config.address is None:
            # Ray's unix socket paths must stay under 107 bytes, so the folder name is short.
            tmp_root = Path(tempfile.mkdtemp(prefix="ray", dir=config.tmp_dir))
            os.environ["RAY_TMPDIR"] = str(tmp_root)
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            try:
                ray.init(
                    num_cpus=config.num_workers,
                    num_gpus=config.num_gpus,
                    object_store_memory=config.object_store_mb * MIB,
                    include_dashboard=False,
                    _temp_dir=str(tmp_root),
                    logging_level=logging.WARNING,
                )
            except Exception as error:
                raise RayStartError(f"could not start a local Ray under {tmp_root}: {error}") from error
            log.info(
                "started a local Ray: %d CPUs, %d MiB object store, temp %s",
                config.num_workers,
                config.object_store_mb,
                tmp_root,
            )
        else:
            try:
                ray.init(address=config.address, logging_level=logging.WARNING)
            except Exception as error:
                raise RayStartError(
                    f"could not connect to the Ray cluster at {config.address!r}: {error}. Check that it runs "
                    "(`ray status --address ...`), and that this process has the cluster's auth token "
                    "(RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH pointing at its token file)"
                ) from error
            log.info("connected to the Ray cluster at %s", config.address)
        yield _resources()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)
