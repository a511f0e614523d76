"""Cutting a corpus into shards: the one planner that extraction and `cmroberta predict` share.

A shard is whole dialogues of one split, its rows in (dialogue_id, utterance_id) order, named
`shards/<split>-<NNNNN>.h5`. Its inputs fingerprint (every CSV field of its utterances, each clip's
path, size and mtime) tells a store whether the shard is stale, and tells `predict` whether a store
shard was made from exactly the same inputs.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from extract.manifest import shard_file_name
from extract.utterance import SPLITS, Utterance


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: whole dialogues of one split."""

    file: str
    """Path relative to the store folder, `shards/train-00003.h5`."""
    split: str
    """Split of every utterance in it."""
    utterances: tuple[Utterance, ...]
    """Its utterances in (dialogue_id, utterance_id) order."""
    inputs: str = ""
    """Fingerprint of what the shard is made from (`inputs_fingerprint`); a change makes the shard stale."""

    @property
    def dialogues(self) -> list[int]:
        return sorted({u.dialogue_id for u in self.utterances})


def _clip_state(media_path: str | None) -> list[int] | str | None:
    if media_path is None:
        return None
    try:
        status = os.stat(media_path)
    except OSError as error:
        return f"unreadable: {error.strerror}"
    return [status.st_size, status.st_mtime_ns]


def inputs_fingerprint(utterances: Sequence[Utterance]) -> str:
    """sha256 of everything a shard is made from: each utterance's CSV fields, and its clip's path, size and mtime.

    Clips are not read: a changed clip keeps its size only when rewritten in place, which
    changes its mtime. One stat per clip keeps planning MELD's 13,708 clips to a fraction
    of a second.
    """
    digest = hashlib.sha256()
    for utterance in utterances:
        record = dataclasses.asdict(utterance)
        if record["media_span"] is None:
            # Left out when unset, so the stores of corpora without spans (MELD's) keep their fingerprints.
            del record["media_span"]
        record["clip"] = _clip_state(utterance.media_path)
        digest.update(json.dumps(record, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def plan_shards(utterances: Sequence[Utterance], splits: Sequence[str], shard_dialogues: int) -> list[ShardPlan]:
    """Cut utterances into shards of `shard_dialogues` whole dialogues of one split each.

    Extraction and `cmroberta predict` both cut here, so predict's shards are the store's; splits
    outside train, dev and test (predict's own) follow those three, in the order given.
    """
    plans = []
    for split in [*(s for s in SPLITS if s in splits), *(s for s in splits if s not in SPLITS)]:
        dialogues: dict[int, list[Utterance]] = {}
        for utterance in utterances:
            if utterance.split == split:
                dialogues.setdefault(utterance.dialogue_id, []).append(utterance)
        ids = sorted(dialogues)
        for index, start in enumerate(range(0, len(ids), shard_dialogues)):
            rows = [
                u
                for d in ids[start : start + shard_dialogues]
                for u in sorted(dialogues[d], key=lambda u: u.utterance_id)
            ]
            plans.append(
                ShardPlan(
                    file=shard_file_name(split, index),
                    split=split,
                    utterances=tuple(rows),
                    inputs=inputs_fingerprint(rows),
                )
            )
    return plans
