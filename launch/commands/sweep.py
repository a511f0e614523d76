"""`cmroberta sweep`: train a grid of configurations with several seeds each, and report their spread."""

import argparse
import logging
from pathlib import Path

from cluster.config import load_config
from cluster.durable_files import exclusive_lock
from launch.executors import follow_jobs, load_profile

log = logging.getLogger(__name__)


def default_sweep_dir(config_file: Path | None, overrides: list[str]) -> Path:
    """`<runs_root>/sweeps/<store folder name>`, next to where `cmroberta train` puts single runs."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from model.run_config import RunConfig

    config = load_config(RunConfig, config_file, overrides)
    return Path(config.runs_root) / "sweeps" / Path(config.store).name


def run_sweep(args: argparse.Namespace) -> int:
    """Plan the sweep, submit what is missing or failed, optionally wait, and write the report when runs are done."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from extract.feature_store import FeatureStore
    from launch.aggregate import format_report, write_report
    from launch.sweep import parse_grid, parse_seeds, plan_sweep, submit_sweep
    from model.run_config import RunConfig
    from model.run_store import refuse_mixed_label_sets

    profile = load_profile(args.cluster, args.profile, args.profile_set)
    sweep_dir = args.out or default_sweep_dir(args.config, args.overrides)
    runs = plan_sweep(RunConfig, sweep_dir, parse_seeds(args.seeds), parse_grid(args.grid), args.config, args.overrides)
    # A store that cannot be read fails every run of the sweep, and runs in different label sets cannot be
    # pooled in one report: say so before anything is submitted.
    refuse_mixed_label_sets([FeatureStore.open(store) for store in sorted({run.config.store for run in runs})])
    # One sweep command at a time on a folder: a second one, seeing the first one's runs as queued, would
    # not wait for them and would write report.md while the first writes it too.
    with exclusive_lock(sweep_dir, "sweep folder"):
        submission = submit_sweep(runs, profile, sweep_dir)
        done = sum(1 for status in submission.statuses.values() if status == "done")
        active = sum(1 for status in submission.statuses.values() if status == "active")
        unknown = sum(1 for status in submission.statuses.values() if status == "unknown")
        print(
            f"sweep {sweep_dir}: {len(runs)} runs, {done} finished, {active} queued or running, "
            f"{len(submission.submitted)} submitted now"
            + (f", {unknown} unknown (SLURM could not be asked; not submitted again)" if unknown else "")
        )
        if submission.jobs:
            print(f"job ids: {' '.join(job.job_id for job in submission.jobs)}")
            print(f"logs: {submission.log_folder}")
        failed_jobs = 0
        if args.wait and submission.jobs:
            outcomes = follow_jobs(submission.jobs)
            for outcome in outcomes:
                if outcome.error is not None:
                    failed_jobs += 1
                    print(
                        f"job {outcome.job_id} failed ({outcome.state}); see {outcome.stderr_path}:\n{outcome.error}"
                    )
        report = write_report(sweep_dir)
        if report.configurations:
            print(format_report(report))
            print(f"report: {sweep_dir / 'report.md'}, {sweep_dir / 'spread.png'}")
        if not args.wait and (submission.jobs or active or unknown):
            print(
                "run the same command again once the jobs have finished: it submits nothing new and updates the report"
            )
        return 1 if failed_jobs else 0


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """--cluster, --profile and --profile-set: where a command's jobs go, shared by every verb that submits."""
    parser.add_argument("--cluster", choices=("local", "slurm"), default="local", help="where the jobs go")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cluster profile TOML (default: built-in `local`, or launch/profiles/slurm.toml for --cluster slurm)",
    )
    parser.add_argument(
        "--profile-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one profile field for this submission, e.g. --profile-set time=240 (repeatable)",
    )


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's options, shared by `cmroberta sweep` and `cmroberta launch sweep`."""
    parser.add_argument("--seeds", required=True, help="seeds to train each configuration with: 0-9, or 0,3,5")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key and its values, e.g. model.variant=text,audio,bimodal; repeat for a product of grids",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML file with RunConfig keys (the base config)")
    parser.add_argument(
        "--out", type=Path, default=None, help="sweep folder (default: <runs_root>/sweeps/<store name>)"
    )
    add_cluster_arguments(parser)
    parser.add_argument("--wait", action="store_true", help="follow the jobs until they end, then print the report")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="base config overrides, e.g. store=features/x"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="train a grid of configurations with several seeds each; report mean, sd and confidence intervals",
        description=(
            "Train every configuration of a grid (--grid) with every seed (--seeds) as a job array, through Submitit: "
            "processes on this machine with --cluster local, SLURM with --cluster slurm. Each run's folder is named by "
            "a hash of its config and seed, so running the same command again submits only missing or failed runs. "
            "The report gives, per configuration, the mean ± sample sd and the 95% confidence interval of test "
            "weighted F1 and of each emotion's F1, a plot of the seeds' spread, and paired differences between "
            "configurations over the same seeds. Example: cmroberta sweep --seeds 0-9 "
            "--grid model.variant=text,bimodal store=features/meld-0123abcd --cluster slurm --profile my.toml --wait"
        ),
    )
    add_sweep_arguments(parser)
    parser.set_defaults(handler=run_sweep)
