"""A feature store's `manifest.json`: its typed records, its reader (which validates them) and its writers.

The manifest is the one file every reader of a store trusts: `train`, `evaluate`, `predict`, `verify`
and the extraction that finishes a store all read it here, through `read_manifest`, so a manifest of
the wrong shape (valid JSON, but a list where a table belongs, a width that is a string, a shard entry
without its size) is refused as damaged in one line before anything uses it. A shard's `file` must
name a file directly inside the store's `shards/` folder: an entry that points anywhere else (an
absolute path, `..`) is refused by name, so nothing read from a manifest is ever opened, written or
deleted outside its store.

A store's identity is its config hash and a digest of its plan: two stores of the same config made
from different corpora differ in it, and a run records it to refuse a store that is not the one it
was trained on.
"""

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path, PurePosixPath
from typing import Any, NotRequired, TypedDict

from cluster.durable_files import atomic_write_json
from extract.labels import MELD_EMOTIONS, SENTIMENTS, LabelSet, UnknownLabelError

# 2: the manifest records the plan and each shard's input fingerprint.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
SHARD_FOLDER = "shards"
SHARD_SUFFIX = ".h5"
HASH_LENGTH = 12


class FeatureStoreError(Exception):
    """A folder that is not a usable feature store, or a request the store cannot answer."""


class UncontainedPathError(FeatureStoreError):
    """A manifest names a shard file outside its store's `shards/` folder: it is refused, never followed."""


class FamilyInfo(TypedDict):
    """A feature family: its width, and where a derived family came from."""

    dim: int
    provenance: NotRequired[dict[str, Any]]


class PlannedShard(TypedDict):
    """What one shard must hold: its file, split, rows, dialogues and the fingerprint of its inputs."""

    file: str
    split: str
    rows: int
    dialogues: list[int]
    inputs: str


class ShardEntry(PlannedShard):
    """A shard written: its plan's fields, its checksum and size, and the hosts that computed it."""

    sha256: str
    bytes: int
    hosts: NotRequired[list[str]]


class Plan(TypedDict):
    """Every shard the store is to hold, and each split's row count."""

    shards: list[PlannedShard]
    split_rows: dict[str, int]


class FailedRecord(TypedDict):
    """One utterance whose family failed, with the reason."""

    key: str
    family: str
    reason: str


class CorpusRecord(TypedDict):
    """The corpus a store was extracted from: the reader that read it, its protocol and its ordered label set."""

    kind: str
    protocol: str
    label_set: dict[str, Any]


class Manifest(TypedDict):
    """The whole manifest, as `read_manifest` returns it once validated.

    `emotions` is the label set's labels in class order (MELD's seven emotions for a MELD store);
    `corpus` is absent from stores made before corpora other than MELD, which hold MELD.
    """

    format_version: int
    name: str
    config_hash: str
    config: dict[str, Any]
    versions: dict[str, Any]
    families: dict[str, FamilyInfo]
    emotions: list[str]
    sentiments: list[str]
    corpus: NotRequired[CorpusRecord]
    plan: Plan | None
    shards: list[ShardEntry]
    failed: list[FailedRecord]
    clip_flags: list[dict[str, Any]]


def config_hash(config: dict[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the config's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def store_identity(manifest: Manifest) -> str:
    """`<config hash>-<plan digest>`: the config and the exact shards (dialogues, inputs) it was made from."""
    return f"{manifest['config_hash']}-{config_hash({'plan': manifest['plan']})}"


def shard_file_name(split: str, index: int) -> str:
    """Path of a shard relative to the store folder: `shards/train-00003.h5`."""
    return f"{SHARD_FOLDER}/{split}-{index:05d}{SHARD_SUFFIX}"


def is_shard_file(file: str) -> bool:
    """Whether `file` names a shard directly inside the store's `shards/` folder, and nothing else."""
    parts = PurePosixPath(file).parts
    return (
        "\\" not in file
        and len(parts) == 2
        and parts[0] == SHARD_FOLDER
        and not parts[1].startswith(".")
        and parts[1].endswith(SHARD_SUFFIX)
    )


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide the features' values; None for one not installed."""
    return {
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "opensmile": _package_version("opensmile"),
        "transformers": _package_version("transformers"),
        "h5py": _package_version("h5py"),
        "cmroberta": _package_version("cmroberta"),
    }


def new_manifest(name: str, config: dict[str, Any]) -> Manifest:
    """An empty manifest for a store of `config`: no plan, no shards, no failures yet."""
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "config_hash": config_hash(config),
        "config": config,
        "versions": library_versions(),
        "families": {},
        "emotions": list(MELD_EMOTIONS.labels),
        "sentiments": list(SENTIMENTS),
        "plan": None,
        "shards": [],
        "failed": [],
        "clip_flags": [],
    }


def set_corpus(manifest: Manifest, kind: str, protocol: str, label_set: LabelSet) -> None:
    """Record the corpus the store is made from; its label set decides what the stored label indices mean."""
    manifest["corpus"] = {"kind": kind, "protocol": protocol, "label_set": label_set.to_json()}
    manifest["emotions"] = list(label_set.labels)


def store_label_set(manifest: Manifest) -> LabelSet:
    """The label set the store's label indices are drawn from; a store without a corpus record holds MELD's."""
    record = manifest.get("corpus")
    if record is None:
        return MELD_EMOTIONS
    label_set = LabelSet.from_json(record["label_set"], "the manifest's corpus.label_set")
    if (label_set.name, label_set.labels) == (MELD_EMOTIONS.name, MELD_EMOTIONS.labels):
        return MELD_EMOTIONS
    return label_set


def family_dims(manifest: Manifest) -> dict[str, int]:
    """Family name -> feature width, for every family the store holds."""
    return {family: int(info["dim"]) for family, info in manifest["families"].items()}


def family_encoder(manifest: Manifest, family: str) -> str | None:
    """The encoder a text family was made with: its provenance's, or for `text` the extraction config's model."""
    info = manifest["families"].get(family)
    encoder = info.get("provenance", {}).get("encoder") if info is not None else None
    if encoder is None and family == "text":
        encoder = manifest["config"].get("text", {}).get("model")
    return encoder


def store_corpus_kind(manifest: Manifest) -> str:
    """The reader that read the store's corpus (`meld`, `iemocap`, `manifest`); without a corpus record, `meld`."""
    record = manifest.get("corpus")
    return "meld" if record is None else record["kind"]


def planned_shard(file: str, split: str, rows: int, dialogues: list[int], inputs: str) -> PlannedShard:
    """The plan's entry for one shard: what it must hold, and the fingerprint of the inputs it is made from."""
    return {"file": file, "split": split, "rows": rows, "dialogues": dialogues, "inputs": inputs}


def set_plan(manifest: Manifest, shards: list[PlannedShard]) -> None:
    """Record the plan: every shard the store is to hold (from `planned_shard`) and each split's row count."""
    split_rows: dict[str, int] = {}
    for shard in shards:
        split_rows[shard["split"]] = split_rows.get(shard["split"], 0) + int(shard["rows"])
    manifest["plan"] = {"shards": sorted(shards, key=lambda shard: shard["file"]), "split_rows": split_rows}


def write_manifest(store_dir: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` durably (unique temporary file, fsync, rename, fsync the folder)."""
    path = Path(store_dir) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


class _Damaged(Exception):
    """Where in the manifest the shape is wrong; `read_manifest` turns it into one FeatureStoreError line."""


class _Uncontained(_Damaged):
    """A shard path that leaves the store; `read_manifest` turns it into an UncontainedPathError."""


def _field(record: Any, name: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    if not isinstance(record, dict):
        raise _Damaged(f"{where} is not a JSON object")
    if name not in record:
        if optional:
            return None
        raise _Damaged(f"{where} has no {name!r}")
    value = record[name]
    # bool is an int to Python, never to a manifest: a row count of `true` is damage.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise _Damaged(f"{where}.{name} is {type(value).__name__}, not {_kind_name(kind)}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def _count(record: Any, name: str, where: str) -> int:
    value = _field(record, name, int, where)
    if value < 0:
        raise _Damaged(f"{where}.{name} is negative ({value})")
    return value


def _check_planned(record: Any, where: str) -> None:
    file = _field(record, "file", str, where)
    if not is_shard_file(file):
        raise _Uncontained(f"{where}.file {file!r} is not a file inside the store's {SHARD_FOLDER}/ folder")
    _field(record, "split", str, where)
    _count(record, "rows", where)
    dialogues = _field(record, "dialogues", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dialogues):
        raise _Damaged(f"{where}.dialogues holds something other than integers")
    _field(record, "inputs", str, where)


def _check_shape(manifest: Any) -> None:
    families = _field(manifest, "families", dict, "manifest")
    for family, info in families.items():
        if _count(info, "dim", f"families.{family}") < 1:
            raise _Damaged(f"families.{family}.dim is 0")
        _field(info, "provenance", dict, f"families.{family}", optional=True)
    _field(manifest, "config", dict, "manifest")
    _field(manifest, "config_hash", str, "manifest")
    plan = _field(manifest, "plan", (dict, type(None)), "manifest")
    if plan is not None:
        for index, planned in enumerate(_field(plan, "shards", list, "plan")):
            _check_planned(planned, f"plan.shards[{index}]")
        for split, rows in _field(plan, "split_rows", dict, "plan").items():
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                raise _Damaged(f"plan.split_rows.{split} is {rows!r}, not a row count")
    for index, entry in enumerate(_field(manifest, "shards", list, "manifest")):
        where = f"shards[{index}]"
        _check_planned(entry, where)
        _field(entry, "sha256", str, where)
        _count(entry, "bytes", where)
        hosts = _field(entry, "hosts", list, where, optional=True)
        if hosts is not None and not all(isinstance(host, str) for host in hosts):
            raise _Damaged(f"{where}.hosts holds something other than host names")
    for index, record in enumerate(_field(manifest, "failed", list, "manifest")):
        for name in ("key", "family", "reason"):
            _field(record, name, str, f"failed[{index}]")
    for name in ("emotions", "sentiments", "clip_flags"):
        _field(manifest, name, list, "manifest", optional=name != "emotions")
    corpus = _field(manifest, "corpus", dict, "manifest", optional=True)
    if corpus is not None:
        _field(corpus, "kind", str, "corpus")
        _field(corpus, "protocol", str, "corpus")
        try:
            store_label_set(manifest)
        except UnknownLabelError as error:
            raise _Damaged(str(error)) from None


def read_manifest(store_dir: Path) -> Manifest:
    """Read `manifest.json` and validate it into typed records; anything else is one FeatureStoreError line."""
    path = Path(store_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FeatureStoreError(
            f"{store_dir} is not a feature store: it has no {MANIFEST_NAME}. "
            "Create one with `cmroberta extract CORPUS` and pass the folder it prints."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FeatureStoreError(f"{path} cannot be read ({error}); re-run `cmroberta extract` to rebuild it") from None
    if not isinstance(manifest, dict):
        raise FeatureStoreError(
            f"{path} is not a manifest (not a JSON object); re-run `cmroberta extract` to rebuild it"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FeatureStoreError(
            f"{path} has format_version {manifest.get('format_version')!r}; this cmroberta reads version "
            f"{FORMAT_VERSION}. Re-run `cmroberta extract` to rebuild the store."
        )
    for key in ("families", "plan", "shards", "failed", "emotions"):
        if key not in manifest:
            raise FeatureStoreError(f"{path} has no {key!r} entry; re-run `cmroberta extract` to rebuild it")
    try:
        _check_shape(manifest)
    except _Uncontained as damage:
        raise UncontainedPathError(
            f"{path} is damaged: {damage}, so it was refused and nothing it names was touched. Remove {path} "
            "and run `cmroberta extract` again to rebuild the store"
        ) from None
    except _Damaged as damage:
        raise FeatureStoreError(
            f"{path} is damaged: {damage}. Nothing was read from it; rebuild the store with `cmroberta extract`"
        ) from None
    labels = list(store_label_set(manifest).labels)
    if list(manifest["emotions"]) != labels:
        raise FeatureStoreError(
            f"{path} orders emotions as {manifest['emotions']}, its label set as {labels}; "
            "re-run `cmroberta extract` to rebuild the store"
        )
    return manifest


def plan_problems(manifest: Manifest) -> list[str]:
    """Planned shards the manifest does not record as written to plan, one sentence each."""
    plan = manifest.get("plan")
    if plan is None:
        return ["the manifest records no plan (extraction never got past reading the corpus)"]
    recorded = {entry["file"]: entry for entry in manifest["shards"]}
    problems = []
    for planned in plan["shards"]:
        entry = recorded.get(planned["file"])
        if entry is None:
            problems.append(f"{planned['file']} is planned but not written")
        elif entry.get("inputs") != planned["inputs"]:
            problems.append(f"{planned['file']} was made from other inputs than planned (the corpus changed)")
        elif entry["rows"] != planned["rows"] or entry["dialogues"] != planned["dialogues"]:
            problems.append(f"{planned['file']} holds other dialogues than planned")
    planned_files = {planned["file"] for planned in plan["shards"]}
    problems.extend(
        f"{entry['file']} is recorded but not in the plan"
        for entry in manifest["shards"]
        if entry["file"] not in planned_files
    )
    for split, rows in plan.get("split_rows", {}).items():
        written = sum(int(entry["rows"]) for entry in manifest["shards"] if entry["split"] == split)
        if written != rows and not any(f"{split}-" in problem for problem in problems):
            problems.append(f"split {split} has {written} rows, the plan {rows}")
    return problems


def record_shard(manifest: Manifest, entry: ShardEntry, families: dict[str, int]) -> None:
    """Put a shard entry into the manifest (replacing one for the same file) and its families' dims."""
    for family, dim in families.items():
        known = manifest["families"].setdefault(family, {"dim": dim})
        if known["dim"] != dim:
            raise FeatureStoreError(
                f"shard {entry['file']} has {family} features of dim {dim}, other shards {known['dim']}"
            )
    manifest["shards"] = [shard for shard in manifest["shards"] if shard["file"] != entry["file"]]
    manifest["shards"].append(entry)
    manifest["shards"].sort(key=lambda shard: shard["file"])
