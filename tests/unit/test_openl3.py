"""OpenL3 port: windows, spectrograms, Keras weight loading and pooling, against references built here.

The official weight files are not available to tests, so the loading tests write
Keras-layout HDF5 files themselves and check the torch forward pass against a numpy
forward pass written from Keras's definitions (channels last, batch-norm epsilon 1e-3,
"same" 3x3 convolutions, flatten in (H, W, C) order).
"""

import logging
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cluster.config import ConfigError, from_dict
from extract.openl3 import (
    OpenL3AudioNetwork,
    OpenL3Config,
    OpenL3Embedder,
    OpenL3SetupError,
    embedding_pool_size,
    load_keras_weights,
    pool_embedding,
    resolve_weights_file,
)
from extract.openl3_frontend import OpenL3Spectrogram, frame_windows, hz_to_mel, mel_filterbank

RATE = 48000
SMALL_WIDTHS = (3, 4, 5, 6)
INPUT_SHAPES = {"linear": (257, 197), "mel128": (128, 199), "mel256": (256, 199)}


# ---- a Keras-layout weight file and a numpy forward pass, both from Keras's conventions ----


def keras_layer_arrays(widths: tuple[int, int, int, int], rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Weights of every weighted layer in Keras order: kernels (kh, kw, in, out); BN [gamma, beta, mean, var].

    Moving variances are far below 1e-3, so a batch-norm epsilon of 1e-5 instead of
    Keras's 1e-3 changes every output several-fold.
    """

    def batch_norm(channels: int) -> list[np.ndarray]:
        return [
            rng.uniform(0.5, 1.5, channels).astype(np.float32),
            rng.uniform(-0.2, 0.2, channels).astype(np.float32),
            rng.uniform(-0.1, 0.1, channels).astype(np.float32),
            rng.uniform(1e-5, 1e-4, channels).astype(np.float32),
        ]

    def conv(cin: int, cout: int) -> list[np.ndarray]:
        kernel = rng.standard_normal((3, 3, cin, cout)) * (0.02 / math.sqrt(9 * cin))
        return [kernel.astype(np.float32), rng.uniform(-0.01, 0.01, cout).astype(np.float32)]

    layers = [batch_norm(1)]
    channels = 1
    for width in widths[:3]:
        for _ in range(2):
            layers += [conv(channels, width), batch_norm(width)]
            channels = width
    layers += [conv(channels, widths[3]), batch_norm(widths[3]), conv(widths[3], widths[3])]
    return layers


def write_keras_weights(path: Path, layers: list[list[np.ndarray]], nested: bool, legacy_frontend: bool) -> None:
    """Save `layers` as Keras 2 does, with weightless layers between them and names whose numbers
    are shuffled, so sorting by name would give a different order than the saved one."""
    rng = np.random.default_rng(7)
    numbers = iter(rng.permutation(200) + 3)
    with h5py.File(path, "w") as file:
        root = file.create_group("model_weights") if nested else file
        names = []

        def add(name: str, weights: list[tuple[str, np.ndarray]]) -> None:
            group = root.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{suffix}".encode() for suffix, _ in weights]
            for suffix, array in weights:
                group.create_dataset(f"{name}/{suffix}", data=array)
            names.append(name.encode())

        add(f"input_{next(numbers)}", [])
        if legacy_frontend:
            add(f"melspectrogram_{next(numbers)}", [("dft_real_kernel:0", np.ones((4, 1, 1, 5), np.float32))])
        for arrays in layers:
            if len(arrays) == 2:
                add(f"conv2d_{next(numbers)}", [("kernel:0", arrays[0]), ("bias:0", arrays[1])])
            else:
                suffixes = ("gamma:0", "beta:0", "moving_mean:0", "moving_variance:0")
                add(f"batch_normalization_{next(numbers)}", list(zip(suffixes, arrays, strict=True)))
                add(f"activation_{next(numbers)}", [])
        root.attrs["layer_names"] = names
        root.attrs["backend"] = b"tensorflow"


def numpy_conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    height, width, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((height, width, kernel.shape[3]))
    for i in range(3):
        for j in range(3):
            out += padded[i : i + height, j : j + width] @ kernel[i, j]
    return out + bias


def numpy_batch_norm(x: np.ndarray, arrays: list[np.ndarray], epsilon: float) -> np.ndarray:
    gamma, beta, mean, variance = arrays
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def numpy_max_pool(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    height, width, channels = x.shape[0] // rows, x.shape[1] // cols, x.shape[2]
    return x[: height * rows, : width * cols].reshape(height, rows, width, cols, channels).max(axis=(1, 3))


def numpy_openl3(
    spectrogram: np.ndarray,
    layers: list[list[np.ndarray]],
    pool: tuple[int, int] | None,
    epsilon: float = 1e-3,
    channels_last: bool = True,
) -> np.ndarray:
    """openl3's Keras model on one (bins, frames) spectrogram, written out in numpy, channels last."""
    x = numpy_batch_norm(spectrogram[:, :, None].astype(np.float64), layers[0], epsilon)
    rest = iter(layers[1:])
    for _ in range(3):
        for _ in range(2):
            x = np.maximum(numpy_batch_norm(numpy_conv_same(x, *next(rest)), next(rest), epsilon), 0.0)
        x = numpy_max_pool(x, 2, 2)
    x = np.maximum(numpy_batch_norm(numpy_conv_same(x, *next(rest)), next(rest), epsilon), 0.0)
    x = numpy_conv_same(x, *next(rest))
    if pool is None:
        return x.max(axis=(0, 1))
    pooled = numpy_max_pool(x, *pool)
    return (pooled if channels_last else pooled.transpose(2, 0, 1)).reshape(-1)


def network_from_keras_file(path: Path, layers: list[list[np.ndarray]], nested: bool) -> OpenL3AudioNetwork:
    """A network of SMALL_WIDTHS in eval mode, loaded from a Keras file of `layers` written at `path` (the nested
    layout with the legacy front end, or the flat one without)."""
    write_keras_weights(path, layers, nested=nested, legacy_frontend=nested)
    network = OpenL3AudioNetwork(SMALL_WIDTHS).eval()
    load_keras_weights(network, path)
    return network


def spectrogram_batch(input_repr: str, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-80.0, 0.0, (2, *INPUT_SHAPES[input_repr])).astype(np.float32)


@pytest.mark.parametrize("embedding_size", [6144, 512])
@pytest.mark.parametrize("input_repr", ["linear", "mel128", "mel256"])
@pytest.mark.parametrize("nested", [False, True])
def test_keras_file_loads_by_order_and_matches_numpy_forward(tmp_path, input_repr, embedding_size, nested):
    rng = np.random.default_rng(1)
    layers = keras_layer_arrays(SMALL_WIDTHS, rng)
    network = network_from_keras_file(tmp_path / "weights.h5", layers, nested=nested)

    spectrograms = spectrogram_batch(input_repr, rng)
    pool = embedding_pool_size(input_repr, embedding_size)
    with torch.inference_mode():
        ours = pool_embedding(network(torch.from_numpy(spectrograms)[:, None]), pool).numpy()
    reference = np.stack([numpy_openl3(s, layers, pool) for s in spectrograms])
    # 4 x 3 cells of the last width for the 6144 layout, one value per channel for 512.
    assert ours.shape == (2, SMALL_WIDTHS[3] * (12 if embedding_size == 6144 else 1))
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_wrong_epsilon_or_channels_first_flatten_breaks_the_match(tmp_path):
    rng = np.random.default_rng(2)
    layers = keras_layer_arrays(SMALL_WIDTHS, rng)
    network = network_from_keras_file(tmp_path / "weights.h5", layers, nested=False)
    spectrogram = spectrogram_batch("mel128", rng)[:1]
    pool = embedding_pool_size("mel128", 6144)
    reference = numpy_openl3(spectrogram[0], layers, pool)
    tolerance = 1e-4 * np.abs(reference).max()

    # The test above could not tell a torch-default epsilon from Keras's, or the flatten order,
    # if these references agreed with the right one.
    assert np.abs(numpy_openl3(spectrogram[0], layers, pool, epsilon=1e-5) - reference).max() > 100 * tolerance
    assert np.abs(numpy_openl3(spectrogram[0], layers, pool, channels_last=False) - reference).max() > 100 * tolerance

    with torch.inference_mode():
        feature_map = network(torch.from_numpy(spectrogram)[:, None])
        assert np.abs(pool_embedding(feature_map, pool)[0].numpy() - reference).max() < tolerance
        channels_first = torch.nn.functional.max_pool2d(feature_map, pool).flatten(1)[0].numpy()
        assert np.abs(channels_first - reference).max() > 100 * tolerance
        for layer in network.keras_layers():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.eps = 1e-5
        wrong_epsilon = pool_embedding(network(torch.from_numpy(spectrogram)[:, None]), pool)[0].numpy()
    assert np.abs(wrong_epsilon - reference).max() > 100 * tolerance


def test_files_that_are_not_openl3_audio_weights_are_refused(tmp_path):
    layers = keras_layer_arrays(SMALL_WIDTHS, np.random.default_rng(3))
    short = tmp_path / "short.h5"
    write_keras_weights(short, layers[:-1], nested=False, legacy_frontend=False)
    with pytest.raises(OpenL3SetupError, match="15 layers with weights.*has 16"):
        load_keras_weights(OpenL3AudioNetwork(SMALL_WIDTHS), short)
    small = tmp_path / "small.h5"
    write_keras_weights(small, layers, nested=False, legacy_frontend=False)
    with pytest.raises(OpenL3SetupError, match=r"layer 1 \('conv2d_\d+'\).*\(3, 3, 1, 64\)"):
        load_keras_weights(OpenL3AudioNetwork(), small)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5" * 64)
    with pytest.raises(OpenL3SetupError, match="garbage.h5"):
        load_keras_weights(OpenL3AudioNetwork(SMALL_WIDTHS), garbage)


# ---- weight files named in the config ----


def test_missing_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(OpenL3SetupError, match="OpenL3Config.weights is not set.*github.com/marl/openl3"):
        OpenL3Embedder(OpenL3Config())
    missing = tmp_path / "openl3_audio_mel256_music.h5"
    with pytest.raises(OpenL3SetupError, match=f"{re.escape(str(missing))}.*does not exist.*models"):
        OpenL3Embedder(OpenL3Config(weights=str(missing)))
    with pytest.raises(OpenL3SetupError, match="has no openl3_audio_mel128_env.h5"):
        resolve_weights_file(str(tmp_path), "mel128", "env")


def test_a_file_named_for_another_model_is_refused(tmp_path):
    other = tmp_path / "openl3_audio_mel128_music.h5"
    other.write_bytes(b"")
    with pytest.raises(
        OpenL3SetupError, match="openl3_audio_mel128_music, but the config asks for openl3_audio_mel256_music"
    ):
        resolve_weights_file(str(other), "mel256", "music")
    assert resolve_weights_file(str(tmp_path), "mel128", "music") == other


def test_embedder_loads_official_file_name_from_a_folder(tmp_path):
    layers = keras_layer_arrays((64, 128, 256, 512), np.random.default_rng(4))
    write_keras_weights(tmp_path / "openl3_audio_mel128_env.h5", layers, nested=True, legacy_frontend=False)
    embedder = OpenL3Embedder(OpenL3Config(input_repr="mel128", content_type="env", weights=str(tmp_path)))
    convolutions = [layer for layer in embedder.network.keras_layers() if isinstance(layer, torch.nn.Conv2d)]
    # The second layer of the file is the first convolution; Keras's (kh, kw, in, out) is torch's (out, in, kh, kw).
    np.testing.assert_array_equal(convolutions[0].weight.detach().numpy(), layers[1][0].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(embedder.network.keras_layers()[-2].running_var.numpy(), layers[-2][3])
    assert embedder.window_embeddings(np.zeros(RATE // 4, np.float32)).shape == (1, 6144)


# ---- windows and spectrograms ----


def openl3_window_count(n_samples: int, hop: int) -> int:
    """openl3's `_get_num_windows` with center=True."""
    length = n_samples + RATE // 2
    return 1 if length <= RATE else 1 + math.ceil((length - RATE) / hop)


@pytest.mark.parametrize("n_samples", [1, 24000, 24001, 28800, 100000])
def test_windows_are_centred_and_cover_every_sample(n_samples):
    samples = torch.arange(1, n_samples + 1, dtype=torch.float32)
    windows = frame_windows(samples, 4800)
    assert windows.shape == (openl3_window_count(n_samples, 4800), RATE)
    assert windows[0, : RATE // 2].eq(0).all()
    # Window k is centred on sample k * hop (value k * hop + 1), and the clip's last sample is in the last window.
    assert windows[:, RATE // 2].tolist() == [1 + 4800 * k for k in range(len(windows))]
    assert windows[-1].max() == n_samples


def tone(frequency: float, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(RATE * seconds)) / RATE)).astype(np.float32)


def numpy_kapre_spectrogram(samples: np.ndarray, n_fft: int, filterbank: np.ndarray | None) -> np.ndarray:
    """kapre's front end in numpy: tf.signal.stft (periodic Hann, hop 242, zeros padded at the end for the
    mel models), the magnitude, the mel filterbank, then 10 * log10 relative to the maximum, floored at -80."""
    if filterbank is not None:
        n_frames = math.ceil(len(samples) / 242)
        samples = np.pad(samples, (0, (n_frames - 1) * 242 + n_fft - len(samples)))
    n_frames = 1 + (len(samples) - n_fft) // 242
    periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([samples[t * 242 : t * 242 + n_fft] for t in range(n_frames)], axis=1)
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann[:, None], axis=0))
    if filterbank is not None:
        magnitude = filterbank @ magnitude
    decibels = 10 * np.log10(np.maximum(magnitude, 1e-10))
    return np.maximum(decibels - decibels.max(), -80.0)


@pytest.mark.parametrize("input_repr", ["linear", "mel128", "mel256"])
def test_spectrogram_matches_a_numpy_kapre_front_end(input_repr):
    samples = (0.1 * np.random.default_rng(6).standard_normal(RATE)).astype(np.float32)
    n_fft = 512 if input_repr == "linear" else 2048
    filterbank = None if input_repr == "linear" else mel_filterbank(RATE, 2048, int(input_repr[3:]))
    reference = numpy_kapre_spectrogram(samples.astype(np.float64), n_fft, filterbank)
    ours = OpenL3Spectrogram(input_repr)(torch.from_numpy(samples)[None])[0, 0].numpy()
    assert ours.shape == reference.shape == INPUT_SHAPES[input_repr]
    assert ours.max() == 0.0 and ours.min() >= -80.0
    # float32 FFTs differ from float64 where the magnitude is tiny, so compare the part above -60.
    loud = reference > -60
    assert loud.mean() > 0.5
    np.testing.assert_allclose(ours[loud], reference[loud], atol=2e-3)


def test_linear_spectrogram_peaks_at_the_tone_bin():
    bin_index = 40
    spectrogram = OpenL3Spectrogram("linear")(torch.from_numpy(tone(bin_index * RATE / 512))[None])[0, 0].numpy()
    assert (spectrogram.argmax(axis=0) == bin_index).all()


def slaney_hz(mel: np.ndarray) -> np.ndarray:
    """Slaney's mel scale, inverted: 200/3 Hz per mel up to 1 kHz (mel 15), then 27 mels per factor 6.4."""
    return np.where(mel < 15, mel * 200 / 3, 1000 * 6.4 ** ((mel - 15) / 27))


@pytest.mark.parametrize("n_mels", [128, 256])
def test_mel_spectrogram_peaks_in_the_band_centred_on_the_tone(n_mels):
    band = n_mels * 5 // 8
    top_mel = 15 + 27 * math.log(24.0) / math.log(6.4)
    centre = float(slaney_hz(np.array((band + 1) * top_mel / (n_mels + 1))))
    spectrogram = OpenL3Spectrogram(f"mel{n_mels}")(torch.from_numpy(tone(centre))[None])[0, 0].numpy()
    assert spectrogram.shape == (n_mels, 199)
    # The last frames reach into the 1964 zeros padded after the window; they hold little of the tone.
    assert (spectrogram[:, :190].argmax(axis=0) == band).all()


def test_mel_scale_and_slaney_area_normalisation():
    assert hz_to_mel(np.array([500.0, 1000.0, 6400.0])) == pytest.approx([7.5, 15.0, 42.0])
    filterbank = mel_filterbank(RATE, 2048, 128)
    assert filterbank.shape == (128, 1025) and (filterbank >= 0).all()
    # Slaney normalisation gives every triangle unit area in Hz; wide high bands show it best.
    areas = filterbank.sum(axis=1) * (RATE / 2048)
    np.testing.assert_allclose(areas[64:-1], 1.0, rtol=0.02)


# ---- the embedder end to end ----


@pytest.mark.parametrize("embedding_size", [6144, 512])
@pytest.mark.parametrize("input_repr", ["linear", "mel128", "mel256"])
def test_embedding_shapes(input_repr, embedding_size):
    embedder = OpenL3Embedder(OpenL3Config(input_repr=input_repr, embedding_size=embedding_size, weights="random"))
    pooled = embedder.embed([tone(440.0, seconds=0.4)])
    assert pooled.shape == (1, embedding_size) and embedder.dim == embedding_size
    assert pooled.dtype == np.float32 and np.isfinite(pooled).all() and pooled.std() > 0


def test_windows_of_several_clips_share_batches_but_pool_per_clip():
    config = OpenL3Config(input_repr="mel128", embedding_size=512, hop_seconds=0.5, batch_size=2, weights="random")
    embedder = OpenL3Embedder(config)
    rng = np.random.default_rng(5)
    short, longer = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (int(0.3 * RATE), int(1.2 * RATE))]
    windows = embedder.window_embeddings(longer)
    assert windows.shape == (openl3_window_count(len(longer), RATE // 2), 512) == (3, 512)
    # Batches of 2 windows hold [short, longer 1] and [longer 2, longer 3], yet each clip's mean is its own.
    pooled = embedder.embed([short, longer])
    np.testing.assert_allclose(pooled[1], windows.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pooled[0], embedder.window_embeddings(short)[0], rtol=1e-4, atol=1e-4)


def test_mean_std_doubles_the_dimension():
    config = OpenL3Config(
        input_repr="mel128", embedding_size=512, hop_seconds=0.5, pooling="mean_std", weights="random"
    )
    embedder = OpenL3Embedder(config)
    clip = tone(300.0, seconds=0.8) * np.linspace(0, 1, int(0.8 * RATE), dtype=np.float32)
    pooled = embedder.embed([clip])
    windows = embedder.window_embeddings(clip)
    assert len(windows) == 2 and embedder.dim == 1024 and pooled.shape == (1, 1024)
    np.testing.assert_allclose(pooled[0, :512], windows.mean(axis=0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(pooled[0, 512:], windows.std(axis=0), rtol=1e-3, atol=1e-3)


def test_random_weights_warn_and_bad_clips_are_named(caplog):
    with caplog.at_level(logging.WARNING, logger="extract.openl3"):
        embedder = OpenL3Embedder(OpenL3Config(input_repr="mel128", embedding_size=512, weights="random"))
    assert "NOT OpenL3's" in caplog.text
    with pytest.raises(ValueError, match="clip 1: .*shape \\(10, 2\\)"):
        embedder.embed([np.zeros(10, np.float32), np.zeros((10, 2), np.float32)])
    with pytest.raises(ValueError, match="clip 0 has no samples"):
        embedder.embed([np.zeros(0, np.float32)])
    assert embedder.embed([]).shape == (0, 512)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="hop_seconds"):
        OpenL3Config(hop_seconds=0.0)
    with pytest.raises(ValueError, match="device"):
        OpenL3Config(device="gpu0")
    with pytest.raises(ValueError, match="precision 'bf16' is for GPUs"):
        OpenL3Config(device="cpu", precision="bf16")
    with pytest.raises(ConfigError, match="embedding_size"):
        from_dict(OpenL3Config, {"embedding_size": 1024})
    assert from_dict(OpenL3Config, {"input_repr": "linear", "embedding_size": 512}).hop_samples == 4800
