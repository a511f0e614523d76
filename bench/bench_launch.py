"""What launching costs: submission-to-start latency of a job, and the sweep machinery's overhead per run.

1. Latency: a job that only returns the time it started, submitted `--repeats` times one after
   another; submit-call time, submission-to-start and submission-to-result (as seen by polling
   job.done() every 20 ms), on Submitit's local executor and on SLURM when a cluster answers.
2. Bookkeeping: planning a 3 x 10 sweep (config resolution and hashing), and re-submitting it
   when every run is finished (the status scan that decides what to submit), per run.
3. End to end: a sweep of `--runs` tiny training runs one at a time (array_parallelism=1), so
   overhead per run = (wall time - time spent inside train()) / runs: process start, imports,
   pickles, scheduling, polling. Needs model.train.

    python bench/bench_launch.py
    python bench/bench_launch.py --repeats 10 --runs 4 --no-slurm
"""

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# `python bench/bench_launch.py` puts bench/ on the path, not the repository that holds tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.profile import ClusterProfile  # noqa: E402
from extract.feature_store import build_store_from_arrays  # noqa: E402
from extract.split_arrays import SplitArrays  # noqa: E402
from launch.executors import follow_jobs, load_profile, make_executor, submit_jobs  # noqa: E402
from launch.sweep import parse_grid, plan_sweep, submit_sweep  # noqa: E402
from model.run_folder import RunFolder  # noqa: E402
from tests.synthetic_splits import split_of_rows  # noqa: E402

DIMS = {"opensmile": 6, "openl3": 4, "text": 8}


def started_at() -> float:
    """The job: the wall-clock time at which it began running."""
    return time.time()


def measure_latency(profile: ClusterProfile, folder: Path, repeats: int) -> dict[str, list[float]]:
    executor = make_executor(profile, folder, job_name="latency")
    figures: dict[str, list[float]] = {"submit_call_s": [], "to_start_s": [], "to_result_s": []}
    for _ in range(repeats):
        submitted = time.time()
        (job,) = submit_jobs(executor, profile, [started_at])
        figures["submit_call_s"].append(time.time() - submitted)
        while not job.done():
            time.sleep(0.02)
        figures["to_result_s"].append(time.time() - submitted)
        figures["to_start_s"].append(job.result() - submitted)
    return figures


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def random_store(folder: Path) -> Path:
    """A small store of random features with learnable labels, for runs of a few seconds."""

    def split(name: str, dialogues: int, seed: int) -> SplitArrays:
        rng = np.random.default_rng(seed)
        rows = [(d, u) for d in range(dialogues) for u in range(int(rng.integers(1, 7)))]
        labels = rng.integers(0, 7, len(rows))
        return split_of_rows(
            name,
            rows,
            speaker="Monica",
            transcript="Okay.",
            emotion=labels,
            sentiment=np.zeros(len(rows), dtype=int),
            features={
                f: (labels[:, None] + rng.normal(size=(len(rows), d))).astype(np.float32) for f, d in DIMS.items()
            },
        )

    arrays = {"train": split("train", 32, 0), "dev": split("dev", 8, 1), "test": split("test", 12, 2)}
    return build_store_from_arrays(folder / "bench-000000000000", arrays, {"corpus": "/nowhere"})


def tiny_overrides(store: Path) -> list[str]:
    return [
        "text_mode=frozen",
        "model.hidden_size=8",
        "train.batch_dialogues=8",
        "train.max_epochs=3",
        "train.patience=3",
        f"store={json.dumps(str(store))}",
    ]


def measure_bookkeeping(run_config: type, folder: Path, store: Path) -> dict[str, float]:
    grid = parse_grid(["model.variant=text,audio,bimodal"])
    seeds = list(range(10))
    started = time.perf_counter()
    runs = plan_sweep(run_config, folder, seeds, grid, overrides=tiny_overrides(store))
    plan_s = time.perf_counter() - started
    for run in runs:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        RunFolder(run.run_dir).test_metrics_path.write_text("{}")
    started = time.perf_counter()
    submission = submit_sweep(runs, load_profile("local"), folder)
    rescan_s = time.perf_counter() - started
    assert not submission.jobs
    return {
        "runs": len(runs),
        "plan_ms_per_run": 1e3 * plan_s / len(runs),
        "rescan_ms_per_run": 1e3 * rescan_s / len(runs),
    }


def measure_sweep(run_config: type, profile: ClusterProfile, folder: Path, store: Path, runs: int) -> dict[str, float]:
    planned = plan_sweep(run_config, folder, list(range(runs)), {}, overrides=tiny_overrides(store))
    started = time.time()
    submission = submit_sweep(planned, profile, folder)
    outcomes = follow_jobs(submission.jobs, poll_s=0.1)
    wall = time.time() - started
    failed = [str(o.stderr_path) for o in outcomes if o.error]
    if failed:
        raise RuntimeError(f"benchmark runs failed; see {failed}")
    inside = 0.0
    for run in planned:
        attempt = json.loads(RunFolder(run.run_dir).attempts_path.read_text().splitlines()[0])
        inside += RunFolder(run.run_dir).test_metrics_path.stat().st_mtime - attempt["started"]
    return {
        "runs": runs,
        "wall_s": wall,
        "train_s_per_run": inside / runs,
        "overhead_s_per_run": (wall - inside) / runs,
    }


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="latency jobs per cluster")
    parser.add_argument("--runs", type=int, default=3, help="tiny training runs in the end-to-end sweep")
    parser.add_argument("--no-slurm", action="store_true", help="measure the local executor only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cmroberta" / "torch_extensions"))

    clusters = {"local": load_profile("local", None, ["array_parallelism=1"])}
    if not args.no_slurm and slurm_answers():
        clusters["slurm"] = load_profile("slurm", None, ["time=10", "mem=1.5", "array_parallelism=1"])
    elif not args.no_slurm:
        print("SLURM: no cluster answers; measuring the local executor only")

    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        root = Path(tmp)
        for name, profile in clusters.items():
            figures = measure_latency(profile, root / f"latency-{name}", args.repeats)
            print(f"[{name}] submit call:          {describe(figures['submit_call_s'])}")
            print(f"[{name}] submission to start:  {describe(figures['to_start_s'])}")
            print(f"[{name}] submission to result: {describe(figures['to_result_s'])}")
        from model.run_config import RunConfig

        store = random_store(root)
        book = measure_bookkeeping(RunConfig, root / "bookkeeping", store)
        print(
            f"sweep planning: {book['plan_ms_per_run']:.2f} ms per run; re-submission scan: "
            f"{book['rescan_ms_per_run']:.2f} ms per run ({book['runs']} runs)"
        )
        for name, profile in clusters.items():
            sweep = measure_sweep(RunConfig, profile, root / f"sweep-{name}", store, args.runs)
            print(
                f"[{name}] sweep of {sweep['runs']} tiny runs one at a time: {sweep['wall_s']:.1f} s wall, "
                f"{sweep['train_s_per_run']:.2f} s inside train() per run, "
                f"overhead {sweep['overhead_s_per_run']:.2f} s per run"
            )


if __name__ == "__main__":
    main()
