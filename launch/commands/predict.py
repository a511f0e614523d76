"""`cmroberta predict RUN INPUT --out FILE`: label new dialogues with a trained run."""

import argparse
from pathlib import Path
from typing import Any

from launch.cli import UserError
from launch.tables import format_table
from model.perturb import parse_perturbation


def metrics_table(metrics: dict[str, Any]) -> str:
    """Per-class F1 (in the run's label order, as `to_dict` keys them), weighted F1 and accuracy (in %) of the
    rows that had gold labels."""
    labels = list(metrics["per_class_f1"])
    header = [*labels, "w-average F1", "accuracy", "utterances"]
    row = [*(100 * metrics["per_class_f1"][e] for e in labels), 100 * metrics["weighted_f1"],
           100 * metrics["accuracy"], metrics["count"]]
    return format_table(header, [row])


def refuse_folder_as_out(out: Path) -> None:
    """`--out` names the predictions file; an existing folder there is refused before any work is done."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the predictions file, e.g. {out / 'labels.jsonl'}")


def run_predict(
    run_dir: Path, input_path: Path, out: Path, split: str | None = None, perturb: str | None = None
) -> dict[str, Any] | None:
    """Predict every utterance of the input into `out`; print the metrics where it has gold labels."""
    # deferred: torch and DeepSpeed take seconds to import, and `cmroberta --help` imports every verb.
    from model.predict import predict, restore_run, write_predictions
    from model.predict_input import read_predict_input
    from model.run_store import run_label_set

    refuse_folder_as_out(out)
    perturbation = parse_perturbation(perturb) if perturb else None
    found = read_predict_input(input_path, split, run_label_set(run_dir))
    run = restore_run(run_dir)
    records, metrics = predict(run, found, perturbation)
    write_predictions(records, out, run.label_set.labels)
    failed = sum(record["label"] is None for record in records)
    print(f"wrote {len(records)} predictions to {out}" + (f" ({failed} without a label: see their reason)"
                                                         if failed else ""))
    if metrics is not None:
        condition = f" under {perturbation.describe()}" if perturbation else ""
        print(f"against the input's gold labels{condition}, F1 in %:")
        print(metrics_table(metrics))
    return metrics


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN INPUT --out FILE [--split] [--perturb], shared with `cmroberta launch predict`."""
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run folder written by `cmroberta train`")
    parser.add_argument(
        "input",
        type=Path,
        metavar="INPUT",
        help="a folder in MELD's layout, a CSV or JSONL with one utterance a row, or a folder of clips with "
        "transcripts.csv",
    )
    parser.add_argument("--out", type=Path, required=True, help="predictions file: .csv, or JSON lines otherwise")
    parser.add_argument("--split", choices=["train", "dev", "test"], default=None,
                        help="of a MELD-layout input, only this split")
    parser.add_argument("--perturb", default=None, metavar="SPEC",
                        help="perturb the input first, e.g. audio_missing, text_asr:wer=0.3 (see model/perturb.py)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="label new dialogues with a trained run",
        description=(
            "Compute exactly the features a run was trained on (its store's extraction config, its train-split "
            "standardisation; end to end, its fine-tuned encoder) for every utterance of INPUT, and write one row per "
            "utterance: key, label and a probability per emotion. INPUT is a folder in MELD's layout; a CSV or JSONL "
            "with columns dialogue_id, utterance_id, speaker, transcript, audio (and optionally emotion); or a folder "
            "of clips with transcripts.csv (columns clip, transcript). A clip that cannot be decoded gets a row with "
            "its reason and no label. With gold labels in the input, the scores are printed. Runs on the GPU when "
            "there is one; `cmroberta launch predict` submits it as a job."
        ),
    )
    add_predict_arguments(parser)
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    run_predict(args.run_dir, args.input, args.out, args.split, args.perturb)
    return 0
