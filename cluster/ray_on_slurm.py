"""A Ray cluster across the nodes of a SLURM allocation, for the length of one job, usable by that job alone.

The job's batch script runs on the first node of the allocation; `ray_cluster_on_slurm`
starts the Ray head there, starts one Ray worker node on each other node with `srun`
(this module's `worker` entry point), waits until every node has joined, and yields the
head's address with this process connected as the driver. When the body ends, for any
reason, everything it started is stopped.

Only the job itself can use its cluster (`cluster.ray_job_isolation` makes its private resources):
- token authentication is on (RAY_AUTH_MODE=token): each job makes a fresh 256-bit token, in a
  file of mode 0600 inside a private (0700) folder under the job's log folder, which every node
  of the job sees; every Ray process of the job reads it through RAY_AUTH_TOKEN_PATH, and a
  process without it is refused with InvalidAuthToken;
- each node's temp folder (RAY_TMPDIR: sockets, logs, spilled objects) is made with `mkdtemp`,
  so no other user can predict or pre-create it;
- each node takes the first block of RAY_PORTS_PER_JOB ports that is free there, starting at a
  block derived from SLURM_JOB_ID, below the torch.distributed ports of `cluster.rendezvous`
  (12000 and up); Ray's worker processes take ports the OS picks (`--min-worker-port=0`), from
  the ephemeral range, which no fixed block uses. Two jobs on one node never share a port.

Facts about Ray 2.60 that shape this module, measured on SLURM nodes:
- Ray advertises the address of the interface that routes to the internet, which need not be
  the network the nodes share (and a head forced onto loopback left joining workers hanging):
  every node runs with `--node-ip-address` set to SLURM's own address of the node (NodeAddr,
  `cluster.rendezvous.node_address`) when SLURM knows one, and every `ray start` runs under a
  timeout;
- a node whose raylet does not register with the GCS within a fixed 30 s fails `ray start`
  ("timed out during startup"), which happens on a loaded 2-core machine: a worker retries
  `ray start` once;
- raylet and gcs_server ignore SIGTERM: teardown sends SIGTERM, waits, then SIGKILL;
- `ray start` detaches Ray's processes from the srun task, and srun answers SIGTERM by killing
  its tasks at once: the worker tasks are told to stop by the head removing the job's token,
  and each stops its own node's Ray before it exits;
- `ray stop` kills every Ray process of the user on the node, other jobs' too: teardown
  stops only the processes that belong to this job's temp folder;
- `ray start --head` also starts Ray's client server (`python -m ray.util.client.server
  --address=<GCS address>`, on port 10001) whenever Ray Client's dependencies are installed, and no
  flag turns it off; its command line names no temp folder, and it outlives the GCS. Teardown on the
  head stops it by the job's own GCS address.
"""

import argparse
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import ray

from cluster.ray_job_isolation import (
    RAY_JOB_VARIABLES,
    RaySlurmError,
    check_token_file,
    free_ray_ports,
    make_ray_temp_dir,
    ray_environment,
    ray_work_dir,
    write_job_token,
)
from cluster.rendezvous import expand_hostlist, node_address

log = logging.getLogger(__name__)

# Ray's floor for the object store, and the share of the job's memory per node it may take.
MIN_OBJECT_STORE_BYTES = 80 * 1024 * 1024
OBJECT_STORE_SHARE = 0.3
RAY_START_TIMEOUT_S = 120.0
RAY_START_ATTEMPTS = 2
JOIN_TIMEOUT_S = 180.0
STOP_GRACE_S = 2.0
# A worker looks this often for the job's token, and stops once it is gone; the head waits this long for that.
WORKER_POLL_S = 0.5
WORKER_STOP_S = 30.0


def _node_resources(environ: Mapping[str, str]) -> list[str]:
    """`ray start` resource flags from what SLURM gave this job on this node."""
    flags = []
    if "SLURM_CPUS_ON_NODE" in environ:
        flags.append(f"--num-cpus={int(environ['SLURM_CPUS_ON_NODE'])}")
    if "SLURM_GPUS_ON_NODE" in environ:
        flags.append(f"--num-gpus={int(environ['SLURM_GPUS_ON_NODE'])}")
    if "SLURM_MEM_PER_NODE" in environ:
        job_bytes = int(environ["SLURM_MEM_PER_NODE"]) * 1024 * 1024
        flags.append(f"--object-store-memory={max(MIN_OBJECT_STORE_BYTES, int(job_bytes * OBJECT_STORE_SHARE))}")
    return flags


def cpus_per_node(environ: Mapping[str, str]) -> list[int]:
    """CPUs of the job on each of its nodes, in node-list order, from SLURM_JOB_CPUS_PER_NODE ('4(x2),2')."""
    counts = []
    for item in environ.get("SLURM_JOB_CPUS_PER_NODE", "").split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            raise RaySlurmError(f"cannot read SLURM_JOB_CPUS_PER_NODE={environ.get('SLURM_JOB_CPUS_PER_NODE')!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _this_node(environ: Mapping[str, str]) -> str:
    """This node's SLURM name (SLURMD_NODENAME inside a job), else the short hostname."""
    return environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _address_flags(address: str | None) -> list[str]:
    return [] if address is None else [f"--node-ip-address={address}"]


def _ray_start(flags: list[str], temp_dir: Path, token_path: Path, timeout_s: float, attempts: int = 1) -> None:
    """Run `ray start` with `flags`, bounded by `timeout_s`; it returns once this node's processes run.

    A raylet that did not register within Ray's fixed 30 s is retried, up to `attempts` starts in all.
    """
    ray_cli = Path(sys.executable).with_name("ray")
    command = [
        str(ray_cli) if ray_cli.exists() else "ray",
        "start",
        f"--temp-dir={ray_work_dir(temp_dir)}",
        "--disable-usage-stats",
        *flags,
    ]
    for attempt in range(1, attempts + 1):
        try:
            result = subprocess.run(
                command, env=ray_environment(temp_dir, token_path), capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            stop_ray_processes(temp_dir, remove=False)
            raise RaySlurmError(
                f"`{' '.join(command)}` did not finish within {timeout_s:.0f} s on {socket.gethostname()}: the "
                "head's address may be unreachable from here"
            ) from None
        if result.returncode == 0:
            return
        stop_ray_processes(temp_dir, remove=False)
        output = (result.stdout + result.stderr).strip()
        if "timed out during startup" in output and attempt < attempts:
            log.warning("the raylet on %s did not register in time: starting it again", socket.gethostname())
            continue
        tail = "\n".join(output.splitlines()[-15:])
        raise RaySlurmError(f"`{' '.join(command)}` failed on {socket.gethostname()}:\n{tail}")


def _processes_of(temp_dir: Path, address: str | None = None) -> list[int]:
    """Ids of this user's processes whose command line names `temp_dir`: this job's Ray processes on this node.

    With `address` (the job's GCS address, HOST:PORT), also those started with `--address=<address>`:
    Ray's client server (`python -m ray.util.client.server`), which `ray start --head` starts beside
    the head and whose command line names no temp folder.
    """
    marker = str(temp_dir)
    exact = f"--address={address}" if address is not None else None
    uid = os.getuid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            args = [arg.decode(errors="replace") for arg in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if any(arg.endswith(marker) or f"{marker}/" in arg or arg == exact for arg in args):
            pids.append(int(entry.name))
    return pids


def stop_ray_processes(
    temp_dir: Path, grace_s: float = STOP_GRACE_S, remove: bool = True, address: str | None = None
) -> int:
    """Stop this job's Ray processes on this node: SIGTERM, then SIGKILL for those still alive after `grace_s`.

    On the head, `address` (the job's GCS address) names Ray's client server too (`_processes_of`).
    Returns how many needed SIGKILL (raylet and gcs_server always do). With `remove`, the temp folder goes too.
    """
    for pid in _processes_of(temp_dir, address):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _processes_of(temp_dir, address) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = _processes_of(temp_dir, address)
    for pid in survivors:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while _processes_of(temp_dir, address) and time.monotonic() < deadline:
        time.sleep(0.1)
    if remove:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return len(survivors)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_for_nodes(expected: int, workers: subprocess.Popen | None, worker_log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = sum(1 for node in ray.nodes() if node.get("Alive"))
        if alive >= expected:
            return
        if workers is not None and workers.poll() is not None:
            raise RaySlurmError(
                f"the srun step of the Ray workers ended (exit {workers.returncode}) with {alive} of {expected} "
                f"nodes joined; its log, {worker_log}:\n{_tail(worker_log)}"
            )
        if time.monotonic() > deadline:
            raise RaySlurmError(
                f"only {alive} of {expected} Ray nodes joined within {timeout_s:.0f} s; the workers' log, "
                f"{worker_log}:\n{_tail(worker_log)}"
            )
        time.sleep(0.5)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def ray_cluster_on_slurm(
    log_dir: Path, environ: Mapping[str, str] | None = None, join_timeout_s: float = JOIN_TIMEOUT_S
) -> Iterator[str]:
    """Bring up Ray on every node of this SLURM job, connect this process as its driver, and yield the address.

    Call it from the job's batch script (on the first node). `log_dir` must be on a filesystem
    every node sees: the job's token goes there, and the workers' srun output goes to
    `log_dir/ray-workers-<job id>.log`.
    """
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in environ or "SLURM_JOB_NODELIST" not in environ:
        raise RaySlurmError(
            "not inside a SLURM job (SLURM_JOB_ID and SLURM_JOB_NODELIST are unset): submit the job with sbatch"
        )
    job_id = int(environ["SLURM_JOB_ID"])
    hosts = expand_hostlist(environ["SLURM_JOB_NODELIST"])
    head_host = _this_node(environ)
    if head_host not in hosts:
        raise RaySlurmError(f"this process runs on {head_host}, which is not in the job's nodes {hosts}")
    others = [host for host in hosts if host != head_host]
    ports = free_ray_ports(job_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    worker_log = log_dir / f"ray-workers-{job_id}.log"
    token_path = write_job_token(log_dir)
    temp_dir = make_ray_temp_dir(job_id)
    workers: subprocess.Popen | None = None
    address: str | None = None
    saved = {name: os.environ.get(name) for name in (*RAY_JOB_VARIABLES, "RAY_AUTH_TOKEN")}
    started = time.perf_counter()
    try:
        head_address = node_address(head_host)
        head_ip = head_address or ray.util.get_node_ip_address()
        address = f"{head_ip}:{ports.gcs}"
        _ray_start(
            ["--head", *_address_flags(head_address), *ports.flags(head=True), *_node_resources(environ)],
            temp_dir,
            token_path,
            RAY_START_TIMEOUT_S,
        )
        _use_job_ray_environment(temp_dir, token_path)
        if others:
            # One task per other node, holding all the job's CPUs there, so Ray may use them all.
            worker_cpus = min(
                cpus for host, cpus in zip(hosts, cpus_per_node(environ), strict=True) if host != head_host
            )
            command = [
                "srun",
                f"--nodes={len(others)}",
                f"--ntasks={len(others)}",
                "--ntasks-per-node=1",
                f"--cpus-per-task={worker_cpus}",
                f"--nodelist={','.join(others)}",
                "--kill-on-bad-exit=0",
                sys.executable,
                "-m",
                "cluster.ray_on_slurm",
                "worker",
                f"--address={address}",
                f"--job-id={job_id}",
                f"--token-file={token_path}",
            ]
            with worker_log.open("a") as log_file:
                workers = subprocess.Popen(
                    command, stdout=log_file, stderr=subprocess.STDOUT, env=ray_environment(temp_dir, token_path)
                )
        ray.init(address=address, _node_ip_address=head_ip, logging_level=logging.WARNING)
        _wait_for_nodes(len(hosts), workers, worker_log, join_timeout_s)
        log.info(
            "Ray cluster of job %d up in %.1f s: head %s, %d node(s)",
            job_id,
            time.perf_counter() - started,
            address,
            len(hosts),
        )
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        # The workers stop when the token is gone. (Terminating their srun would not do: srun answers
        # SIGTERM by killing the tasks at once, and their Ray processes, detached, would stay.)
        shutil.rmtree(token_path.parent, ignore_errors=True)
        if workers is not None:
            try:
                workers.wait(timeout=WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                log.warning("the Ray workers did not stop within %.0f s; killing their srun", WORKER_STOP_S)
                workers.kill()
                workers.wait()
        stop_ray_processes(temp_dir, address=address)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _refresh_ray_config()


def _refresh_ray_config() -> None:
    """Make this process's Ray read RAY_AUTH_MODE and the token again (it caches both), as `ray start` does."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _use_job_ray_environment(temp_dir: Path, token_path: Path) -> None:
    """Point this process (the driver) at the job's token and temp folder."""
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update({name: ray_environment(temp_dir, token_path)[name] for name in RAY_JOB_VARIABLES})
    _refresh_ray_config()


def _run_worker(address: str, job_id: int, token_path: Path) -> int:
    """One srun task: join the head at `address`; stop this node's Ray once the token goes, or on SIGTERM."""
    check_token_file(token_path)
    temp_dir = make_ray_temp_dir(job_id)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        _ray_start(
            [
                f"--address={address}",
                *_address_flags(node_address(_this_node(os.environ))),
                *free_ray_ports(job_id).flags(head=False),
                *_node_resources(os.environ),
            ],
            temp_dir,
            token_path,
            RAY_START_TIMEOUT_S,
            attempts=RAY_START_ATTEMPTS,
        )
        print(f"{socket.gethostname()}: joined the Ray head at {address}", flush=True)
        # The head removes the token when the job's Ray cluster ends: that is this worker's signal to stop.
        while not stopping and token_path.exists():
            time.sleep(WORKER_POLL_S)
    finally:
        stop_ray_processes(temp_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Ray worker node of a SLURM job (started by ray_cluster_on_slurm).")
    subparsers = parser.add_subparsers(dest="role", required=True)
    worker = subparsers.add_parser("worker", help="join the job's Ray head; stay until its token goes, or SIGTERM")
    worker.add_argument("--address", required=True, help="head address, IP:PORT")
    worker.add_argument("--job-id", type=int, required=True, help="SLURM job id: picks the ports and the temp folder")
    worker.add_argument("--token-file", type=Path, required=True, help="the job's Ray auth token (mode 0600)")
    args = parser.parse_args(argv)
    try:
        return _run_worker(args.address, args.job_id, args.token_file)
    except RaySlurmError as error:
        print(f"{socket.gethostname()}: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
