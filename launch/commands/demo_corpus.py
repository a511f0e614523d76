"""`cmroberta demo-corpus`: write the demo corpus in MELD's layout."""

import argparse
from pathlib import Path

from cluster.config import load_config, write_resolved_config
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from launch.cli import UserError
from launch.folder_kinds import refuse_other_kind


def run_demo_corpus(out: Path, config_file: Path | None, overrides: list[str]) -> Path:
    """Write the demo corpus configured by `config_file` and `overrides` into `out`, a new or empty folder."""
    config = load_config(DemoCorpusConfig, config_file, overrides)
    refuse_other_kind(out, "corpus", "--out")
    if out.is_dir() and any(out.iterdir()):
        # Writing over a corpus would replace its CSVs and same-named clips and leave the others mixed in.
        raise UserError(f"--out {out} is not empty; write the demo corpus into a new or empty folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a new or empty folder")
    corpus = write_demo_corpus(out, config)
    write_resolved_config(config, corpus)
    print(f"demo corpus written to {corpus}; check it with: cmroberta prepare {corpus}")
    return corpus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo-corpus",
        help="write a small synthetic corpus in MELD's layout",
        description=(
            "Write a deterministic corpus in MELD's own layout: *_sent_emo.csv files and clips with synthetic speech "
            "whose prosody carries emotion, including ambiguous lines ('Okay.') that only the voice disambiguates. "
            "Size and make-up are set by key=value overrides, e.g. train_dialogues=20 clip_format=wav "
            "(see `cmroberta config demo-corpus`)."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the corpus into")
    parser.add_argument("--config", type=Path, default=None, help="TOML file with DemoCorpusConfig keys")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. seed=3")
    parser.set_defaults(handler=lambda args: run_demo_corpus(args.out, args.config, args.overrides) and 0)
