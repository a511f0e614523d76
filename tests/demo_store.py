"""A small demo corpus and its feature store (openSMILE and the demo's text encoder), for tests that
train real runs and then label the corpus's clips again."""

from pathlib import Path

from cluster.ray_config import RayConfig
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.extract_config import ExtractConfig
from extract.pipeline import run_extraction
from extract.text_features import TextFeatureConfig

DEMO_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def write_demo_store(folder: Path, train: int, dev: int, test: int, seed: int = 3) -> tuple[Path, Path]:
    """(corpus folder, store folder) of a demo corpus of wav clips with that many dialogues per split."""
    corpus = write_demo_corpus(
        folder / "corpus",
        DemoCorpusConfig(train_dialogues=train, dev_dialogues=dev, test_dialogues=test, clip_format="wav", seed=seed),
    )
    store = run_extraction(
        ExtractConfig(
            corpus=str(corpus),
            store_root=str(folder / "features"),
            families=["opensmile", "text"],
            shard_dialogues=4,
            text=TextFeatureConfig(model=DEMO_TEXT_MODEL),
            ray=RayConfig(num_workers=2),
        )
    )
    return corpus, store
