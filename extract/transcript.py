"""Transcript normalisation: the one place that decides how MELD's text is cleaned.

MELD's transcripts are UTF-8 with typographic punctuation (about 3,550 right single
quotes in train, 148 ellipses, 136 em dashes) and a few mis-decoded byte sequences.
Peers disagree: one strips every non-ASCII character, which turns "you’re" into
"youre" and changes the word a tokenizer sees. We map each typographic character to
its plain ASCII spelling instead, so "you’re" becomes "you're", the form RoBERTa's
byte-level BPE saw most in pre-training. The original is always kept beside it.
"""

import re
import unicodedata

# Typographic characters and the ASCII a reader would type for them.
_ASCII_FOR: dict[str, str] = {
    "\u2018": "'",  # left single quote
    "\u2019": "'",  # right single quote / apostrophe
    "\u201a": "'",
    "\u2032": "'",
    "\u201c": '"',  # left double quote
    "\u201d": '"',  # right double quote
    "\u201e": '"',
    "\u2026": "...",  # ellipsis
    "\u2013": "-",  # en dash
    "\u2014": " - ",  # em dash: spaced, since MELD writes it between words
    "\u2212": "-",
    "\u00a0": " ",  # no-break space
    "\u200b": "",  # zero-width space
}

# Mojibake: copies of MELD's CSVs that were re-saved as cp1252 or Latin-1 and read back
# as UTF-8 spell "’" as "â€™". Undo it for every character the table above knows.
def _mojibake_forms(ch: str) -> list[str]:
    raw = ch.encode("utf-8")
    forms = {raw.decode("latin-1")}
    try:
        forms.add(raw.decode("cp1252"))
    except UnicodeDecodeError:
        pass
    return [form for form in forms if form != ch]


_MOJIBAKE: dict[str, str] = {
    form: ch for ch in _ASCII_FOR if ord(ch) > 0x7F and len(ch.encode("utf-8")) == 3 for form in _mojibake_forms(ch)
}

_SPACES = re.compile(r"\s+")


def normalise_transcript(text: str) -> str:
    """Return the transcript with typographic punctuation spelled in ASCII.

    Steps, in order: undo known mojibake; NFKC-normalise (folds compatibility forms
    such as full-width letters); replace typographic quotes, ellipses and dashes by
    their ASCII spelling; collapse runs of whitespace. Letters with accents
    ("café") are kept: they are words, not punctuation.
    """
    for broken, original in _MOJIBAKE.items():
        text = text.replace(broken, original)
    text = unicodedata.normalize("NFKC", text)
    # NFKC turns the ellipsis into "..." already; the table covers what it leaves.
    text = "".join(_ASCII_FOR.get(ch, ch) for ch in text)
    return _SPACES.sub(" ", text).strip()
