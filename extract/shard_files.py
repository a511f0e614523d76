"""A store's shard files: writing one, checking one against its manifest entry, and the checksum cache.

A shard is written under a unique temporary name, fsynced and renamed when complete
(`cluster.durable_files`), so a crash never leaves a file that looks whole. A shard is usable when
its file has the manifest's size and sha256 and every column the manifest's row count and every
family its width. Checking every sha256 of a MELD-sized store reads about a gigabyte, so a verified
shard is remembered in `verified.json` by its size, mtime and ctime (`ChecksumCache`).
"""

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cluster.durable_files import atomic_write_bytes, atomic_write_json, file_sha256
from extract.manifest import FORMAT_VERSION, ShardEntry
from extract.split_arrays import ShardRows, SplitArrays, is_ordered

VERIFIED_NAME = "verified.json"

# Rows per HDF5 chunk: a dialogue batch reads a few hundred rows, and 64 rows of the widest
# family (6552 floats) make a 1.7 MB chunk, inside HDF5's default 1 MiB..few-MiB sweet spot.
_CHUNK_ROWS = 64
_STR = h5py.string_dtype("utf-8")
# The per-row columns every shard holds beside its feature families.
_ROW_COLUMNS = ("key", "dialogue_id", "utterance_id", "speaker", "transcript", "emotion", "sentiment")


def valid_name(family: str) -> str:
    """The dataset of a shard that flags each row's `family` as computed (True) or failed (False)."""
    return f"valid_{family}"


def write_family(
    shard: h5py.File, family: str, features: np.ndarray, valid: np.ndarray, names: list[str] | None = None
) -> None:
    """Write one family into a shard: its features (float32, gzip-chunked by `_CHUNK_ROWS` rows), their
    column `names` where the extractor gives them, and its validity flags, in that order."""
    n, dim = features.shape
    dataset = shard.create_dataset(
        family,
        data=features.astype(np.float32),
        chunks=(max(1, min(n, _CHUNK_ROWS)), max(1, dim)) if n and dim else None,
        compression="gzip" if n and dim else None,
        compression_opts=1 if n and dim else None,
        shuffle=bool(n and dim),
    )
    if names is not None:
        dataset.attrs.create("names", np.array(names, dtype=object), dtype=_STR)
    shard.create_dataset(valid_name(family), data=valid.astype(bool))


@dataclass(frozen=True, kw_only=True)
class WrittenShard:
    """What the writer knows about a shard file once it has been renamed into place."""

    sha256: str
    """Hex sha256 of the whole file."""
    bytes: int
    """File size in bytes."""

def write_shard(path: Path, split: str, rows: ShardRows) -> WrittenShard:
    """Write one shard under a unique temporary name, then publish it (fsync, rename, fsync the folder).

    Rows must already be ordered by (dialogue_id, utterance_id). HDF5 builds the file in memory (a
    shard is a few dialogues, megabytes) and Python writes it to the disk: HDF5 that meets a full
    disk itself leaves its metadata cache broken, and the next touch of the file (its close, or the
    interpreter's exit) is a segfault; Python's write is a plain OSError naming the file. An
    interrupted write (an exception, ENOSPC, Ctrl-C) removes its temporary file; a killed one
    leaves it for the next extraction to clear.
    """
    path = Path(path)
    if not is_ordered(rows):
        raise ValueError(f"rows for shard {path.name} are not ordered by (dialogue_id, utterance_id)")
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    _write_shard_file(buffer, split, rows)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return WrittenShard(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def _write_shard_file(target: io.BytesIO, split: str, rows: ShardRows) -> None:
    # HDF5 1.8's file format stores large attributes densely; the earliest format caps an
    # attribute at 64 KiB, less than openSMILE's 6552 column names.
    with h5py.File(target, "w", libver=("v108", "latest")) as shard:
        shard.attrs["split"] = split
        shard.attrs["format_version"] = FORMAT_VERSION
        shard.create_dataset("key", data=np.array(rows.keys, dtype=object), dtype=_STR)
        shard.create_dataset("dialogue_id", data=rows.dialogue_ids.astype(np.int32))
        shard.create_dataset("utterance_id", data=rows.utterance_ids.astype(np.int32))
        shard.create_dataset("speaker", data=np.array(rows.speakers, dtype=object), dtype=_STR)
        shard.create_dataset("transcript", data=np.array(rows.transcripts, dtype=object), dtype=_STR)
        shard.create_dataset("emotion", data=rows.emotion.astype(np.int8))
        shard.create_dataset("sentiment", data=rows.sentiment.astype(np.int8))
        for family, array in rows.features.items():
            write_family(shard, family, array, rows.valid[family], rows.feature_names.get(family))



def _file_state(path: Path) -> dict[str, int]:
    """What `verified.json` remembers a checked file by: any write or copy changes one of these."""
    status = path.stat()
    return {"bytes": status.st_size, "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns}


class ChecksumCache:
    """`verified.json`: shards whose sha256 was checked, with the file state they had then.

    A shard counts as verified without reading it when its size, mtime and ctime are those
    it had when its sha256 last matched the manifest's. ctime cannot be set by `touch`, so
    a rewrite that restores the old mtime is still re-read. The cache is only ever a
    shortcut: a store folder that cannot be written (a copy on a read-only filesystem) is
    checked in full at every open.
    """

    def __init__(self, store_dir: Path):
        self.path = Path(store_dir) / VERIFIED_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass

    def matches(self, store_dir: Path, entry: ShardEntry) -> bool:
        """Whether the shard's sha256 equals the manifest's, reading the file only when it changed since."""
        path = Path(store_dir) / entry["file"]
        state = _file_state(path)
        known = self.entries.get(entry["file"])
        if known is not None and known.get("sha256") == entry["sha256"] and all(
            known.get(k) == v for k, v in state.items()
        ):
            return True
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            if self.entries.pop(entry["file"], None) is not None:
                self.changed = True
            return False
        self.entries[entry["file"]] = {"sha256": digest, **state}
        self.changed = True
        return True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            atomic_write_json(self.path, self.entries)
        except OSError:
            pass
        self.changed = False


def shard_problem(
    store_dir: Path, entry: ShardEntry, check_sha256: bool = True, cache: ChecksumCache | None = None
) -> str | None:
    """Why the shard a manifest entry names is not usable (missing, wrong size, wrong checksum), or None.

    With `cache`, a shard whose file is unchanged since its sha256 last matched is not read again.
    """
    path = Path(store_dir) / entry["file"]
    if not path.is_file():
        return f"{entry['file']} is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{entry['file']} has {size} bytes, the manifest records {entry['bytes']}"
    if check_sha256:
        matches = cache.matches(store_dir, entry) if cache is not None else file_sha256(path) == entry["sha256"]
        if not matches:
            return f"{entry['file']} does not match its sha256 in the manifest"
    return None


def shard_entry(file: str, split: str, rows: SplitArrays, written: WrittenShard, inputs: str = "") -> ShardEntry:
    """The manifest entry of a shard just written; `inputs` is the fingerprint of what it was made from."""
    return {
        "file": file,
        "split": split,
        "rows": len(rows),
        "dialogues": sorted({int(d) for d in rows.dialogue_ids}),
        "inputs": inputs,
        "sha256": written.sha256,
        "bytes": written.bytes,
    }


def shape_problem(entry: ShardEntry, shard: h5py.File, dims: dict[str, int]) -> str | None:
    """Whether every column of the shard has the manifest's rows, and every family its width: the first that does not.

    numpy would broadcast an array of shape (rows, 1) or (1, dim) over the real shape without a word,
    so a shard rewritten with a wrong array (and its sha256 updated) must be caught before any is used.
    """
    rows = entry["rows"]
    expected = {name: (rows,) for name in _ROW_COLUMNS}
    expected.update({family: (rows, dim) for family, dim in dims.items()})
    expected.update({valid_name(family): (rows,) for family in dims})
    for name, shape in expected.items():
        found = shard[name].shape if name in shard else None
        if found != shape:
            return f"{entry['file']} is damaged: its {name} has shape {found}, the manifest records {shape}"
    return None


def shard_shapes_problem(store_dir: Path, entry: ShardEntry, dims: dict[str, int]) -> str | None:
    """`shape_problem` of a shard file, opened for its metadata only; an unreadable file is a problem too."""
    try:
        with h5py.File(Path(store_dir) / entry["file"], "r") as shard:
            return shape_problem(entry, shard, dims)
    except OSError as error:
        return f"{entry['file']} cannot be read as HDF5 ({error})"
