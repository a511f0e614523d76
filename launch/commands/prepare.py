"""`cmroberta prepare CORPUS`: recognise a corpus (MELD's layout, IEMOCAP, a manifest), read it, print what it holds."""

import argparse
from pathlib import Path

from cluster.config import load_config
from extract.corpus import Corpus, CorpusError
from extract.corpus_reader import read_corpus
from extract.iemocap import IemocapConfig, IemocapCorpus
from extract.meld import DEFAULT_DURATION_TOLERANCE_S
from extract.utterance import SPLITS
from launch.tables import format_table

# Per corpus kind: what one flagged item is called, and what a skipped row is.
ITEM_NAMES: dict[str, tuple[str, str, str]] = {
    "meld": ("utterance", "clip", "CSV row(s) skipped"),
    "manifest": ("utterance", "clip", "manifest row(s) skipped"),
    "iemocap": ("turn", "turn", "line(s) or file(s) skipped"),
}


def corpus_summary(corpus: Corpus) -> str:
    """Utterances, dialogues and label counts per split in the corpus's label columns, then what was flagged."""
    labels = corpus.label_set.labels
    unscored = any(u.label is None for u in corpus.utterances)
    header = ["split", "utterances", "dialogues", *labels, *(["unscored"] if unscored else [])]
    rows = []
    for split in SPLITS:
        counts = corpus.label_counts(split)
        row = [split, len(corpus.split(split)), len(corpus.dialogues(split)), *(counts[label] for label in labels)]
        if unscored:
            row.append(sum(1 for u in corpus.split(split) if u.label is None))
        rows.append(row)
    key_column, item, skipped = ITEM_NAMES[corpus.kind]
    parts = [format_table(header, rows)]
    if corpus.flags:
        flag_rows = [[flag.key, flag.kind, flag.reason] for flag in corpus.flags]
        parts.append(
            f"\n{len(corpus.flags)} flagged {item}(s):\n" + format_table([key_column, "flag", "reason"], flag_rows)
        )
    else:
        parts.append(f"\nno flagged {item}s")
    if corpus.row_errors:
        parts.append(f"\n{len(corpus.row_errors)} {skipped}:\n" + "\n".join(corpus.row_errors))
    return "\n".join(parts)


def protocol_summary(corpus: Corpus) -> str:
    """What a corpus other than MELD declares: its label set; for IEMOCAP the protocol, dev rule and other labels."""
    lines = [f"{corpus.kind}: label set {corpus.label_set.name} ({', '.join(corpus.label_set.labels)})"]
    if isinstance(corpus, IemocapCorpus):
        dev = sorted(name for (split, _), name in corpus.dialogue_names.items() if split == "dev")
        outside = ", ".join(f"{code} {count}" for code, count in sorted(corpus.outside_label_set.items()))
        if outside:
            kept = any(u.label is None for u in corpus.utterances)
            outside += " (kept as unscored context)" if kept else " (dropped)"
        lines += [
            f"protocol {corpus.protocol}; {corpus.dev_rule}: {', '.join(dev)}",
            f"outside the label set: {outside or 'none'}",
        ]
    return "\n".join(lines)


def run_prepare(corpus_path: Path, check_clips: bool, duration_tolerance_s: float, overrides: list[str]) -> Corpus:
    """Read the corpus at `corpus_path` the way extraction will, and print its summary."""
    corpus = read_corpus(
        corpus_path,
        iemocap=load_config(IemocapConfig, None, overrides) if overrides else None,
        check_clips=check_clips,
        duration_tolerance_s=duration_tolerance_s,
    )
    if not corpus.utterances:
        skipped = f" ({len(corpus.row_errors)} rows could not be read)" if corpus.row_errors else ""
        where = "its *_sent_emo.csv files hold no rows" if corpus.kind == "meld" else "it holds no rows"
        raise CorpusError(
            f"the corpus at {corpus.root} has no utterances: {where}{skipped}; "
            "point prepare at a corpus with transcripts"
        )
    print(f"corpus {corpus.root}")
    if corpus.kind != "meld":
        print(protocol_summary(corpus))
    print(corpus_summary(corpus))
    return corpus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="validate a corpus (MELD.Raw, the demo corpus, IEMOCAP_full_release, a manifest) and summarise it",
        description=(
            "Recognise and read a corpus, then print utterances, dialogues and label counts per split in the "
            "corpus's own label columns, and everything flagged or skipped with the reason. MELD's layout: the "
            "*_sent_emo.csv files beside or one level above the clip folders train_splits/, dev_splits_complete/, "
            "output_repeated_splits_test/; clips missing, corrupt, silent or far longer than their CSV timestamps, "
            "the choice between final_videos_test twins. IEMOCAP_full_release (Session1..Session5): turns with a "
            "missing or unreadable wav, transcribed but not evaluated or the reverse, and lines that could not be "
            "parsed; choose the protocol with protocol=erc6|ser4, fold=K (ser4), keep_unscored=true, dev_fraction, "
            "dev_seed. A manifest: a .csv file (or a folder holding manifest.csv) with labels.json beside it."
        ),
    )
    parser.add_argument("corpus", type=Path, help="corpus folder or manifest, e.g. ~/data/MELD.Raw")
    parser.add_argument("--no-check-clips", action="store_true", help="MELD: only check that clips exist (fast)")
    parser.add_argument(
        "--duration-tolerance",
        type=float,
        default=DEFAULT_DURATION_TOLERANCE_S,
        help="MELD: seconds a clip may differ from EndTime - StartTime before it is flagged (default: %(default)s)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="IEMOCAP protocol keys, e.g. protocol=ser4 fold=3"
    )
    parser.set_defaults(
        handler=lambda args: run_prepare(
            args.corpus, not args.no_check_clips, args.duration_tolerance, args.overrides
        )
        and 0
    )
