"""Training throughput on MELD-sized random features, through the real store, data path and DeepSpeed loop.

The store has MELD's shape: 1,038 train dialogues with 9,989 utterances (longest 24), 114 dev
dialogues with 1,109, 280 test dialogues with 2,610, and the paper's widths: openSMILE 6,552 +
OpenL3 6,144 = 12,696 audio, 4,096 text. Features are random, so the scores mean nothing; the
costs are real. Printed:

- reading the store and standardising it (the one-off part of loading data), timed apart;
- per epoch: wall time, the training pass, dialogues/s of the training pass, and the share of
  the pass spent assembling and moving batches (the per-step part of loading data);
- the share of loading data in the whole training, peak RSS, and peak GPU memory on a GPU.

    python bench/bench_train.py                      # 2 epochs of the full model
    python bench/bench_train.py --variant text --epochs 3 --precision bf16
    torchrun --nproc-per-node 4 bench/bench_train.py # on 4 GPUs (rank 0 prints)
"""

import argparse
import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cluster.config import load_config
from cluster.rendezvous import resolve_rendezvous
from extract.feature_store import FeatureStore, build_store_from_arrays
from extract.split_arrays import SplitArrays
from model.dialogue_data import load_datasets
from model.engine import build_model, run_modalities
from model.run_config import RunConfig
from model.run_folder import RunFolder
from model.train import train

# (dialogues, utterances, longest dialogue) per split, from MELD's official CSVs.
MELD_SPLITS = {"train": (1038, 9989, 24), "dev": (114, 1109, 23), "test": (280, 2610, 33)}
MELD_DIMS = {"opensmile": 6552, "openl3": 6144, "text": 4096}


def dialogue_lengths(dialogues: int, utterances: int, longest: int, rng: np.random.Generator) -> np.ndarray:
    """`dialogues` lengths in [1, longest] summing to `utterances`, spread like MELD's (mean ~9.6)."""
    lengths = np.clip(rng.poisson(utterances / dialogues, dialogues), 1, longest)
    lengths[0] = longest
    while (excess := int(lengths.sum()) - utterances) != 0:
        step = 1 if excess > 0 else -1
        candidates = np.flatnonzero((lengths > 1) if step > 0 else (lengths < longest))
        candidates = candidates[candidates != 0]  # dialogue 0 keeps the longest length
        lengths[rng.choice(candidates, size=min(abs(excess), len(candidates)), replace=False)] -= step
    return lengths


def random_split(split: str, rng: np.random.Generator) -> SplitArrays:
    dialogues, utterances, longest = MELD_SPLITS[split]
    lengths = dialogue_lengths(dialogues, utterances, longest, rng)
    dialogue_ids = np.repeat(np.arange(dialogues), lengths)
    utterance_ids = np.concatenate([np.arange(n) for n in lengths])
    return SplitArrays(
        keys=[f"{split}/dia{d}_utt{u}" for d, u in zip(dialogue_ids, utterance_ids)],
        dialogue_ids=dialogue_ids,
        utterance_ids=utterance_ids,
        speakers=["Joey"] * utterances,
        transcripts=["How you doin'?"] * utterances,
        emotion=rng.choice(7, size=utterances, p=[0.47, 0.12, 0.03, 0.07, 0.17, 0.03, 0.11]),
        sentiment=rng.integers(0, 3, utterances),
        features={f: rng.standard_normal((utterances, d), dtype=np.float32) for f, d in MELD_DIMS.items()},
    )


def build_meld_sized_store(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {split: random_split(split, rng) for split in MELD_SPLITS}
    return build_store_from_arrays(folder, arrays, {"corpus": "random"}, shard_dialogues=128)


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs to train")
    parser.add_argument("--variant", default="bimodal", help="bimodal, bimodal_no_sca, text or audio")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the store and the run (default: a temp folder)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cmroberta" / "torch_extensions"))
    is_main = resolve_rendezvous().is_main
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-train-"))
    store_dir = work / "meld-sized-000000000000"

    if not (store_dir / "manifest.json").is_file():
        if not is_main:
            raise SystemExit("build the store with one process first (--work DIR), then start the ranks on it")
        started = time.perf_counter()
        build_meld_sized_store(store_dir)
        print(f"wrote a MELD-sized random store in {time.perf_counter() - started:.1f} s: {store_dir}")

    config = load_config(
        RunConfig,
        None,
        [
            f"store={json.dumps(str(store_dir))}",
            f"model.variant={json.dumps(args.variant)}",
            f"train.precision={json.dumps(args.precision)}",
            f"train.max_epochs={args.epochs}",
            f"train.patience={args.epochs}",
        ],
    )

    # The one-off part of loading data, timed apart: train() does the same reads again.
    store = FeatureStore.open(store_dir)
    modalities = run_modalities(config, store)
    parameters = sum(p.numel() for p in build_model(config, modalities, store.label_set).parameters())
    started = time.perf_counter()
    datasets, _ = load_datasets(store, modalities, ("train", "dev", "test"))
    load_seconds = time.perf_counter() - started
    del datasets

    run_dir = work / f"run-{args.variant}-{args.precision}-{time.strftime('%H%M%S')}"
    started = time.perf_counter()
    train(config, run_dir)
    total_seconds = time.perf_counter() - started
    if not is_main:
        return

    records = [json.loads(line) for line in RunFolder(run_dir).metrics_path.read_text().splitlines()]
    train_dialogues = MELD_SPLITS["train"][0]
    print(
        f"\nvariant {args.variant}, {parameters / 1e6:.1f} M parameters, {args.precision}, "
        f"world size {os.environ.get('WORLD_SIZE', '1')}, torch threads {torch.get_num_threads()}, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print(f"store read + standardisation (train, dev, test): {load_seconds:.1f} s")
    print("epoch  wall s  train s  dialogues/s  batch assembly share")
    for record in records:
        print(
            f"{record['epoch']:5d}  {record['seconds']:6.1f}  {record['train_seconds']:7.1f}  "
            f"{train_dialogues / record['train_seconds']:11.1f}  "
            f"{record['data_seconds'] / record['train_seconds']:19.1%}"
        )
    data_seconds = load_seconds + sum(record["data_seconds"] for record in records)
    print(
        f"whole train() call: {total_seconds:.1f} s; loading data (store read + batches): "
        f"{data_seconds:.1f} s = {data_seconds / total_seconds:.1%}"
    )
    print(f"peak RSS {peak_rss_gb():.2f} GB", end="")
    if torch.cuda.is_available():
        print(f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GB", end="")
    print()


if __name__ == "__main__":
    main()
