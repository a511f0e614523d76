"""The extraction pipeline's Ray driver: corpus -> long-lived Ray actors per worker slot -> HDF5 feature store.

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

Inside an actor, decoding overlaps the models (`extract.shard_extraction`, which holds the
per-shard work without Ray): a thread decodes the shard's clips in order, at every rate the
families need, into a queue of at most `ShardExtractors.CLIPS_PER_GROUP` (16) clips, while the
models work on the clips decoded before; ffmpeg runs as a subprocess, so the two really run at once.

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

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
import transformers
from tqdm import tqdm

from cluster.config import write_resolved_config
from cluster.durable_files import exclusive_lock, is_temp_file
from cluster.pause_points import pause_point
from cluster.ray_runtime import RayResources, ray_session
from extract.corpus_reader import read_corpus
from extract.extract_config import ExtractConfig, feature_settings, store_path
from extract.feature_store import summarise
from extract.iemocap import IemocapConfig, IemocapCorpus
from extract.labels import LabelSet
from extract.manifest import (
    MANIFEST_NAME,
    SHARD_FOLDER,
    FeatureStoreError,
    Manifest,
    ShardEntry,
    UncontainedPathError,
    family_dims,
    new_manifest,
    plan_problems,
    planned_shard,
    read_manifest,
    record_shard,
    set_corpus,
    set_plan,
    store_label_set,
    write_manifest,
)
from extract.meld import CorpusError
from extract.openl3 import OpenL3SetupError, resolve_weights_file
from extract.shard_extraction import FamilyResult, ShardExtractors, shard_rows, unusable_clips
from extract.shard_files import (
    ChecksumCache,
    WrittenShard,
    shard_entry,
    shard_problem,
    shard_shapes_problem,
    write_shard,
)
from extract.shard_plan import ShardPlan, plan_shards
from extract.speech_features import SpeechEncoderError, speech_feature_dim
from extract.split_arrays import SplitArrays
from extract.text_features import TextEncoderError, text_feature_dim
from extract.utterance import Utterance

log = logging.getLogger(__name__)

MODEL_FAMILIES: tuple[str, ...] = ("openl3", "text", "speech")
"""Families whose extractor is a neural network: they run in actors that hold a GPU when the cluster has one."""
ACTOR_QUEUE_DEPTH = 1
"""Shards sent to one actor at a time. An actor runs its calls one after another, so a second
queued shard would save only the driver's round trip (milliseconds: the next shard is sent
before the finished one is written), but it would be promised to a busy actor while another
may go idle at the end of the run."""


def _gpu_ids() -> list[str]:
    """The GPUs Ray assigned to this worker; empty on CPUs."""
    return [str(gpu) for gpu in ray.get_gpu_ids()]


def _stamped(results: list[FamilyResult]) -> list[FamilyResult]:
    """Results marked with the GPUs of the Ray worker that computed them."""
    gpu_ids = _gpu_ids()
    for result in results:
        result.gpu_ids = gpu_ids
    return results


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
        self.gpu_ids_at_start = _gpu_ids()

    def extract(self, utterances: Sequence[Utterance], unusable: dict[str, str]) -> list[FamilyResult]:
        """This actor's families of one shard."""
        return _stamped(self.extractors.extract(utterances, unusable))

    def placement(self) -> dict[str, Any]:
        """Where this actor runs: host, the GPUs assigned at start and now, and CUDA_VISIBLE_DEVICES."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "gpu_ids_at_start": self.gpu_ids_at_start,
            "gpu_ids": _gpu_ids(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_threads": torch.get_num_threads(),
            "cuda_device": str(torch.cuda.get_device_properties(0).uuid) if torch.cuda.is_available() else None,
        }


@ray.remote(num_cpus=1)
def _opensmile_task(config: ExtractConfig, utterances: Sequence[Utterance], unusable: dict[str, str]) -> FamilyResult:
    """Ray task: openSMILE for one shard, beside the GPU actors (it is CPU-only and light to build)."""
    return _stamped(ShardExtractors(config, ["opensmile"]).extract(utterances, unusable))[0]


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
        dims = family_dims(manifest)
        todo = [plan for plan in plans if not _is_done(store_dir, plan, entries, dims, cache)]
        cache.save()
        write_manifest(store_dir, manifest)
        log.info("store %s: %d of %d shards to extract", store_dir, len(todo), len(plans))
        if todo:
            item_names = corpus.turn_names if isinstance(corpus, IemocapCorpus) else None
            unusable = unusable_clips(corpus.flags, item_names)
            _extract_shards(_ShardWork(config=config, store_dir=store_dir, manifest=manifest, todo=todo,
                                       unusable=unusable, total=len(plans)))
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


@dataclass(frozen=True)
class _ShardWork:
    """The shards left to extract in one run, and what their results are written into."""

    config: ExtractConfig
    """The extraction config."""
    store_dir: Path
    """The store folder the shards are written into."""
    manifest: Manifest
    """The store's manifest, updated and rewritten after each shard."""
    todo: list[ShardPlan]
    """The planned shards not yet in the store."""
    unusable: dict[str, str]
    """Utterance key -> reason of each clip the corpus reader refused."""
    total: int
    """Shards in the whole plan, done or not: the progress bar's length."""


def _extract_shards(work: _ShardWork) -> None:
    config = work.config
    with ray_session(config.ray) as resources:
        log.info("Ray offers %g CPUs and %g GPUs on %d node(s)", resources.cpus, resources.gpus, resources.nodes)
        plan = plan_workers(config.families, resources, config.gpus_per_task, len(work.todo))
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
            _run_shards(work, plan, actors, config_ref)
        finally:
            for actor in actors:
                ray.kill(actor)


def _run_shards(
    work: _ShardWork, plan: WorkerPlan, actors: list[ray.actor.ActorHandle], config_ref: ray.ObjectRef
) -> None:
    config, store_dir, manifest, unusable, total = work.config, work.store_dir, work.manifest, work.unusable, work.total
    # Longest shards first, so the last ones, which may leave an actor idle, are the shortest.
    waiting = sorted(work.todo, key=lambda shard: _shard_cost(shard, config.max_audio_seconds), reverse=True)
    in_flight: dict[ray.ObjectRef, tuple[ShardPlan, int | None]] = {}
    load = [0] * len(actors)
    pending: dict[str, dict[str, FamilyResult]] = {}
    rows_done = shards_done = 0
    started = time.perf_counter()
    bar = tqdm(total=total, initial=total - len(work.todo), unit="shard", desc="extracting features", disable=None)
    # openSMILE tasks may fall behind fast GPU actors: shards waiting for them are held at the
    # driver, so no new shard starts while twice as many as there are actors are unfinished.
    most_pending = 2 * len(actors)

    def send() -> None:
        while waiting and min(load) < ACTOR_QUEUE_DEPTH and len(pending) < most_pending:
            shard = waiting.pop(0)
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
                rows = shard_rows(shard, results, store_label_set(manifest))
                written = write_shard(store_dir / shard.file, shard.split, rows)
                shards_done += 1
                pause_point(f"extract-shard-written-{shards_done}")
                _record(manifest, shard, rows, written, results)
                write_manifest(store_dir, manifest)
                rows_done += len(rows)
                progress.update(1)
                pause_point(f"extract-shard-recorded-{shards_done}")
                progress.set_postfix_str(f"{rows_done / (time.perf_counter() - started):.1f} utt/s")
