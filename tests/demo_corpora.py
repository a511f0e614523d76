"""Small demo corpora of wav clips, and tiny text encoders whose vocabulary is a corpus's own transcripts: what the
extraction tests build before they extract."""

from pathlib import Path

from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.meld import read_meld
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder


def write_wav_corpus(
    folder: Path, *, train: int, dev: int, test: int, max_utterances: int, min_utterances: int = 2
) -> Path:
    """A demo corpus of wav clips at `folder`, with that many dialogues per split and `min_utterances` to
    `max_utterances` utterances a dialogue; two clips are written at once, which a 2-core machine keeps up with."""
    config = DemoCorpusConfig(
        train_dialogues=train,
        dev_dialogues=dev,
        test_dialogues=test,
        min_utterances=min_utterances,
        max_utterances=max_utterances,
        clip_format="wav",
        workers=2,
    )
    return write_demo_corpus(folder, config)


def corpus_text_encoder(corpus: Path, folder: Path, hidden_size: int) -> Path:
    """A tiny RoBERTa at `folder` whose tokenizer is trained on `corpus`'s transcripts, so none is out of vocabulary."""
    texts = [u.transcript for u in read_meld(corpus, check_clips=False).utterances]
    return build_tiny_text_encoder(folder, texts, TinyEncoderConfig(hidden_size=hidden_size))
