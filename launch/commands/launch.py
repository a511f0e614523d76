"""`cmroberta launch extract|train|predict|sweep`: submit a stage through Submitit, here or on SLURM."""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.config import load_config, override
from cluster.profile import ClusterProfile
from launch.cli import UserError
from launch.commands.predict import add_predict_arguments, refuse_folder_as_out
from launch.commands.sweep import add_cluster_arguments, add_sweep_arguments, run_sweep
from launch.executors import follow_jobs, load_profile, make_executor, submit_jobs
from launch.jobs import ExtractionJob, PredictionJob, TrainingJob


def _submit_and_report(
    profile: ClusterProfile,
    job: Any,
    log_folder: Path,
    job_name: str,
    what: str,
    wait: bool,
    describe_result: Callable[[Any], str],
    in_batch_script: bool = False,
) -> int:
    """Submit one job with the profile, print its job id and log folder; with `wait`, follow it and print how it
    ended (`describe_result` of its result). Returns the exit status: 1 when a job failed."""
    executor = make_executor(profile, log_folder, job_name=job_name, in_batch_script=in_batch_script)
    jobs = submit_jobs(executor, profile, [job])
    print(f"submitted {what} with profile {profile.name!r}: job id(s) {' '.join(job.job_id for job in jobs)}")
    print(f"logs: {log_folder}")
    if not wait:
        return 0
    failed = 0
    for job, outcome in zip(jobs, follow_jobs(jobs)):
        if outcome.error is None:
            # A job of several tasks (one rank per GPU or node) returns one result per task; rank 0's speaks for it.
            print(f"job {outcome.job_id} finished: {describe_result(job.results()[0])}")
        else:
            failed += 1
            print(f"job {outcome.job_id} failed ({outcome.state}); see {outcome.stderr_path}:\n{outcome.error}")
    return 1 if failed else 0


def launch_extract(args: argparse.Namespace) -> int:
    """Submit one extraction job; on SLURM it brings up Ray across all the job's nodes."""
    from extract.extract_config import ExtractConfig

    profile = load_profile(args.cluster, args.profile, args.profile_set)
    config = load_config(ExtractConfig, args.config, [*args.overrides, override("corpus", str(args.corpus))])
    return _submit_and_report(
        profile,
        ExtractionJob(config),
        Path(config.store_root) / "logs",
        "extract",
        f"the extraction of {config.corpus}",
        args.wait,
        lambda store: f"feature store {store}",
        in_batch_script=True,
    )


def launch_train(args: argparse.Namespace) -> int:
    """Submit one training run: one task per GPU over the profile's nodes, requeued with resume when preempted."""
    profile = load_profile(args.cluster, args.profile, args.profile_set)
    # deferred: these import torch and DeepSpeed; `cmroberta --help` imports every verb
    from extract.feature_store import FeatureStore
    from model.run_config import RunConfig, default_run_dir
    from model.run_folder import RunFolder

    config = load_config(RunConfig, args.config, args.overrides)
    # A store that cannot be read is refused here, not in the job.
    FeatureStore.open(config.store)
    run_dir = args.run_dir or default_run_dir(config)
    run = RunFolder(run_dir)
    if run.started() and not args.resume:
        raise UserError(
            f"run folder {run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir"
        )
    return _submit_and_report(
        profile,
        TrainingJob(config, run_dir, resume=args.resume),
        run.logs_folder,
        f"train-{run_dir.name}",
        f"training into {run_dir}",
        args.wait,
        lambda metrics: f"test weighted F1 {100 * metrics['weighted_f1']:.2f} ({run_dir})",
    )


def launch_predict(args: argparse.Namespace) -> int:
    """Submit one prediction job, for inputs too large to label here (a GPU job on SLURM)."""
    profile = load_profile(args.cluster, args.profile, args.profile_set)
    if not args.input.exists():
        raise UserError(
            f"input {args.input} does not exist; give a MELD-layout folder, a clip folder or a CSV or JSONL file"
        )
    refuse_folder_as_out(args.out)
    return _submit_and_report(
        profile,
        PredictionJob(args.run_dir, args.input, args.out, args.split, args.perturb),
        args.out.parent / "logs",
        f"predict-{args.run_dir.name}",
        f"predictions of {args.input}",
        args.wait,
        lambda _: f"predictions in {args.out}",
    )


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    add_cluster_arguments(parser)
    parser.add_argument("--wait", action="store_true", help="follow the job(s) with a progress display until they end")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="submit extraction, training or a sweep through Submitit (local processes or SLURM)",
        description=(
            "Submit a stage as a job: with --cluster local it runs as processes on this machine, with --cluster slurm "
            "it goes to SLURM as the profile says (partition, nodes, GPUs, time; see launch/profiles/slurm.toml). "
            "Prints the job ids and the log folder; --wait follows the jobs until they end. A request the cluster "
            "cannot satisfy is refused at submission with the profile field to change."
        ),
    )
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)

    extract = stages.add_parser(
        "extract",
        help="feature extraction; on SLURM a Ray cluster spans all the job's nodes",
        description="Submit `cmroberta extract` as one job. On SLURM its Ray head runs on the first node and one Ray "
        "worker on each other node (the corpus and the store must be on a filesystem every node sees).",
    )
    extract.add_argument("corpus", type=Path, help="corpus folder in MELD's layout")
    extract.add_argument("--config", type=Path, default=None, help="TOML file with ExtractConfig keys")
    _add_cluster_arguments(extract)
    extract.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extraction config overrides")
    extract.set_defaults(handler=launch_extract)

    train = stages.add_parser(
        "train",
        help="one training run; one task per GPU across the profile's nodes",
        description="Submit one training run. Each task finds its rank in SLURM's environment; when SLURM signals a "
        "preemption or the time limit, the job is requeued and resumes from its last epoch's checkpoint.",
    )
    train.add_argument("--config", type=Path, default=None, help="TOML file with RunConfig keys")
    train.add_argument(
        "--run-dir", type=Path, default=None, help="run folder (default: <runs_root>/<store>/<variant>-seed<seed>)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    _add_cluster_arguments(train)
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="run config overrides, e.g. store=features/x")
    train.set_defaults(handler=launch_train)

    predict = stages.add_parser(
        "predict",
        help="the same as `cmroberta predict`, as a job (for large inputs)",
        description="Submit `cmroberta predict RUN INPUT --out FILE` as one job; see `cmroberta predict --help`.",
    )
    add_predict_arguments(predict)
    _add_cluster_arguments(predict)
    predict.set_defaults(handler=launch_predict)

    sweep = stages.add_parser(
        "sweep",
        help="the same as `cmroberta sweep`",
        description="Seeds x grid as a job array; see `cmroberta sweep --help`.",
    )
    add_sweep_arguments(sweep)
    sweep.set_defaults(handler=run_sweep)
