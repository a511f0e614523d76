"""`cmroberta prepare CORPUS`: validate a corpus folder and print what it holds."""

import argparse
from pathlib import Path

from extract.labels import EMOTIONS
from extract.meld import DEFAULT_DURATION_TOLERANCE_S, CorpusError, MeldCorpus, read_meld
from extract.utterance import SPLITS
from launch.tables import format_table


def corpus_summary(corpus: MeldCorpus) -> str:
    """Utterances, dialogues and label counts per split, then the flagged clips and skipped rows."""
    header = ["split", "utterances", "dialogues", *EMOTIONS]
    rows = []
    for split in SPLITS:
        counts = corpus.emotion_counts(split)
        rows.append([split, len(corpus.split(split)), len(corpus.dialogues(split)), *(counts[e] for e in EMOTIONS)])
    parts = [format_table(header, rows)]
    if corpus.flags:
        flag_rows = [[flag.key, flag.kind, flag.reason] for flag in corpus.flags]
        parts.append(
            f"\n{len(corpus.flags)} flagged clip(s):\n" + format_table(["utterance", "flag", "reason"], flag_rows)
        )
    else:
        parts.append("\nno flagged clips")
    if corpus.row_errors:
        parts.append(f"\n{len(corpus.row_errors)} CSV row(s) skipped:\n" + "\n".join(corpus.row_errors))
    return "\n".join(parts)


def run_prepare(corpus_dir: Path, check_clips: bool, duration_tolerance_s: float) -> MeldCorpus:
    """Read the corpus at `corpus_dir` the way extraction will, and print its summary."""
    corpus = read_meld(corpus_dir, check_clips=check_clips, duration_tolerance_s=duration_tolerance_s)
    if not corpus.utterances:
        skipped = f" ({len(corpus.row_errors)} rows could not be read)" if corpus.row_errors else ""
        raise CorpusError(
            f"the corpus at {corpus.root} has no utterances: its *_sent_emo.csv files hold no rows{skipped}; "
            "point prepare at a corpus with transcripts"
        )
    print(f"corpus {corpus.root}")
    print(corpus_summary(corpus))
    return corpus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="validate a corpus folder (MELD.Raw or the demo corpus) and summarise it",
        description=(
            "Read a corpus in MELD's layout (the *_sent_emo.csv files beside or one level above the clip folders "
            "train_splits/, dev_splits_complete/, output_repeated_splits_test/) and print utterances, dialogues and "
            "emotion counts per split, the clips that are missing, corrupt, silent or far longer than their CSV "
            "timestamps, the choice between final_videos_test twins, and CSV rows that could not be read."
        ),
    )
    parser.add_argument("corpus", type=Path, help="corpus folder, e.g. ~/data/MELD.Raw")
    parser.add_argument("--no-check-clips", action="store_true", help="only check that clips exist (fast)")
    parser.add_argument(
        "--duration-tolerance",
        type=float,
        default=DEFAULT_DURATION_TOLERANCE_S,
        help="seconds a clip may differ from EndTime - StartTime before it is flagged (default: %(default)s)",
    )
    parser.set_defaults(
        handler=lambda args: run_prepare(args.corpus, not args.no_check_clips, args.duration_tolerance) and 0
    )
