"""A small corpus in the manifest format with its own four labels, written by the tests.

Two dialogues in train, one in dev, one in test; every utterance has a short wav under
`audio/` beside `manifest.csv`, except the one whose file is missing, and one test
utterance is cut from a longer file by start and end. One train utterance has no label:
it stays as unscored context.
"""

import csv
import json
from pathlib import Path

from tests.iemocap_layout import write_wav

LABELS = {"name": "quad", "labels": ["neutral", "happy", "sad", "angry"]}
HEADER = ["split", "dialogue_id", "utterance_id", "speaker", "transcript", "audio", "start", "end", "label"]
# Rows written out of order on purpose: the reader keys by (split, dialogue_id, utterance_id), not by position.
ROWS: list[list[str]] = [
    ["train", "1", "1", "Bo", "Fine, thanks.", "audio/d1_u1.wav", "", "", "neutral"],
    ["train", "1", "0", "Al", "How are you?", "audio/d1_u0.wav", "", "", "Happy"],
    ["train", "1", "2", "Al", "Mm.", "audio/d1_u2.wav", "", "", ""],
    ["train", "2", "0", "Cy", "I lost it.", "audio/d2_u0.wav", "", "", "sad"],
    ["train", "2", "1", "Di", "You what?", "audio/d2_u1.wav", "", "", "angry"],
    ["dev", "3", "0", "Al", "Great news!", "audio/d3_u0.wav", "", "", "happy"],
    ["dev", "3", "1", "Bo", "Is it?", "audio/missing.wav", "", "", "neutral"],
    ["test", "4", "0", "Cy", "Leave me alone.", "audio/long.wav", "0.5", "1.5", "angry"],
    ["test", "4", "1", "Di", "Sorry.", "audio/long.wav", "1.5", "2.0", "sad"],
]
MISSING_AUDIO = "audio/missing.wav"


def write_manifest_corpus(folder: Path, extra_rows: list[list[str]] = ()) -> Path:
    """Write the corpus into `folder` (rows after ROWS as given) and return the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.json").write_text(json.dumps(LABELS))
    rows = [*ROWS, *extra_rows]
    for row in ROWS:
        audio = row[HEADER.index("audio")]
        if audio != MISSING_AUDIO and not (folder / audio).exists():
            write_wav(folder / audio, 2.0 if audio.endswith("long.wav") else 0.5)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return manifest
