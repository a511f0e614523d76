"""A shard's input fingerprint: what in the corpus makes a shard stale, and what does not."""

import dataclasses
import os

from extract.shard_plan import plan_shards
from extract.utterance import Utterance


def utterances(folder) -> list[Utterance]:
    records = []
    for dialogue in range(3):
        for turn in range(2):
            clip = folder / f"dia{dialogue}_utt{turn}.wav"
            clip.write_bytes(b"RIFF" + bytes(100 + turn))
            records.append(
                Utterance(
                    split="train",
                    dialogue_id=dialogue,
                    utterance_id=turn,
                    speaker="Phoebe",
                    transcript="Smelly cat.",
                    transcript_raw="Smelly cat.",
                    emotion="joy",
                    sentiment="positive",
                    media_path=str(clip),
                    start_time=0.0,
                    end_time=1.0,
                )
            )
    return records


def fingerprints(records) -> list[str]:
    return [plan.inputs for plan in plan_shards(records, ["train"], shard_dialogues=1)]


def test_the_same_corpus_plans_the_same_fingerprints(tmp_path):
    records = utterances(tmp_path)
    assert fingerprints(records) == fingerprints(list(reversed(records)))
    assert len(set(fingerprints(records))) == 3


def test_an_edited_label_makes_only_its_shard_stale(tmp_path):
    records = utterances(tmp_path)
    before = fingerprints(records)
    records[2] = dataclasses.replace(records[2], emotion="anger")
    after = fingerprints(records)
    assert [b == a for b, a in zip(before, after)] == [True, False, True]


def test_an_edited_transcript_makes_only_its_shard_stale(tmp_path):
    records = utterances(tmp_path)
    before = fingerprints(records)
    records[5] = dataclasses.replace(records[5], transcript_raw="Smelly  cat.")
    assert [b == a for b, a in zip(before, fingerprints(records))] == [True, True, False]


def test_a_clip_of_another_size_makes_its_shard_stale(tmp_path):
    records = utterances(tmp_path)
    before = fingerprints(records)
    with open(records[0].media_path, "ab") as stream:
        stream.write(b"more")
    assert [b == a for b, a in zip(before, fingerprints(records))] == [False, True, True]


def test_a_clip_rewritten_at_the_same_size_makes_its_shard_stale_by_its_mtime(tmp_path):
    records = utterances(tmp_path)
    before = fingerprints(records)
    status = os.stat(records[3].media_path)
    os.utime(records[3].media_path, ns=(status.st_atime_ns, status.st_mtime_ns + 1))
    assert [b == a for b, a in zip(before, fingerprints(records))] == [True, False, True]


def test_a_clip_that_vanished_makes_its_shard_stale(tmp_path):
    records = utterances(tmp_path)
    before = fingerprints(records)
    os.unlink(records[4].media_path)
    assert [b == a for b, a in zip(before, fingerprints(records))] == [True, True, False]
