"""Token ids of every utterance, made once per tokenizer and input format and kept with the feature store.

End-to-end training feeds the encoder token ids, not text. Tokenizing MELD's ~14,000 utterances
takes seconds, but doing it in every worker of every epoch is waste, so the ids are written once
into the store folder:

    <store>/tokens/<hash12>.h5      one group per split:
        key      vlen str [N]     utterance keys, in the store's row order
        offsets  int64 [N + 1]    utterance i's ids are ids[offsets[i]:offsets[i + 1]]
        ids      int32 [total]    every utterance's ids, special tokens included

`hash12` is the first 12 hex digits of the sha256 of the tokenizer's full definition (vocabulary,
merges, normaliser, special tokens) and the input format (speaker prefix, context window,
max_tokens), so a change to any of them makes a new file and never reads a stale one. The file
is written under a name unique to its host and process (ranks that race to build the same cache
never share a file), fsynced and renamed when complete (`cluster.durable_files.publish`); an
interrupted build removes its temporary file.

Batches pad each utterance's ids to the longest utterance in the batch;
`model.batch_samplers.LengthBucketSampler`, given `TokenSplit.dialogue_lengths`, optionally groups
dialogues of similar longest utterance into the same batch to waste less of that padding.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from cluster.durable_files import publish, unique_temp_path
from extract.feature_store import FeatureStore
from extract.labels import EMOTIONS, SENTIMENTS
from extract.split_arrays import SplitArrays
from extract.text_features import text_inputs
from extract.utterance import Utterance
from model.text_encoder import TextEncoderConfig, context_separator

log = logging.getLogger(__name__)

TOKENS_FOLDER = "tokens"
TOKEN_CACHE_VERSION = 1
_HASH_LENGTH = 12
_STR = h5py.string_dtype("utf-8")


class TokenCacheError(Exception):
    """A token cache that cannot be built or does not match the store it sits in; the message says the fix."""


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A string that changes whenever the tokenizer would give different ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # Truncation and padding are per-call state the last call left behind, not the tokenizer.
        definition.pop("truncation", None)
        definition.pop("padding", None)
        return json.dumps(definition, sort_keys=True)
    # A tokenizer without a `tokenizers` backend: its class, vocabulary and special tokens.
    return json.dumps(
        {
            "class": type(tokenizer).__name__,
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": tokenizer.special_tokens_map,
        },
        sort_keys=True,
    )


def token_cache_path(store_dir: str | Path, tokenizer: PreTrainedTokenizerBase, config: TextEncoderConfig) -> Path:
    """Where the token ids of this tokenizer and input format live in the store folder."""
    identity = json.dumps(
        {
            "version": TOKEN_CACHE_VERSION,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "with_speaker": config.with_speaker,
            "context_window": config.context_window,
            "max_tokens": config.max_tokens,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    return Path(store_dir) / TOKENS_FOLDER / f"{digest}.h5"


def store_utterances(split: str, rows: SplitArrays) -> list[Utterance]:
    """The store's rows of one split as Utterance records (labels and text; no clip, no timings)."""
    return [
        Utterance(
            split=split,
            dialogue_id=int(rows.dialogue_ids[i]),
            utterance_id=int(rows.utterance_ids[i]),
            speaker=rows.speakers[i],
            transcript=rows.transcripts[i],
            transcript_raw=rows.transcripts[i],
            emotion=EMOTIONS[int(rows.emotion[i])],
            sentiment=SENTIMENTS[int(rows.sentiment[i])],
            media_path=None,
            start_time=0.0,
            end_time=0.0,
        )
        for i in range(len(rows))
    ]


def tokenize_split(
    split: str, rows: SplitArrays, tokenizer: PreTrainedTokenizerBase, config: TextEncoderConfig
) -> list[list[int]]:
    """Token ids of every row of a split, in row order, in the extraction's input format."""
    utterances = store_utterances(split, rows)
    separator = context_separator(tokenizer)
    firsts: list[str] = []
    seconds: list[str | None] = []
    for dialogue in rows.dialogues():
        for first, second in text_inputs(
            [utterances[i] for i in dialogue], config.context_window, config.with_speaker, separator
        ):
            firsts.append(first)
            seconds.append(second)
    # text_inputs gives a second segment to every utterance or to none.
    pairs = seconds if config.context_window > 0 else None
    encoded = tokenizer(firsts, pairs, truncation="longest_first", max_length=config.max_tokens)
    return encoded["input_ids"]


def packed_tokens(
    split: str, rows: SplitArrays, tokenizer: PreTrainedTokenizerBase, config: TextEncoderConfig
) -> "TokenSplit":
    """Token ids of every row of a split (`tokenize_split`) packed back to back, as the cache file holds them."""
    ids = tokenize_split(split, rows, tokenizer, config)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in ids], out=offsets[1:])
    return TokenSplit(
        keys=rows.keys,
        offsets=offsets,
        ids=np.fromiter((token for row in ids for token in row), dtype=np.int32, count=int(offsets[-1])),
        pad_token_id=int(tokenizer.pad_token_id),
    )


def build_token_cache(
    store: FeatureStore, tokenizer: PreTrainedTokenizerBase, config: TextEncoderConfig
) -> Path:
    """Tokenize every split of the store into its token cache, unless that file exists already; return its path."""
    path = token_cache_path(store.path, tokenizer, config)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TokenCacheError(
            f"cannot create {path.parent} for the token cache ({error}); make the feature store folder writable"
        ) from None
    tmp = unique_temp_path(path)
    try:
        with h5py.File(tmp, "w") as cache:
            cache.attrs["format_version"] = TOKEN_CACHE_VERSION
            cache.attrs["pad_token_id"] = int(tokenizer.pad_token_id)
            cache.attrs["config_hash"] = store.manifest["config_hash"]
            for split in tqdm(store.splits, desc="tokenizing", unit="split"):
                tokens = packed_tokens(split, store.read_split(split, families=[]), tokenizer, config)
                group = cache.create_group(split)
                group.create_dataset("key", data=np.array(tokens.keys, dtype=object), dtype=_STR)
                group.create_dataset("offsets", data=tokens.offsets)
                group.create_dataset("ids", data=tokens.ids)
                log.info("%s: %d utterances, %d tokens", split, len(tokens.keys), int(tokens.offsets[-1]))
        publish(tmp, path)
    except OSError as error:
        raise TokenCacheError(f"cannot write the token cache {path} ({error}); check the store folder") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("token cache %s written", path)
    return path


@dataclass(kw_only=True)
class TokenBatch:
    """Token ids of every real utterance of a batch of dialogues, padded to the longest one."""

    input_ids: torch.Tensor
    """int64 [N, L]: N utterances in row-major order of the dialogue mask, L the longest of them."""
    attention_mask: torch.Tensor
    """int64 [N, L]: 1 at real tokens, 0 at padding."""

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> "TokenBatch":
        """The batch on `device`; ids stay integers whatever `dtype` the features are cast to."""
        return TokenBatch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
        )

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens."""
        return int(self.attention_mask.sum())


@dataclass(kw_only=True)
class TokenSplit:
    """One split's token ids, in the store's row order."""

    keys: list[str]
    """Utterance keys, one per row."""
    offsets: np.ndarray
    """int64 [N + 1]: row i's ids are ids[offsets[i]:offsets[i + 1]]."""
    ids: np.ndarray
    """int32 [total]: every row's ids back to back."""
    pad_token_id: int
    """The id padding positions get."""

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N]: tokens of each row."""
        return np.diff(self.offsets)

    def row_ids(self, row: int) -> np.ndarray:
        """Token ids of one row."""
        return self.ids[self.offsets[row] : self.offsets[row + 1]]

    def take(self, rows: np.ndarray) -> "TokenSplit":
        """The split's `rows` only, in that order."""
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(self.lengths[rows], out=offsets[1:])
        ids = np.concatenate([self.row_ids(int(row)) for row in rows]) if len(rows) else self.ids[:0]
        return TokenSplit(
            keys=[self.keys[int(row)] for row in rows], offsets=offsets, ids=ids, pad_token_id=self.pad_token_id
        )

    def dialogue_lengths(self, dialogues: list[np.ndarray]) -> np.ndarray:
        """int64 [D]: the longest utterance of each dialogue, in tokens (what its batch is padded to)."""
        lengths = self.lengths
        return np.array([int(lengths[rows].max()) for rows in dialogues], dtype=np.int64)

    def batch(self, rows: torch.Tensor) -> TokenBatch:
        """Ids of the rows of a dialogue batch (`DialogueBatch.rows`, -1 at padding), row-major, padded."""
        flat = rows[rows >= 0].tolist()
        lengths = self.lengths[flat]
        longest = int(lengths.max())
        input_ids = torch.full((len(flat), longest), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(flat), longest), dtype=torch.int64)
        for i, (row, length) in enumerate(zip(flat, lengths)):
            input_ids[i, :length] = torch.from_numpy(self.row_ids(row).astype(np.int64))
            attention_mask[i, :length] = 1
        return TokenBatch(input_ids=input_ids, attention_mask=attention_mask)


def read_token_split(path: str | Path, split: str, keys: list[str]) -> TokenSplit:
    """One split of a token cache, checked against the dataset's keys in row order."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as cache:
            if split not in cache:
                raise TokenCacheError(f"token cache {path} has no split {split!r}; delete it to rebuild it")
            group = cache[split]
            token_split = TokenSplit(
                keys=group["key"].asstr()[...].tolist(),
                offsets=group["offsets"][...],
                ids=group["ids"][...],
                pad_token_id=int(cache.attrs["pad_token_id"]),
            )
    except (OSError, KeyError) as error:
        raise TokenCacheError(f"token cache {path} cannot be read ({error}); delete it to rebuild it") from None
    if token_split.keys != keys:
        raise TokenCacheError(
            f"token cache {path} does not hold the {split} rows of its feature store (the store was rebuilt "
            "in place?); delete the file to rebuild it"
        )
    return token_split
