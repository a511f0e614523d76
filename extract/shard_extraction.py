"""Computing one shard's features in this process, without Ray: what extraction's Ray workers and `predict` share.

`ShardExtractors` holds the extractors of some families, built on first use, and computes them for a
shard's utterances: text at once, the audio families on groups of up to `CLIPS_PER_GROUP` clips
while a thread decodes the next clips at every rate the families need (16 kHz for openSMILE and
speech, 48 kHz for OpenL3, capped at `max_audio_seconds`), so ffmpeg, a subprocess, runs beside the
models. The decoded clips wait in a queue of at most `CLIPS_PER_GROUP`: that is the bound on audio
in memory. A clip that cannot be decoded fails its row in every audio family, with the reason; a
clip that fails inside a model fails its row in that family only.

`extract_shard` turns one shard plan into the rows a store shard of that plan holds (`shard_rows`).
Nothing here imports Ray, so `cmroberta predict` computes features exactly as the store's were
without loading the distributed engine.
"""

import queue
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from extract.audio import AudioDecodeError, decode_audio
from extract.corpus import CorpusFlag
from extract.extract_config import AUDIO_FAMILIES, ExtractConfig
from extract.labels import MELD_EMOTIONS, NO_LABEL, LabelSet, sentiment_index
from extract.openl3 import OpenL3Embedder
from extract.opensmile_features import OpenSmileExtractor
from extract.shard_plan import ShardPlan
from extract.speech_features import SpeechFeatureExtractor
from extract.split_arrays import SplitArrays
from extract.text_features import TextFeatureExtractor
from extract.utterance import ClipFlag, Utterance

# Clip flags that mean the clip cannot be used at all (the reader then gives no media path).
_UNUSABLE_CLIP_KINDS: frozenset[str] = frozenset({"missing", "corrupt", "no_audio"})


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
        # The GPUs, where Ray assigned some, are stamped by the Ray worker that called this (`extract.pipeline`).
        host = socket.gethostname()
        for result in results.values():
            result.host = host
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
    return shard_rows(plan, results, label_set), failures


def shard_rows(plan: ShardPlan, results: dict[str, FamilyResult], label_set: LabelSet) -> SplitArrays:
    """The rows a store shard of `plan` holds: its utterances' columns and each family's results, labels indexed
    in `label_set`."""
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
