"""What it costs to open a MELD-sized feature store that verifies itself: the first open, and a cached one.

A store of MELD's shape (13,708 utterances: 1,038 / 114 / 280 dialogues in train / dev / test;
openSMILE 6,552 + OpenL3 6,144 + text 4,096 float32 columns, about 0.9 GB) is built from random
features with the pipeline's own writer, 32 dialogues a shard. Printed:

- the store's size and how long writing it took;
- a first open: every shard's sha256 read and checked (what `train`, `evaluate`, `sweep` and
  `verify` pay once after extraction or after copying a store), with the bytes/s it reached;
- a cached open: the same check answered from `verified.json` by size, mtime and ctime;
- the ratio of the two, and the first open against reading the training split once (the
  cost every run pays anyway), so the check is seen in proportion.

The first open here follows the write, so the shards come from the page cache; after a copy
to another cluster they come from its disk, and the first open is bounded by that disk's read
rate instead.

    python bench/bench_store_verify.py                 # MELD-sized
    python bench/bench_store_verify.py --scale 0.1     # a tenth of it, for a quick look
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# `python bench/bench_store_verify.py` puts bench/ on the path, not the repository that holds tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extract.feature_store import FeatureStore, build_store_from_arrays  # noqa: E402
from extract.shard_files import VERIFIED_NAME  # noqa: E402
from extract.split_arrays import SplitArrays  # noqa: E402
from tests.synthetic_splits import split_of_rows  # noqa: E402

# (dialogues, utterances) per split, from MELD's official CSVs.
MELD_SPLITS = {"train": (1038, 9989), "dev": (114, 1109), "test": (280, 2610)}
MELD_DIMS = {"opensmile": 6552, "openl3": 6144, "text": 4096}


def random_split(split: str, dialogues: int, utterances: int, rng: np.random.Generator) -> SplitArrays:
    lengths = np.full(dialogues, utterances // dialogues)
    lengths[: utterances - int(lengths.sum())] += 1
    rows = [(d, u) for d, n in enumerate(lengths) for u in range(int(n))]
    return split_of_rows(
        split,
        rows,
        speaker="Chandler",
        transcript="Could I be any more random?",
        emotion=rng.integers(0, 7, len(rows)),
        sentiment=rng.integers(0, 3, len(rows)),
        features={family: rng.standard_normal((len(rows), dim), dtype=np.float32) for family, dim in MELD_DIMS.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of MELD's dialogues and utterances")
    parser.add_argument("--work", type=Path, default=None, help="folder for the store (default: a temporary one)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        started = time.perf_counter()
        arrays = {
            split: random_split(split, max(1, round(d * args.scale)), max(1, round(u * args.scale)), rng)
            for split, (d, u) in MELD_SPLITS.items()
        }
        store_dir = build_store_from_arrays(
            Path(work) / "meld-000000000000", arrays, {"bench": True}, shard_dialogues=32
        )
        written_s = time.perf_counter() - started
        size = sum(p.stat().st_size for p in (store_dir / "shards").iterdir())
        utterances = sum(len(rows) for rows in arrays.values())
        del arrays
        print(f"store: {utterances} utterances, {len(list((store_dir / 'shards').iterdir()))} shards, "
              f"{size / 1e9:.2f} GB, written in {written_s:.1f} s")

        started = time.perf_counter()
        store = FeatureStore.open(store_dir)
        first_s = time.perf_counter() - started
        assert (store_dir / VERIFIED_NAME).is_file()
        started = time.perf_counter()
        FeatureStore.open(store_dir)
        cached_s = time.perf_counter() - started
        started = time.perf_counter()
        store.read_split("train")
        read_s = time.perf_counter() - started

        print(f"first open (every sha256): {first_s:.2f} s, {size / first_s / 1e6:.0f} MB/s")
        print(f"cached open (verified.json): {cached_s * 1000:.1f} ms")
        print(f"first / cached: {first_s / cached_s:.0f}x")
        print(f"reading the train split once: {read_s:.2f} s; first open / that read: {first_s / read_s:.2f}")


if __name__ == "__main__":
    main()
