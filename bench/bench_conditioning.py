"""How much a trained run's output probabilities move when its input features move by rounding-sized amounts.

For a finished run on stored features (text_mode frozen or finetuned), it reads the test split from the
run's store, multiplies every feature by (1 + eps * s) with s a random sign per value, standardises
with the run's saved statistics, and prints the largest and the mean absolute change of any output
probability against the unperturbed features, for each eps given. It also prints the probabilities'
change when the same features are scored with 2 torch threads instead of 1.

    python bench/bench_conditioning.py demo-output/sweep/runs/<hash>-seed0 --eps 1e-6 1e-7
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from cluster.distributed_session import distributed_session
from extract.feature_store import FeatureStore
from extract.split_arrays import SplitArrays
from model.dialogue_data import dataset_from_arrays
from model.engine import build_model, load_inference_engine, run_modalities
from model.evaluate import evaluate_split
from model.feature_statistics import FeatureStatistics
from model.run_folder import RunFolder


def perturbed(arrays: SplitArrays, eps: float, seed: int) -> SplitArrays:
    """The same rows with every feature value multiplied by (1 + eps * random sign)."""
    rng = np.random.default_rng(seed)
    features = {
        family: (values * (1.0 + eps * rng.choice([-1.0, 1.0], size=values.shape))).astype(np.float32)
        for family, values in arrays.features.items()
    }
    return SplitArrays(
        keys=arrays.keys, dialogue_ids=arrays.dialogue_ids, utterance_ids=arrays.utterance_ids,
        speakers=arrays.speakers, transcripts=arrays.transcripts, emotion=arrays.emotion,
        sentiment=arrays.sentiment, features=features, valid=arrays.valid,
    )


class ScoredRun:
    """A finished run on stored features, ready to score its test split's features as given."""

    def __init__(self, run_dir: Path):
        config = RunFolder(run_dir).saved_config
        if config.end_to_end_mode:
            raise ValueError(f"run {run_dir} trains its encoder end to end; this bench perturbs stored features")
        self.config = config
        store = FeatureStore.open(config.store)
        self.modalities = run_modalities(config, store)
        self.statistics = FeatureStatistics.load(RunFolder(run_dir).statistics_path)
        checkpoints = RunFolder(run_dir).checkpoints()
        self.label_set = store.label_set
        model = build_model(config, self.modalities, store.label_set)
        self.engine = load_inference_engine(model, config, 1, checkpoints, checkpoints.progress().best)
        self.test = store.read_split("test", families=self.modalities.families)

    def probabilities(self, rows: SplitArrays) -> np.ndarray:
        """Each test utterance's emotion probabilities [N, 7] from the features in `rows`."""
        dataset = dataset_from_arrays("test", rows, self.modalities, self.statistics)
        return evaluate_split(
            self.engine, dataset, batch_dialogues=8, device=self.engine.device, label_set=self.label_set
        ).probabilities

    def change(self, eps: float, seed: int) -> np.ndarray:
        """|probabilities of the features x (1 + eps x random signs) - probabilities of the features| [N, 7]."""
        return np.abs(self.probabilities(perturbed(self.test, eps, seed)) - self.probabilities(self.test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-6])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with distributed_session():
        run = ScoredRun(args.run_dir)
        print(f"run {args.run_dir} ({run.config.model.variant}, {run.config.text_mode}), {len(run.test)} utterances")
        for eps in args.eps:
            change = run.change(eps, args.seed)
            print(f"  features x (1 +- {eps:g}): probabilities move by at most {change.max():.3g} "
                  f"(mean {change.mean():.3g})")
        clean = run.probabilities(run.test)
        torch.set_num_threads(2)
        change = np.abs(run.probabilities(run.test) - clean)
        print(f"  2 threads against 1: at most {change.max():.3g} (mean {change.mean():.3g})")


if __name__ == "__main__":
    main()
