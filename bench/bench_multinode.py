"""What a second node costs, on the SLURM cluster that `start-local-cluster.sh --nodes 2` starts.

Every figure compares 2 nodes with 1 in the same process, as a ratio. On one machine the nodes
share its cores, so these are overheads (scheduling, joining, talking over the veth link), not
speed-ups: extraction and training have no more CPU on two nodes than on one.

1. Submission to start: a job of one task per node that returns when it began (the later of
   its tasks), submitted `--repeats` times one after another, on 1 node and on 2.
2. Ray cluster start and join: inside a job's batch script, the time `ray_cluster_on_slurm`
   takes until every node has joined (1 node: the head alone; 2 nodes: head, srun, worker join),
   and the time it takes to tear down.
3. Extraction throughput, utterances/s: the demo's extraction (openSMILE and MiniLM text) of a
   demo corpus on the job's Ray cluster, 1 node against 2.
4. DeepSpeed step time: a 1.1M-parameter MLP (gloo, ZeRO 0, one thread per rank), median of
   `--steps` optimiser steps, 1 process against one rank on each of 2 nodes; the difference is
   the gradient all-reduce over the link.

`--load N` keeps N busy processes spinning on the machine while it measures, as on a busy login
node; Ray's join and the rendezvous must still succeed within their bounds.

    python bench/bench_multinode.py
    python bench/bench_multinode.py --repeats 3 --train-dialogues 20 --load 2
"""

import argparse
import logging
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.profile import ClusterProfile
from launch.executors import follow_jobs, load_profile, make_executor, submit_jobs

TWO_NODE_PROFILE = Path(__file__).parents[1] / "launch" / "profiles" / "slurm-two-nodes.toml"
JOB_TIMEOUT_S = 900


def started_at() -> float:
    """A task of the latency job: the wall-clock time at which it began running."""
    return time.time()


def ray_up_and_down(log_dir: str) -> dict[str, float]:
    """In the batch script: bring the job's Ray cluster up (all nodes joined), then down; time both."""
    import ray

    from cluster.ray_on_slurm import ray_cluster_on_slurm

    started = time.perf_counter()
    with ray_cluster_on_slurm(Path(log_dir)):
        up = time.perf_counter() - started
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        stopping = time.perf_counter()
    return {"up_s": up, "down_s": time.perf_counter() - stopping, "nodes": nodes}


def timed_extraction(corpus: str, store_root: str, log_dir: str) -> dict[str, float]:
    """In the batch script: the demo's extraction of `corpus` on the job's Ray cluster; utterances and seconds."""
    from dataclasses import replace

    from cluster.ray_on_slurm import ray_cluster_on_slurm
    from extract.feature_store import FeatureStore
    from extract.pipeline import run_extraction
    from launch.commands.demo import demo_extract_config

    config = demo_extract_config(Path(corpus), Path(store_root), None)
    with ray_cluster_on_slurm(Path(log_dir)) as address:
        started = time.perf_counter()
        store = FeatureStore.open(run_extraction(replace(config, ray=replace(config.ray, address=address))))
        seconds = time.perf_counter() - started
    rows = sum(len(store.read_split(split, families=[])) for split in store.splits)
    return {"utterances": rows, "seconds": seconds}


def deepspeed_steps(steps: int) -> dict[str, float]:
    """In each task: a DeepSpeed engine over the job's rendezvous; the median time of `steps` optimiser steps."""
    import deepspeed
    import torch

    from cluster.rendezvous import export_rendezvous, resolve_rendezvous

    torch.set_num_threads(1)
    rendezvous = resolve_rendezvous()
    export_rendezvous(rendezvous)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 7),
    )
    config = {
        "train_micro_batch_size_per_gpu": 32,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 32 * rendezvous.world_size,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": 0},
    }
    started = time.perf_counter()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    initialize_s = time.perf_counter() - started
    inputs, labels = torch.randn(32, 512), torch.randint(0, 7, (32,))
    times = []
    for step in range(steps + 3):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(engine(inputs), labels)
        engine.backward(loss)
        engine.step()
        if step >= 3:
            times.append(time.perf_counter() - started)
    return {"step_s": statistics.median(times), "initialize_s": initialize_s, "rank": rendezvous.rank}


def run_job(profile: ClusterProfile, folder: Path, function: Callable[[], Any], in_batch_script: bool) -> list[Any]:
    executor = make_executor(profile, folder, job_name="bench-multinode", in_batch_script=in_batch_script)
    (job,) = submit_jobs(executor, profile, [function])
    (outcome,) = follow_jobs([job], poll_s=0.05, timeout_s=JOB_TIMEOUT_S)
    if outcome.error is not None:
        raise RuntimeError(f"job {job.job_id} failed; see {outcome.stderr_path}:\n{outcome.error}")
    return job.results()


def measure_start(profile: ClusterProfile, folder: Path, repeats: int) -> list[float]:
    latencies = []
    for repeat in range(repeats):
        submitted = time.time()
        starts = run_job(profile, folder / str(repeat), started_at, in_batch_script=False)
        latencies.append(max(starts) - submitted)
    return latencies


def spin() -> None:
    while True:
        pass


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def ratio(two: float, one: float) -> str:
    return f"{two / one:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="jobs per measurement of start and Ray join")
    parser.add_argument("--train-dialogues", type=int, default=60, help="train dialogues of the demo corpus")
    parser.add_argument("--steps", type=int, default=30, help="DeepSpeed steps timed per rank")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run meanwhile, as on a busy node")
    parser.add_argument("--skip-extraction", action="store_true", help="leave out the extraction comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cmroberta" / "torch_extensions"))
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=15).stdout.split()
    if len(set(nodes)) < 2:
        raise SystemExit(
            f"needs two SLURM nodes, found {nodes}: sudo bash cluster/slurm/start-local-cluster.sh --nodes 2"
        )
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for process in spinners:
        process.start()
    print(f"nodes {sorted(set(nodes))}; {args.load} busy process(es) meanwhile; the nodes share {os.cpu_count()} cores")

    one = load_profile("slurm", TWO_NODE_PROFILE, ["nodes=1", "cpus_per_task=1", "mem=1.5", "time=20"])
    two = load_profile("slurm", TWO_NODE_PROFILE, ["nodes=2", "cpus_per_task=1", "mem=1.5", "time=20"])
    try:
        with tempfile.TemporaryDirectory(prefix="bench-multinode-", dir=Path.cwd()) as tmp:
            root = Path(tmp)
            starts = {n: measure_start(p, root / f"start-{n}", args.repeats) for n, p in ((1, one), (2, two))}
            for n, values in starts.items():
                print(f"submission to start, {n} node(s): {describe(values)}")
            print(f"  2 nodes / 1 node: {ratio(statistics.median(starts[2]), statistics.median(starts[1]))}")

            rays = {}
            for n, profile in ((1, one), (2, two)):
                log_dir = str(root / f"ray-{n}")
                rays[n] = [
                    run_job(profile, root / f"ray-{n}" / str(r), lambda: ray_up_and_down(log_dir), True)[0]
                    for r in range(args.repeats)
                ]
                assert all(result["nodes"] == n for result in rays[n])
                print(
                    f"Ray cluster up (every node joined), {n} node(s): {describe([r['up_s'] for r in rays[n]])}; "
                    f"teardown {describe([r['down_s'] for r in rays[n]])}"
                )
            up = {n: statistics.median(r["up_s"] for r in results) for n, results in rays.items()}
            print(f"  worker join adds {up[2] - up[1]:.2f} s; 2 nodes / 1 node: {ratio(up[2], up[1])}")

            if not args.skip_extraction:
                from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus

                corpus = write_demo_corpus(
                    root / "corpus", DemoCorpusConfig(train_dialogues=args.train_dialogues, workers=2)
                )
                rates = {}
                for n, extra in ((1, ["nodes=1"]), (2, ["nodes=2"])):
                    profile = load_profile("slurm", TWO_NODE_PROFILE, [*extra, "cpus_per_task=2", "mem=3", "time=20"])
                    store_root, log_dir = str(root / f"stores-{n}"), str(root / f"extract-{n}")
                    (result,) = run_job(
                        profile, root / f"extract-{n}", lambda: timed_extraction(str(corpus), store_root, log_dir), True
                    )
                    rates[n] = result["utterances"] / result["seconds"]
                    print(
                        f"extraction, {n} node(s): {result['utterances']} utterances in {result['seconds']:.1f} s, "
                        f"{rates[n]:.1f} utterances/s"
                    )
                print(f"  2 nodes / 1 node: {ratio(rates[2], rates[1])} (the same 2 cores: overhead, not speed-up)")

            steps = {}
            for n, profile in ((1, one), (2, two)):
                results = run_job(profile, root / f"deepspeed-{n}", lambda: deepspeed_steps(args.steps), False)
                steps[n] = max(r["step_s"] for r in results)
                setup = max(r["initialize_s"] for r in results)
                print(f"DeepSpeed step, {n} rank(s) on {n} node(s): {1e3 * steps[n]:.1f} ms; initialize {setup:.2f} s")
            print(f"  2 nodes / 1 process: {ratio(steps[2], steps[1])} per step (twice the samples per step)")
    finally:
        for process in spinners:
            process.terminate()


if __name__ == "__main__":
    main()
