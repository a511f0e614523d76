"""The extraction pipeline: corpus -> Ray tasks per (shard, feature family) -> HDF5 feature store.

The corpus is cut into shards of whole dialogues of one split. Each shard gets one Ray
task per feature family; a task decodes its clips itself (16 kHz for openSMILE, 48 kHz
for OpenL3, capped at `max_audio_seconds`) and returns the family's arrays, so a worker
holds one shard of one family at a time and only arrays, never audio, travel back. The
driver merges a shard's families into one file as soon as they are all in, writes it
under a temporary name, renames it, and records it in the manifest with its sha256.

Re-running with the same config finds the same store folder, skips every shard whose
manifest entry matches the plan and whose checksum verifies, and redoes the rest (a
truncated file, a crash before the rename). The plan gives each shard a fingerprint of its
inputs (every CSV field of its utterances, each clip's path, size and mtime), so an edited
CSV row or a replaced clip makes its shard stale, and it is redone. The plan itself goes
into the manifest first, so a store cut short by a crash is known to be incomplete. One
extraction at a time holds the store (`cluster.durable_files.exclusive_lock`); a second is
refused with the holder's host and pid. A clip that cannot be decoded marks its
row invalid in the audio families, with the reason in the manifest; its text features
are kept.

On a cluster of several nodes (`ray.address`), tasks open the clips by the paths the
driver read from the corpus, so the corpus must sit on a filesystem every node sees;
shards are written by the driver alone.
"""

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
import transformers
from tqdm import tqdm

from cluster.durable_files import exclusive_lock, is_temp_file
from cluster.ray_runtime import RayConfig, ray_session
from extract.audio import AudioDecodeError, decode_audio
from extract.feature_store import (
    MANIFEST_NAME,
    SHARD_FOLDER,
    ChecksumCache,
    FeatureStoreError,
    SplitArrays,
    WrittenShard,
    new_manifest,
    plan_problems,
    planned_shard,
    read_manifest,
    record_shard,
    set_plan,
    shard_entry,
    shard_file_name,
    shard_problem,
    store_folder_name,
    summarise,
    write_manifest,
    write_shard,
)
from extract.labels import emotion_index, sentiment_index
from extract.meld import CorpusError, read_meld
from extract.openl3 import OpenL3Config, OpenL3Embedder, OpenL3SetupError, resolve_weights_file
from extract.opensmile_features import OpenSmileConfig, OpenSmileExtractor
from extract.text_features import TextEncoderError, TextFeatureConfig, TextFeatureExtractor, text_feature_dim
from extract.utterance import SPLITS, ClipFlag, Utterance
from cluster.config import refuse_control_characters, write_resolved_config

log = logging.getLogger(__name__)

Family = Literal["opensmile", "openl3", "text"]
FAMILIES: tuple[str, ...] = ("opensmile", "openl3", "text")
AUDIO_FAMILIES: tuple[str, ...] = ("opensmile", "openl3")
# Families whose extractor is a neural network: they ask Ray for a GPU when the cluster has one.
GPU_FAMILIES: tuple[str, ...] = ("openl3", "text")

# Settings that change how fast features are computed, not their values: left out of the store hash.
_RUNTIME_SETTINGS: frozenset[str] = frozenset({"batch_size", "device", "allow_download"})
# Clips OpenL3 decodes and embeds together: bounds a worker's audio memory (48 kHz float32,
# 30 s cap: 5.8 MB a clip) while still filling the network's window batches.
_OPENL3_CLIPS_PER_CALL = 16
# Clip flags that mean the clip cannot be used at all (the reader then gives no media path).
_UNUSABLE_CLIP_KINDS: frozenset[str] = frozenset({"missing", "corrupt", "no_audio"})


@dataclass(kw_only=True)
class ExtractConfig:
    """What to extract from which corpus into which store, and on which Ray."""

    corpus: str
    """Corpus folder in MELD's layout (MELD.Raw, or a demo corpus)."""
    store_root: str = "features"
    """Folder that holds feature stores; each config gets its own `<name>-<hash12>` folder in it."""
    name: str | None = None
    """Store name, the folder's prefix; None: the corpus folder's name."""
    families: list[Family] = field(default_factory=lambda: list(FAMILIES))
    """Feature families to extract: opensmile, openl3, text."""
    splits: list[Literal["train", "dev", "test"]] = field(default_factory=lambda: list(SPLITS))
    """Corpus splits to extract."""
    shard_dialogues: int = 32
    """Dialogues per shard: one Ray task per shard and family. MELD's ~10 utterances a dialogue make
    a 32-dialogue shard about 21 MB of float32 features (all three families)."""
    max_audio_seconds: float = 30.0
    """Decode at most this much of each clip; MELD has a few wrongly cut clips of minutes."""
    check_clips: bool = True
    """Probe every clip's header when reading the corpus, so unusable clips and twin files are
    sorted out before extraction (tens of milliseconds a clip)."""
    gpus_per_task: float = 1.0
    """GPU share an OpenL3 or text task asks for when the cluster has GPUs (0.5: two share one)."""
    opensmile: OpenSmileConfig = field(default_factory=OpenSmileConfig)
    """openSMILE settings."""
    openl3: OpenL3Config = field(default_factory=OpenL3Config)
    """OpenL3 settings; `weights` must name the official weight file (or 'random' for tests)."""
    text: TextFeatureConfig = field(default_factory=TextFeatureConfig)
    """Text encoder settings."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the tasks run."""

    def __post_init__(self) -> None:
        if not self.corpus.strip():
            raise ValueError("corpus must be the corpus folder (MELD.Raw or a demo corpus)")
        if not self.families:
            raise ValueError(f"families must name at least one of {', '.join(FAMILIES)}")
        for family in self.families:
            if family not in FAMILIES:
                raise ValueError(f"families: unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families lists a family twice: {self.families}")
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must name each of train, dev, test at most once, not {self.splits}")
        if self.shard_dialogues < 1:
            raise ValueError(f"shard_dialogues must be at least 1, not {self.shard_dialogues}")
        if not self.max_audio_seconds > 0:
            raise ValueError(f"max_audio_seconds must be positive, not {self.max_audio_seconds}")
        if not 0 < self.gpus_per_task <= 1:
            raise ValueError(f"gpus_per_task must be in (0, 1], not {self.gpus_per_task}")
        if self.name is not None:
            if not self.name.strip() or "/" in self.name or self.name in (".", ".."):
                raise ValueError(f"name must be a plain folder name, not {self.name!r}")
            refuse_control_characters(self.name, "name")
        refuse_control_characters(self.store_root, "store_root")


def feature_settings(config: ExtractConfig) -> dict[str, Any]:
    """The part of the config that decides the features' values: what the store folder is named by.

    The corpus folder, the splits, the families and each chosen family's extractor
    settings; not Ray, sharding or speed settings, which change nothing in the features.
    """
    settings: dict[str, Any] = {
        "corpus": str(Path(config.corpus).expanduser().resolve()),
        "splits": sorted(config.splits),
        "families": sorted(config.families),
    }
    if any(family in AUDIO_FAMILIES for family in config.families):
        settings["max_audio_seconds"] = config.max_audio_seconds
    for family in config.families:
        extractor = dataclasses.asdict(getattr(config, family))
        settings[family] = {key: value for key, value in extractor.items() if key not in _RUNTIME_SETTINGS}
    return json.loads(json.dumps(settings, default=str))


def store_path(config: ExtractConfig) -> Path:
    """The store folder this config writes: `<store_root>/<name>-<hash12>`."""
    name = config.name or Path(config.corpus).expanduser().resolve().name.lower() or "corpus"
    return Path(config.store_root).expanduser() / store_folder_name(name, feature_settings(config))


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: whole dialogues of one split."""

    file: str
    """Path relative to the store folder, `shards/train-00003.h5`."""
    split: str
    """Split of every utterance in it."""
    utterances: tuple[Utterance, ...]
    """Its utterances in (dialogue_id, utterance_id) order."""
    inputs: str = ""
    """Fingerprint of what the shard is made from (`inputs_fingerprint`); a change makes the shard stale."""

    @property
    def dialogues(self) -> list[int]:
        return sorted({u.dialogue_id for u in self.utterances})


def _clip_state(media_path: str | None) -> list[int] | str | None:
    if media_path is None:
        return None
    try:
        status = os.stat(media_path)
    except OSError as error:
        return f"unreadable: {error.strerror}"
    return [status.st_size, status.st_mtime_ns]


def inputs_fingerprint(utterances: Sequence[Utterance]) -> str:
    """sha256 of everything a shard is made from: each utterance's CSV fields, and its clip's path, size and mtime.

    Clips are not read: a changed clip keeps its size only when rewritten in place, which
    changes its mtime. One stat per clip keeps planning MELD's 13,708 clips to a fraction
    of a second.
    """
    digest = hashlib.sha256()
    for utterance in utterances:
        record = dataclasses.asdict(utterance)
        record["clip"] = _clip_state(utterance.media_path)
        digest.update(json.dumps(record, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def plan_shards(utterances: Sequence[Utterance], splits: Sequence[str], shard_dialogues: int) -> list[ShardPlan]:
    """Cut utterances into shards of `shard_dialogues` whole dialogues of one split each."""
    plans = []
    for split in SPLITS:
        if split not in splits:
            continue
        dialogues: dict[int, list[Utterance]] = {}
        for utterance in utterances:
            if utterance.split == split:
                dialogues.setdefault(utterance.dialogue_id, []).append(utterance)
        ids = sorted(dialogues)
        for index, start in enumerate(range(0, len(ids), shard_dialogues)):
            rows = [
                u
                for d in ids[start : start + shard_dialogues]
                for u in sorted(dialogues[d], key=lambda u: u.utterance_id)
            ]
            plans.append(
                ShardPlan(
                    file=shard_file_name(split, index),
                    split=split,
                    utterances=tuple(rows),
                    inputs=inputs_fingerprint(rows),
                )
            )
    return plans


@dataclass
class FamilyResult:
    """What one (shard, family) task returns."""

    family: str
    """Feature family."""
    features: np.ndarray
    """float32 [n, dim], zeros where the row failed."""
    valid: np.ndarray
    """bool [n]."""
    failures: list[tuple[str, str]]
    """(key, reason) of each failed row."""
    feature_names: list[str] | None
    """Column names, where the extractor names them."""
    host: str = field(default_factory=socket.gethostname)
    """Hostname of the node whose Ray worker computed it (the manifest's `hosts` of the shard)."""


# One extractor per family per worker process, reused by the next task with the same
# settings: loading RoBERTa-Large takes seconds, a shard's text a fraction of that.
_EXTRACTORS: dict[str, tuple[str, Any]] = {}


def _cached_extractor(family: str, settings: Any, build: Callable[[], Any]) -> Any:
    key = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
    cached = _EXTRACTORS.get(family)
    if cached is None or cached[0] != key:
        _EXTRACTORS[family] = (key, build())
    return _EXTRACTORS[family][1]


Decoder = Callable[[Utterance, int, float, dict[str, str]], np.ndarray]
"""decode(utterance, sample_rate, max_seconds, unusable) -> mono float32 samples, or AudioDecodeError."""


def decode_utterance(
    utterance: Utterance, sample_rate: int, max_seconds: float, unusable: dict[str, str]
) -> np.ndarray:
    """An utterance's clip as the extractors read it; `unusable` gives the reason of clips the reader refused."""
    if utterance.media_path is None:
        raise AudioDecodeError(utterance.key, unusable.get(utterance.key, "no clip for this utterance"), kind="missing")
    return decode_audio(utterance.media_path, sample_rate, max_seconds)


def _extract_opensmile(
    config: ExtractConfig, utterances: Sequence[Utterance], unusable: dict[str, str], decode: Decoder
) -> FamilyResult:
    extractor = _cached_extractor("opensmile", config.opensmile, lambda: OpenSmileExtractor(config.opensmile))
    features = np.zeros((len(utterances), extractor.dim), dtype=np.float32)
    valid = np.zeros(len(utterances), dtype=bool)
    failures = []
    for row, utterance in enumerate(utterances):
        try:
            features[row] = extractor(decode(utterance, extractor.SAMPLE_RATE, config.max_audio_seconds, unusable))
            valid[row] = True
        except (AudioDecodeError, ValueError, RuntimeError) as error:
            failures.append((utterance.key, str(error)))
    return FamilyResult("opensmile", features, valid, failures, list(extractor.feature_names))


def _extract_openl3(
    config: ExtractConfig, utterances: Sequence[Utterance], unusable: dict[str, str], decode: Decoder
) -> FamilyResult:
    embedder = _cached_extractor("openl3", config.openl3, lambda: OpenL3Embedder(config.openl3))
    features = np.zeros((len(utterances), embedder.dim), dtype=np.float32)
    valid = np.zeros(len(utterances), dtype=bool)
    failures = []
    for start in range(0, len(utterances), _OPENL3_CLIPS_PER_CALL):
        rows, clips = [], []
        for row in range(start, min(start + _OPENL3_CLIPS_PER_CALL, len(utterances))):
            try:
                clips.append(decode(utterances[row], embedder.SAMPLE_RATE, config.max_audio_seconds, unusable))
                rows.append(row)
            except AudioDecodeError as error:
                failures.append((utterances[row].key, str(error)))
        if not rows:
            continue
        try:
            features[rows] = embedder.embed(clips)
            valid[rows] = True
        except (ValueError, RuntimeError):
            # One bad clip must not cost its neighbours: embed them one at a time.
            for row, clip in zip(rows, clips):
                try:
                    features[row] = embedder.embed([clip])[0]
                    valid[row] = True
                except (ValueError, RuntimeError) as error:
                    failures.append((utterances[row].key, str(error)))
    return FamilyResult("openl3", features, valid, failures, None)


def _extract_text(
    config: ExtractConfig, utterances: Sequence[Utterance], unusable: dict[str, str], decode: Decoder
) -> FamilyResult:
    extractor = _cached_extractor("text", config.text, lambda: TextFeatureExtractor(config.text))
    features = extractor(utterances)
    return FamilyResult("text", features, np.ones(len(utterances), dtype=bool), [], None)


_EXTRACT: dict[str, Callable[[ExtractConfig, Sequence[Utterance], dict[str, str], Decoder], FamilyResult]] = {
    "opensmile": _extract_opensmile,
    "openl3": _extract_openl3,
    "text": _extract_text,
}


@ray.remote
def _family_task(
    family: str, config: ExtractConfig, utterances: Sequence[Utterance], unusable: dict[str, str]
) -> FamilyResult:
    """Ray task: one feature family of one shard."""
    # Per-task "Loading weights" bars from every worker would bury the driver's progress bar.
    transformers.utils.logging.disable_progress_bar()
    return _EXTRACT[family](config, utterances, unusable, decode_utterance)


def extract_shard(
    config: ExtractConfig,
    plan: ShardPlan,
    families: Sequence[str],
    unusable: dict[str, str],
    decode: Decoder = decode_utterance,
) -> tuple[SplitArrays, list[tuple[str, str, str]]]:
    """One shard's rows with `families` computed in this process, without Ray, and its (key, family, reason) failures.

    The rows are what a store shard of the same plan holds. `cmroberta predict` and the robustness
    evaluation call this to compute features exactly as the store's were; `decode` lets them change
    the waveform (added noise) before the extractors read it.
    """
    results = {family: _EXTRACT[family](config, plan.utterances, unusable, decode) for family in families}
    failures = [(key, family, reason) for family, result in results.items() for key, reason in result.failures]
    return _shard_rows(plan, results), failures


def _shard_rows(plan: ShardPlan, results: dict[str, FamilyResult]) -> SplitArrays:
    rows = plan.utterances
    return SplitArrays(
        keys=[u.key for u in rows],
        dialogue_ids=np.array([u.dialogue_id for u in rows], dtype=np.int32),
        utterance_ids=np.array([u.utterance_id for u in rows], dtype=np.int32),
        speakers=[u.speaker for u in rows],
        transcripts=[u.transcript for u in rows],
        emotion=np.array([emotion_index(u.emotion) for u in rows], dtype=np.int64),
        sentiment=np.array([sentiment_index(u.sentiment) for u in rows], dtype=np.int64),
        features={family: result.features for family, result in results.items()},
        valid={family: result.valid for family, result in results.items()},
        feature_names={family: r.feature_names for family, r in results.items() if r.feature_names is not None},
    )


def _check_extractors(config: ExtractConfig) -> None:
    """Fail before Ray starts on what the driver can check cheaply: model and weight files."""
    if "text" in config.families:
        text_feature_dim(config.text)
    if "openl3" in config.families and config.openl3.weights != "random":
        resolve_weights_file(config.openl3.weights, config.openl3.input_repr, config.openl3.content_type)


def _open_manifest(store_dir: Path, config: ExtractConfig) -> dict[str, Any]:
    name = store_dir.name.rsplit("-", 1)[0]
    if (store_dir / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(store_dir)
            if manifest["config"] == feature_settings(config):
                return manifest
            log.warning("the manifest in %s is for another config; starting the store afresh", store_dir)
        except FeatureStoreError as error:
            log.warning("%s; starting the store afresh", error)
    return new_manifest(name, feature_settings(config))


def _is_done(
    store_dir: Path, plan: ShardPlan, entries: dict[str, dict[str, Any]], cache: ChecksumCache | None = None
) -> bool:
    entry = entries.get(plan.file)
    if entry is None:
        return False
    if entry["dialogues"] != plan.dialogues or entry["rows"] != len(plan.utterances):
        log.info("%s holds other dialogues than planned; redoing it", plan.file)
        return False
    if entry.get("inputs") != plan.inputs:
        log.info("%s was made from inputs that changed since (a CSV row or a clip); redoing it", plan.file)
        return False
    problem = shard_problem(store_dir, entry, cache=cache)
    if problem is not None:
        log.warning("%s; redoing it", problem)
        return False
    return True


def _drop_unplanned(store_dir: Path, manifest: dict[str, Any], plans: Sequence[ShardPlan]) -> None:
    """Forget (and delete) shards that the plan no longer has, e.g. after shard_dialogues changed."""
    planned = {plan.file for plan in plans}
    for entry in [e for e in manifest["shards"] if e["file"] not in planned]:
        (store_dir / entry["file"]).unlink(missing_ok=True)
        manifest["shards"].remove(entry)


def _record(
    manifest: dict[str, Any],
    plan: ShardPlan,
    rows: SplitArrays,
    written: WrittenShard,
    results: dict[str, FamilyResult],
) -> None:
    entry = shard_entry(plan.file, plan.split, rows, written, plan.inputs)
    entry["hosts"] = sorted({result.host for result in results.values()})
    record_shard(
        manifest,
        entry,
        {f: r.features.shape[1] for f, r in results.items()},
    )
    keys = set(rows.keys)
    manifest["failed"] = [record for record in manifest["failed"] if record["key"] not in keys]
    for family, result in results.items():
        manifest["failed"].extend({"key": key, "family": family, "reason": reason} for key, reason in result.failures)
    manifest["failed"].sort(key=lambda record: (record["key"], record["family"]))


def unusable_clips(flags: Sequence[ClipFlag]) -> dict[str, str]:
    """Key -> reason of every clip the corpus reader found unusable (missing, corrupt, without audio)."""
    return {flag.key: f"{flag.kind}: {flag.reason}" for flag in flags if flag.kind in _UNUSABLE_CLIP_KINDS}


def _task_options(family: str, gpus: float, gpus_per_task: float) -> dict[str, Any]:
    if family in GPU_FAMILIES and gpus > 0:
        return {"num_cpus": 1, "num_gpus": gpus_per_task}
    return {"num_cpus": 1}


def _clear_leftovers(store_dir: Path) -> None:
    """Delete temporary files a killed writer left behind; only the lock holder may, so no live write is lost."""
    for folder in (store_dir, store_dir / SHARD_FOLDER):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and (is_temp_file(path) or path.name.endswith(".tmp")):
                log.info("removing %s, left by an interrupted extraction", path)
                path.unlink(missing_ok=True)


def run_extraction(config: ExtractConfig) -> Path:
    """Extract every planned shard not already in the store; return the store folder.

    The store is held for this process alone throughout; a second extraction of the same
    store is a LockHeldError naming this one's host and pid.
    """
    if not Path(config.corpus).expanduser().is_dir():
        raise CorpusError(f"corpus folder {config.corpus} does not exist; point it at the unpacked MELD.Raw folder")
    store_dir = store_path(config)
    with exclusive_lock(store_dir, "feature store"):
        _check_extractors(config)
        corpus = read_meld(config.corpus, splits=tuple(config.splits), check_clips=config.check_clips)
        if not corpus.utterances:
            raise FeatureStoreError(
                f"the corpus at {config.corpus} has no utterances in splits {', '.join(config.splits)}"
            )
        _clear_leftovers(store_dir)
        write_resolved_config(config, store_dir)
        manifest = _open_manifest(store_dir, config)
        manifest["clip_flags"] = [{"key": f.key, "kind": f.kind, "reason": f.reason} for f in corpus.flags]
        plans = plan_shards(corpus.utterances, config.splits, config.shard_dialogues)
        set_plan(manifest, [planned_shard(p.file, p.split, len(p.utterances), p.dialogues, p.inputs) for p in plans])
        _drop_unplanned(store_dir, manifest, plans)
        entries = {entry["file"]: entry for entry in manifest["shards"]}
        cache = ChecksumCache(store_dir)
        todo = [plan for plan in plans if not _is_done(store_dir, plan, entries, cache)]
        cache.save()
        write_manifest(store_dir, manifest)
        log.info("store %s: %d of %d shards to extract", store_dir, len(todo), len(plans))
        if todo:
            _extract_shards(config, store_dir, manifest, todo, unusable_clips(corpus.flags), total=len(plans))
        problems = plan_problems(manifest)
        if problems:
            raise FeatureStoreError(f"store {store_dir} is still incomplete after extraction: {summarise(problems)}")
    failed_keys = {record["key"] for record in manifest["failed"]}
    log.info(
        "store %s complete: %d utterances, %d with a failed family", store_dir, len(corpus.utterances), len(failed_keys)
    )
    return store_dir


def _result(ref: ray.ObjectRef) -> FamilyResult:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        # A setup problem inside a task (a bad model folder) is the user's, not a crash: show its own message.
        if isinstance(error.cause, (TextEncoderError, OpenL3SetupError)):
            raise error.cause from None
        raise


def _extract_shards(
    config: ExtractConfig,
    store_dir: Path,
    manifest: dict[str, Any],
    todo: list[ShardPlan],
    unusable: dict[str, str],
    total: int,
) -> None:
    with ray_session(config.ray) as resources:
        log.info("Ray offers %g CPUs and %g GPUs on %d node(s)", resources.cpus, resources.gpus, resources.nodes)
        options = {family: _task_options(family, resources.gpus, config.gpus_per_task) for family in config.families}
        config_ref = ray.put(config)
        # The driver holds a shard's family results until all are in, so only a few shards
        # are in flight: enough to keep every CPU busy, few enough to bound memory.
        window = max(2, int(resources.cpus))
        queue = list(todo)
        in_flight: dict[ray.ObjectRef, tuple[ShardPlan, str]] = {}
        pending: dict[str, dict[str, FamilyResult]] = {}
        rows_done = 0
        started = time.perf_counter()
        bar = tqdm(total=total, initial=total - len(todo), unit="shard", desc="extracting features", disable=None)
        with bar as progress:
            while queue or in_flight:
                while queue and len(pending) < window:
                    plan = queue.pop(0)
                    pending[plan.file] = {}
                    shard_unusable = {u.key: unusable[u.key] for u in plan.utterances if u.key in unusable}
                    for family in config.families:
                        task = _family_task.options(**options[family])
                        in_flight[task.remote(family, config_ref, plan.utterances, shard_unusable)] = (plan, family)
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    plan, family = in_flight.pop(ref)
                    pending[plan.file][family] = _result(ref)
                    if len(pending[plan.file]) < len(config.families):
                        continue
                    results = pending.pop(plan.file)
                    rows = _shard_rows(plan, results)
                    written = write_shard(store_dir / plan.file, plan.split, rows)
                    _record(manifest, plan, rows, written, results)
                    write_manifest(store_dir, manifest)
                    rows_done += len(rows)
                    progress.update(1)
                    progress.set_postfix_str(f"{rows_done / (time.perf_counter() - started):.1f} utt/s")
