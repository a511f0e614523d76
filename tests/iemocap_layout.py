"""A small folder in IEMOCAP_full_release's layout, written by the tests, with every defect the reader handles.

Two sessions (1 and 5), five dialogs. Each turn below is (name, start, end, label code or
None when not evaluated, transcript or None when not transcribed). Lines are written out of
time order, so the reader's ordering by start time shows. Defects: `xxx`, `sur` and `fea`
labels; a non-conforming transcription line; a tagged transcript; a missing wav; a wav cut
short; a turn evaluated but not transcribed; a turn transcribed but not evaluated; an
evaluation line that does not parse.
"""

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000

DIALOGS: dict[str, list[tuple[str, float, float, str | None, str | None]]] = {
    "Ses01F_impro01": [
        ("M000", 2.5, 3.5, "fru", "[LAUGHTER] Not now, please."),
        ("F000", 1.0, 2.0, "neu", "Hello there."),
        ("F001", 4.0, 5.0, "xxx", "Okay."),
        ("M001", 5.5, 6.5, "ang", "Go away!"),
        ("F002", 7.0, 8.0, "hap", None),
        ("MXX0", 8.5, 9.0, None, "Hmm."),
    ],
    "Ses01F_impro02": [
        ("F000", 0.3, 1.0, "neu", "Hi."),
        ("M000", 1.2, 2.0, "hap", "Good to see you [BREATHING] again."),
    ],
    "Ses01M_script01_1": [
        ("M000", 0.5, 1.5, "exc", "That's great!"),
        ("F000", 2.0, 3.0, "sad", "I miss her."),
        ("M001", 3.2, 4.0, "sur", "Really?"),
    ],
    "Ses05F_impro01": [
        ("F000", 0.0, 1.0, "ang", "Stop it."),
        ("M000", 1.5, 2.5, "neu", "Fine."),
        ("F001", 3.0, 4.0, "exc", "Yes!"),
        ("M001", 4.5, 5.0, "fea", "Oh no."),
    ],
    "Ses05M_script01_1": [
        ("M000", 1.0, 2.0, "sad", "It's over."),
        ("F000", 2.2, 3.0, "hap", "Cheer up."),
    ],
}
MISSING_WAV = "Ses01F_impro01_M001"
TRUNCATED_WAV = "Ses05F_impro01_M000"
# (file relative to the root, line number, text) of each line the reader must refuse.
NONCONFORMING_TRANSCRIPTION = ("Session1/dialog/transcriptions/Ses01F_impro01.txt", 3, "M: Excuse me, is this it?")
MALFORMED_EVALUATION = (
    "Session5/dialog/EmoEvaluation/Ses05F_impro01.txt",
    3,
    "[1.0000 - x]\tSes05F_impro01_F009\tneu\t[2.5, 3.0, 3.0]",
)


def write_wav(path: Path, seconds: float) -> None:
    """A 16 kHz mono 16-bit wav holding a quiet 220 Hz tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    samples = (0.1 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2")
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(SAMPLE_RATE)
        clip.writeframes(samples.tobytes())


def write_layout(root: Path, dialogs: dict[str, list[tuple[str, float, float, str | None, str | None]]]) -> Path:
    """Write `dialogs` (as `DIALOGS` lists them) in IEMOCAP's layout under `root`, every turn with its wav."""
    for dialog, turns in dialogs.items():
        session = root / f"Session{int(dialog[3:5])}"
        evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        transcription = []
        for suffix, start, end, code, text in turns:
            turn = f"{dialog}_{suffix}"
            if code is not None:
                evaluation += [
                    f"[{start:.4f} - {end:.4f}]\t{turn}\t{code}\t[2.5000, 3.0000, 3.0000]",
                    f"C-E1:\t{code.capitalize()};\t()",
                    "A-E3:\tval 3; act 3; dom  3;\t()",
                    "",
                ]
            if text is not None:
                transcription.append(f"{turn} [{start:08.4f}-{end:08.4f}]: {text}")
            write_wav(session / "sentences" / "wav" / dialog / f"{turn}.wav", end - start)
        (session / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (session / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        (session / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(evaluation) + "\n")
        (session / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(transcription) + "\n")
    return root


def write_iemocap(root: Path) -> Path:
    """Write `DIALOGS` under `root` (as `IEMOCAP_full_release` would unpack), with the defects, and return `root`."""
    write_layout(root, DIALOGS)
    for path, number, text in (NONCONFORMING_TRANSCRIPTION, MALFORMED_EVALUATION):
        lines = (root / path).read_text().splitlines()
        lines.insert(number - 1, text)
        (root / path).write_text("\n".join(lines) + "\n")
    (root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{MISSING_WAV}.wav").unlink()
    truncated = root / "Session5" / "sentences" / "wav" / "Ses05F_impro01" / f"{TRUNCATED_WAV}.wav"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    return root
