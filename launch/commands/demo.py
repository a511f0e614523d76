"""`cmroberta demo`: the whole pipeline on the demo corpus, end to end, on a laptop."""

import argparse
import logging
from pathlib import Path

from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from launch.commands.prepare import corpus_summary
from extract.meld import read_meld
from launch.config import write_resolved_config

log = logging.getLogger(__name__)


def run_demo(out: Path, train_dialogues: int) -> None:
    """Build the demo corpus under `out` and summarise it."""
    corpus_config = DemoCorpusConfig(train_dialogues=train_dialogues)
    corpus_dir = out / "corpus"
    log.info("step 1: demo corpus -> %s", corpus_dir)
    write_demo_corpus(corpus_dir, corpus_config)
    write_resolved_config(corpus_config, corpus_dir)
    log.info("step 2: read it back with the MELD reader")
    print(corpus_summary(read_meld(corpus_dir)))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the demo corpus (start here)",
        description="Build the demo corpus in MELD's layout and run the pipeline on it, end to end, on this machine.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything the demo writes")
    parser.add_argument("--train-dialogues", type=int, default=60, help="size of the demo corpus's train split")
    parser.set_defaults(handler=lambda args: run_demo(args.out, args.train_dialogues))
