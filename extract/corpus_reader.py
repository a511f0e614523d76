"""One entry point that reads any corpus by what it is: a manifest, an IEMOCAP release, or MELD's layout.

`cmroberta prepare`, `cmroberta extract` and everything else that reads a corpus call
`read_corpus`, so a corpus is recognised, and read, the same way by every stage.
"""

from collections.abc import Sequence
from pathlib import Path

from extract.corpus import Corpus, CorpusError
from extract.iemocap import IemocapConfig, is_iemocap, read_iemocap
from extract.manifest_corpus import find_manifest, read_manifest_corpus
from extract.meld import DEFAULT_DURATION_TOLERANCE_S, read_meld
from extract.utterance import SPLITS


def corpus_kind(path: Path) -> str:
    """Which reader reads `path`: manifest (a .csv, or a folder holding manifest.csv), iemocap, or meld."""
    path = Path(path).expanduser()
    if find_manifest(path) is not None:
        return "manifest"
    if is_iemocap(path):
        return "iemocap"
    return "meld"


def read_corpus(
    path: str | Path,
    *,
    iemocap: IemocapConfig | None = None,
    splits: Sequence[str] = SPLITS,
    check_clips: bool = True,
    duration_tolerance_s: float = DEFAULT_DURATION_TOLERANCE_S,
) -> Corpus:
    """Read `path` by what it is, keeping the utterances of `splits`.

    `iemocap` chooses IEMOCAP's protocol and is refused for any other corpus, so a protocol
    the user asked for is never silently ignored. `check_clips` and `duration_tolerance_s`
    are MELD's clip checks.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(
            f"corpus {path} does not exist; give a corpus folder (MELD.Raw, IEMOCAP_full_release) or a manifest .csv"
        )
    kind = corpus_kind(path)
    if iemocap is not None and kind != "iemocap":
        raise CorpusError(f"{path} is not an IEMOCAP release: IEMOCAP's protocol keys apply to IEMOCAP only")
    if kind == "meld":
        return read_meld(path, splits=tuple(splits), check_clips=check_clips, duration_tolerance_s=duration_tolerance_s)
    if kind == "iemocap":
        corpus = read_iemocap(path, iemocap)
    else:
        corpus = read_manifest_corpus(path)
    corpus.utterances = [u for u in corpus.utterances if u.split in splits]
    return corpus
