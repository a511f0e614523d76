"""Extraction actors on a Ray that offers 2 GPUs (Ray's logical GPUs, so it runs on a CPU machine).

Each actor must keep the GPU Ray gave it when it started for every shard it computes, and
two actors must hold different GPUs; openSMILE then runs as tasks beside them, and the
store comes out whole, with the speech family beside the paper's.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import ray

from cluster.ray_config import RayConfig
from cluster.ray_runtime import RayResources, ray_session
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.extract_config import ExtractConfig
from extract.feature_store import FeatureStore
from extract.manifest import MANIFEST_NAME
from extract.meld import read_meld
from extract.pipeline import plan_workers, run_extraction, start_actors
from extract.shard_plan import plan_shards
from extract.speech_features import SpeechFeatureConfig
from extract.text_features import TextFeatureConfig
from extract.tiny_speech_encoder import TinySpeechEncoderConfig, build_tiny_speech_encoder
from model.dialogue_data import DialogueDataConfig, store_modalities
from model.layer_mix import LayerBlock
from tests.demo_corpora import corpus_text_encoder

pytestmark = pytest.mark.integration

SPEECH_HIDDEN = 16
SPEECH_LAYERS = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_demo_corpus(
        tmp_path_factory.mktemp("corpus"),
        DemoCorpusConfig(
            train_dialogues=4, dev_dialogues=1, test_dialogues=1, min_utterances=2, max_utterances=3, clip_format="wav"
        ),
    )


@pytest.fixture(scope="module")
def two_gpu_ray():
    with ray_session(RayConfig(num_workers=3, num_gpus=2)) as resources:
        yield resources


@pytest.fixture(scope="module")
def config(corpus, tmp_path_factory) -> ExtractConfig:
    text_model = corpus_text_encoder(corpus, tmp_path_factory.mktemp("text"), hidden_size=8)
    speech_model = build_tiny_speech_encoder(
        tmp_path_factory.mktemp("speech"),
        TinySpeechEncoderConfig(kind="wavlm", hidden_size=SPEECH_HIDDEN, num_layers=SPEECH_LAYERS),
    )
    return ExtractConfig(
        corpus=str(corpus),
        store_root=str(tmp_path_factory.mktemp("stores")),
        families=["opensmile", "text", "speech"],
        shard_dialogues=1,
        text=TextFeatureConfig(model=str(text_model)),
        speech=SpeechFeatureConfig(model=str(speech_model), layers="all", pooling="mean_std"),
        ray=RayConfig(num_workers=3, num_gpus=2),
    )


def test_each_actor_keeps_its_own_gpu_for_its_life(config, corpus, two_gpu_ray):
    assert two_gpu_ray.gpus == 2
    plan = plan_workers(config.families, two_gpu_ray, gpus_per_task=1.0, shards=6)
    assert (plan.actors, plan.actor_families, plan.task_families) == (2, ("text", "speech"), ("opensmile",))
    actors = start_actors(config, plan)
    try:
        shards = plan_shards(read_meld(corpus, check_clips=False).utterances, config.splits, 1)
        before = ray.get([actor.placement.remote() for actor in actors])
        # Three rounds of shards on each actor: a reused task worker would drift, an actor must not.
        calls = [(i % 2, actors[i % 2].extract.remote(shard.utterances, {})) for i, shard in enumerate(shards)]
        results = [(owner, ray.get(ref)) for owner, ref in calls]
        after = ray.get([actor.placement.remote() for actor in actors])
    finally:
        for actor in actors:
            ray.kill(actor)
    for start, end in zip(before, after):
        assert start["pid"] == end["pid"]
        assert len(start["gpu_ids_at_start"]) == 1
        assert start["gpu_ids_at_start"] == start["gpu_ids"] == end["gpu_ids"]
        assert start["cuda_visible_devices"] == end["cuda_visible_devices"] == start["gpu_ids"][0]
        assert start["torch_threads"] == 1
    assert before[0]["gpu_ids"] != before[1]["gpu_ids"]
    for owner, families in results:
        assert [result.family for result in families] == ["text", "speech"]
        for result in families:
            assert result.gpu_ids == before[owner]["gpu_ids"]
            assert result.host == before[owner]["host"]


def test_a_two_gpu_run_writes_a_whole_store_with_the_speech_family(config, corpus, two_gpu_ray):
    store = run_extraction(config)
    features = FeatureStore.open(store)
    speech_width = (SPEECH_LAYERS + 1) * 2 * SPEECH_HIDDEN
    assert features.families == {"opensmile": 6552, "text": 4 * 8, "speech": speech_width}
    assert features.verify() == []
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    assert len(manifest["shards"]) == 6 and manifest["failed"] == []
    keys = sorted(u.key for u in read_meld(corpus, check_clips=False).utterances)
    train = features.read_split("train")
    assert sorted(train.keys) == [key for key in keys if key.startswith("train/")]
    assert train.valid["speech"].all() and np.isfinite(train.features["speech"]).all()
    assert len(train.feature_names["speech"]) == speech_width
    # The speech family goes into the audio vector beside openSMILE; its stored layers are mixed by
    # learned weights in front of the head, or given to it side by side.
    modalities = store_modalities(features, DialogueDataConfig(audio_families=["opensmile", "speech"]))
    assert modalities.audio_families == ["opensmile", "speech"]
    assert modalities.audio_dim == 6552 + speech_width
    assert modalities.layer_blocks == (LayerBlock(offset=6552, layers=SPEECH_LAYERS + 1, width=2 * SPEECH_HIDDEN),)
    assert modalities.head_audio_dim == 6552 + 2 * SPEECH_HIDDEN
    side_by_side = DialogueDataConfig(audio_families=["speech"], speech_layers="concat")
    assert store_modalities(features, side_by_side).head_audio_dim == speech_width


def test_plan_workers_gives_one_actor_per_gpu_share_or_cpu_slot():
    gpu_node = RayResources(cpus=32, gpus=8, nodes=1)
    half = plan_workers(["opensmile", "openl3", "text"], gpu_node, gpus_per_task=0.5, shards=100)
    assert half.actors == 16 and half.actor_options == {"num_cpus": 1, "num_gpus": 0.5}
    assert half.task_families == ("opensmile",)
    assert plan_workers(["openl3"], gpu_node, gpus_per_task=1.0, shards=3).actors == 3
    cpus = RayResources(cpus=2, gpus=0, nodes=1)
    cpu_plan = plan_workers(["opensmile", "openl3", "text"], cpus, gpus_per_task=1.0, shards=9)
    assert cpu_plan.actors == 2 and cpu_plan.actor_options == {"num_cpus": 1}
    assert cpu_plan.actor_families == ("opensmile", "openl3", "text") and cpu_plan.task_families == ()
    # One CPU beside a GPU: the actor holds no CPU, so the openSMILE tasks can still run.
    lean = plan_workers(["opensmile", "text"], RayResources(cpus=1, gpus=1, nodes=1), gpus_per_task=1.0, shards=4)
    assert lean.actors == 1 and lean.actor_options == {"num_cpus": 0, "num_gpus": 1.0}
    # openSMILE alone on a GPU cluster needs no GPU actor.
    assert plan_workers(["opensmile"], gpu_node, gpus_per_task=1.0, shards=4).actor_options == {"num_cpus": 1}
