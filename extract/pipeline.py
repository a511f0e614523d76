"""The extraction pipeline: corpus -> long-lived Ray actors per worker slot -> HDF5 feature store.

The corpus is cut into shards of whole dialogues of one split; a shard is the unit of
work. The model families (OpenL3, text, speech) run in `ExtractionActor`s that load their
models once, on their first shard, and keep them and their device for their whole life:

- on a cluster with GPUs, one actor per GPU share (`gpus_per_task`; 1: one a GPU, 0.5:
  two), each started with that `num_gpus`, so Ray pins CUDA_VISIBLE_DEVICES in the actor
  process once and every model it builds sits on its own GPU; openSMILE, which has no
  model worth keeping and is CPU-only, runs as one-CPU tasks on the CPUs left over;
- without GPUs, one actor per CPU slot, each computing every family of its shards,
  openSMILE included, so a shard is one call and no CPU slot ever loads a model twice.

Why plain actors and not Ray Data or `ray.util.ActorPool`: the store's unit is a shard of
whole dialogues that the driver writes atomically and records in the manifest, with every
family's arrays merged; Ray Data's `map_batches` works on row batches (it would have to be
grouped back into shards), keeps its own streaming executor and object-store buffers
busy (costly on a 2-core node with an 80 MiB store), and hides which process held which
GPU. `ActorPool` hands work only to idle actors, so each actor waits a driver round trip
between shards, and its futures cannot be waited on together with the openSMILE tasks'.
So the driver sends each actor one shard at a time (`ACTOR_QUEUE_DEPTH`), longest first,
the next one as soon as it returns and before writing the finished one, and keeps one
`ray.wait` over everything in flight.

Inside an actor, decoding overlaps the models: a thread decodes the shard's clips in order,
at every rate the families need (16 kHz for openSMILE and speech, 48 kHz for OpenL3,
capped at `max_audio_seconds`), into a queue of at most `ShardExtractors.CLIPS_PER_GROUP`
(16) clips, while the models work on the clips decoded before; ffmpeg runs as a
subprocess, so the two really run at once.

Memory in flight is bounded:
- per actor, at most 33 decoded clips (16 being computed, 16 queued, 1 being decoded):
  33 x (48 000 + 16 000) x 4 bytes a second, about 25 MB for MELD's 3-second clips and
  250 MB at the 30-second cap, plus one shard's features (a 32-dialogue MELD shard of the
  paper's families is about 21 MB);
- at the driver, the results of at most 2 shards per actor: no shard starts while that many
  are unfinished (on GPUs, openSMILE tasks may lag the actors). Only arrays travel back,
  never audio.

The driver merges a shard's families into one file as soon as they are all in, writes it
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

On a cluster of several nodes (`ray.address`), actors and tasks open the clips by the
paths the driver read from the corpus, so the corpus must sit on a filesystem every node
sees; shards are written by the driver alone.
"""

import dataclasses
import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
import torch
import transformers
from tqdm import tqdm

from cluster.config import refuse_control_characters, write_resolved_config
from cluster.durable_files import exclusive_lock, is_temp_file
from cluster.pause_points import pause_point
from cluster.ray_runtime import RayConfig, RayResources, ray_session
from extract.audio import AudioDecodeError, decode_audio
from extract.corpus import CorpusFlag
from extract.corpus_reader import corpus_kind, read_corpus
from extract.feature_store import (
    ChecksumCache,
    SplitArrays,
    WrittenShard,
    shard_entry,
    shard_problem,
    shard_shapes_problem,
    store_folder_name,
    summarise,
    write_shard,
)
from extract.iemocap import IemocapConfig, IemocapCorpus
from extract.labels import MELD_EMOTIONS, NO_LABEL, LabelSet, sentiment_index
from extract.manifest import (
    MANIFEST_NAME,
    SHARD_FOLDER,
    FeatureStoreError,
    Manifest,
    ShardEntry,
    UncontainedPathError,
    new_manifest,
    plan_problems,
    planned_shard,
    read_manifest,
    record_shard,
    set_corpus,
    set_plan,
    shard_file_name,
    store_label_set,
    write_manifest,
)
from extract.meld import CorpusError
from extract.openl3 import OpenL3Config, OpenL3Embedder, OpenL3SetupError, resolve_weights_file
from extract.opensmile_features import OpenSmileConfig, OpenSmileExtractor
from extract.speech_features import (
    SpeechEncoderError,
    SpeechFeatureConfig,
    SpeechFeatureExtractor,
    speech_feature_dim,
)
from extract.text_features import TextEncoderError, TextFeatureConfig, TextFeatureExtractor, text_feature_dim
from extract.utterance import SPLITS, ClipFlag, Utterance

log = logging.getLogger(__name__)

Family = Literal["opensmile", "openl3", "text", "speech"]
FAMILIES: tuple[str, ...] = ("opensmile", "openl3", "text", "speech")
PAPER_FAMILIES: tuple[str, ...] = ("opensmile", "openl3", "text")
"""The families the paper uses: the default."""
AUDIO_FAMILIES: tuple[str, ...] = ("opensmile", "openl3", "speech")
MODEL_FAMILIES: tuple[str, ...] = ("openl3", "text", "speech")
"""Families whose extractor is a neural network: they run in actors that hold a GPU when the cluster has one."""
ACTOR_QUEUE_DEPTH = 1
"""Shards sent to one actor at a time. An actor runs its calls one after another, so a second
queued shard would save only the driver's round trip (milliseconds: the next shard is sent
before the finished one is written), but it would be promised to a busy actor while another
may go idle at the end of the run."""

# Settings that change how fast features are computed, not their values: left out of the store hash.
_RUNTIME_SETTINGS: frozenset[str] = frozenset({"batch_size", "device", "allow_download"})
# Clip flags that mean the clip cannot be used at all (the reader then gives no media path).
_UNUSABLE_CLIP_KINDS: frozenset[str] = frozenset({"missing", "corrupt", "no_audio"})


@dataclass(kw_only=True)
class ExtractConfig:
    """What to extract from which corpus into which store, and on which Ray."""

    corpus: str
    """The corpus: a folder in MELD's layout (MELD.Raw, or a demo corpus), an IEMOCAP_full_release folder, or a
    manifest (.csv, or a folder holding manifest.csv)."""
    store_root: str = "features"
    """Folder that holds feature stores; each config gets its own `<name>-<hash12>` folder in it."""
    name: str | None = None
    """Store name, the folder's prefix; None: the corpus folder's name."""
    families: list[Family] = field(default_factory=lambda: list(PAPER_FAMILIES))
    """Feature families to extract: opensmile, openl3, text (the paper's three), and speech (a
    self-supervised speech encoder, see `speech`)."""
    splits: list[Literal["train", "dev", "test"]] = field(default_factory=lambda: list(SPLITS))
    """Corpus splits to extract."""
    shard_dialogues: int = 32
    """Dialogues per shard: the unit of work an actor computes and the driver writes. MELD's ~10
    utterances a dialogue make a 32-dialogue shard about 21 MB of float32 features (the paper's families)."""
    max_audio_seconds: float = 30.0
    """Decode at most this much of each clip; MELD has a few wrongly cut clips of minutes."""
    check_clips: bool = True
    """Probe every clip's header when reading the corpus, so unusable clips and twin files are
    sorted out before extraction (tens of milliseconds a clip)."""
    gpus_per_task: float = 1.0
    """GPU share each extraction actor holds when the cluster has GPUs: one actor per share
    (0.5: two actors share each GPU). The actors run OpenL3, text and speech."""
    opensmile: OpenSmileConfig = field(default_factory=OpenSmileConfig)
    """openSMILE settings."""
    openl3: OpenL3Config = field(default_factory=OpenL3Config)
    """OpenL3 settings; `weights` must name the official weight file (or 'random' for tests)."""
    text: TextFeatureConfig = field(default_factory=TextFeatureConfig)
    """Text encoder settings."""
    speech: SpeechFeatureConfig = field(default_factory=SpeechFeatureConfig)
    """Speech encoder settings (the `speech` family): any local Hugging Face audio encoder."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the tasks run."""
    iemocap: IemocapConfig = field(default_factory=IemocapConfig)
    """IEMOCAP only: the protocol (erc6, ser4), fold and dev rule; part of the store's hash for an IEMOCAP corpus,
    so each protocol and fold is its own store. Refused for any other corpus unless left at its defaults."""

    def __post_init__(self) -> None:
        if not self.corpus.strip():
            raise ValueError("corpus must be the corpus folder (MELD.Raw, IEMOCAP_full_release) or a manifest .csv")
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
    settings, and for IEMOCAP the protocol keys; not Ray, sharding or speed settings,
    which change nothing in the features.
    """
    settings: dict[str, Any] = {
        "corpus": str(Path(config.corpus).expanduser().resolve()),
        "splits": sorted(config.splits),
        "families": sorted(config.families),
    }
    if corpus_kind(Path(config.corpus)) == "iemocap":
        settings["iemocap"] = dataclasses.asdict(config.iemocap)
    if any(family in AUDIO_FAMILIES for family in config.families):
        settings["max_audio_seconds"] = config.max_audio_seconds
    for family in config.families:
        extractor = dataclasses.asdict(getattr(config, family))
        settings[family] = {key: value for key, value in extractor.items() if key not in _RUNTIME_SETTINGS}
    return json.loads(json.dumps(settings, default=str))


def store_path(config: ExtractConfig) -> Path:
    """The store folder this config writes: `<store_root>/<name>-<hash12>`."""
    corpus = Path(config.corpus).expanduser().resolve()
    # A manifest file names the store by its stem (`mine.csv` -> `mine`); a folder by its name.
    name = config.name or (corpus.stem if corpus.is_file() else corpus.name).lower() or "corpus"
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
        if record["media_span"] is None:
            # Left out when unset, so the stores of corpora without spans (MELD's) keep their fingerprints.
            del record["media_span"]
        record["clip"] = _clip_state(utterance.media_path)
        digest.update(json.dumps(record, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def plan_shards(utterances: Sequence[Utterance], splits: Sequence[str], shard_dialogues: int) -> list[ShardPlan]:
    """Cut utterances into shards of `shard_dialogues` whole dialogues of one split each.

    Extraction and `cmroberta predict` both cut here, so predict's shards are the store's; splits
    outside train, dev and test (predict's own) follow those three, in the order given.
    """
    plans = []
    for split in [*(s for s in SPLITS if s in splits), *(s for s in splits if s not in SPLITS)]:
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
    """What one family of one shard comes back as, from an actor or a task."""

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
    host: str = ""
    """Host name of the node that computed it."""
    gpu_ids: list[str] = field(default_factory=list)
    """GPUs Ray had assigned to the worker that computed it (empty on CPUs)."""


@dataclass
class _Clip:
    """One utterance's decoded audio at the rates its families need, or why it has none."""

    samples: dict[int, np.ndarray]
    """Sample rate -> mono float32 samples."""
    error: str | None
    """Why the clip could not be decoded; None when it was."""


Decoder = Callable[[Utterance, int, float, dict[str, str]], np.ndarray]
"""decode(utterance, sample_rate, max_seconds, unusable) -> mono float32 samples, or AudioDecodeError."""


def decode_utterance(
    utterance: Utterance, sample_rate: int, max_seconds: float, unusable: dict[str, str]
) -> np.ndarray:
    """An utterance's clip as the extractors read it; `unusable` gives the reason of clips the reader refused."""
    if utterance.media_path is None:
        raise AudioDecodeError(utterance.key, unusable.get(utterance.key, "no clip for this utterance"), kind="missing")
    if utterance.media_span is None:
        return decode_audio(utterance.media_path, sample_rate, max_seconds)
    start, end = utterance.media_span
    return decode_audio(utterance.media_path, sample_rate, min(max_seconds, end - start), start_s=start)


def _decode_ahead(
    decoded: "queue.Queue[_Clip | BaseException]",
    stop: threading.Event,
    utterances: Sequence[Utterance],
    rates: Sequence[int],
    max_seconds: float,
    unusable: dict[str, str],
    decode: Decoder,
) -> None:
    """Decode every clip in order into `decoded`, blocking while it is full, until done or `stop`."""
    for utterance in utterances:
        try:
            item: _Clip | BaseException = _Clip(
                {rate: decode(utterance, rate, max_seconds, unusable) for rate in rates}, None
            )
        except AudioDecodeError as error:
            item = _Clip({}, str(error))
        except Exception as error:  # handed to the computing thread, which raises it
            item = error
        while not stop.is_set():
            try:
                decoded.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        if stop.is_set() or isinstance(item, BaseException):
            return


def _taken(item: "_Clip | BaseException") -> _Clip:
    if isinstance(item, BaseException):
        raise item
    return item


class _FamilyOutput:
    """One family's arrays for a shard, filled group by group."""

    def __init__(self, family: str, rows: int, dim: int, feature_names: list[str] | None):
        self.result = FamilyResult(
            family, np.zeros((rows, dim), dtype=np.float32), np.zeros(rows, dtype=bool), [], feature_names
        )

    def fill(self, row: int, vector: np.ndarray) -> None:
        self.result.features[row] = vector
        self.result.valid[row] = True

    def fail(self, key: str, reason: str) -> None:
        self.result.failures.append((key, reason))


def _embed_clips(
    embed: Callable[[list[np.ndarray]], np.ndarray],
    output: _FamilyOutput,
    keys: Sequence[str],
    rows: Sequence[int],
    clips: list[np.ndarray],
) -> None:
    """Embed clips together; one bad clip must not cost its neighbours, so a failed batch is redone clip by clip."""
    if not rows:
        return
    try:
        vectors = embed(clips)
        for row, vector in zip(rows, vectors):
            output.fill(row, vector)
    except (ValueError, RuntimeError):
        for row, key, clip in zip(rows, keys, clips):
            try:
                output.fill(row, embed([clip])[0])
            except (ValueError, RuntimeError) as error:
                output.fail(key, str(error))


_SAMPLE_RATES: dict[str, int] = {
    "opensmile": OpenSmileExtractor.SAMPLE_RATE,
    "openl3": OpenL3Embedder.SAMPLE_RATE,
    "speech": SpeechFeatureExtractor.SAMPLE_RATE,
}
"""Rate each audio family's clips are decoded at."""


class ShardExtractors:
    """The extractors of some families, built once on first use and kept for the holder's life.

    `extract` computes every one of its families for a shard: text at once, the audio
    families on groups of up to `CLIPS_PER_GROUP` clips while a thread decodes the next
    clips at every rate the families need, so ffmpeg runs beside the models.
    """

    CLIPS_PER_GROUP = 16
    """Clips decoded and embedded together: OpenL3 fills its window batches from them."""

    def __init__(self, config: ExtractConfig, families: Sequence[str], decode: Decoder = decode_utterance):
        self.config = config
        self.families = list(families)
        # How clips become samples: the store's own decoding, or one that perturbs the waveform (predict).
        self.decode = decode
        self._built: dict[str, Any] = {}

    def extractor(self, family: str) -> Any:
        if family not in self._built:
            build = {
                "opensmile": lambda: OpenSmileExtractor(self.config.opensmile),
                "openl3": lambda: OpenL3Embedder(self.config.openl3),
                "text": lambda: TextFeatureExtractor(self.config.text),
                "speech": lambda: SpeechFeatureExtractor(self.config.speech),
            }[family]
            self._built[family] = build()
        return self._built[family]

    def extract(self, utterances: Sequence[Utterance], unusable: dict[str, str]) -> list[FamilyResult]:
        """Every family of this holder for one shard's utterances, in `families` order."""
        results: dict[str, FamilyResult] = {}
        audio = [family for family in self.families if family in AUDIO_FAMILIES]
        if audio:
            results.update(self._extract_audio(audio, utterances, unusable))
        if "text" in self.families:
            features = self.extractor("text")(utterances)
            results["text"] = FamilyResult("text", features, np.ones(len(utterances), dtype=bool), [], None)
        host, gpu_ids = socket.gethostname(), [str(gpu) for gpu in ray.get_gpu_ids()] if ray.is_initialized() else []
        for result in results.values():
            result.host, result.gpu_ids = host, gpu_ids
        return [results[family] for family in self.families]

    def _extract_audio(
        self, families: list[str], utterances: Sequence[Utterance], unusable: dict[str, str]
    ) -> dict[str, FamilyResult]:
        rates = sorted({_SAMPLE_RATES[family] for family in families})
        # The decoder runs at most CLIPS_PER_GROUP clips ahead: the queue is the bound on audio in memory.
        decoded: queue.Queue[_Clip | BaseException] = queue.Queue(maxsize=self.CLIPS_PER_GROUP)
        stop = threading.Event()
        decoder = threading.Thread(
            target=_decode_ahead,
            args=(decoded, stop, utterances, rates, self.config.max_audio_seconds, unusable, self.decode),
            name="decode",
            daemon=True,
        )
        decoder.start()
        try:
            # Models load on the first shard while the first clips decode.
            extractors = {family: self.extractor(family) for family in families}
            outputs = {
                family: _FamilyOutput(family, len(utterances), extractor.dim, _names(extractor))
                for family, extractor in extractors.items()
            }
            start = 0
            while start < len(utterances):
                # Whatever is decoded, up to a group, and at least one clip: on a GPU the models
                # outrun ffmpeg and take clips as they come; on a CPU the queue is full.
                clips = [_taken(decoded.get())]
                while len(clips) < self.CLIPS_PER_GROUP and start + len(clips) < len(utterances):
                    try:
                        clips.append(_taken(decoded.get_nowait()))
                    except queue.Empty:
                        break
                group = utterances[start : start + len(clips)]
                self._compute_group(extractors, outputs, start, group, clips)
                start += len(clips)
        finally:
            stop.set()
            decoder.join()
        return {family: output.result for family, output in outputs.items()}

    def _compute_group(
        self,
        extractors: dict[str, Any],
        outputs: dict[str, _FamilyOutput],
        start: int,
        group: Sequence[Utterance],
        clips: list[_Clip],
    ) -> None:
        decoded = [i for i, clip in enumerate(clips) if clip.error is None]
        for i, clip in enumerate(clips):
            if clip.error is not None:
                for output in outputs.values():
                    output.fail(group[i].key, clip.error)
        for family, extractor in extractors.items():
            output = outputs[family]
            rate = extractor.SAMPLE_RATE
            if family == "opensmile":
                for i in decoded:
                    try:
                        output.fill(start + i, extractor(clips[i].samples[rate]))
                    except (ValueError, RuntimeError) as error:
                        output.fail(group[i].key, str(error))
                continue
            embed = extractor.embed if family == "openl3" else extractor
            _embed_clips(
                embed,
                output,
                [group[i].key for i in decoded],
                [start + i for i in decoded],
                [clips[i].samples[rate] for i in decoded],
            )


def _names(extractor: Any) -> list[str] | None:
    names = getattr(extractor, "feature_names", None)
    return list(names) if names is not None else None


@ray.remote
class ExtractionActor:
    """A Ray actor that holds the model families' extractors, and its device, for its whole life.

    Ray assigns an actor's GPUs once, when it starts, and sets CUDA_VISIBLE_DEVICES in its
    process to them, so the models built here on 'auto' land on the actor's own GPU and
    stay there; no other actor's work ever runs in this process.
    """

    def __init__(self, config: ExtractConfig, families: Sequence[str]):
        # Per-model "Loading weights" bars from every actor would bury the driver's progress bar.
        transformers.utils.logging.disable_progress_bar()
        # As many torch threads as CPUs Ray gave the actor: more would fight the other actors for them.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.extractors = ShardExtractors(config, families)
        self.gpu_ids_at_start = [str(gpu) for gpu in ray.get_gpu_ids()]

    def extract(self, utterances: Sequence[Utterance], unusable: dict[str, str]) -> list[FamilyResult]:
        """This actor's families of one shard."""
        return self.extractors.extract(utterances, unusable)

    def placement(self) -> dict[str, Any]:
        """Where this actor runs: host, the GPUs assigned at start and now, and CUDA_VISIBLE_DEVICES."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "gpu_ids_at_start": self.gpu_ids_at_start,
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_threads": torch.get_num_threads(),
            "cuda_device": str(torch.cuda.get_device_properties(0).uuid) if torch.cuda.is_available() else None,
        }


@ray.remote(num_cpus=1)
def _opensmile_task(config: ExtractConfig, utterances: Sequence[Utterance], unusable: dict[str, str]) -> FamilyResult:
    """Ray task: openSMILE for one shard, beside the GPU actors (it is CPU-only and light to build)."""
    return ShardExtractors(config, ["opensmile"]).extract(utterances, unusable)[0]


def extract_shard(
    config: ExtractConfig,
    plan: ShardPlan,
    families: Sequence[str],
    unusable: dict[str, str],
    decode: Decoder = decode_utterance,
    label_set: LabelSet = MELD_EMOTIONS,
) -> tuple[SplitArrays, list[tuple[str, str, str]]]:
    """One shard's rows with `families` computed in this process, without Ray, and its (key, family, reason) failures.

    The rows are what a store shard of the same plan holds, labels indexed in `label_set`. `cmroberta
    predict` and the robustness evaluation call this to compute features exactly as the store's were;
    `decode` lets them change the waveform (added noise) before the extractors read it.
    """
    results = {
        result.family: result
        for result in ShardExtractors(config, families, decode).extract(plan.utterances, unusable)
    }
    failures = [(key, family, reason) for family, result in results.items() for key, reason in result.failures]
    return _shard_rows(plan, results, label_set), failures


def _shard_rows(plan: ShardPlan, results: dict[str, FamilyResult], label_set: LabelSet) -> SplitArrays:
    rows = plan.utterances
    return SplitArrays(
        keys=[u.key for u in rows],
        dialogue_ids=np.array([u.dialogue_id for u in rows], dtype=np.int32),
        utterance_ids=np.array([u.utterance_id for u in rows], dtype=np.int32),
        speakers=[u.speaker for u in rows],
        transcripts=[u.transcript for u in rows],
        emotion=np.array([NO_LABEL if u.label is None else label_set.index(u.label) for u in rows], dtype=np.int64),
        sentiment=np.array([sentiment_index(u.sentiment) if u.sentiment else NO_LABEL for u in rows], dtype=np.int64),
        features={family: result.features for family, result in results.items()},
        valid={family: result.valid for family, result in results.items()},
        feature_names={family: r.feature_names for family, r in results.items() if r.feature_names is not None},
    )


def _check_extractors(config: ExtractConfig) -> None:
    """Fail before Ray starts on what the driver can check cheaply: model and weight files."""
    if "text" in config.families:
        text_feature_dim(config.text)
    if "speech" in config.families:
        speech_feature_dim(config.speech)
    if "openl3" in config.families and config.openl3.weights != "random":
        resolve_weights_file(config.openl3.weights, config.openl3.input_repr, config.openl3.content_type)


def _open_manifest(store_dir: Path, config: ExtractConfig, label_set: LabelSet) -> Manifest:
    name = store_dir.name.rsplit("-", 1)[0]
    if (store_dir / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(store_dir)
            if manifest["config"] == feature_settings(config) and store_label_set(manifest) == label_set:
                return manifest
            log.warning("the manifest in %s is for another config or label set; starting the store afresh", store_dir)
        except UncontainedPathError:
            raise
        except FeatureStoreError as error:
            log.warning("%s; starting the store afresh", error)
    return new_manifest(name, feature_settings(config))


def _is_done(
    store_dir: Path,
    plan: ShardPlan,
    entries: dict[str, ShardEntry],
    dims: dict[str, int],
    cache: ChecksumCache | None = None,
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
    problem = shard_problem(store_dir, entry, cache=cache) or shard_shapes_problem(store_dir, entry, dims)
    if problem is not None:
        log.warning("%s; redoing it", problem)
        return False
    return True


def _drop_unplanned(store_dir: Path, manifest: Manifest, plans: Sequence[ShardPlan]) -> None:
    """Forget (and delete) shards that the plan no longer has, e.g. after shard_dialogues changed.

    `read_manifest` has refused any entry whose file is not inside the store's `shards/` folder,
    so nothing outside the store is ever deleted here.
    """
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


def unusable_clips(
    flags: Sequence[ClipFlag | CorpusFlag], item_names: dict[str, str] | None = None
) -> dict[str, str]:
    """Utterance key -> reason of every clip the corpus reader found unusable (missing, corrupt, without audio).

    A reader that flags its items by their own names (IEMOCAP's turns) gives `item_names`, utterance key ->
    item name, so each reason reaches the utterance it is about.
    """
    keys = {name: key for key, name in (item_names or {}).items()}
    return {
        keys.get(flag.key, flag.key): f"{flag.kind}: {flag.reason}"
        for flag in flags
        if flag.kind in _UNUSABLE_CLIP_KINDS
    }


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
    if not Path(config.corpus).expanduser().exists():
        raise CorpusError(
            f"corpus folder {config.corpus} does not exist; point it at the unpacked MELD.Raw or "
            "IEMOCAP_full_release folder, or at a manifest .csv"
        )
    store_dir = store_path(config)
    with exclusive_lock(store_dir, "feature store"):
        _check_extractors(config)
        corpus = read_corpus(
            config.corpus,
            # Defaults read as "no protocol asked for", so only keys a user set are refused outside IEMOCAP.
            iemocap=None if config.iemocap == IemocapConfig() else config.iemocap,
            splits=config.splits,
            check_clips=config.check_clips,
        )
        if not corpus.utterances:
            raise FeatureStoreError(
                f"the corpus at {config.corpus} has no utterances in splits {', '.join(config.splits)}"
            )
        _clear_leftovers(store_dir)
        write_resolved_config(config, store_dir)
        manifest = _open_manifest(store_dir, config, corpus.label_set)
        set_corpus(manifest, corpus.kind, corpus.protocol, corpus.label_set)
        manifest["clip_flags"] = [{"key": f.key, "kind": f.kind, "reason": f.reason} for f in corpus.flags]
        plans = plan_shards(corpus.utterances, config.splits, config.shard_dialogues)
        set_plan(manifest, [planned_shard(p.file, p.split, len(p.utterances), p.dialogues, p.inputs) for p in plans])
        _drop_unplanned(store_dir, manifest, plans)
        entries = {entry["file"]: entry for entry in manifest["shards"]}
        cache = ChecksumCache(store_dir)
        dims = {family: info["dim"] for family, info in manifest["families"].items()}
        todo = [plan for plan in plans if not _is_done(store_dir, plan, entries, dims, cache)]
        cache.save()
        write_manifest(store_dir, manifest)
        log.info("store %s: %d of %d shards to extract", store_dir, len(todo), len(plans))
        if todo:
            item_names = corpus.turn_names if isinstance(corpus, IemocapCorpus) else None
            unusable = unusable_clips(corpus.flags, item_names)
            _extract_shards(config, store_dir, manifest, todo, unusable, total=len(plans))
        problems = plan_problems(manifest)
        if problems:
            raise FeatureStoreError(f"store {store_dir} is still incomplete after extraction: {summarise(problems)}")
    failed_keys = {record["key"] for record in manifest["failed"]}
    log.info(
        "store %s complete: %d utterances, %d with a failed family", store_dir, len(corpus.utterances), len(failed_keys)
    )
    return store_dir


_SETUP_ERRORS = (TextEncoderError, OpenL3SetupError, SpeechEncoderError)


def _result(ref: ray.ObjectRef) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        # A setup problem inside an actor (a bad model folder) is the user's, not a crash: show its own message.
        if isinstance(error.cause, _SETUP_ERRORS):
            raise error.cause from None
        raise


@dataclass(frozen=True)
class WorkerPlan:
    """How many extraction actors to start, with what resources, and who computes openSMILE."""

    actors: int
    """Long-lived actors, each holding `actor_families`' models."""
    actor_families: tuple[str, ...]
    """Families the actors compute."""
    actor_options: dict[str, float]
    """Ray resources of one actor: `num_cpus`, and `num_gpus` on a GPU cluster."""
    task_families: tuple[str, ...]
    """Families computed by one-CPU tasks beside the actors (openSMILE on a GPU cluster)."""


def plan_workers(families: Sequence[str], resources: RayResources, gpus_per_task: float, shards: int) -> WorkerPlan:
    """One actor per GPU share on a GPU cluster, else one per CPU slot; never more than there are shards.

    With GPUs the actors hold the model families and openSMILE runs as tasks on the CPUs
    the actors leave free. Without, each actor does every family of its shards, openSMILE
    included, so no model is ever loaded twice on one CPU slot and a shard is one call.
    """
    models = tuple(family for family in families if family in MODEL_FAMILIES)
    if resources.gpus > 0 and models:
        tasks = tuple(family for family in families if family not in MODEL_FAMILIES)
        cpus = int(resources.cpus)
        actors = max(1, min(int(resources.gpus / gpus_per_task + 1e-9), shards))
        if tasks:
            actors = min(actors, max(1, cpus - 1))
        # An actor holds a CPU only where one is still left for the openSMILE tasks, or they would never start.
        actor_cpus = 1 if cpus - actors >= (1 if tasks else 0) else 0
        return WorkerPlan(actors, models, {"num_cpus": actor_cpus, "num_gpus": gpus_per_task}, tasks)
    actors = max(1, min(int(resources.cpus), shards))
    return WorkerPlan(actors, tuple(families), {"num_cpus": 1}, ())


def _shard_cost(shard: ShardPlan, max_seconds: float) -> float:
    """Rough cost of a shard: its seconds of audio, plus one for each utterance's fixed work."""
    return sum(min(max(u.csv_duration, 0.0), max_seconds) + 1.0 for u in shard.utterances)


def start_actors(config: ExtractConfig, plan: WorkerPlan) -> list[ray.actor.ActorHandle]:
    """The plan's extraction actors; each loads its models on its first shard and keeps them."""
    options = dict(plan.actor_options)
    return [
        ExtractionActor.options(num_cpus=options["num_cpus"], num_gpus=options.get("num_gpus", 0)).remote(
            config, plan.actor_families
        )
        for _ in range(plan.actors)
    ]


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
        plan = plan_workers(config.families, resources, config.gpus_per_task, len(todo))
        log.info(
            "%d extraction actor(s) (%s) with %s each%s",
            plan.actors,
            ", ".join(plan.actor_families),
            plan.actor_options,
            f"; {', '.join(plan.task_families)} as tasks" if plan.task_families else "",
        )
        config_ref = ray.put(config)
        actors = start_actors(config, plan)
        try:
            _run_shards(config, store_dir, manifest, todo, unusable, total, plan, actors, config_ref)
        finally:
            for actor in actors:
                ray.kill(actor)


def _run_shards(
    config: ExtractConfig,
    store_dir: Path,
    manifest: dict[str, Any],
    todo: list[ShardPlan],
    unusable: dict[str, str],
    total: int,
    plan: WorkerPlan,
    actors: list[ray.actor.ActorHandle],
    config_ref: ray.ObjectRef,
) -> None:
    # Longest shards first, so the last ones, which may leave an actor idle, are the shortest.
    queue = sorted(todo, key=lambda shard: _shard_cost(shard, config.max_audio_seconds), reverse=True)
    in_flight: dict[ray.ObjectRef, tuple[ShardPlan, int | None]] = {}
    load = [0] * len(actors)
    pending: dict[str, dict[str, FamilyResult]] = {}
    rows_done = shards_done = 0
    started = time.perf_counter()
    bar = tqdm(total=total, initial=total - len(todo), unit="shard", desc="extracting features", disable=None)
    # openSMILE tasks may fall behind fast GPU actors: shards waiting for them are held at the
    # driver, so no new shard starts while twice as many as there are actors are unfinished.
    most_pending = 2 * len(actors)

    def send() -> None:
        while queue and min(load) < ACTOR_QUEUE_DEPTH and len(pending) < most_pending:
            shard = queue.pop(0)
            actor = load.index(min(load))
            load[actor] += 1
            pending[shard.file] = {}
            shard_unusable = {u.key: unusable[u.key] for u in shard.utterances if u.key in unusable}
            in_flight[actors[actor].extract.remote(shard.utterances, shard_unusable)] = (shard, actor)
            if "opensmile" in plan.task_families:
                in_flight[_opensmile_task.remote(config_ref, shard.utterances, shard_unusable)] = (shard, None)

    with bar as progress:
        send()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                shard, actor = in_flight.pop(ref)
                if actor is not None:
                    load[actor] -= 1
                # The freed actor gets its next shard before this one is written.
                send()
                value = _result(ref)
                for result in value if isinstance(value, list) else [value]:
                    pending[shard.file][result.family] = result
                if len(pending[shard.file]) < len(config.families):
                    continue
                results = {family: pending[shard.file][family] for family in config.families}
                del pending[shard.file]
                rows = _shard_rows(shard, results, store_label_set(manifest))
                written = write_shard(store_dir / shard.file, shard.split, rows)
                shards_done += 1
                pause_point(f"extract-shard-written-{shards_done}")
                _record(manifest, shard, rows, written, results)
                write_manifest(store_dir, manifest)
                rows_done += len(rows)
                progress.update(1)
                pause_point(f"extract-shard-recorded-{shards_done}")
                progress.set_postfix_str(f"{rows_done / (time.perf_counter() - started):.1f} utt/s")
