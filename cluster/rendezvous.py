"""Who am I in a torch.distributed job: rank, local rank, world size and where rank 0 listens.

Read, in this order, from
1. torchrun's (or a user's explicit) environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
2. SLURM's environment inside an `srun` step: SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS (or
   SLURM_NTASKS), with rank 0 on the first host of the step's (else the job's) node list, at the
   address SLURM itself reaches that node at (its NodeAddr), and a port derived from SLURM_JOB_ID, so
   that two jobs sharing a node never pick the same port (MASTER_ADDR / MASTER_PORT, when set, still win);
3. a single process on this machine, on a free port. This includes the batch script of an
   `sbatch --ntasks=N` job run without `srun`: SLURM sets SLURM_PROCID=0 and SLURM_NTASKS=N there
   too, but only one process runs, and waiting for N would hang.

`export_rendezvous` writes the result back as the five variables torch.distributed's `env://`
and DeepSpeed read; without them DeepSpeed falls back to MPI discovery and fails for want of mpi4py.
It also names the network interface gloo binds to (GLOO_SOCKET_IFNAME, unless set): gloo otherwise
advertises the address its hostname resolves to, which on many machines is 127.0.1.1 or an address
the other nodes cannot reach, and the job hangs in its first collective.
"""

import fcntl
import ipaddress
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from cluster.top_level_commas import split_top_level_commas

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# SLURM-derived ports stay in [SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN): above the
# well-known and registered services most clusters run, below Linux's ephemeral range (32768+),
# so a port a client socket happens to hold is never chosen.
SLURM_PORT_BASE = 12000
SLURM_PORT_SPAN = 20000
SCONTROL_TIMEOUT_S = 30
# ioctl request that reads an interface's IPv4 address (linux/sockios.h).
_SIOCGIFADDR = 0x8915


class RendezvousError(ValueError):
    """The distributed environment variables are inconsistent; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Rendezvous:
    """This process's place in a distributed job."""

    rank: int
    """Global rank, 0..world_size-1."""
    local_rank: int
    """Rank among the processes on this node; picks the GPU."""
    world_size: int
    """Number of processes in the job."""
    master_addr: str
    """Host where rank 0 listens."""
    master_port: int
    """Port where rank 0 listens."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise RendezvousError(f"world_size must be at least 1, not {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise RendezvousError(f"rank must lie in [0, {self.world_size}), not {self.rank}")
        if self.local_rank < 0:
            raise RendezvousError(f"local_rank must be 0 or more, not {self.local_rank}")
        if not self.master_addr:
            raise RendezvousError("master_addr must name the host of rank 0")
        if not 0 < self.master_port < 65536:
            raise RendezvousError(f"master_port must lie in 1..65535, not {self.master_port}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        return int(text)
    except ValueError:
        raise RendezvousError(f"environment variable {name}={text!r} must be an integer") from None


def _expand_range_list(ranges: str, where: str) -> list[str]:
    """'01-03,7' -> ['01', '02', '03', '7']; zero padding follows the lower bound's width."""
    values = []
    for item in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if match is None:
            raise RendezvousError(f"cannot read the host range {item!r} in SLURM_JOB_NODELIST={where!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        width = len(low)
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list: 'gpu[01-02,05],login1' -> ['gpu01', 'gpu02', 'gpu05', 'login1'].

    Several bracket groups in one name ('rack[1-2]-n[1-2]') expand as their product, in SLURM's order.
    """
    hosts = []
    for name in (part for part in split_top_level_commas(nodelist) if part):
        match = re.match(r"([^\[]*)\[([^\]]*)\](.*)", name)
        if match is None:
            hosts.append(name)
            continue
        prefix, ranges, rest = match.groups()
        for value in _expand_range_list(ranges, nodelist):
            hosts.extend(expand_hostlist(prefix + value + rest))
    return hosts


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list, by `scontrol show hostnames` where SLURM's tools are installed."""
    scontrol = shutil.which("scontrol")
    if scontrol is not None:
        try:
            result = subprocess.run(
                [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
            )
            hosts = result.stdout.split()
            if hosts:
                return hosts[0]
        except (subprocess.SubprocessError, OSError) as error:
            log.debug("scontrol show hostnames %s failed (%s); parsing the list here", nodelist, error)
    hosts = expand_hostlist(nodelist)
    if not hosts:
        raise RendezvousError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts[0]


def node_address(node: str) -> str | None:
    """The IPv4 address at which the other nodes reach SLURM node `node`, or None when SLURM cannot say.

    SLURM's own NodeAddr (`scontrol show node`), resolved when it is a name. A name that
    resolves to a loopback address (Debian maps a host's own name to 127.0.1.1) says nothing.
    """
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None
    try:
        shown = subprocess.run(
            [scontrol, "show", "node", "--oneliner", node],
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT_S,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as error:
        log.debug("scontrol show node %s failed (%s)", node, error)
        return None
    match = re.search(r"\bNodeAddr=(\S+)", shown)
    if match is None:
        return None
    try:
        address = ipaddress.ip_address(socket.gethostbyname(match.group(1)))
    except (OSError, ValueError):
        return None
    return None if address.is_loopback else str(address)


def interface_towards(address: str) -> str | None:
    """Name of the network interface this machine sends to `address` from, or None when none routes there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # Connecting a UDP socket sends nothing; it only picks the route and the source address.
            probe.connect((address, 9))
        except OSError:
            return None
        source = probe.getsockname()[0]
        for _, name in socket.if_nameindex():
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(reply[20:24]) == source:
                return name
    return None


def slurm_port(job_id: int) -> int:
    """The rendezvous port of a SLURM job: distinct for job ids that differ by less than SLURM_PORT_SPAN."""
    return SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN


def _from_torchrun(environ: Mapping[str, str]) -> Rendezvous:
    world_size = _int_variable(environ, "WORLD_SIZE")
    rank = _int_variable(environ, "RANK")
    local_rank = _int_variable(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
    if world_size > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in environ]
        if missing:
            raise RendezvousError(
                f"RANK and WORLD_SIZE={world_size} are set but {' and '.join(missing)} are not: set them, "
                "or start the job with torchrun, which sets all five"
            )
    master_port = _int_variable(environ, "MASTER_PORT") if "MASTER_PORT" in environ else free_port()
    return Rendezvous(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        master_addr=environ.get("MASTER_ADDR", LOOPBACK),
        master_port=master_port,
    )


def _from_slurm(environ: Mapping[str, str]) -> Rendezvous:
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise RendezvousError("SLURM_PROCID is set but SLURM_JOB_NODELIST is not: start the tasks with srun")
    world_name = next((name for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") if name in environ), None)
    if world_name is None:
        raise RendezvousError("SLURM_PROCID is set but SLURM_NTASKS is not: start the tasks with srun")
    if "MASTER_PORT" in environ:
        master_port = _int_variable(environ, "MASTER_PORT")
    elif "SLURM_JOB_ID" in environ:
        master_port = slurm_port(_int_variable(environ, "SLURM_JOB_ID"))
    else:
        raise RendezvousError("SLURM_PROCID is set but neither SLURM_JOB_ID nor MASTER_PORT is")
    master_addr = environ.get("MASTER_ADDR")
    if not master_addr:
        host = first_host(nodelist)
        master_addr = node_address(host) or host
    return Rendezvous(
        rank=_int_variable(environ, "SLURM_PROCID"),
        local_rank=_int_variable(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0,
        world_size=_int_variable(environ, world_name),
        master_addr=master_addr,
        master_port=master_port,
    )


def resolve_rendezvous(environ: Mapping[str, str] | None = None) -> Rendezvous:
    """This process's rendezvous from torchrun's variables, else SLURM's, else a single local process."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return _from_torchrun(environ)
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        return _from_slurm(environ)
    if "SLURM_PROCID" in environ:
        log.info("in a SLURM batch script, not an srun step: running as one process")
    return Rendezvous(rank=0, local_rank=0, world_size=1, master_addr=LOOPBACK, master_port=free_port())


def export_rendezvous(rendezvous: Rendezvous, environ: MutableMapping[str, str] | None = None) -> None:
    """Set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, as torch.distributed's env:// reads them.

    In a job of several processes, also GLOO_SOCKET_IFNAME (unless set): the interface that reaches
    rank 0, so every rank advertises an address the others can reach.
    """
    environ = os.environ if environ is None else environ
    if rendezvous.world_size > 1 and "GLOO_SOCKET_IFNAME" not in environ:
        try:
            interface = interface_towards(socket.gethostbyname(rendezvous.master_addr))
        except OSError:
            interface = None
        if interface is not None:
            log.info("gloo binds to %s, the interface that reaches rank 0 at %s", interface, rendezvous.master_addr)
            environ["GLOO_SOCKET_IFNAME"] = interface
    environ["RANK"] = str(rendezvous.rank)
    environ["LOCAL_RANK"] = str(rendezvous.local_rank)
    environ["WORLD_SIZE"] = str(rendezvous.world_size)
    environ["MASTER_ADDR"] = rendezvous.master_addr
    environ["MASTER_PORT"] = str(rendezvous.master_port)
