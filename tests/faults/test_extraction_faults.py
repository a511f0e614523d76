"""Extraction under faults, run as a user runs it (`cmroberta extract` in its own process, real Ray and openSMILE).

- killed with SIGKILL (driver and Ray workers, as an out-of-memory killer or a lost node would) at
  points of the shard writing drawn at random (a shard renamed into place but not recorded, or
  recorded), then run again: every utterance is in the store exactly once, and the store verifies;
- interrupted by Ctrl-C: exit status 130, one line, no traceback, no temporary file left;
- two extractions of one store at once: the second is refused naming the first's host and pid,
  and the first finishes a whole store;

Every fault lands at a point the test holds the command at (`tests/pauses.py`), never after a wait
that a fast or slow machine could win or lose.
- a CSV row edited, or a clip rewritten: only the shards made from them are redone.
"""

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from extract.feature_store import FeatureStore
from extract.manifest import MANIFEST_NAME
from extract.meld import CSV_NAMES, read_meld
from tests.demo_corpora import corpus_text_encoder, write_wav_corpus
from tests.pauses import Pauses, interrupt_as_in_a_terminal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
KILLS = 3
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_wav_corpus(tmp_path_factory.mktemp("corpus"), train=5, dev=2, test=2, max_utterances=3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, corpus) -> Path:
    return corpus_text_encoder(corpus, tmp_path_factory.mktemp("tiny"), hidden_size=16)


def extract_command(corpus: Path, store_root: Path, tiny_model: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "launch.cli",
        "extract",
        str(corpus),
        f"store_root={json.dumps(str(store_root))}",
        "name=faults",
        'families=["opensmile", "text"]',
        "shard_dialogues=1",
        "check_clips=false",
        f"text.model={json.dumps(str(tiny_model))}",
        "ray.num_workers=1",
    ]


def start(command: list[str], pauses: Pauses | None = None) -> subprocess.Popen:
    # A session of its own: the kill reaches Ray's processes too, as a node failure would.
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    if pauses is not None:
        environment.update(pauses.environment())
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=interrupt_as_in_a_terminal,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, out, err


def store_of(store_root: Path) -> Path:
    (store,) = [path for path in store_root.iterdir() if path.name.startswith("faults-")]
    return store


def recorded_shards(store_root: Path) -> int:
    try:
        return len(json.loads((store_of(store_root) / MANIFEST_NAME).read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def leftovers(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.name.endswith(".tmp"))


def assert_whole(store: Path, corpus: Path) -> None:
    opened = FeatureStore.open(store)
    keys = [key for split in opened.splits for key in opened.read_split(split, families=[]).keys]
    expected = sorted(u.key for u in read_meld(corpus, check_clips=False).utterances)
    assert sorted(keys) == expected, "an utterance is missing or stored twice"
    assert len(keys) == len(set(keys))
    assert opened.verify() == []
    assert leftovers(store) == []


def test_killed_at_random_points_then_rerun_gives_a_whole_store(corpus, tiny_model, tmp_path):
    store_root = tmp_path / "stores"
    command = extract_command(corpus, store_root, tiny_model)
    rng = random.Random(9)
    planned = len({(u.split, u.dialogue_id) for u in read_meld(corpus, check_clips=False).utterances})
    recorded = 0
    for attempt in range(KILLS):
        # Each run extracts only what is missing; killing it within the first half of that leaves work for the next.
        shard = rng.randint(1, max(1, (planned - recorded) // 2))
        stage = rng.choice(["written", "recorded"])
        point = f"extract-shard-{stage}-{shard}"
        pauses = Pauses(tmp_path / f"pauses-{attempt}", point)
        process = start(command, pauses)
        with pauses.held(point, lambda: process.poll() is None):
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=60)
        recorded += shard if stage == "recorded" else shard - 1
        assert recorded_shards(store_root) == recorded, (attempt, point)
    assert 0 < recorded < planned
    store = store_of(store_root)
    with pytest.raises(Exception, match="is incomplete: .* is planned but not written"):
        FeatureStore.open(store)
    status, _, err = finish(start(command))
    assert status == 0, err[-2000:]
    assert_whole(store, corpus)


def test_ctrl_c_exits_130_with_one_line_and_leaves_no_partial_file(corpus, tiny_model, tmp_path):
    store_root = tmp_path / "stores"
    pauses = Pauses(tmp_path / "pauses", "extract-shard-recorded-1")
    process = start(extract_command(corpus, store_root, tiny_model), pauses)
    with pauses.held("extract-shard-recorded-1", lambda: process.poll() is None):
        # A terminal sends SIGINT to the whole foreground process group; it lands with one shard of nine recorded.
        os.killpg(process.pid, signal.SIGINT)
        status, _, err = finish(process)
    assert status == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "cmroberta extract: interrupted; run it again to continue"
    assert leftovers(store_of(store_root)) == []
    assert recorded_shards(store_root) == 1


def test_a_second_writer_is_refused_with_the_holder_named_and_nothing_is_lost(corpus, tiny_model, tmp_path, capsys):
    from launch.cli import main

    store_root = tmp_path / "stores"
    command = extract_command(corpus, store_root, tiny_model)
    pauses = Pauses(tmp_path / "pauses", "extract-shard-recorded-1")
    first = start(command, pauses)
    lock_text = f"pid {first.pid} on host {socket.gethostname()}"
    with pauses.held("extract-shard-recorded-1", lambda: first.poll() is None):
        assert (store_of(store_root) / ".lock").read_text().strip() == lock_text
        assert main(command[3:]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cmroberta extract: error: feature store {store_of(store_root)} is in use by {lock_text}; "
        "wait for it to finish, or stop that process"
    )
    status, _, first_err = finish(first)
    assert status == 0, first_err[-2000:]
    assert_whole(store_of(store_root), corpus)


def shard_files(store: Path) -> dict[str, int]:
    """Each shard's inode: a redone shard is a new file renamed into place (its bytes may well be the same)."""
    return {p.name: p.stat().st_ino for p in (store / "shards").iterdir()}


def test_an_edited_csv_row_or_a_rewritten_clip_redoes_only_its_shard(corpus, tiny_model, tmp_path_factory):
    # A corpus of its own: this test edits it.
    import shutil

    own = tmp_path_factory.mktemp("edited") / "corpus"
    shutil.copytree(corpus, own)
    store_root = own.parent / "stores"
    command = extract_command(own, store_root, tiny_model)
    status, _, err = finish(start(command))
    assert status == 0, err[-2000:]
    store = store_of(store_root)
    before = shard_files(store)

    csv_path = own / CSV_NAMES["dev"]
    utterance = read_meld(own, splits=("dev",), check_clips=False).utterances[0]
    new_emotion = "disgust" if utterance.emotion != "disgust" else "fear"
    with open(csv_path, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    header = rows[0]
    for row in rows[1:]:
        ids = int(row[header.index("Dialogue_ID")]), int(row[header.index("Utterance_ID")])
        if ids == (utterance.dialogue_id, utterance.utterance_id):
            row[header.index("Emotion")] = new_emotion
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows(rows)
    clip = Path(read_meld(own, splits=("test",), check_clips=False).utterances[-1].media_path)
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))

    status, _, err = finish(start(command))
    assert status == 0, err[-2000:]
    assert "store " in err and ": 2 of " in err and " shards to extract" in err
    after = shard_files(store)
    changed = sorted(file for file in before if before[file] != after[file])
    assert len(changed) == 2 and changed[0].startswith("dev-") and changed[1].startswith("test-"), changed
    rows = FeatureStore.open(store).read_split("dev", families=[])
    from extract.labels import EMOTIONS

    assert EMOTIONS[int(rows.emotion[rows.keys.index(utterance.key)])] == new_emotion
