"""Speech features from a self-supervised speech encoder: WavLM, HuBERT, wav2vec 2.0, data2vec-audio.

Any Hugging Face audio encoder that `AutoModel` and `AutoFeatureExtractor` load works, from
a hub name already in the local Hugging Face cache or from a local folder; nothing is ever
downloaded (`local_files_only`). An encoder-decoder model (Whisper) contributes its encoder.
Clips are 16 kHz mono, the rate these encoders were trained on.

Each utterance becomes one vector:

    hidden states  the encoder's `hidden_states`: the input to the first transformer layer
                   and the output of each of the L layers, L + 1 in all, each [frames, H]
    layers         'mean_last': the mean of the last `last_layers` of them, one [frames, H];
                   'all': every one of the L + 1, kept apart for a learned weighted sum at
                   training time (model.layer_mix)
    pooling        over the utterance's real frames: their mean (H values a layer), or mean
                   and standard deviation (2H)

Stored widths: H x (1 or 2) for 'mean_last', (L + 1) x H x (1 or 2) for 'all', laid out layer
by layer (each layer's mean, then its sd). The column names say it: `mean.0007`, `sd.0007`,
or `layer03.mean.0007`, so the training side reads the layer count from the store
(model.dialogue_data.stored_layer_count).

Padding never changes an utterance's vector. Models whose feature extractor returns an
attention mask (WavLM, wav2vec 2.0 large with layer-norm feature encoders) run in padded
batches with the mask, and pooling counts only the frames the real samples give
(`_get_feat_extract_output_lengths`). Models without one (HuBERT base, wav2vec 2.0 base:
group-norm feature encoders normalise over the whole padded input, so padding would leak
in) run one utterance per forward pass. Whisper pads every clip to 30 s itself, so its
batches are padding-free by construction; its real frames are the share of the 30 s the
clip fills.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Every self-supervised speech encoder on the hub takes 16 kHz audio."""

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SpeechEncoderError(Exception):
    """A speech encoder that cannot be loaded or used; the message says how to provide one."""


@dataclass(kw_only=True)
class SpeechFeatureConfig:
    """Which speech encoder gives the `speech` family, and how its hidden states become one vector."""

    model: str = "microsoft/wavlm-base-plus"
    """Hugging Face hub name in the local cache (`hf download NAME` once) or a local model folder
    holding config.json, the weights and preprocessor_config.json. Never downloaded at run time."""
    layers: Literal["mean_last", "all"] = "mean_last"
    """'mean_last': the mean of the last `last_layers` hidden states; 'all': every hidden state
    (the L + 1 of an L-layer encoder) stored side by side for a learned weighted sum in training."""
    last_layers: int = 4
    """Hidden states averaged by layers='mean_last' (ignored by 'all')."""
    pooling: Literal["mean", "mean_std"] = "mean"
    """Frames to one vector: the mean over the real frames, or mean and standard deviation."""
    batch_size: int = 8
    """Utterances per forward pass (models without an attention mask run one at a time)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of the encoder; the half types are for GPUs. Features are stored as float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the encoder runs; auto picks the GPU the Ray actor holds, when there is one."""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name a Hugging Face audio model or a local model folder, not an empty string")
        if self.layers not in ("mean_last", "all"):
            raise ValueError(f"layers must be 'mean_last' or 'all', not {self.layers!r}")
        if self.last_layers < 1:
            raise ValueError(f"last_layers must be at least 1, not {self.last_layers}")
        if self.pooling not in ("mean", "mean_std"):
            raise ValueError(f"pooling must be 'mean' or 'mean_std', not {self.pooling!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")


def _model_source(model: str) -> str:
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        raise SpeechEncoderError(
            f"speech model folder {model} does not exist; set speech.model to a folder holding a Hugging Face "
            "audio model (config.json, weights, preprocessor_config.json) or to a hub name in the local cache"
        )
    return model


def _encoder_layers(model_config) -> int:
    config = getattr(model_config, "encoder", None) or model_config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "encoder_layers", None)
    if layers is None:
        raise SpeechEncoderError(f"cannot tell how many layers the speech model {model_config.model_type!r} has")
    return int(layers)


def _hidden_size(model_config) -> int:
    size = getattr(model_config, "hidden_size", None) or getattr(model_config, "d_model", None)
    if size is None:
        raise SpeechEncoderError(f"cannot tell the hidden size of the speech model {model_config.model_type!r}")
    return int(size)


def _load_model_config(config: SpeechFeatureConfig):
    source = _model_source(config.model)
    try:
        model_config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        if Path(source).is_dir():
            raise SpeechEncoderError(
                f"cannot load a speech encoder from folder {source} ({type(error).__name__}); it must hold a Hugging "
                "Face audio model: config.json, the weights and preprocessor_config.json"
            ) from None
        raise SpeechEncoderError(
            f"speech model {config.model!r} is not available offline ({type(error).__name__}). Download it "
            f"once (`hf download {config.model} --local-dir DIR`) and set speech.model=DIR"
        ) from None
    layers = _encoder_layers(model_config)
    if config.layers == "mean_last" and config.last_layers > layers + 1:
        raise SpeechEncoderError(
            f"speech model {config.model} has {layers + 1} hidden states; speech.last_layers={config.last_layers} "
            "asks for more (set it lower, or speech.layers='all')"
        )
    return source, model_config


def speech_feature_dim(config: SpeechFeatureConfig) -> int:
    """Stored width for the configured encoder, read from its config alone (no weights loaded)."""
    _, model_config = _load_model_config(config)
    layers = _encoder_layers(model_config) + 1 if config.layers == "all" else 1
    return layers * _hidden_size(model_config) * (2 if config.pooling == "mean_std" else 1)


def speech_feature_names(config: SpeechFeatureConfig, hidden_states: int, hidden_size: int) -> list[str]:
    """Column names in stored order, as the module docstring lays them out."""
    stats = ("mean", "sd") if config.pooling == "mean_std" else ("mean",)
    block = [f"{stat}.{i:04d}" for stat in stats for i in range(hidden_size)]
    if config.layers == "mean_last":
        return block
    return [f"layer{layer:02d}.{name}" for layer in range(hidden_states) for name in block]


def _pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SpeechEncoderError("speech.device is 'cuda' but torch sees no GPU here; set speech.device=auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


class SpeechFeatureExtractor:
    """Loads the encoder once; turns 16 kHz clips into [N, dim] float32 vectors."""

    SAMPLE_RATE = SAMPLE_RATE

    def __init__(self, config: SpeechFeatureConfig):
        self.config = config
        source, model_config = _load_model_config(config)
        try:
            self.feature_extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=True)
            model = AutoModel.from_pretrained(source, local_files_only=True, dtype=_DTYPES[config.dtype])
        except (OSError, ValueError) as error:
            raise SpeechEncoderError(f"cannot load the speech model {config.model} ({error})") from None
        if getattr(self.feature_extractor, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise SpeechEncoderError(
                f"speech model {config.model} expects {self.feature_extractor.sampling_rate} Hz audio; the speech "
                f"family decodes at {SAMPLE_RATE} Hz"
            )
        # Whisper and other encoder-decoders: only the encoder turns audio into states.
        self.encoder = model.get_encoder() if model_config.is_encoder_decoder else model
        self.device = _pick_device(config.device)
        self.encoder.to(self.device).eval()
        self.input_name = self.feature_extractor.model_input_names[0]
        self.fixed_length = self.input_name == "input_features"
        self.uses_mask = bool(getattr(self.feature_extractor, "return_attention_mask", False))
        self.hidden_states = _encoder_layers(model_config) + 1
        self.hidden_size = _hidden_size(model_config)
        self.feature_names = speech_feature_names(config, self.hidden_states, self.hidden_size)
        self.dim = len(self.feature_names)
        log.info("speech encoder %s on %s: feature dim %d", config.model, self.device, self.dim)

    def _batches(self, clips: Sequence[np.ndarray]) -> list[list[int]]:
        # Similar lengths in one batch waste less padding; without a mask, padding is not allowed at all.
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        size = self.config.batch_size if self.uses_mask or self.fixed_length else 1
        return [order[start : start + size] for start in range(0, len(order), size)]

    @torch.inference_mode()
    def __call__(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Vectors of 16 kHz mono float32 clips, [len(clips), dim], in their order."""
        for index, clip in enumerate(clips):
            if clip.ndim != 1 or clip.size == 0 or not np.isfinite(clip).all():
                raise ValueError(f"clip {index}: the speech encoder wants finite mono samples, got shape {clip.shape}")
        features = np.zeros((len(clips), self.dim), dtype=np.float32)
        for batch in self._batches(clips):
            features[batch] = self._embed([clips[i] for i in batch]).cpu().numpy()
        return features

    def _embed(self, clips: list[np.ndarray]) -> torch.Tensor:
        padding = "max_length" if self.fixed_length else True
        encoded = self.feature_extractor(
            clips, sampling_rate=SAMPLE_RATE, padding=padding, return_attention_mask=True, return_tensors="pt"
        )
        inputs = encoded[self.input_name].to(self.device, dtype=self.encoder.dtype)
        input_mask = encoded["attention_mask"].to(self.device)
        kwargs = {self.input_name: inputs}
        if self.uses_mask:
            kwargs["attention_mask"] = input_mask
        hidden = self.encoder(**kwargs, output_hidden_states=True).hidden_states
        n_frames = hidden[-1].shape[1]
        input_lengths = input_mask.sum(-1)
        if not self.fixed_length and hasattr(self.encoder, "_get_feat_extract_output_lengths"):
            frame_lengths = self.encoder._get_feat_extract_output_lengths(input_lengths)
        else:
            frame_lengths = torch.ceil(input_lengths * n_frames / inputs.shape[-1])
        frame_mask = torch.arange(n_frames, device=self.device)[None, :] < frame_lengths.to(self.device)[:, None]
        if self.config.layers == "mean_last":
            chosen = torch.stack(hidden[-self.config.last_layers :]).float().mean(0, keepdim=True)
        else:
            chosen = torch.stack(hidden).float()
        return pool_frames(chosen, frame_mask, self.config.pooling)


def pool_frames(states: torch.Tensor, frame_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool states [layers, batch, frames, H] over the frames `frame_mask` [batch, frames] marks real.

    Returns [batch, layers x H x (1 or 2)], each layer's mean and then its sd.
    """
    weights = frame_mask.to(states.dtype)[None, :, :, None]
    count = weights.sum(2).clamp_min(1.0)
    mean = (states * weights).sum(2) / count
    parts = [mean]
    if pooling == "mean_std":
        variance = (((states - mean[:, :, None]) ** 2) * weights).sum(2) / count
        parts.append(variance.sqrt())
    pooled = torch.cat(parts, dim=-1)
    return pooled.permute(1, 0, 2).flatten(1)

