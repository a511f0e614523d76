"""Transcript normalisation keeps words and spells typographic punctuation in ASCII."""

import pytest

from extract.transcript import normalise_transcript


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("You’re fine", "You're fine"),
        ("“Quoted”", '"Quoted"'),
        ("Well…", "Well..."),
        ("Wait—what?", "Wait - what?"),
        ("Youâ€™re back", "You're back"),
        ("  many   spaces\u00a0here ", "many spaces here"),
        ("café", "café"),
        ("plain ASCII.", "plain ASCII."),
    ],
)
def test_normalise(raw, clean):
    assert normalise_transcript(raw) == clean


def test_idempotent():
    text = "You’re “sure”… — really?"
    once = normalise_transcript(text)
    assert normalise_transcript(once) == once
    assert once.isascii()
