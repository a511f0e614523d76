"""What keeps one SLURM job's Ray cluster its own: a port block, private temp folders and an auth token.

`cluster.ray_on_slurm` starts and stops the cluster; this module only names and makes the job's
private resources, so that two jobs on one node never share a port, a socket folder or a token:
- each node takes the first block of RAY_PORTS_PER_JOB ports that is free there, starting at a
  block derived from SLURM_JOB_ID (`free_ray_ports`);
- each node's temp folder is made with `mkdtemp` inside a 0700 folder (`make_ray_temp_dir`);
- the job's token is a fresh 256-bit secret in a 0600 file (`write_job_token`), refused when
  anyone else could read it (`check_token_file`).
"""

import logging
import os
import secrets
import socket
import stat
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Each job gets RAY_PORTS_PER_JOB consecutive ports in [RAY_PORT_BASE, RAY_PORT_BASE + RAY_PORT_SPAN):
# below 10002, where Ray's default worker-port range (10002-19999) starts; a block inside that range
# makes `ray start` refuse to run ("port ... is used by other components").
RAY_PORT_BASE = 6000
RAY_PORT_SPAN = 4000
RAY_PORTS_PER_JOB = 8
# Ray's unix socket paths (temp folder + about 60 characters) must stay under 107 bytes.
MAX_TEMP_ROOT_CHARS = 40
# The variables that point every Ray process of the job at its token and its temp folder.
RAY_JOB_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")


class RaySlurmError(RuntimeError):
    """The Ray cluster could not be brought up on the allocation; the message says which step failed."""


@dataclass(frozen=True, kw_only=True)
class RayPorts:
    """The fixed ports of one job's Ray processes on one node (worker processes take ports the OS picks)."""

    gcs: int
    """Head's GCS: the cluster's address."""
    dashboard: int
    """Dashboard HTTP server (not served to users here, but Ray still binds it)."""
    dashboard_agent_listen: int
    """Dashboard agent's HTTP port on every node."""
    dashboard_agent_grpc: int
    """Dashboard agent's gRPC port on every node."""
    metrics_export: int
    """Prometheus metrics endpoint on every node."""
    runtime_env_agent: int
    """Runtime-environment agent on every node."""
    node_manager: int
    """Raylet on every node."""
    object_manager: int
    """Object manager on every node."""

    def flags(self, head: bool) -> list[str]:
        """`ray start` options for these ports; the GCS and dashboard settings only on the head."""
        flags = [
            f"--dashboard-agent-listen-port={self.dashboard_agent_listen}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--metrics-export-port={self.metrics_export}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--node-manager-port={self.node_manager}",
            f"--object-manager-port={self.object_manager}",
            # Worker processes bind ports the OS picks, from the ephemeral range (32768 and up).
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        if head:
            flags += [f"--port={self.gcs}", f"--dashboard-port={self.dashboard}", "--include-dashboard=false"]
        return flags


def ray_ports(job_id: int) -> RayPorts:
    """The first port block of SLURM job `job_id`: distinct for jobs whose ids differ by less than RAY_PORT_SPAN / 8."""
    slots = RAY_PORT_SPAN // RAY_PORTS_PER_JOB
    base = RAY_PORT_BASE + (job_id % slots) * RAY_PORTS_PER_JOB
    return RayPorts(
        gcs=base,
        dashboard=base + 1,
        dashboard_agent_listen=base + 2,
        dashboard_agent_grpc=base + 3,
        metrics_export=base + 4,
        runtime_env_agent=base + 5,
        node_manager=base + 6,
        object_manager=base + 7,
    )


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


def free_ray_ports(job_id: int) -> RayPorts:
    """This job's port block on this node: its own block when free, else the next whose ports are all free here."""
    slots = RAY_PORT_SPAN // RAY_PORTS_PER_JOB
    for offset in range(slots):
        ports = ray_ports(job_id + offset)
        if not any(_port_in_use(port) for port in astuple(ports)):
            if offset:
                log.info("ports of job %d's own block are taken on this node; using block %d", job_id, offset)
            return ports
    raise RaySlurmError(
        f"no block of {RAY_PORTS_PER_JOB} free ports in {RAY_PORT_BASE}-{RAY_PORT_BASE + RAY_PORT_SPAN - 1} on "
        f"{socket.gethostname()}"
    )


def _temp_root() -> str:
    """Where the job's temp folders go: the system's (TMPDIR), unless its path is too long for Ray's sockets."""
    root = tempfile.gettempdir()
    return root if len(root) <= MAX_TEMP_ROOT_CHARS else "/tmp"


def make_ray_temp_dir(job_id: int) -> Path:
    """A new private (0700) temp folder for job `job_id`'s Ray processes on this node, at an unpredictable path.

    Ray itself works in its subfolder `ray` (`ray_work_dir`): Ray opens its temp folder to everyone
    (mode 0777), so the private folder around it is what keeps others out.
    """
    return Path(tempfile.mkdtemp(prefix=f"ray-{job_id}-", dir=_temp_root()))


def ray_work_dir(temp_dir: Path) -> Path:
    """The folder Ray is given as its temp folder, inside the job's private `temp_dir`."""
    return temp_dir / "ray"


def ray_temp_dirs(job_id: int) -> list[Path]:
    """The temp folders job `job_id` has on this machine now (empty once its Ray cluster is down)."""
    return sorted(Path(_temp_root()).glob(f"ray-{job_id}-*"))


def write_job_token(folder: Path) -> Path:
    """Make a fresh Ray auth token for one job: a 0600 file in a new 0700 folder under `folder`; returns its path.

    `folder` must be one every node of the job sees (the job's log folder).
    """
    private = Path(tempfile.mkdtemp(prefix="ray-auth-", dir=folder))
    token_path = private / "token"
    descriptor = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(secrets.token_hex(32))
    return token_path


def check_token_file(token_path: Path) -> None:
    """Refuse a token file that is missing, not this user's, or readable by anyone else."""
    try:
        info = token_path.stat()
    except OSError as error:
        raise RaySlurmError(f"cannot read the job's Ray token {token_path}: {error}") from None
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise RaySlurmError(
            f"the Ray token {token_path} must belong to this user and have mode 0600 "
            f"(it has owner {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})"
        )


def ray_environment(temp_dir: Path, token_path: Path) -> dict[str, str]:
    """The environment every Ray process of the job runs with: token auth from `token_path`, temp folder `temp_dir`."""
    env = dict(os.environ)
    # A token in the environment would win over the job's file.
    env.pop("RAY_AUTH_TOKEN", None)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_TMPDIR=str(ray_work_dir(temp_dir)),
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env
