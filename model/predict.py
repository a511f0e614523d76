"""Applying a trained run to new dialogues, and scoring a run under a perturbation of its inputs.

`predict(run, input)` labels every utterance of an input that `model.predict_input.read_predict_input`
read (a MELD-layout folder, a CSV or JSONL file, or a folder of clips), with the run that `restore_run`
restored.

The features are exactly the run's. The input is cut into shards as the store was cut
(`extract.shard_plan.plan_shards`); a shard whose inputs fingerprint (every CSV field, each clip's
path, size and mtime) is that of a store shard of its split takes its vectors from the store, since
the same inputs under the store's extraction config made them. Every other shard is computed again
in this process from the store's extraction config (`config.toml`). Reading rather than recomputing
is what makes a run's own utterances score bitwise as the run scored them at any thread count:
recomputed sums run in another order when the thread count differs, and standardisation can magnify
those last bits. The run's `feature_statistics.npz` standardises them. End to end, the run's tokenizer makes the
token ids and the run's fine-tuned encoder, restored with the head from the run's checkpoint,
encodes them. A clip that cannot be decoded gets a row with the reason and no label; the utterance
stays in its dialogue with its audio masked (as the store treats a failed clip), so its neighbours
keep their context.

`evaluate_perturbed(run, perturbation)` scores a restored run's split (test by default) of its own store
under a `model.perturb.Perturbation`: only the perturbed family is computed again (from the
corpus's clips for noise, from the store's transcripts for ASR errors); a missing modality is masked
in the model. It writes `robustness/<condition>-seed<seed>.json` into the run folder (for a split
other than test, `robustness/<split>-<condition>-seed<seed>.json`).
"""

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cluster.config import RESOLVED_CONFIG_NAME, load_config
from cluster.durable_files import atomic_write_json, atomic_write_text
from extract.extract_config import AUDIO_FAMILIES, ExtractConfig
from extract.feature_store import FeatureStore, FeatureStoreError
from extract.labels import MELD_EMOTIONS, LabelSet
from extract.meld import CorpusError, read_meld
from extract.shard_extraction import Decoder, decode_utterance, extract_shard, unusable_clips
from extract.shard_plan import ShardPlan, plan_shards
from extract.split_arrays import SplitArrays
from extract.utterance import Utterance
from model.dialogue_data import DialogueDataset, Modalities, dataset_from_arrays
from model.evaluate import SplitEvaluation, evaluate_split, evaluation_record, majority_label
from model.feature_statistics import FeatureStatistics
from model.fusion import ModalityDropout
from model.metrics import classification_metrics
from model.perturb import NoiseMaker, Perturbation, simulate_asr_errors
from model.predict_input import PredictInput
from model.run_folder import RunFolder
from model.run_store import open_run_store
from model.text_encoder import load_tokenizer
from model.token_cache import packed_tokens, store_utterances

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LoadedRun:
    """A trained run, ready to score: its config, model, standardisation and the store it was trained on."""

    run_dir: Path
    """The run folder."""
    config: Any
    """Its RunConfig."""
    model: torch.nn.Module
    """The selected checkpoint's model (in a DeepSpeed inference engine), in eval mode."""
    device: torch.device
    """Where the model runs: the GPU when there is one."""
    dtype: torch.dtype
    """The dtype inputs are cast to (the run's precision)."""
    modalities: Modalities
    """The store families the model reads."""
    statistics: FeatureStatistics
    """The run's train-split standardisation."""
    store: FeatureStore
    """The run's feature store."""
    extraction: ExtractConfig
    """The store's extraction config: how every family is computed."""
    floor_label: int
    """The train split's majority class."""
    label_set: LabelSet
    """The run's label set: its output classes and the probability columns of its predictions."""
    checkpoint: str
    """Tag of the selected checkpoint."""
    epoch: int
    """Its epoch."""


def restore_run(run_dir: Path) -> LoadedRun:
    """Load a finished (or at least checkpointed) run's selected model and what it needs to score inputs.

    This is the one place that restores run weights, through `model.engine`'s DeepSpeed loader.
    """
    from cluster.distributed_session import distributed_session
    from model.checkpoint import RunFolderError
    from model.deepspeed_config import precision_dtype
    from model.engine import build_model, load_inference_engine, run_modalities, run_precision
    from model.run_config import RunConfig

    run = RunFolder(run_dir)
    run_dir = run.path
    if not run.is_run:
        raise RunFolderError(f"{run_dir} is not a run folder: it has no {run.config_path.name}; train one first")
    config = load_config(RunConfig, run.config_path)
    store = open_run_store(run_dir, config.store)
    extraction_path = store.path / RESOLVED_CONFIG_NAME
    if not extraction_path.is_file():
        raise FeatureStoreError(
            f"store {store.path} has no {RESOLVED_CONFIG_NAME}, so its extraction config is unknown; "
            "re-run `cmroberta extract` to write it"
        )
    extraction = load_config(ExtractConfig, extraction_path)
    modalities = run_modalities(config, store)
    # Held while the selected checkpoint is read: a run still training holds it (the holder is named),
    # so an intermediate checkpoint is never taken for the run's model.
    with run.lock(True):
        progress = run.checkpoints().progress()
        if progress is None or progress.best is None:
            raise RunFolderError(
                f"run {run_dir} has no checkpoint yet; finish training it with `cmroberta train --resume`"
            )
        if not run.finished:
            log.warning("run %s did not finish training; using its best checkpoint so far (%s)", run_dir, progress.best)
        statistics = FeatureStatistics.load(run.statistics_path)
        with distributed_session() as rendezvous:
            engine = load_inference_engine(
                build_model(config, modalities, store.label_set),
                config,
                rendezvous.world_size,
                run.checkpoints(),
                progress.best,
            )
    engine.eval()
    return LoadedRun(
        run_dir=run_dir,
        config=config,
        model=engine,
        device=engine.device,
        dtype=precision_dtype(run_precision(config)),
        modalities=modalities,
        statistics=statistics,
        store=store,
        extraction=extraction,
        floor_label=majority_label(store.read_split("train", families=[]).emotion, len(store.label_set)),
        label_set=store.label_set,
        checkpoint=progress.best,
        epoch=int(progress.best_epoch),
    )



def concatenate_rows(parts: Sequence[SplitArrays]) -> SplitArrays:
    """Shards' rows one after another."""
    families = list(parts[0].features)
    return SplitArrays(
        keys=[key for part in parts for key in part.keys],
        dialogue_ids=np.concatenate([part.dialogue_ids for part in parts]),
        utterance_ids=np.concatenate([part.utterance_ids for part in parts]),
        speakers=[speaker for part in parts for speaker in part.speakers],
        transcripts=[text for part in parts for text in part.transcripts],
        emotion=np.concatenate([part.emotion for part in parts]),
        sentiment=np.concatenate([part.sentiment for part in parts]),
        features={family: np.concatenate([part.features[family] for part in parts]) for family in families},
        valid={family: np.concatenate([part.valid[family] for part in parts]) for family in families},
    )


def compute_rows(
    run: LoadedRun,
    plans: Sequence[ShardPlan],
    families: Sequence[str],
    unusable: dict[str, str],
    decode: Decoder = decode_utterance,
    reuse_store: bool = False,
) -> tuple[SplitArrays, dict[str, str]]:
    """Rows of the plans' utterances with `families` computed as the run's store computed them, and
    key -> reason for each utterance whose audio failed.

    With `reuse_store`, a plan whose inputs fingerprint is that of a store shard of its split reads that
    shard's rows instead (module docstring); only an unperturbed input may, since a perturbation changes
    what the fingerprint does not see.
    """
    stored = _stored_rows(run, plans, families) if reuse_store else {}
    if stored:
        log.info("%d of %d shards have the inputs of a store shard: their features are read from %s",
                 len(stored), len(plans), run.store.path)
    parts, failed = [], {}
    for plan in tqdm(plans, desc="computing features", unit="shard", disable=None):
        if plan.file in stored:
            rows, failures = stored[plan.file]
        else:
            rows, failures = extract_shard(run.extraction, plan, families, unusable, decode)
        parts.append(rows)
        for key, family, reason in failures:
            if family in AUDIO_FAMILIES:
                failed.setdefault(key, reason)
    return concatenate_rows(parts), failed


def _stored_rows(
    run: LoadedRun, plans: Sequence[ShardPlan], families: Sequence[str]
) -> dict[str, tuple[SplitArrays, list[tuple[str, str, str]]]]:
    """Plan file -> (rows, (key, family, reason) failures) read from the store, for each plan whose inputs
    fingerprint matches a store shard of its split."""
    matching = [
        plan for plan in plans
        if plan.inputs and any(entry.get("inputs") == plan.inputs for entry in run.store.shards(plan.split))
    ]
    split_rows = {split: run.store.read_split(split, families=list(families)) for split in {p.split for p in matching}}
    failures = [(r["key"], r["family"], r["reason"]) for r in run.store.failed() if r["family"] in families]
    stored = {}
    for plan in matching:
        rows = split_rows[plan.split]
        position = {key: index for index, key in enumerate(rows.keys)}
        keys = {u.key for u in plan.utterances}
        stored[plan.file] = (
            rows.take(np.array([position[u.key] for u in plan.utterances], dtype=np.int64)),
            [failure for failure in failures if failure[0] in keys],
        )
    return stored


def noisy_decoder(
    perturbation: Perturbation, utterances: Sequence[Utterance], unusable: dict[str, str], max_seconds: float
) -> Decoder:
    """A decoder that mixes the perturbation's noise into every clip; babble talks from `utterances`."""
    by_key = {u.key: u for u in utterances if u.media_path is not None}

    def clean(key: str, sample_rate: int) -> np.ndarray:
        return decode_utterance(by_key[key], sample_rate, max_seconds, unusable)

    maker = NoiseMaker(perturbation, list(by_key), clean)

    def decode(utterance: Utterance, sample_rate: int, seconds: float, reasons: dict[str, str]) -> np.ndarray:
        return maker.apply(utterance.key, decode_utterance(utterance, sample_rate, seconds, reasons), sample_rate)

    return decode


def _with_transcripts(utterances: Sequence[Utterance], transcripts: Sequence[str]) -> list[Utterance]:
    return [dataclasses.replace(u, transcript=t) for u, t in zip(utterances, transcripts)]


def _dataset(run: LoadedRun, split: str, rows: SplitArrays) -> DialogueDataset:
    """The run's dataset of `rows`: standardised with the run's statistics; end to end, with token ids."""
    dataset = dataset_from_arrays(split, rows, run.modalities, run.statistics)
    if run.config.end_to_end_mode:
        encoder = run.config.end_to_end.encoder
        dataset.tokens = packed_tokens(split, rows, load_tokenizer(encoder), encoder)
    return dataset


def _score(run: LoadedRun, dataset: DialogueDataset, absent: frozenset[str]) -> SplitEvaluation:
    """The run's model on `dataset`, with the `absent` modalities masked (model.fusion.ModalityDropout)."""
    from model.engine import deterministic_kernels

    dropouts = [module for module in run.model.modules() if isinstance(module, ModalityDropout)]
    for module in dropouts:
        module.absent = absent
    try:
        with deterministic_kernels(run.config.train.deterministic):
            return evaluate_split(
                run.model,
                dataset,
                batch_dialogues=run.config.train.batch_dialogues,
                device=run.device,
                dtype=run.dtype,
                label_set=run.label_set,
            )
    finally:
        for module in dropouts:
            module.absent = frozenset()


def _absent(perturbation: Perturbation | None) -> frozenset[str]:
    return frozenset([perturbation.missing]) if perturbation is not None and perturbation.missing else frozenset()


def predict(
    run: LoadedRun, found: PredictInput, perturbation: Perturbation | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One output row per utterance (key, label, a probability per emotion, gold, or a reason), and the
    metrics over the rows with gold labels (None when there are none)."""
    utterances = found.utterances
    asr = None
    if perturbation is not None and perturbation.changes_text:
        asr = simulate_asr_errors([u.key for u in utterances], [u.transcript for u in utterances],
                                  perturbation.wer, perturbation.seed)
        utterances = _with_transcripts(utterances, asr.transcripts)
    decode = decode_utterance
    if perturbation is not None and perturbation.changes_audio:
        decode = noisy_decoder(perturbation, utterances, found.unusable, run.extraction.max_audio_seconds)
    plans = plan_shards(utterances, list(dict.fromkeys(u.split for u in utterances)), run.extraction.shard_dialogues)
    rows, failed = compute_rows(
        run, plans, run.modalities.families, found.unusable, decode, reuse_store=perturbation is None
    )
    absent = _absent(perturbation)
    uses_audio = bool(run.modalities.audio_families) and "audio" not in absent
    labels = run.label_set.labels
    output: dict[str, dict[str, Any]] = {}
    for split in dict.fromkeys(u.split for u in utterances):
        indices = np.flatnonzero(np.array([key.startswith(f"{split}/") for key in rows.keys]))
        split_rows = rows.take(indices)
        # Every utterance is predicted: rows reused from the store may hold NO_LABEL, which evaluate_split would
        # leave unscored, so the labels the dataset carries are placeholders (gold comes from the input).
        split_rows.emotion = np.zeros_like(split_rows.emotion)
        evaluation = _score(run, _dataset(run, split, split_rows), absent)
        for key, pred, probabilities in zip(evaluation.keys, evaluation.pred.tolist(), evaluation.probabilities):
            record: dict[str, Any] = {"key": key}
            if uses_audio and key in failed:
                record.update({"label": None, **dict.fromkeys(labels), "reason": failed[key]})
            else:
                record.update({"label": labels[pred], **dict(zip(labels, map(float, probabilities)))})
            if found.gold.get(key) is not None:
                record["gold"] = found.gold[key]
            output[key] = record
    records = [output[u.key] for u in found.utterances]
    scored = [r for r in records if r.get("gold") is not None and r["label"] is not None]
    metrics = None
    if scored:
        gold = np.array([run.label_set.index(r["gold"]) for r in scored])
        pred = np.array([run.label_set.index(r["label"]) for r in scored])
        metrics = classification_metrics(gold, pred, labels).to_dict()
        metrics["unlabelled_for_failure"] = sum(r.get("gold") is not None and r["label"] is None for r in records)
        if asr is not None:
            metrics["realised_wer"] = asr.wer
    return records, metrics


def write_predictions(
    records: Sequence[dict[str, Any]], out: Path, labels: Sequence[str] = MELD_EMOTIONS.labels
) -> Path:
    """The rows as CSV (for a .csv name, a probability column per label of the run's `labels`) or JSON lines,
    written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["key", "label", *labels, "gold", "reason"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in record.items()} for record in records)
        atomic_write_text(out, text.getvalue())
    else:
        atomic_write_text(out, "".join(json.dumps(record) + "\n" for record in records))
    return out


def robustness_path(run_dir: Path, perturbation: Perturbation, split: str = "test") -> Path:
    """Where `evaluate_perturbed` writes a condition's scores in a run folder (named by the split unless test)."""
    return RunFolder(run_dir).robustness_path(perturbation.condition, perturbation.seed, split)


def _replace_rows(rows: SplitArrays, fresh: SplitArrays, families: Sequence[str]) -> None:
    """Put `fresh`'s features of `families` into `rows`, matched by key."""
    position = {key: i for i, key in enumerate(fresh.keys)}
    missing = [key for key in rows.keys if key not in position]
    if missing:
        raise CorpusError(
            f"the corpus lacks {len(missing)} utterances of the store (first {missing[0]}); "
            "the store was extracted from another corpus"
        )
    order = np.array([position[key] for key in rows.keys], dtype=np.int64)
    for family in families:
        rows.features[family] = fresh.features[family][order]
        rows.valid[family] = fresh.valid[family][order]


def _store_plans(run: LoadedRun, split: str, utterances: Sequence[Utterance]) -> list[ShardPlan]:
    """The store's own shards of `split` as plans over `utterances`."""
    by_dialogue: dict[int, list[Utterance]] = {}
    for utterance in sorted(utterances, key=lambda u: u.utterance_id):
        by_dialogue.setdefault(utterance.dialogue_id, []).append(utterance)
    return [
        ShardPlan(
            file=entry["file"],
            split=split,
            utterances=tuple(u for d in entry["dialogues"] for u in by_dialogue.get(d, [])),
        )
        for entry in run.store.shards(split)
    ]


def evaluate_perturbed(run: LoadedRun, perturbation: Perturbation, split: str = "test") -> dict[str, Any]:
    """Score `split` of the run's store under `perturbation`; write and return the record (module docstring)."""
    rows = run.store.read_split(split, families=run.modalities.families)
    audio_families = list(run.modalities.audio_families)
    record_extra: dict[str, Any] = {}
    if perturbation.changes_audio and audio_families:
        corpus = read_meld(run.extraction.corpus, splits=(split,))
        unusable = unusable_clips(corpus.flags)
        decode = noisy_decoder(perturbation, corpus.utterances, unusable, run.extraction.max_audio_seconds)
        fresh, _ = compute_rows(run, _store_plans(run, split, corpus.utterances), audio_families, unusable, decode)
        _replace_rows(rows, fresh, audio_families)
    if perturbation.changes_text:
        asr = simulate_asr_errors(rows.keys, rows.transcripts, perturbation.wer, perturbation.seed)
        rows.transcripts = asr.transcripts
        record_extra["realised_wer"] = asr.wer
        text_family = run.modalities.text_family
        if text_family is not None:
            utterances = store_utterances(split, rows)
            fresh, _ = compute_rows(run, _store_plans(run, split, utterances), [text_family], {})
            _replace_rows(rows, fresh, [text_family])
    evaluation = _score(run, _dataset(run, split, rows), _absent(perturbation))
    record = {
        **evaluation_record(evaluation, run.floor_label, run.checkpoint, run.epoch),
        "perturbation": {**dataclasses.asdict(perturbation), "condition": perturbation.condition},
        **record_extra,
    }
    path = robustness_path(run.run_dir, perturbation, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, _json_safe(record))
    log.info("%s under %s: weighted F1 %.2f", split, perturbation.describe(), 100 * record["weighted_f1"])
    return record


def _json_safe(value: Any) -> Any:
    """Infinite SNRs as the string 'inf' (JSON has no infinity)."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value
