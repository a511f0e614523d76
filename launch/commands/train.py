"""`cmroberta train STORE`: train CM-RoBERTa with DeepSpeed (by default end to end with its text encoder)."""

import argparse
from pathlib import Path

from cluster.config import load_config, override
from cluster.rendezvous import resolve_rendezvous
from launch.folder_kinds import refuse_other_kind


def run_train(store: Path, config_file: Path | None, overrides: list[str], run_dir: Path | None, resume: bool) -> None:
    """Train as configured, then print the run folder and its test scores (rank 0 only)."""
    # deferred: torch and DeepSpeed take seconds to import, and `cmroberta --help` imports every verb.
    from launch.report import run_table
    from model.run_config import RunConfig, default_run_dir
    from model.train import train

    store_override = override("store", str(store.expanduser().resolve()))
    config = load_config(RunConfig, config_file, [*overrides, store_override])
    run_dir = run_dir or default_run_dir(config)
    refuse_other_kind(run_dir, "run", "--run-dir")
    test = train(config, run_dir, resume=resume)
    if resolve_rendezvous().is_main:
        print(f"run folder: {run_dir}")
        print(f"selected epoch {test['epoch']} by dev loss; test split, F1 in %:")
        print(run_table(test))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train CM-RoBERTa on a feature store with DeepSpeed (end to end with its text encoder by default)",
        description=(
            "Train CM-RoBERTa on the dialogues of a feature store. By default (text_mode=end_to_end) the text encoder "
            "the store's text family was extracted with trains together with the fusion head; text_mode=finetuned "
            "runs the paper's recipe as one chain (fine-tune the encoder alone on utterance emotion, export it, "
            "extract its vectors into the store, train the head on them; finished steps are reused); "
            "text_mode=frozen trains the head on the store's pretrained vectors, the fast ablation. The head follows "
            "the paper: 32 dialogues per batch, Adam 1e-4, L2 3e-4, up to 200 epochs, early stopping after 15 "
            "epochs without a lower dev loss; the epoch with the lowest dev loss is tested once. One CPU process by "
            "default; for many GPUs start it with torchrun (torchrun --nproc-per-node 4 -m launch.cli train STORE) "
            "or srun. Examples: model.variant=text seed=3 end_to_end.encoder.model=/models/roberta-large "
            "end_to_end.param_groups.encoder_lr=2e-5 monitor.csv=true (see `cmroberta config train`); write them "
            "right after STORE, options after them. The first run of several ranks on a CPU node compiles one C++ "
            "op (about a minute), cached in TORCH_EXTENSIONS_DIR."
        ),
    )
    parser.add_argument("store", type=Path, help="feature store folder, as printed by `cmroberta extract`")
    parser.add_argument("--config", type=Path, default=None, help="TOML file with RunConfig keys")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder (default: <runs_root>/<store>/<variant>-<text_mode>-seed<seed>)",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.variant=text")
    parser.set_defaults(
        handler=lambda args: run_train(args.store, args.config, args.overrides, args.run_dir, args.resume)
    )
