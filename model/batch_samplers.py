"""Which dialogues each rank runs in each step: global batches in a seeded order, split across ranks.

Ranks share one global batch: every rank walks the same seeded order of dialogues and takes every
world_size-th dialogue of each global batch, so N ranks see together exactly what one rank sees.
`LengthBucketSampler` groups dialogues of similar length into a batch, to cut padding.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class RankBatch:
    """This rank's share of one global batch."""

    indices: list[int]
    """Dialogues this rank runs, never empty."""
    counted: list[bool]
    """False for a dialogue held only so that every rank runs a batch; its loss and predictions are dropped."""
    global_indices: list[int]
    """Every dialogue of the global batch, on all ranks: the loss is normalised by their utterances."""

    def micro_batches(self, parts: int) -> list["RankBatch"]:
        """This share cut into `parts` micro-batches for gradient accumulation, every one non-empty.

        A part left without a dialogue runs the global batch's first one uncounted, so every rank
        runs the same number of forward and backward passes.
        """
        micro = []
        for part in range(parts):
            indices, counted = self.indices[part::parts], self.counted[part::parts]
            if not indices:
                indices, counted = self.global_indices[:1], [False]
            micro.append(RankBatch(indices=indices, counted=counted, global_indices=self.global_indices))
        return micro


class DialogueBatchSampler:
    """Global batches of `batch_dialogues` dialogues in a seeded order, each split across ranks.

    Rank r takes dialogues r, r + world_size, ... of every global batch. A rank left without one
    (the last global batch can be smaller than world_size) runs the batch's first dialogue
    uncounted, so every rank calls forward and backward equally often, as DDP and ZeRO need.
    """

    def __init__(
        self,
        num_dialogues: int,
        batch_dialogues: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
    ):
        if num_dialogues < 1:
            raise ValueError(f"num_dialogues must be at least 1, not {num_dialogues}")
        if batch_dialogues < 1:
            raise ValueError(f"batch_dialogues must be at least 1, not {batch_dialogues}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), not {rank}")
        self.num_dialogues = num_dialogues
        self.batch_dialogues = batch_dialogues
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's order; the same (seed, epoch) gives the same order on every rank and run."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_dialogues / self.batch_dialogues)

    def order(self) -> np.ndarray:
        """The epoch's dialogue order."""
        if not self.shuffle:
            return np.arange(self.num_dialogues)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_dialogues)

    def __iter__(self) -> Iterator[RankBatch]:
        order = self.order().tolist()
        for start in range(0, self.num_dialogues, self.batch_dialogues):
            global_indices = order[start : start + self.batch_dialogues]
            mine = global_indices[self.rank :: self.world_size]
            if mine:
                yield RankBatch(indices=mine, counted=[True] * len(mine), global_indices=global_indices)
            else:
                yield RankBatch(indices=global_indices[:1], counted=[False], global_indices=global_indices)


class LengthBucketSampler(DialogueBatchSampler):
    """Shuffled global batches of dialogues of similar length, to cut padding (of tokens, end to end).

    The epoch's shuffled dialogues are cut into pools of `pool_batches` batches; each pool is sorted
    by length and cut into batches, and the full batches of all pools are shuffled, so every batch
    holds dialogues of similar length while the order of batches stays random. The last, short
    batch (if the split does not divide evenly) stays last: ranks cut global batches at fixed offsets.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_dialogues: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pool_batches: int = 16,
    ):
        super().__init__(len(lengths), batch_dialogues, rank=rank, world_size=world_size, shuffle=True, seed=seed)
        if pool_batches < 1:
            raise ValueError(f"pool_batches must be at least 1, not {pool_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.pool_batches = pool_batches

    def order(self) -> np.ndarray:
        """The epoch's dialogue order: batch after batch of similar lengths."""
        generator = np.random.default_rng([self.seed, self.epoch])
        shuffled = generator.permutation(self.num_dialogues)
        full = (self.num_dialogues // self.batch_dialogues) * self.batch_dialogues
        pool = self.pool_batches * self.batch_dialogues
        batches = []
        for start in range(0, full, pool):
            members = shuffled[start : min(start + pool, full)]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            batches.extend(np.split(members, len(members) // self.batch_dialogues))
        batch_order = generator.permutation(len(batches))
        return np.concatenate([*(batches[i] for i in batch_order), shuffled[full:]]).astype(np.int64)
