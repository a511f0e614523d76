"""The check that a run on 2 ranks is the run of one process accumulating the ranks' shares.

Rank r's share of a global batch is dialogues r, r + 2, ... (`DialogueBatchSampler`), and one process cutting
each global batch into 2 micro-batches runs exactly those shares in rank order (`RankBatch.micro_batches`), at
the same thread count: every forward and backward pass is the same computation. The ranks scale their loss by
2 / W and DeepSpeed averages their gradients (a halving); the one process scales by 1 / W: powers of two,
exact. What remains is one float32 sum of two gradients, g0 + g1, commutative, so the all-reduce and the
accumulation agree to the bit, and so do the clip (stage 0: every rank holds the whole reduced gradient) and
Adam's steps. ZeRO-2 sums the same two gradients once it reduces them in parameter order on several ranks
(`model.deepspeed_config.reduction_in_parameter_order`); its clip factor comes from per-partition squared norms,
so ZeRO-2 runs compared here train without clipping.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from extract.feature_store import FeatureStore
from model.run_folder import RunFolder


def history(run_dir: Path) -> list[dict]:
    """The run's epoch records (metrics.jsonl)."""
    return [json.loads(line) for line in RunFolder(run_dir).metrics_path.read_text().splitlines()]


def assert_ranks_match_one_process(ranks_dir: Path, one_dir: Path, store: Path) -> None:
    """Weights and train losses bitwise, scores equal, evaluation losses within their derived bound."""
    one, two = history(one_dir), history(ranks_dir)
    one_test = json.loads(RunFolder(one_dir).test_metrics_path.read_text())
    two_test = json.loads(RunFolder(ranks_dir).test_metrics_path.read_text())
    assert two_test["checkpoint"] == one_test["checkpoint"]
    weights = load_file(RunFolder(ranks_dir).checkpoints().checked_weights(two_test["checkpoint"]))
    reference = load_file(RunFolder(one_dir).checkpoints().checked_weights(one_test["checkpoint"]))
    assert weights.keys() == reference.keys()
    for name in reference:
        assert torch.equal(weights[name], reference[name]), name
    assert [r["train_loss"] for r in two] == [r["train_loss"] for r in one]
    # Evaluation runs the same weights on other batches: the ranks score dialogues 0, 2, 4, 6 and 1, 3, 5, 7
    # where the one process scores all 8 at once (measured: dev losses 3.3e-8 apart, relative). A loss is a
    # float32 sum of a batch's non-negative per-utterance losses, whose rounding moves it by at most (m - 1) u
    # relative for m terms (u = 2**-24), on each side; the float64 sums of batches and ranks add nothing at
    # that scale. So two runs of equal weights agree to 2 (m - 1) u, with m at most the split's utterances.
    for key, split in (("dev_loss", "dev"), ("loss", "test")):
        utterances = len(FeatureStore.open(store).read_split(split, []).keys)
        bound = 2 * (utterances - 1) * 2.0**-24
        ours = [r[key] for r in two] if key == "dev_loss" else [two_test[key]]
        theirs = [r[key] for r in one] if key == "dev_loss" else [one_test[key]]
        np.testing.assert_allclose(ours, theirs, rtol=bound, atol=0)
    for key in ("weighted_f1", "accuracy", "macro_f1", "confusion", "count", "epoch"):
        assert two_test[key] == one_test[key], key
