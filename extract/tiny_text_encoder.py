"""A tiny RoBERTa with its own byte-level BPE tokenizer, saved as a local Hugging Face model folder.

Tests and offline runs need a text encoder that downloads nothing. This builds one from
a config (random weights, seeded) and trains a small byte-level BPE vocabulary on the
given texts, so it tokenizes like RoBERTa does (`<s> ... </s></s> ... </s>`, `Ġ` for a
leading space). `AutoModel` and `AutoTokenizer` load the folder like any other.

transformers 5 silently ignores `vocab_file=`/`merges_file=` passed to the RoBERTa
tokenizer (it builds a 5-token vocabulary), so the tokenizer here is loaded from the
folder that holds `vocab.json` and `merges.txt`, and the result is checked.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, RobertaConfig, RobertaModel

log = logging.getLogger(__name__)

SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


@dataclass(kw_only=True)
class TinyEncoderConfig:
    """Shape of the tiny RoBERTa and its tokenizer."""

    hidden_size: int = 32
    """Width of every layer; the text feature is 4 x this."""
    num_layers: int = 4
    """Transformer layers; at least 4, since the text feature takes the last four."""
    num_heads: int = 2
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = 64
    """Width of the feed-forward layer."""
    vocab_size: int = 400
    """Target BPE vocabulary size (256 byte symbols and the special tokens included)."""
    max_tokens: int = 128
    """Longest input in tokens; RoBERTa adds 2 position slots for its padding offset."""
    seed: int = 0
    """Seed of the random weights, so the same config and texts give the same folder."""

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be at least 1, not {self.hidden_size}")
        if self.num_layers < 4:
            raise ValueError(
                f"num_layers must be at least 4 (the text feature takes the last four), not {self.num_layers}"
            )
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be positive and divide hidden_size ({self.hidden_size})"
            )
        if self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be at least 1, not {self.intermediate_size}")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes and specials), not {self.vocab_size}"
            )
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, not {self.max_tokens}")


def build_tiny_text_encoder(out_dir: str | Path, texts: Iterable[str], config: TinyEncoderConfig) -> Path:
    """Train the tokenizer on `texts`, build the seeded model, save both into `out_dir`; return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("build_tiny_text_encoder needs at least one non-empty text to train its tokenizer on")

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=config.vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS))
    bpe.save_model(str(out_dir))
    tokenizer = AutoTokenizer.from_pretrained(
        out_dir, tokenizer_type="roberta", model_max_length=config.max_tokens, local_files_only=True
    )
    if len(tokenizer) != bpe.get_vocab_size():
        raise RuntimeError(
            f"the tokenizer loaded from {out_dir} has {len(tokenizer)} tokens, the trained BPE "
            f"{bpe.get_vocab_size()}: vocab.json/merges.txt were not picked up"
        )
    tokenizer.save_pretrained(out_dir)

    model_config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_tokens + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    try:
        model = RobertaModel(model_config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(out_dir)
    log.info(
        "tiny RoBERTa (%d layers, hidden %d, %d tokens) saved to %s",
        config.num_layers,
        config.hidden_size,
        len(tokenizer),
        out_dir,
    )
    return out_dir
