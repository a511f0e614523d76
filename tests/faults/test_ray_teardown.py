"""A two-node extraction job leaves no process of its Ray cluster behind, on either node.

`ray start --head` also starts Ray's client server (`python -m ray.util.client.server
--address=<GCS address>`), whose command line names no temp folder: teardown, which stopped the
processes naming the job's temp folder, left it running, orphaned, after the job had ended. Node 2
of the local cluster is a network namespace of this machine, so every node's processes show in this
machine's /proc.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

from launch.cli import main
from tests.faults.fault_summary import record_case

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.integration]

TWO_NODE_PROFILE = Path(__file__).parents[2] / "launch" / "profiles" / "slurm-two-nodes.toml"
HEAD_LINE = re.compile(r"Ray cluster of job (\d+) up in [\d.]+ s: head (\S+), 2 node\(s\)")


@pytest.fixture
def two_nodes(slurm_cluster) -> None:
    """Skips the test unless the SLURM cluster has two usable nodes."""
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=15)
    usable = {line.split()[0] for line in states.stdout.splitlines() if line.split()[1] in ("idle", "mixed")}
    if len(usable) < 2:
        pytest.skip(f"needs two usable SLURM nodes, {sorted(usable)} are; start them with "
                    "`sudo bash cluster/slurm/start-local-cluster.sh --nodes 2`")


def command_lines() -> dict[int, list[str]]:
    """Every live process on this machine (and so on both nodes) -> its command line."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
    return lines


def job_processes(job_id: str, address: str) -> list[str]:
    """Processes of the job's Ray cluster: naming one of its temp folders (ray-<job>-*), or its GCS address."""
    temp_folder = re.compile(rf"/ray-{job_id}-[^/\s]+")
    return [
        " ".join(args)
        for args in command_lines().values()
        if any(temp_folder.search(arg) or arg == f"--address={address}" for arg in args)
    ]


def test_a_two_node_extraction_job_leaves_no_ray_process_on_either_node(two_nodes, tmp_path):
    """Before: `python -m ray.util.client.server --address=<node 1>:...` was still running after the job ended."""
    from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus

    corpus = write_demo_corpus(
        tmp_path / "corpus",
        DemoCorpusConfig(train_dialogues=3, dev_dialogues=1, test_dialogues=1, min_utterances=2, max_utterances=2,
                         clip_format="wav", workers=2),
    )
    out = tmp_path / "stores"
    status = main([
        "launch", "extract", str(corpus), "--cluster", "slurm", "--profile", str(TWO_NODE_PROFILE),
        "--profile-set", "time=10", "--wait", 'families=["opensmile"]', "shard_dialogues=1",
        f"store_root={json.dumps(str(out))}",
    ])
    assert status == 0
    log = "".join(path.read_text() for path in (out / "logs").glob("*_log.err"))
    (head,) = HEAD_LINE.findall(log)
    job_id, address = head
    left = job_processes(job_id, address)
    record_case("two-node extraction job's Ray processes after it ends", traceback=False, silent=bool(left))
    assert left == []
