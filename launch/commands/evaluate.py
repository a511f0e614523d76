"""`cmroberta evaluate RUN`: score a trained run's selected checkpoint on a split again."""

import argparse
from pathlib import Path

from cluster.rendezvous import resolve_rendezvous
from model.perturb import parse_perturbation


def run_evaluate(run_dir: Path, split: str) -> None:
    """Evaluate and print the split's scores; files go into the run folder."""
    # deferred: torch and DeepSpeed take seconds to import, and `cmroberta --help` imports every verb.
    from launch.report import run_table
    from model.evaluate import evaluate_run
    from model.run_folder import RunFolder

    record = evaluate_run(run_dir, split)
    if resolve_rendezvous().is_main:
        print(f"{split} split, checkpoint {record['checkpoint']}, F1 in %:")
        print(run_table(record, split))
        print(f"wrote {RunFolder(run_dir).split_metrics_path(split)}")


def run_evaluate_perturbed(run_dir: Path, split: str, spec: str) -> None:
    """Score the split under the perturbation `spec`, print it beside the clean score, and write it into the run."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.report import run_table
    from model.predict import evaluate_perturbed, restore_run, robustness_path

    perturbation = parse_perturbation(spec)
    record = evaluate_perturbed(restore_run(run_dir), perturbation, split)
    print(f"{split} split under {perturbation.describe()}, checkpoint {record['checkpoint']}, F1 in %:")
    print(run_table(record, split))
    print(f"wrote {robustness_path(run_dir, perturbation, split)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained run's selected checkpoint on a split",
        description=(
            "Load a run folder's selected (lowest dev loss) checkpoint and its train-split standardisation, score a "
            "split, and write <split>_metrics.json, the per-utterance predictions and a confusion-matrix plot into "
            "the run folder."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run folder written by `cmroberta train`")
    parser.add_argument("--split", choices=["train", "dev", "test"], default="test", help="which split to score")
    parser.add_argument(
        "--perturb",
        default=None,
        metavar="SPEC",
        help="score under a perturbation: audio_missing, text_missing, audio_noise:noise=white|babble,snr_db=DB, "
        "text_asr:wer=RATE (each may add ,seed=N); writes robustness/<condition>-seed<N>.json",
    )
    parser.set_defaults(
        handler=lambda args: run_evaluate_perturbed(args.run_dir, args.split, args.perturb)
        if args.perturb
        else run_evaluate(args.run_dir, args.split)
    )
