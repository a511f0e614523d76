"""Where `cmroberta demo`'s time goes: by stage, by queue of the sweep, and by run.

Reads a finished demo folder (or runs the demo first with `--run`, passing the demo's own options after
`--`) and prints:

- the stages from `timings.json` (wall and CPU seconds, the load average as each ended);
- the sweep's queues (the local executor deals the runs into a few processes, each training its runs one
  after another): the start-up of each process (submitted -> its first run starts: a fresh Python that
  imports torch, DeepSpeed and transformers and unpickles its job), its busy time, and how long it sat idle
  at the end while another queue still trained (the cost of dealing the runs unevenly);
- each run: its wall time (its start in `attempts.jsonl` to its `test_metrics.json`), the time in epochs
  (training passes and dev scoring, from `metrics.jsonl`), and the rest (reading the store, the DeepSpeed
  engine, the checkpoint after each epoch, the test scoring, the plot and, end to end, the encoder export);
- the sums of those per text mode, as shares of the sweep's busy time.

On a busy machine read the shares and ratios, not the seconds; the load average of each stage is printed
beside it.

    python bench/bench_demo.py demo-output
    python bench/bench_demo.py /tmp/demo --run -- --train-dialogues 20 --max-epochs 2
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from launch.commands.demo import TIMINGS_NAME, StageClock
from launch.sweep import RUNS_FOLDER
from launch.tables import format_table
from model.run_folder import RunFolder


@dataclass(kw_only=True)
class RunTiming:
    """One finished run's clock, read from its folder."""

    name: str
    """The run folder's name."""
    label: str
    """The run's configuration as the sweep names it, and its text mode."""
    job_id: str
    """The local job (queue) that trained it."""
    submitted: float
    """When its job was submitted (epoch seconds)."""
    started: float
    """When its training began in the queue's process."""
    ended: float
    """When its test metrics were written."""
    epochs: int
    """Epochs trained."""
    epoch_seconds: float
    """Seconds in epochs: training passes and dev scoring."""

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def other(self) -> float:
        return self.wall - self.epoch_seconds


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_runs(sweep_dir: Path) -> list[RunTiming]:
    """Every run of the sweep that has test metrics, from its last attempt (the one that finished it)."""
    runs = []
    for run_dir in sorted((sweep_dir / RUNS_FOLDER).iterdir()):
        run = RunFolder(run_dir)
        test_path = run.test_metrics_path
        if not test_path.is_file():
            continue
        attempts = run.attempts_path.read_text(encoding="utf-8").splitlines()
        submission = _read_json(run.submission_path)
        history = [json.loads(line) for line in run.metrics_path.read_text(encoding="utf-8").splitlines()]
        mode = "end_to_end" if run.encoder_folder.exists() else "frozen"
        runs.append(
            RunTiming(
                name=run_dir.name,
                label=f"{_read_json(run.run_record_path)['label']} ({mode})",
                job_id=str(submission.get("job_id")),
                submitted=float(submission.get("submitted", json.loads(attempts[-1])["started"])),
                started=float(json.loads(attempts[-1])["started"]),
                ended=test_path.stat().st_mtime,
                epochs=len(history),
                epoch_seconds=sum(float(line["seconds"]) for line in history),
            )
        )
    return runs


def stage_table(out: Path) -> str:
    timings = _read_json(out / TIMINGS_NAME)
    clock = StageClock(seconds=timings["seconds"], cpu_seconds=timings["cpu_seconds"], load=timings["load_average"])
    return clock.table()


def queue_table(runs: list[RunTiming]) -> str:
    queues: dict[str, list[RunTiming]] = defaultdict(list)
    for run in runs:
        queues[run.job_id].append(run)
    sweep_end = max(run.ended for run in runs)
    rows = []
    for job_id, queue in queues.items():
        queue.sort(key=lambda run: run.started)
        start_up = queue[0].started - queue[0].submitted
        busy = sum(run.wall for run in queue)
        rows.append([job_id, str(len(queue)), f"{start_up:.1f}", f"{busy:.1f}", f"{sweep_end - queue[-1].ended:.1f}"])
    return format_table(["job (queue)", "runs", "process start-up s", "busy s", "idle at end s"], rows)


def run_table(runs: list[RunTiming]) -> str:
    rows = [
        [run.name, run.label, str(run.epochs), f"{run.wall:.1f}", f"{run.epoch_seconds:.1f}",
         f"{run.epoch_seconds / max(run.epochs, 1):.1f}", f"{run.other:.1f}"]
        for run in sorted(runs, key=lambda run: run.started)
    ]
    header = ["run", "configuration", "epochs", "wall s", "in epochs s", "s / epoch", "set-up, checkpoints, test s"]
    return format_table(header, rows)


def mode_table(runs: list[RunTiming]) -> str:
    total = sum(run.wall for run in runs)
    rows = []
    for mode in ("frozen", "end_to_end"):
        mine = [run for run in runs if run.label.endswith(f"({mode})")]
        if not mine:
            continue
        wall, epochs = sum(run.wall for run in mine), sum(run.epoch_seconds for run in mine)
        rows.append([mode, str(len(mine)), f"{wall:.1f}", f"{100 * wall / total:.0f}%", f"{100 * epochs / total:.0f}%",
                     f"{100 * (wall - epochs) / total:.0f}%"])
    return format_table(["text mode", "runs", "wall s", "share of busy", "in epochs", "outside epochs"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the demo's --out folder")
    parser.add_argument(
        "--run", action="store_true", help="run `cmroberta demo --out OUT` first (fresh: OUT must not exist)"
    )
    parser.add_argument("demo_args", nargs="*", help="options for `cmroberta demo`, after `--`")
    args = parser.parse_args()
    if args.run:
        if args.out.exists():
            parser.error(f"{args.out} exists; --run measures a fresh demo: choose a new folder")
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "launch.cli", "demo", "--out", str(args.out), *args.demo_args],
            check=True, stdout=subprocess.DEVNULL,
        )
        print(f"cmroberta demo: {time.monotonic() - started:.1f} s wall (load average now {os.getloadavg()[0]:.1f})")
    if not (args.out / TIMINGS_NAME).is_file():
        parser.error(f"{args.out} holds no {TIMINGS_NAME}: point at the --out folder of a demo that has finished")
    print(f"stages:\n{stage_table(args.out)}\n")
    runs = read_runs(args.out / "sweep")
    print(f"sweep queues:\n{queue_table(runs)}\n")
    print(f"runs, in the order they started:\n{run_table(runs)}\n")
    print(f"by text mode:\n{mode_table(runs)}")


if __name__ == "__main__":
    main()
