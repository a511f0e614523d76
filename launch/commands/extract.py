"""`cmroberta extract CORPUS`: openSMILE, OpenL3 and text features into an HDF5 feature store, with Ray."""

import argparse
from pathlib import Path

from cluster.config import load_config, override
from launch.folder_kinds import refuse_other_kind


def run_extract(corpus: Path, config_file: Path | None, overrides: list[str]) -> Path:
    """Extract the features of `corpus` as configured; print and return the store folder."""
    # deferred: the pipeline pulls in torch, transformers and Ray, and `cmroberta --help` imports every verb's module
    from extract.extract_config import ExtractConfig, store_path
    from extract.pipeline import run_extraction

    config = load_config(ExtractConfig, config_file, [*overrides, override("corpus", str(corpus))])
    for folder, option in ((Path(config.store_root), "store_root"), (store_path(config), "the store folder")):
        refuse_other_kind(folder, "store", option)
    store = run_extraction(config)
    print(f"feature store: {store}")
    return store


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract openSMILE, OpenL3 and text features of a corpus into a feature store",
        description=(
            "Read a corpus (MELD's layout, an IEMOCAP_full_release folder, or a manifest .csv with labels.json), cut "
            "it into shards of whole dialogues, and run one Ray task per shard "
            "and feature family (openSMILE emo_large, OpenL3, the last four layers of a text encoder). Shards are "
            "written as HDF5 into <store_root>/<name>-<hash of the feature config>/ with a manifest.json. Re-running "
            "skips finished shards and redoes damaged ones. Ray is started locally unless ray.address names a "
            "cluster. Examples: openl3.weights=/models/openl3_audio_mel256_music.h5 text.model=/models/roberta-large "
            "families='[\"text\"]' ray.num_workers=8, for IEMOCAP iemocap.protocol=ser4 iemocap.fold=3 "
            "(see `cmroberta config extract`)."
        ),
    )
    parser.add_argument(
        "corpus",
        type=Path,
        help="corpus folder or manifest, e.g. ~/data/MELD.Raw, ~/data/IEMOCAP_full_release, mine/manifest.csv",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML file with ExtractConfig keys")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. shard_dialogues=16")
    parser.set_defaults(handler=lambda args: run_extract(args.corpus, args.config, args.overrides) and 0)
