"""`cmroberta reproduce CORPUS`: the paper's whole experiment, from the raw corpus to Tables 1, 2 and 3.

The plan (`launch.reproduce_plan`) goes through Submitit stage by stage: `--cluster local` and
`--cluster slurm --profile FILE` take the same path. A stage starts once the stages it depends on
have succeeded; one that fails stops its dependants, names its failed jobs and their logs, and
leaves every finished shard and run in place, so running the same command again goes on from there.
`--dry-run` prints the plan and starts nothing (with `--cluster slurm` it also checks the profile
against the cluster).
"""

import argparse
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cluster.config import from_dict
from cluster.durable_files import atomic_write_json
from cluster.profile import ClusterProfile
from extract.meld import read_meld
from extract.utterance import SPLITS
from launch.cli import UserError
from launch.commands.prepare import corpus_summary
from launch.commands.sweep import add_cluster_arguments
from launch.executors import JobOutcome, check_request, follow_jobs, load_profile, make_executor, submit_jobs
from launch.jobs import ExtractionJob, RobustnessJob
from launch.tables import format_table
from model.perturb import parse_perturbation

if TYPE_CHECKING:
    # launch.reproduce_plan imports torch and Ray; `cmroberta --help` imports every verb and should not wait for them.
    from launch.reproduce_plan import ReproducePlan, Stage

log = logging.getLogger(__name__)

StageStatus = Literal["done", "reused", "failed", "waiting", "skipped"]


@dataclass(kw_only=True)
class Progress:
    """Where each stage stands while the plan runs."""

    status: dict[str, StageStatus] = field(default_factory=dict)
    """Stage -> its status once known."""
    jobs: dict[str, list[Any]] = field(default_factory=dict)
    """Stage -> its submitted Submitit jobs, until they are followed to their end."""
    failures: dict[str, list[JobOutcome]] = field(default_factory=dict)
    """Stage -> its failed jobs."""

    def settle(self, name: str) -> StageStatus:
        """Follow the stage's jobs to their end (when it has any in flight), and return its status."""
        jobs = self.jobs.pop(name, None)
        if jobs:
            print(f"{name}: waiting for {len(jobs)} job(s)")
            failed = [outcome for outcome in follow_jobs(jobs) if outcome.error is not None]
            self.status[name] = "failed" if failed else "done"
            if failed:
                self.failures[name] = failed
                for outcome in failed:
                    print(f"{name}: job {outcome.job_id} failed ({outcome.state}); log {outcome.stderr_path}:")
                    print("  " + "\n  ".join(outcome.error.splitlines()))
        return self.status.get(name, "skipped")

    def ready(self, stage: "Stage") -> bool:
        """Whether every stage `stage` depends on has succeeded; says which did not otherwise."""
        blocked = [name for name in stage.after if self.settle(name) not in ("done", "reused")]
        if blocked:
            self.status[stage.name] = "skipped"
            reasons = ", ".join(f"{name} {self.status.get(name, 'skipped')}" for name in blocked)
            print(f"{stage.name}: not started, because {reasons}")
        return not blocked


def corpus_problems(corpus: Any) -> list[str]:
    """What in a read corpus would invalidate the experiment: an empty split, or CSV rows that could not be read
    (their utterances would silently be missing). Flagged clips are MELD's known defects: they lose their audio."""
    problems = [f"the {split} split has no utterances" for split in SPLITS if not corpus.split(split)]
    if corpus.row_errors:
        problems.append(f"{len(corpus.row_errors)} CSV row(s) cannot be read (first: {corpus.row_errors[0]})")
    return problems


def check_corpus(plan: "ReproducePlan", check_clips: bool) -> None:
    """Read the corpus as extraction will and print its summary; a UserError on what would invalidate the run."""
    corpus = read_meld(Path(plan.config.corpus), check_clips=check_clips)
    print(f"check: corpus {corpus.root}" + ("" if check_clips else " (clips only checked to exist)"))
    print(corpus_summary(corpus))
    problems = corpus_problems(corpus)
    if problems:
        raise UserError(
            f"corpus {corpus.root} cannot give the paper's experiment: {'; '.join(problems)}. "
            "Fix the corpus (see `cmroberta prepare`) and run again"
        )


def store_is_complete(store: Path) -> bool:
    """Whether the plan's feature store exists and verifies (every planned shard recorded and intact)."""
    # deferred: imports h5py; `cmroberta --help` imports every verb's module
    from extract.feature_store import FeatureStore, FeatureStoreError

    if not (store / "manifest.json").is_file():
        return False
    try:
        FeatureStore.open(store)
    except FeatureStoreError as error:
        print(f"extract: store {store} is not complete yet ({str(error).splitlines()[0]})")
        return False
    return True


def stage_profile(profile: ClusterProfile, stage: "Stage") -> ClusterProfile:
    """The profile a stage's jobs use: the one given, one run at a time where the stage must be serial."""
    return replace(profile, array_parallelism=1) if stage.serial else profile


def run_extract_stage(plan: "ReproducePlan", profile: ClusterProfile, progress: Progress) -> None:
    if store_is_complete(plan.store):
        print(f"extract: reusing the complete feature store {plan.store}")
        progress.status["extract"] = "reused"
        return
    log_folder = plan.logs_dir / "extract"
    executor = make_executor(profile, log_folder, job_name="extract", in_batch_script=True)
    progress.jobs["extract"] = submit_jobs(executor, profile, [ExtractionJob(plan.extract)])
    print(f"extract: submitted 1 job (finished shards are kept); logs {log_folder}")


def run_sweep_stage(plan: "ReproducePlan", stage: "Stage", profile: ClusterProfile, progress: Progress) -> None:
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.sweep import submit_sweep

    submission = submit_sweep(stage.runs, stage_profile(profile, stage), plan.sweep_dir)
    done = sum(status == "done" for status in submission.statuses.values())
    elsewhere = sum(status in ("active", "unknown") for status in submission.statuses.values())
    print(
        f"{stage.name}: {len(stage.runs)} runs: {done} finished already (reused from their hash-keyed folders), "
        f"{len(submission.submitted)} submitted in {len(submission.jobs)} job(s)"
        + (f", {elsewhere} still running from an earlier submission" if elsewhere else "")
    )
    if submission.jobs:
        progress.jobs[stage.name] = submission.jobs
    elif elsewhere:
        progress.status[stage.name] = "waiting"
        print(f"{stage.name}: run the same command again once those runs have finished")
    else:
        progress.status[stage.name] = "reused"


def run_robustness_stage(plan: "ReproducePlan", profile: ClusterProfile, progress: Progress) -> None:
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from model.predict import robustness_path

    run_dirs = plan.robustness_runs()
    perturbations = [parse_perturbation(spec) for spec in plan.config.robustness]
    if all(robustness_path(run_dir, p).is_file() for run_dir in run_dirs for p in perturbations):
        print("robustness: every bimodal run was scored under every condition already; reusing the scores")
        progress.status["robustness"] = "reused"
        return
    log_folder = plan.logs_dir / "robustness"
    executor = make_executor(profile, log_folder, job_name="robustness")
    progress.jobs["robustness"] = submit_jobs(executor, profile, [RobustnessJob(run_dirs, plan.config.robustness)])
    print(f"robustness: submitted 1 job scoring {len(run_dirs)} runs; logs {log_folder}")


def write_reports(plan: "ReproducePlan") -> str:
    """The sweep's aggregate (with the seed-spread plot) and the paper-style report; returns the latter as text."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.aggregate import SPREAD_PNG
    from launch.aggregate import write_report as write_sweep_report
    from launch.report import PRESET_NAME, format_report, write_report
    from launch.run_results import read_run_results

    preset = plan.preset.describe()
    atomic_write_json(plan.sweep_dir / PRESET_NAME, {"preset": plan.preset.name, "description": preset})
    write_sweep_report(plan.sweep_dir)
    runs = read_run_results([plan.sweep_dir])
    spread_plot = plan.sweep_dir / SPREAD_PNG
    for path in write_report(runs, plan.report_dir, spread_plot, preset):
        print(f"report: wrote {path}")
    return format_report(runs, spread_plot=spread_plot, preset=preset)


def run_plan(plan: "ReproducePlan", profile: ClusterProfile) -> int:
    """Every stage in order, each once its dependencies succeeded; 0 when all did, 1 otherwise."""
    check_corpus(plan, check_clips=plan.extract.check_clips)
    progress = Progress(status={"check": "done"})
    for stage in plan.stages[1:]:
        if not progress.ready(stage):
            continue
        if stage.name == "extract":
            run_extract_stage(plan, profile, progress)
        elif stage.runs:
            run_sweep_stage(plan, stage, profile, progress)
        elif stage.name == "robustness":
            run_robustness_stage(plan, profile, progress)
        else:
            print(write_reports(plan))
            progress.status[stage.name] = "done"
    for name in list(progress.jobs):
        progress.settle(name)
    if progress.failures:
        names = ", ".join(f"{name} ({len(outcomes)} job(s))" for name, outcomes in progress.failures.items())
        print(
            f"failed: {names}; the stages after them were not started, and every finished shard and run is kept. "
            "Read the logs above, then run the same command again: it goes on from there"
        )
        return 1
    return 0 if all(progress.status.get(stage.name) in ("done", "reused") for stage in plan.stages) else 1


def print_plan(plan: "ReproducePlan", profile: ClusterProfile) -> None:
    """The stages, their jobs and what each job asks for, and the equivalent commands."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.reproduce_plan import job_resources
    from launch.sweep import run_statuses

    print(
        f"plan: corpus {plan.config.corpus}; seeds {', '.join(map(str, plan.config.seeds))}; text modes "
        f"{', '.join(plan.config.text_modes)}; cluster {profile.kind} (profile {profile.name!r})\n"
        f"{plan.preset.describe()}"
    )
    rows = []
    for stage in plan.stages:
        if stage.name == "extract":
            reused = store_is_complete(plan.store)
            jobs = "reused: the store is complete" if reused else "1 extraction job"
            rows.append([stage.name, ", ".join(stage.after), jobs, job_resources(profile, in_batch_script=True)])
        elif stage.runs:
            statuses = run_statuses(stage.runs)
            to_train = sum(status in ("missing", "failed") for status in statuses.values())
            parallel = 1 if stage.serial else profile.array_parallelism
            if profile.kind == "slurm":
                jobs = f"{to_train} array task(s), {parallel} at once"
            else:
                jobs = f"{min(parallel, to_train)} local queue job(s)"
            done = len(stage.runs) - to_train
            rows.append(
                [
                    stage.name,
                    ", ".join(stage.after),
                    f"{len(stage.runs)} runs ({done} done): {jobs}",
                    job_resources(profile),
                ]
            )
        elif stage.name == "robustness":
            rows.append([stage.name, ", ".join(stage.after), "1 evaluation job", job_resources(profile)])
        else:
            rows.append([stage.name, ", ".join(stage.after) or "-", "in this process", "-"])
    print(format_table(["stage", "after", "jobs", "each job asks for"], rows))
    print("\nwhat each stage does, and the command that does the same by hand:")
    for stage in plan.stages:
        print(f"- {stage.name}: {stage.what}")
        for line in stage.command.splitlines():
            print(f"    {line}")
    print(f"\nfeature store: {plan.store}\nsweep folder: {plan.sweep_dir}\nreport: {plan.report_dir}")


def run_reproduce(args: argparse.Namespace) -> int:
    """Plan the experiment; with --dry-run print the plan, otherwise run it stage by stage."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.reproduce_plan import ReproduceConfig, plan_reproduction
    from launch.sweep import parse_seeds

    config = from_dict(
        ReproduceConfig,
        {
            "corpus": str(args.corpus),
            "out": str(args.out or Path("reproduce") / args.corpus.expanduser().resolve().name),
            "seeds": parse_seeds(args.seeds),
            "preset": args.preset,
            "text_modes": [mode.strip() for mode in args.text_modes.split(",")],
            "robustness": args.robustness,
            "extract_overrides": args.extract,
            "train_overrides": args.train,
        },
    )
    profile = load_profile(args.cluster, args.profile, args.profile_set)
    cluster = f"--cluster {args.cluster}" + (f" --profile {args.profile}" if args.profile else "")
    plan = plan_reproduction(config, cluster)
    if not Path(config.corpus).expanduser().is_dir():
        raise UserError(f"corpus folder {config.corpus} does not exist; give the unpacked MELD.Raw folder")
    if args.dry_run:
        check_corpus(plan, check_clips=False)
        print_plan(plan, profile)
        if profile.kind == "slurm":
            check_request(profile)
            print(f"profile {profile.name!r}: the cluster can run its jobs (sinfo and sbatch --test-only agree)")
        print("dry run: nothing was submitted")
        return 0
    return run_plan(plan, profile)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="the paper's whole experiment in one command: check, extract, sweep every table's runs, report",
        description=(
            "Check the corpus as `prepare` does, extract openSMILE, OpenL3 and text features into one store, train "
            "Table 1's variants in every text mode (end_to_end, finetuned, frozen; the audio model once) and Table 3's "
            "audio configurations over every seed, optionally score the bimodal runs under perturbations, and write "
            "the report (Tables 1, 2 and 3, paired differences). Every stage goes through Submitit: processes here "
            "with --cluster local, SLURM with --cluster slurm --profile FILE. Running it again reuses the finished "
            "store and runs. Example: cmroberta reproduce ~/data/MELD.Raw --extract openl3.weights=$HOME/openl3 "
            "--cluster slurm --profile my-cluster.toml --dry-run"
        ),
    )
    parser.add_argument("corpus", type=Path, help="corpus folder in MELD's layout, e.g. ~/data/MELD.Raw")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: reproduce/<corpus name>)")
    parser.add_argument("--seeds", default="0-4", help="seeds of every configuration (default: %(default)s)")
    parser.add_argument(
        "--preset",
        choices=("paper", "recommended"),
        default="recommended",
        help="training settings: the paper's as written, or the project's where it has a reason (default: "
        "%(default)s; `launch/reproduce_plan.py` lists both)",
    )
    parser.add_argument(
        "--text-modes",
        default="end_to_end,finetuned,frozen",
        help="text modes of Table 1's text variants (default: %(default)s)",
    )
    parser.add_argument(
        "--robustness",
        action="append",
        default=[],
        metavar="SPEC",
        help="also score the bimodal runs under this perturbation, e.g. audio_missing or text_asr:wer=0.3 (repeatable)",
    )
    parser.add_argument(
        "--extract",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extraction setting, e.g. openl3.weights=/models/openl3 or text.model=/models/roberta-large (repeatable)",
    )
    parser.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run setting applied after the preset to every run, e.g. train.max_epochs=2 (repeatable)",
    )
    add_cluster_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan (and check the profile); start nothing")
    parser.set_defaults(handler=run_reproduce)
