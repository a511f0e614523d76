"""The trainable text encoder (same vector as the frozen extraction, clear errors), layer-wise parameter
groups, the per-group warmup/decay schedule and the DeepSpeed config of end-to-end training."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel

from cluster.config import ConfigError
from extract.text_features import TextEncoderError, TextFeatureConfig, TextFeatureExtractor
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from extract.utterance import Utterance
from model.deepspeed_config import (
    EngineConfig,
    MonitorConfig,
    build_deepspeed_config,
    micro_batch_dialogues,
    resolve_precision,
)
from model.lr_schedule import LRScheduleConfig, build_lr_scheduler, schedule_steps
from model.param_groups import ParamGroupsConfig, build_param_groups, layer_depth
from model.run_folder import RunFolder
from model.text_encoder import TextEncoder, TextEncoderConfig, load_tokenizer

HIDDEN = 16
LAYERS = 5
LINES = ["We were on a break!", "Okay.", "I can't believe you two are still fighting about this.", "Oh my God!"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    config = TinyEncoderConfig(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=2, intermediate_size=32)
    return build_tiny_text_encoder(tmp_path_factory.mktemp("tiny"), LINES * 3, config)


def utterances() -> list[Utterance]:
    return [
        Utterance(
            split="dev", dialogue_id=0, utterance_id=i, speaker="Ross", transcript=text, transcript_raw=text,
            emotion="neutral", sentiment="neutral", media_path=None, start_time=0.0, end_time=1.0,
        )
        for i, text in enumerate(LINES)
    ]


def test_in_graph_vector_equals_the_frozen_feature(tiny_model):
    config = TextEncoderConfig(model=str(tiny_model))
    encoder = TextEncoder(config).eval()
    tokenizer = load_tokenizer(config)
    encoded = tokenizer(LINES, padding=True, return_tensors="pt")
    vectors = encoder(encoded["input_ids"], encoded["attention_mask"])
    assert vectors.shape == (len(LINES), 4 * HIDDEN) == (len(LINES), encoder.dim)
    assert vectors.requires_grad, "a trainable encoder builds the vector inside the autograd graph"
    features = TextFeatureExtractor(TextFeatureConfig(model=str(tiny_model)))(utterances())
    np.testing.assert_allclose(vectors.detach().numpy(), features, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients(tiny_model):
    tokenizer = load_tokenizer(TextEncoderConfig(model=str(tiny_model)))
    encoded = tokenizer(LINES, padding=True, return_tensors="pt")
    gradients = []
    for checkpointing in (False, True):
        encoder = TextEncoder(TextEncoderConfig(model=str(tiny_model), activation_checkpointing=checkpointing)).eval()
        encoder(encoded["input_ids"], encoded["attention_mask"]).square().sum().backward()
        gradients.append(encoder.model.encoder.layer[0].attention.self.query.weight.grad.clone())
    assert gradients[0].abs().max() > 0
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-5, atol=1e-7)


def test_a_frozen_encoder_needs_no_gradient_and_never_trains(tiny_model):
    encoder = TextEncoder(TextEncoderConfig(model=str(tiny_model), freeze=True))
    encoder.train()
    assert not encoder.training and not any(module.training for module in encoder.modules())
    assert not any(parameter.requires_grad for parameter in encoder.parameters())
    tokenizer = load_tokenizer(encoder.config)
    encoded = tokenizer(LINES, padding=True, return_tensors="pt")
    assert not encoder(encoded["input_ids"], encoded["attention_mask"]).requires_grad


def test_an_encoder_built_on_the_meta_device_has_the_pretrained_shapes_and_reads_no_weight(tiny_model):
    """What `cmroberta verify` compares with a checkpoint: transformers refuses `from_pretrained` on meta."""
    loaded = TextEncoder(TextEncoderConfig(model=str(tiny_model)))
    with torch.device("meta"):
        shapes_only = TextEncoder(TextEncoderConfig(model=str(tiny_model)))
    assert {name: tensor.shape for name, tensor in shapes_only.state_dict().items()} == {
        name: tensor.shape for name, tensor in loaded.state_dict().items()
    }
    assert {tensor.device.type for tensor in shapes_only.state_dict().values()} == {"meta"}
    assert shapes_only.dim == loaded.dim


def test_unusable_encoders_get_one_clear_error(tmp_path):
    shallow = tmp_path / "shallow"
    RobertaModel(RobertaConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8,
                               vocab_size=300)).save_pretrained(shallow)
    with pytest.raises(TextEncoderError, match="has 2 hidden layers.*at least 4"):
        TextEncoder(TextEncoderConfig(model=str(shallow)))
    with pytest.raises(TextEncoderError, match="not available offline.*hf download"):
        TextEncoder(TextEncoderConfig(model="nobody/no-such-encoder-anywhere"))
    with pytest.raises(TextEncoderError, match="does not exist"):
        TextEncoder(TextEncoderConfig(model=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="context_window"):
        TextEncoderConfig(context_window=-1)


def test_too_long_max_tokens_is_refused(tiny_model):
    with pytest.raises(TextEncoderError, match="max_tokens=4096"):
        load_tokenizer(TextEncoderConfig(model=str(tiny_model), max_tokens=4096))


def test_layer_depths_of_roberta_names():
    assert layer_depth("embeddings.word_embeddings.weight", 24) == 0
    assert layer_depth("model.embeddings.LayerNorm.bias", 24) == 0
    assert layer_depth("encoder.layer.0.attention.self.query.weight", 24) == 1
    assert layer_depth("encoder.layer.23.output.LayerNorm.weight", 24) == 24
    assert layer_depth("pooler.dense.weight", 24) == 24


def test_param_groups_decay_per_layer_and_spare_biases_and_norms(tiny_model):
    # The encoder's decay is decoupled and spares vectors; the head's is the paper's coupled L2 on everything.
    encoder = TextEncoder(TextEncoderConfig(model=str(tiny_model)))
    head = nn.Sequential(nn.Linear(encoder.dim, 8), nn.LayerNorm(8), nn.Linear(8, 7))
    config = ParamGroupsConfig(encoder_lr=2e-5, layer_decay=0.5, encoder_weight_decay=0.01)
    groups = build_param_groups(encoder.model, encoder.num_layers, head, config, head_lr=1e-3, head_weight_decay=3e-4)
    by_name = {group["name"]: group for group in groups}
    for depth in range(LAYERS + 1):
        expected = 2e-5 * 0.5 ** (LAYERS - depth)
        assert by_name[f"encoder.depth{depth:02d}"]["lr"] == pytest.approx(expected)
        assert by_name[f"encoder.depth{depth:02d}.no_decay"]["lr"] == pytest.approx(expected)
    assert by_name["head"]["lr"] == 1e-3 and "head.no_decay" not in by_name
    assert by_name["head"]["weight_decay"] == 3e-4 and not by_name["head"]["decoupled_weight_decay"]
    assert by_name["encoder.depth01"]["weight_decay"] == 0.01 and by_name["encoder.depth01"]["decoupled_weight_decay"]
    # Every trainable parameter in exactly one group (the frozen pooler in none); no encoder decay on vectors.
    trainable = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in trainable)
    for group in groups:
        if group["name"] == "head":
            assert len(group["params"]) == len(list(head.parameters()))
            continue
        vectors = [p.ndim == 1 for p in group["params"]]
        assert all(vectors) if group["name"].endswith("no_decay") else not any(vectors)
        assert (group["weight_decay"] == 0.0) == group["name"].endswith("no_decay")
    layer_zero = by_name["encoder.depth01"]["params"]
    assert any(p is encoder.model.encoder.layer[0].attention.self.query.weight for p in layer_zero)
    frozen = TextEncoder(TextEncoderConfig(model=str(tiny_model), freeze=True))
    frozen_groups = build_param_groups(frozen.model, frozen.num_layers, head, config, head_lr=1e-3, head_weight_decay=0)
    assert [g["name"] for g in frozen_groups] == ["head"]


@pytest.mark.parametrize("decay", ["constant", "linear", "cosine"])
def test_schedule_scales_each_encoder_groups_own_rate_and_keeps_the_heads(decay):
    weights = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD([
        {"name": "encoder.depth02", "params": [weights[0]], "lr": 1.0},
        {"name": "encoder.depth01", "params": [weights[1]], "lr": 0.1},
        {"name": "head", "params": [weights[2]], "lr": 0.3},
    ])
    # 2 steps an epoch: 2 epochs of warmup, a horizon of 7 epochs (not the 50 of max_epochs).
    config = LRScheduleConfig(warmup_epochs=2, decay_epochs=7, decay=decay, min_lr_ratio=0.1)
    scheduler = build_lr_scheduler(optimizer, config, steps_per_epoch=2, max_epochs=50)
    seen = []
    for _ in range(16):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for step, (first, second, head) in enumerate(seen):
        assert head == 0.3, "the head's rate is constant, as in every text mode"
        if step < 4:
            expected = (step + 1) / 4
        else:
            progress = min(1.0, (step - 4) / 10)
            remaining = {"constant": 1.0, "linear": 1 - progress, "cosine": (1 + math.cos(math.pi * progress)) / 2}
            expected = 1.0 if decay == "constant" else 0.1 + 0.9 * remaining[decay]
        assert first == pytest.approx(expected) and second == pytest.approx(0.1 * expected)


def test_schedule_horizon_is_capped_by_the_run_and_checked():
    assert schedule_steps(LRScheduleConfig(warmup_epochs=0.5, decay_epochs=20), 33, max_epochs=200) == (16, 660)
    assert schedule_steps(LRScheduleConfig(decay_epochs=20), 4, max_epochs=5) == (4, 20)
    with pytest.raises(ValueError, match="must not exceed decay_epochs"):
        LRScheduleConfig(warmup_epochs=3, decay_epochs=2)


def test_deepspeed_config_defaults_and_accumulation():
    config = build_deepspeed_config(EngineConfig(), micro_batch_dialogues=4, world_size=3,
                                    gradient_accumulation_steps=2)
    if not torch.cuda.is_available():
        assert resolve_precision("auto") == "fp32" and not config["bf16"]["enabled"]
    assert config["zero_optimization"]["stage"] == 2
    assert config["train_batch_size"] == 4 * 2 * 3 and config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 1.0
    assert json.dumps(config)
    assert micro_batch_dialogues(32, world_size=3, gradient_accumulation_steps=2) == 6
    with pytest.raises(ValueError, match="zero_stage"):
        EngineConfig(zero_stage=4)


@pytest.mark.parametrize("stage", [1, 2])
def test_one_rank_in_fp32_runs_without_zero_partitions(stage):
    def built(world_size, precision):
        config = build_deepspeed_config(EngineConfig(zero_stage=stage, precision=precision), 4, world_size)
        return config["zero_optimization"]["stage"]

    # Nothing to partition and no master weights to keep: stage 0.
    assert built(1, "fp32") == 0
    # Several ranks share the state; in bf16 the fp32 copy is the master weights.
    assert built(2, "fp32") == stage
    assert built(1, "bf16") == stage


def test_monitor_sections_point_into_the_run_folder(tmp_path):
    sections = MonitorConfig(csv=True).deepspeed_sections(RunFolder(tmp_path).monitor_folder)
    assert sections["csv_monitor"] == {"enabled": True, "output_path": str(tmp_path / "monitor"), "job_name": "train"}
    assert sections["tensorboard"]["enabled"] is False
    elsewhere = MonitorConfig(tensorboard=False, csv=True, folder=str(tmp_path / "live"), job_name="seed3")
    assert elsewhere.deepspeed_sections(tmp_path)["csv_monitor"]["output_path"] == str(tmp_path / "live")
    assert not MonitorConfig().enabled
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match=r"cmroberta\[monitor\]"):
            MonitorConfig(tensorboard=True).deepspeed_sections(tmp_path)
