"""The HDF5 feature store: shards of whole dialogues, a manifest, and the reader the model uses.

This module owns the store as a whole (`FeatureStore`, its checks, `add_family`, and stores built from
arrays); one shard file's writing and checking is `extract.shard_files`, the manifest `extract.manifest`.

Layout of a store folder `<store_root>/<name>-<hash12>/`:

    manifest.json         config, library versions, families and dims, the plan (every shard
                          the store is to hold, each split's row count), the shards written
                          with row counts, input fingerprints and sha256 checksums, failed
                          utterances with reasons, clip flags
    config.toml           the resolved extraction config
    verified.json         shards whose sha256 was checked, by size, mtime and ctime (a cache)
    .lock                 held by the one process writing the store (`cluster.durable_files`)
    shards/<split>-<NNNNN>.h5

A shard holds whole dialogues of one split, rows ordered by (dialogue_id, utterance_id).
It is written under a unique temporary name, fsynced and renamed when complete
(`cluster.durable_files.publish`), so a crash never leaves a file that looks whole; the
manifest is rewritten the same way after each shard. A row whose family failed (a corrupt
clip) is zero-filled in that family and flagged in `valid_<family>`; its other families are kept.

A store validates itself when opened: it is complete only when every planned shard is
recorded, matches its plan and its checksum. Checking every sha256 of a MELD-sized store
reads about a gigabyte, so a verified shard is remembered in `verified.json` by its size,
mtime and ctime; a second open re-reads only shards whose file changed since.
"""

import hashlib
import io
import shlex
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tomli_w

from cluster.durable_files import atomic_write_bytes, atomic_write_text, exclusive_lock
from extract.labels import NO_LABEL, SENTIMENTS, LabelSet
from extract.manifest import (
    FeatureStoreError,
    Manifest,
    ShardEntry,
    config_hash,
    family_dims,
    new_manifest,
    plan_problems,
    planned_shard,
    read_manifest,
    record_shard,
    set_plan,
    shard_file_name,
    store_corpus_kind,
    store_label_set,
    write_manifest,
)
from extract.shard_files import (
    ChecksumCache,
    shape_problem,
    shard_entry,
    shard_problem,
    shard_shapes_problem,
    valid_name,
    write_family,
    write_shard,
)
from extract.split_arrays import SplitArrays, is_ordered
from extract.utterance import SPLITS

CONFIG_NAME = "config.toml"

# Problems a one-line message names before it says how many more there are.
_PROBLEMS_SHOWN = 3


def store_folder_name(name: str, config: dict[str, Any]) -> str:
    """`<name>-<hash12>`: the folder a store of this feature config lives in."""
    return f"{name}-{config_hash(config)}"



def store_problems(store_dir: Path, manifest: Manifest, check_sha256: bool = True) -> list[str]:
    """Everything that keeps the store from being complete and whole: plan, files, sizes, checksums."""
    problems = plan_problems(manifest)
    cache = ChecksumCache(store_dir)
    dims = family_dims(manifest)
    for entry in manifest["shards"]:
        problem = shard_problem(store_dir, entry, check_sha256=check_sha256, cache=cache)
        if problem is None:
            problem = shard_shapes_problem(store_dir, entry, dims)
        if problem is not None:
            problems.append(problem)
    cache.save()
    return problems


def repair_command(store_dir: Path, manifest: Manifest) -> str:
    """The command that finishes or repairs the store: extraction re-run with the store's own config."""
    store_dir = Path(store_dir)
    corpus = manifest["config"].get("corpus")
    if not corpus or not (store_dir / CONFIG_NAME).is_file():
        return "cmroberta extract CORPUS (with the config that made this store)"
    words = ["cmroberta", "extract", str(corpus), "--config", str(store_dir / CONFIG_NAME)]
    # An absolute path is never a TOML value, so the override parser reads it as the string it is.
    words.append(f"store_root={store_dir.resolve().parent}")
    return shlex.join(words)


def summarise(problems: list[str]) -> str:
    """Problems as one clause: the first few, then how many more."""
    shown = "; ".join(problems[:_PROBLEMS_SHOWN])
    more = len(problems) - _PROBLEMS_SHOWN
    return f"{shown}; and {more} more" if more > 0 else shown



def _split_into_shards(rows: SplitArrays, shard_dialogues: int | None) -> list[SplitArrays]:
    dialogues = rows.dialogues()
    if shard_dialogues is None or not dialogues:
        return [rows]
    return [
        rows.take(np.concatenate(dialogues[start : start + shard_dialogues]))
        for start in range(0, len(dialogues), shard_dialogues)
    ]


def arrays_fingerprint(rows: SplitArrays) -> str:
    """Input fingerprint of a shard built from arrays: the sha256 of its keys and labels."""
    digest = hashlib.sha256()
    for key, emotion, sentiment in zip(rows.keys, rows.emotion.tolist(), rows.sentiment.tolist()):
        digest.update(f"{key}\t{emotion}\t{sentiment}\n".encode("utf-8"))
    return digest.hexdigest()


def build_store_from_arrays(
    store_dir: Path,
    split_arrays: dict[str, SplitArrays],
    config: dict[str, Any],
    shard_dialogues: int | None = None,
) -> Path:
    """Write a complete store from in-memory arrays, shards, plan and manifest exactly as the pipeline does.

    For tests and tools that need a store without running extractors. Rows are sorted by
    (dialogue_id, utterance_id); `shard_dialogues` dialogues go in each shard (None: one
    shard per split). Every split must carry the same families.
    """
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    manifest = new_manifest(store_dir.name, config)
    atomic_write_text(store_dir / CONFIG_NAME, tomli_w.dumps(_toml_safe(config)))
    planned = []
    for split, rows in split_arrays.items():
        rows = rows.take(rows.row_order())
        for index, shard_rows in enumerate(_split_into_shards(rows, shard_dialogues)):
            file = shard_file_name(split, index)
            inputs = arrays_fingerprint(shard_rows)
            written = write_shard(store_dir / file, split, shard_rows)
            dims = {family: array.shape[1] for family, array in shard_rows.features.items()}
            entry = shard_entry(file, split, shard_rows, written, inputs)
            record_shard(manifest, entry, dims)
            planned.append(planned_shard(file, split, entry["rows"], entry["dialogues"], inputs))
            for family, valid in shard_rows.valid.items():
                manifest["failed"].extend(
                    {"key": shard_rows.keys[i], "family": family, "reason": "marked invalid in the arrays"}
                    for i in np.flatnonzero(~valid)
                )
    set_plan(manifest, planned)
    write_manifest(store_dir, manifest)
    return store_dir


def _toml_safe(value: Any) -> Any:
    """Drop None values (TOML has no null) so any JSON-like config dict can be written as TOML."""
    if isinstance(value, dict):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value if v is not None]
    return value


def _check_labels(
    store_dir: Path,
    file: str,
    name: str,
    values: np.ndarray,
    labels: tuple[str, ...],
    keys: list[str],
    unlabelled_allowed: bool,
) -> None:
    """A label index outside the label set is damage (or another cmroberta's store): name the row.

    NO_LABEL is allowed where the corpus may leave utterances without a label (`unlabelled_allowed`).
    """
    bad = np.flatnonzero(((values < 0) | (values >= len(labels))) & ~(unlabelled_allowed & (values == NO_LABEL)))
    if len(bad):
        raise FeatureStoreError(
            f"store {store_dir}: shard {file} row {int(bad[0])} ({keys[int(bad[0])]}) has {name} index "
            f"{int(values[bad[0]])}, outside 0..{len(labels) - 1}"
            f"{f' and not {NO_LABEL} (no label)' if unlabelled_allowed else ''}; "
            "re-run `cmroberta extract` to redo the shard"
        )



class FeatureStore:
    """Read access to a finished store: manifest, families and whole splits as arrays."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "FeatureStore":
        """Open a complete, whole store; raises FeatureStoreError naming what is wrong and the command that fixes it.

        The store must hold every planned shard, each matching its plan; with `verify` each
        shard's sha256 is checked too (cached in `verified.json`, so a second open re-reads only
        changed files). `verify=False` checks sizes only, for tools that inspect a store.
        """
        path = Path(path)
        if not path.is_dir():
            raise FeatureStoreError(f"feature store {path} does not exist; create it with `cmroberta extract CORPUS`")
        manifest = read_manifest(path)
        problems = store_problems(path, manifest, check_sha256=verify)
        if problems:
            state = (
                "incomplete"
                if any("planned but not written" in p or "no plan" in p for p in problems)
                else "damaged"
            )
            raise FeatureStoreError(
                f"feature store {path} is {state}: {summarise(problems)}. "
                f"Finish or repair it with `{repair_command(path, manifest)}`"
            )
        return cls(path, manifest)

    @property
    def label_set(self) -> LabelSet:
        """The ordered label set the store's `emotion` indices are drawn from (MELD's seven for a MELD store)."""
        return store_label_set(self.manifest)

    @property
    def may_lack_labels(self) -> bool:
        """Whether rows may hold NO_LABEL: a corpus other than MELD (unscored context, no sentiments)."""
        return store_corpus_kind(self.manifest) != "meld"

    @property
    def families(self) -> dict[str, int]:
        """Family name -> feature dim."""
        return family_dims(self.manifest)

    @property
    def splits(self) -> list[str]:
        """Splits that have shards: train, dev, test first, in that order, then any others."""
        present = {shard["split"] for shard in self.manifest["shards"]}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def shards(self, split: str) -> list[ShardEntry]:
        """Manifest entries of the split's shards, in file order."""
        return [shard for shard in self.manifest["shards"] if shard["split"] == split]

    def verify(self) -> list[str]:
        """Check the plan and every shard's size and sha256 against the manifest; the problems found, empty if none."""
        return store_problems(self.path, self.manifest)

    def read_split(self, split: str, families: tuple[str, ...] | list[str] | None = None) -> SplitArrays:
        """All rows of a split, shards concatenated, ordered by (dialogue_id, utterance_id).

        `families` None reads every family of the store. A shard whose size differs from the
        manifest's is a FeatureStoreError (call `verify()` for a full checksum check).
        """
        shards = self.shards(split)
        if not shards:
            raise FeatureStoreError(f"store {self.path} has no split {split!r}; it has {', '.join(self.splits)}")
        wanted = list(self.families) if families is None else list(families)
        unknown = [family for family in wanted if family not in self.families]
        if unknown:
            raise FeatureStoreError(
                f"store {self.path} has no feature family {', '.join(unknown)}; it has {', '.join(self.families)}. "
                "Extract it with `cmroberta extract CORPUS families=[...]`."
            )
        total = sum(int(shard["rows"]) for shard in shards)
        features = {family: np.empty((total, self.families[family]), dtype=np.float32) for family in wanted}
        valid = {family: np.empty(total, dtype=bool) for family in wanted}
        numbers = ("dialogue_id", "utterance_id", "emotion", "sentiment")
        columns: dict[str, list[np.ndarray]] = {name: [] for name in numbers}
        texts: dict[str, list[str]] = {name: [] for name in ("key", "speaker", "transcript")}
        feature_names: dict[str, list[str]] = {}
        start = 0
        for entry in shards:
            problem = shard_problem(self.path, entry, check_sha256=False)
            if problem is not None:
                raise FeatureStoreError(f"store {self.path}: {problem}; re-run `cmroberta extract` to redo it")
            stop = start + int(entry["rows"])
            try:
                with h5py.File(self.path / entry["file"], "r") as shard:
                    shapes = shape_problem(entry, shard, {family: self.families[family] for family in wanted})
                    if shapes is not None:
                        raise FeatureStoreError(f"store {self.path}: {shapes}; re-run `cmroberta extract` to redo it")
                    for name, parts in columns.items():
                        parts.append(shard[name][...])
                    for name, values in texts.items():
                        values.extend(shard[name].asstr()[...].tolist())
                    for family in wanted:
                        features[family][start:stop] = shard[family][...]
                        valid[family][start:stop] = shard[valid_name(family)][...]
                        if "names" in shard[family].attrs:
                            feature_names[family] = [str(n) for n in shard[family].attrs["names"]]
            except (OSError, KeyError) as error:
                raise FeatureStoreError(
                    f"store {self.path}: shard {entry['file']} cannot be read ({error}); "
                    "re-run `cmroberta extract` to redo it"
                ) from None
            if len(texts["key"]) != stop:
                raise FeatureStoreError(
                    f"store {self.path}: shard {entry['file']} has {len(texts['key']) - start} rows, "
                    f"the manifest records {entry['rows']}; re-run `cmroberta extract` to redo it"
                )
            for name, labels in (("emotion", self.label_set.labels), ("sentiment", SENTIMENTS)):
                _check_labels(
                    self.path, entry["file"], name, columns[name][-1], labels, texts["key"][start:stop],
                    self.may_lack_labels,
                )
            start = stop
        rows = SplitArrays(
            keys=texts["key"],
            dialogue_ids=np.concatenate(columns["dialogue_id"]),
            utterance_ids=np.concatenate(columns["utterance_id"]),
            speakers=texts["speaker"],
            transcripts=texts["transcript"],
            emotion=np.concatenate(columns["emotion"]).astype(np.int64),
            sentiment=np.concatenate(columns["sentiment"]).astype(np.int64),
            features=features,
            valid=valid,
            feature_names=feature_names,
        )
        return rows if is_ordered(rows) else rows.take(rows.row_order())

    def failed(self, family: str | None = None) -> list[dict[str, Any]]:
        """Failed (key, family, reason) records, optionally of one family."""
        return [record for record in self.manifest["failed"] if family is None or record["family"] == family]


def add_family(
    store_dir: Path,
    family: str,
    features: dict[str, tuple[list[str], np.ndarray]],
    provenance: dict[str, Any],
) -> None:
    """Add a feature family to every shard of a finished store, recording its provenance in the manifest.

    `features` maps each split to (utterance keys, float32 [N, dim]) covering every row of the
    split. Each shard is read into memory, given the family, written under a unique temporary name,
    fsynced and renamed over the old one, and the manifest records its new checksum before the next
    shard is touched; the family itself is recorded last, with `provenance`. So a crash leaves a store
    whose every shard verifies and which does not list the family; running again redoes it. One
    writer at a time holds the store's lock.
    """
    store_dir = Path(store_dir)
    with exclusive_lock(store_dir, "feature store"):
        manifest = read_manifest(store_dir)
        if family in manifest["families"]:
            raise FeatureStoreError(f"store {store_dir} already has a family {family!r}")
        dims = {array.shape[1] for _, array in features.values()}
        if len(dims) != 1:
            raise ValueError(f"family {family!r} must have one width in every split, not {sorted(dims)}")
        rows = {split: {key: i for i, key in enumerate(keys)} for split, (keys, _) in features.items()}
        for entry in manifest["shards"]:
            problem = shard_problem(store_dir, entry)
            if problem is not None:
                raise FeatureStoreError(f"store {store_dir}: {problem}; re-run `cmroberta extract` to redo it")
            path = store_dir / entry["file"]
            # Changed in memory and written by Python, as `write_shard` does, so a full disk is an OSError.
            buffer = io.BytesIO(path.read_bytes())
            with h5py.File(buffer, "a") as shard:
                keys = shard["key"].asstr()[...].tolist()
                split_rows = rows.get(entry["split"], {})
                missing = [key for key in keys if key not in split_rows]
                if missing:
                    raise FeatureStoreError(
                        f"family {family!r} has no row for {len(missing)} utterances of {entry['file']}, "
                        f"such as {missing[0]}"
                    )
                array = features[entry["split"]][1][[split_rows[key] for key in keys]]
                for name in (family, valid_name(family)):
                    if name in shard:  # left by an interrupted earlier attempt
                        del shard[name]
                write_family(shard, family, array, np.ones(len(array), dtype=bool))
            data = buffer.getvalue()
            atomic_write_bytes(path, data)
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            write_manifest(store_dir, manifest)
        manifest["families"][family] = {"dim": dims.pop(), "provenance": provenance}
        write_manifest(store_dir, manifest)
