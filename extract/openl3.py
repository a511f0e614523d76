"""OpenL3 audio embeddings in PyTorch, loaded from the official Keras weight files.

The `openl3` package needs TensorFlow and downloads its weights when it installs, so
this is a port: the front end (`extract.openl3_frontend`) reproduces kapre's
spectrograms, and `OpenL3AudioNetwork` is openl3's audio CNN layer for layer, so the
Keras arrays load into it unchanged apart from axis order. Windows from many clips
are batched together through one forward pass, on a GPU when there is one, and each
clip's window embeddings are pooled into one utterance vector (6144 values for the
paper's mel256 model).

For inference the batch-norms after the convolutions are folded into them
(`fold_batch_norms`), channels last: on a CPU this runs about 1.2x the layer-for-layer
network and as fast as openl3's Keras model with TensorFlow's oneDNN kernels, with the
same outputs to 1e-5 (bench/bench_openl3.py). The convolutions are then more than 95% of
the time, in the same oneDNN kernels TensorFlow uses; torch.compile (inductor, frozen
weights) and NNPACK were measured and gained nothing.
"""

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from extract.openl3_frontend import SAMPLE_RATE, InputRepr, OpenL3Spectrogram, count_windows, frame_windows

log = logging.getLogger(__name__)

KERAS_BATCH_NORM_EPSILON = 1e-3
"""Keras's BatchNormalization default; torch's 1e-5 changes outputs where a channel's variance is small."""
OPENL3_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
"""Filters of the three conv blocks and of the final two convolutions."""
RANDOM_WEIGHTS_SEED = 0
"""Seed of `weights = "random"`, so untrained embeddings are the same in every run."""

_INPUT_REPRS: tuple[str, ...] = ("linear", "mel128", "mel256")
_CONTENT_TYPES: tuple[str, ...] = ("music", "env")
_EMBEDDING_SIZES: tuple[int, ...] = (512, 6144)
_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_OFFICIAL_NAME = re.compile(r"openl3_audio_(linear|mel128|mel256)_(music|env)")

# openl3's max-pool over the last feature map for a 6144-value embedding: the map is
# 32 x 24 (linear, mel256) or 16 x 24 (mel128), so every pool gives 4 x 3 cells of 512.
_POOL_FOR_6144: dict[str, tuple[int, int]] = {"linear": (8, 8), "mel128": (4, 8), "mel256": (8, 8)}

WEIGHTS_HELP = (
    "The official files are openl3_audio_<linear|mel128|mel256>_<music|env>.h5 from the openl3 project "
    "(https://github.com/marl/openl3): its 'models' branch holds them as "
    "openl3_audio_<repr>_<content>-v0_4_0.h5.gz (gunzip them; the PyPI sdist does not ship them, its setup.py "
    "downloads them), and an installed openl3 0.4.x keeps them beside openl3/models.py. Set OpenL3Config.weights "
    "to such a file or to the folder that holds it, or to 'random' for untrained weights (tests and demos only)."
)


class OpenL3SetupError(RuntimeError):
    """The OpenL3 model cannot be built as configured: weights missing or unreadable, or the device absent."""


@dataclass(kw_only=True)
class OpenL3Config:
    """How OpenL3 embeddings are computed; the model defaults are openl3's own (mel256, music, 6144 values)."""

    input_repr: InputRepr = "mel256"
    """Spectrogram the network reads: 257-bin linear, or 128 or 256 mel bands. Each has its own weights."""
    content_type: Literal["music", "env"] = "music"
    """Training data of the weights: music videos or environmental sound (AudioSet subsets)."""
    embedding_size: Literal[512, 6144] = 6144
    """Values per 1-second window: 6144 (a 4 x 3 max-pool of the last map) or 512 (a global max-pool)."""
    hop_seconds: float = 0.1
    """Hop between consecutive 1-second windows, in seconds (openl3's default 0.1)."""
    pooling: Literal["mean", "mean_std"] = "mean"
    """Window embeddings to one utterance vector: their mean, or mean and standard deviation (twice the size)."""
    max_seconds: float = 30.0
    """Only the first this-many seconds of a clip are embedded, so a wrongly cut long clip costs no more."""
    weights: str = ""
    """Keras weight file (.h5) or a folder holding the official file names; 'random' for untrained weights."""
    batch_size: int = 64
    """Windows per forward pass, across utterances."""
    device: str = "auto"
    """'auto' (a GPU when there is one), 'cpu', 'cuda' or 'cuda:N'."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype of the CNN on a GPU; the spectrogram is always computed in float32."""

    def __post_init__(self) -> None:
        if self.input_repr not in _INPUT_REPRS:
            raise ValueError(f"input_repr must be one of {', '.join(_INPUT_REPRS)}, not {self.input_repr!r}")
        if self.content_type not in _CONTENT_TYPES:
            raise ValueError(f"content_type must be one of {', '.join(_CONTENT_TYPES)}, not {self.content_type!r}")
        if self.embedding_size not in _EMBEDDING_SIZES:
            raise ValueError(f"embedding_size must be 512 or 6144, not {self.embedding_size!r}")
        if not self.hop_seconds > 0 or round(self.hop_seconds * SAMPLE_RATE) < 1:
            raise ValueError(f"hop_seconds must be at least one sample (1/{SAMPLE_RATE} s), not {self.hop_seconds!r}")
        if self.pooling not in ("mean", "mean_std"):
            raise ValueError(f"pooling must be 'mean' or 'mean_std', not {self.pooling!r}")
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, not {self.max_seconds!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size!r}")
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {self.device!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, not {self.precision!r}")
        if self.device == "cpu" and self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} is for GPUs; with device='cpu' use precision='fp32'")

    @property
    def hop_samples(self) -> int:
        """The hop in samples at 48 kHz."""
        return round(self.hop_seconds * SAMPLE_RATE)


class OpenL3AudioNetwork(nn.Module):
    """openl3's audio CNN on (batch, 1, bins, frames) spectrograms; returns the last feature map.

    Batch-norm on the input; three blocks of two (3x3 conv, batch-norm, ReLU) and a 2x2
    max-pool; a 3x3 conv, batch-norm and ReLU; and the final 3x3 conv with neither.
    Convolutions use "same" padding. `widths` is OpenL3's unless a test wants a small net.
    """

    def __init__(self, widths: tuple[int, int, int, int] = OPENL3_WIDTHS):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(1, eps=KERAS_BATCH_NORM_EPSILON)]
        channels = 1
        for width in widths[:3]:
            for _ in range(2):
                layers += [_conv3x3(channels, width), nn.BatchNorm2d(width, eps=KERAS_BATCH_NORM_EPSILON), nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        layers += [_conv3x3(channels, widths[3]), nn.BatchNorm2d(widths[3], eps=KERAS_BATCH_NORM_EPSILON), nn.ReLU()]
        layers.append(_conv3x3(widths[3], widths[3]))
        self.layers = nn.Sequential(*layers)

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        return self.layers(spectrograms)

    def keras_layers(self) -> list[nn.Conv2d | nn.BatchNorm2d]:
        """The layers that carry weights, in the order Keras saved them."""
        return [layer for layer in self.layers if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d))]


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def fold_batch_norms(network: OpenL3AudioNetwork) -> nn.Sequential:
    """An inference copy of `network` with each batch-norm after a convolution folded into it.

    In eval mode batch-norm is a per-channel affine map, so conv then batch-norm is one
    conv with scaled kernels and a shifted bias: y = (W x + b - mean) * g / sqrt(var + eps) + beta.
    That saves a full pass over every feature map, the largest share of the CNN's memory
    traffic on a CPU. Folding is done in float64; results agree with the unfolded network
    to float32 rounding. The input batch-norm stays: it comes before the first conv's zero
    padding, so folding it would change the padded border.
    """
    layers: list[nn.Module] = []
    modules = list(network.layers)
    index = 0
    while index < len(modules):
        module = modules[index]
        following = modules[index + 1] if index + 1 < len(modules) else None
        if isinstance(module, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
            layers.append(_folded(module, following))
            index += 2
            continue
        layers.append(nn.ReLU(inplace=True) if isinstance(module, nn.ReLU) else module)
        index += 1
    return nn.Sequential(*layers).eval()


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.double() * scale[:, None, None, None])
        fused.bias.copy_((conv.bias.double() - norm.running_mean.double()) * scale + norm.bias.double())
    return fused.to(conv.weight.device)


def pool_embedding(feature_map: torch.Tensor, pool_size: tuple[int, int] | None) -> torch.Tensor:
    """Max-pool the last feature map (batch, C, H, W) and flatten it as Keras does, channels last.

    `pool_size` None pools the whole map (the 512-value embedding). Keras's Flatten walks
    (H, W, C) with C fastest, so the map is transposed before flattening; flattening
    torch's (C, H, W) directly would permute the 6144 values.
    """
    if pool_size is None:
        return feature_map.amax(dim=(2, 3))
    pooled = F.max_pool2d(feature_map, kernel_size=pool_size)
    return pooled.permute(0, 2, 3, 1).flatten(1)


def embedding_pool_size(input_repr: str, embedding_size: int) -> tuple[int, int] | None:
    """openl3's final max-pool for a representation and embedding size; None is a global pool."""
    return _POOL_FOR_6144[input_repr] if embedding_size == 6144 else None


def resolve_weights_file(weights: str, input_repr: str, content_type: str) -> Path:
    """The Keras weight file that `OpenL3Config.weights` names for this representation and content type."""
    if not weights:
        raise OpenL3SetupError(f"OpenL3Config.weights is not set. {WEIGHTS_HELP}")
    path = Path(weights).expanduser()
    official = f"openl3_audio_{input_repr}_{content_type}"
    if path.is_dir():
        candidates = [path / f"{official}.h5", path / f"{official}-v0_4_0.h5"]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            raise OpenL3SetupError(f"the folder {path} has no {official}.h5. {WEIGHTS_HELP}")
        return found
    if not path.is_file():
        raise OpenL3SetupError(f"the OpenL3 weight file {path} does not exist. {WEIGHTS_HELP}")
    if path.suffix == ".gz":
        raise OpenL3SetupError(f"{path} is compressed: gunzip it and set OpenL3Config.weights to the .h5 it gives")
    named = _OFFICIAL_NAME.search(path.name)
    if named and named.group(0) != official:
        raise OpenL3SetupError(
            f"{path} holds the weights of {named.group(0)}, but the config asks for {official} "
            f"(input_repr={input_repr!r}, content_type={content_type!r}); the architectures match, so "
            "the wrong file would load silently and give other embeddings"
        )
    return path


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_weights(path: str | Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, weight arrays) of every layer with weights in a Keras 2 HDF5 file, in saved order."""
    try:
        with h5py.File(path, "r") as file:
            root = file["model_weights"] if "model_weights" in file else file
            if "layer_names" not in root.attrs:
                raise OpenL3SetupError(f"{path} is HDF5 but not a Keras weight file (no 'layer_names' attribute)")
            layers = []
            for layer_name in map(_text, root.attrs["layer_names"]):
                group = root[layer_name]
                weight_names = [_text(name) for name in group.attrs.get("weight_names", [])]
                if weight_names:
                    layers.append((layer_name, [np.asarray(group[name]) for name in weight_names]))
            return layers
    except (OSError, KeyError) as error:
        raise OpenL3SetupError(f"cannot read the OpenL3 weight file {path}: {error}") from None


def _keras_shapes(layer: nn.Conv2d | nn.BatchNorm2d) -> list[tuple[int, ...]]:
    if isinstance(layer, nn.Conv2d):
        out_channels, in_channels, height, width = layer.weight.shape
        return [(height, width, in_channels, out_channels), (out_channels,)]
    return [(layer.num_features,)] * 4


def load_keras_weights(network: OpenL3AudioNetwork, path: str | Path) -> None:
    """Copy a Keras 2 OpenL3 audio weight file into `network`, layer by layer in saved order.

    Layers are matched by position, not by name: Keras numbers names per process
    (batch_normalization_7, conv2d_12), so the names in a file say nothing about the
    architecture. Kernels (kh, kw, in, out) become torch's (out, in, kh, kw); batch-norm
    arrays are [gamma, beta, moving_mean, moving_variance]. A layer named *spectrogram*
    is skipped: files saved before openl3 0.4 stored kapre's DFT kernels there.
    """
    saved = []
    for name, arrays in read_keras_weights(path):
        if "spectrogram" in name:
            log.debug("skipping the front-end layer %r of %s: the spectrogram is computed in torch", name, path)
            continue
        saved.append((name, arrays))
    targets = network.keras_layers()
    if len(saved) != len(targets):
        raise OpenL3SetupError(
            f"{path} has {len(saved)} layers with weights, but OpenL3's audio network has {len(targets)} "
            "(batch-norm, 7 conv + batch-norm pairs, the final conv): it is not an OpenL3 audio weight file"
        )
    with torch.no_grad():
        for position, ((name, arrays), layer) in enumerate(zip(saved, targets, strict=True)):
            expected = _keras_shapes(layer)
            if [array.shape for array in arrays] != expected:
                raise OpenL3SetupError(
                    f"layer {position} ({name!r}) of {path} has arrays of shapes {[a.shape for a in arrays]}, "
                    f"but the OpenL3 network expects a {type(layer).__name__} with {expected}"
                )
            tensors = [torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) for array in arrays]
            if isinstance(layer, nn.Conv2d):
                layer.weight.copy_(tensors[0].permute(3, 2, 0, 1))
                layer.bias.copy_(tensors[1])
            else:
                for parameter, tensor in zip(
                    (layer.weight, layer.bias, layer.running_mean, layer.running_var), tensors, strict=True
                ):
                    parameter.copy_(tensor)


def init_random_weights(network: OpenL3AudioNetwork, seed: int = RANDOM_WEIGHTS_SEED) -> None:
    """He-normal kernels (openl3's Keras initialiser), zero biases and identity batch-norms, from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    for layer in network.keras_layers():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(layer.bias)
        else:
            layer.reset_parameters()


def resolve_device(name: str) -> torch.device:
    """The torch device for `OpenL3Config.device`; 'auto' takes the GPU when CUDA sees one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OpenL3SetupError(f"OpenL3Config.device is {name!r}, but CUDA sees no GPU here; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OpenL3SetupError(f"OpenL3Config.device is {name!r}, but only {torch.cuda.device_count()} GPUs exist")
    return device


class OpenL3Embedder:
    """Utterance embeddings from 48 kHz mono clips: windows, spectrograms, the CNN, then pooling."""

    SAMPLE_RATE = SAMPLE_RATE

    def __init__(self, config: OpenL3Config):
        self.config = config
        self.device = resolve_device(config.device)
        self.autocast_dtype = _PRECISIONS[config.precision] if self.device.type == "cuda" else None
        if config.precision != "fp32" and self.autocast_dtype is None:
            log.warning("OpenL3 precision %r needs a GPU; this run uses float32 on the CPU", config.precision)
        network = OpenL3AudioNetwork()
        if config.weights == "random":
            init_random_weights(network)
            log.warning(
                "OpenL3 weights = 'random': the network is untrained (seed %d), so these embeddings are NOT "
                "OpenL3's and carry no pretrained knowledge; use them for tests and demos only",
                RANDOM_WEIGHTS_SEED,
            )
        else:
            weights_file = resolve_weights_file(config.weights, config.input_repr, config.content_type)
            load_keras_weights(network, weights_file)
            log.info("loaded OpenL3 weights from %s", weights_file)
        self.frontend = OpenL3Spectrogram(config.input_repr).to(self.device)
        self.network = network.eval()
        """The network as loaded, layer for layer openl3's."""
        # Channels-last convolutions are faster with oneDNN on CPUs and cuDNN's bf16/fp16 kernels on GPUs.
        self.inference = fold_batch_norms(network).to(self.device, memory_format=torch.channels_last)
        if self.device.type == "cuda":
            # Every batch but the last has one shape, so cuDNN's autotuning pays for itself.
            torch.backends.cudnn.benchmark = True
        self.pool_size = embedding_pool_size(config.input_repr, config.embedding_size)
        self.max_samples = round(config.max_seconds * SAMPLE_RATE)

    @property
    def dim(self) -> int:
        """Size of one utterance vector after pooling."""
        return self.config.embedding_size * (2 if self.config.pooling == "mean_std" else 1)

    def window_embeddings(self, samples: np.ndarray) -> np.ndarray:
        """One clip's per-window embeddings, shape (n_windows, embedding_size), float32."""
        clip = self._clip_tensor(0, samples)
        windows = frame_windows(clip, self.config.hop_samples)
        with torch.inference_mode():
            parts = [
                self._embed_windows(windows[start : start + self.config.batch_size])
                for start in range(0, len(windows), self.config.batch_size)
            ]
        return torch.cat(parts).cpu().numpy()

    def embed(self, clips: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        """Pooled embeddings of many clips, shape (len(clips), dim), float32.

        Every clip is checked before any is embedded, so a bad one fails fast with its
        index. Windows of consecutive clips share forward passes; each clip's window
        embeddings are summed on the device in float64 as they come, so memory grows with
        the number of clips, not of windows.
        """
        tensors = [self._clip_tensor(index, clip) for index, clip in enumerate(clips)]
        counts = torch.tensor([count_windows(t.numel(), self.config.hop_samples) for t in tensors], dtype=torch.float64)
        size = self.config.embedding_size
        sums = torch.zeros(len(tensors), size, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(sums) if self.config.pooling == "mean_std" else None
        with (
            torch.inference_mode(),
            tqdm(total=int(counts.sum()), unit="window", desc="OpenL3", disable=not progress) as bar,
        ):
            for windows, owners in self._window_batches(tensors):
                embeddings = self._embed_windows(windows).double()
                owners = owners.to(self.device)
                sums.index_add_(0, owners, embeddings)
                if squares is not None:
                    squares.index_add_(0, owners, embeddings.square())
                bar.update(len(windows))
        counts = counts.to(self.device).unsqueeze(1)
        mean = sums / counts
        if squares is None:
            return mean.float().cpu().numpy()
        std = (squares / counts - mean.square()).clamp_min(0.0).sqrt()
        return torch.cat([mean, std], dim=1).float().cpu().numpy()

    def _clip_tensor(self, index: int, samples: np.ndarray) -> torch.Tensor:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"clip {index}: OpenL3 wants mono samples of shape (n,), got shape {samples.shape}")
        if samples.size == 0:
            raise ValueError(f"clip {index} has no samples")
        if not np.isfinite(samples).all():
            raise ValueError(f"clip {index} has NaN or infinite samples")
        return torch.from_numpy(samples[: self.max_samples])

    def _window_batches(self, clips: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(windows, index of the clip each came from), batch_size windows at a time (fewer at the end)."""
        batch_size = self.config.batch_size
        pending: list[torch.Tensor] = []
        owners: list[torch.Tensor] = []
        n_pending = 0
        for index, clip in enumerate(clips):
            windows = frame_windows(clip, self.config.hop_samples)
            start = 0
            while start < len(windows):
                take = min(batch_size - n_pending, len(windows) - start)
                pending.append(windows[start : start + take])
                owners.append(torch.full((take,), index, dtype=torch.long))
                n_pending += take
                start += take
                if n_pending == batch_size:
                    yield torch.cat(pending), torch.cat(owners)
                    pending, owners, n_pending = [], [], 0
        if n_pending:
            yield torch.cat(pending), torch.cat(owners)

    def _embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(batch, 48000) windows to (batch, embedding_size) float32 embeddings on the device."""
        spectrograms = self.frontend(windows.to(self.device, non_blocking=True))
        spectrograms = spectrograms.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            feature_map = self.inference(spectrograms)
        return pool_embedding(feature_map.float(), self.pool_size)
