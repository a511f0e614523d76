"""OpenL3's audio network as a Keras model, for bench/bench_openl3.py: run with a TensorFlow interpreter.

TensorFlow is not a dependency of the project; this script runs in a separate environment
(`python -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu h5py`) and
imports nothing of the project. It builds openl3 0.4's Keras audio model: kapre 0.3's
front end, which is tf.signal.stft with a periodic Hann window (pad_end for the mel
inputs), the magnitude, the filterbank, 10 * log10 of the magnitude minus the window's
maximum and floored at -80 dB; then the CNN, channels last. The weights come from a Keras 2
HDF5 weight file, in saved layer order, as the project's loader reads them.

It embeds the windows in `--windows` (an .npy of shape [n, 48000]), writes the embeddings
to `--out` and prints one JSON line: {"seconds": best of `--repeats` timed passes}.
"""

import argparse
import json
import time

import h5py
import numpy as np
import tensorflow as tf

SAMPLE_RATE = 48000
STFT_HOP = 242
N_FFT = {"linear": 512, "mel128": 2048, "mel256": 2048}
POOL_FOR_6144 = {"linear": (8, 8), "mel128": (4, 8), "mel256": (8, 8)}
WIDTHS = (64, 128, 256, 512)


def read_layers(path: str) -> list[list[np.ndarray]]:
    with h5py.File(path, "r") as file:
        root = file["model_weights"] if "model_weights" in file else file
        layers = []
        for name in root.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else str(name)
            group = root[name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
            if names and "spectrogram" not in name:
                layers.append([np.asarray(group[n]) for n in names])
        return layers


def front_end(input_repr: str, filterbank: np.ndarray | None):
    n_fft = N_FFT[input_repr]
    bank = None if filterbank is None else tf.constant(filterbank.T, dtype=tf.float32)

    def spectrogram(windows):
        stft = tf.signal.stft(
            windows,
            frame_length=n_fft,
            frame_step=STFT_HOP,
            fft_length=n_fft,
            window_fn=lambda length, dtype: tf.signal.hann_window(length, periodic=True, dtype=dtype),
            pad_end=bank is not None,
        )
        magnitude = tf.abs(stft)
        if bank is not None:
            magnitude = tf.matmul(magnitude, bank)
        decibels = 10.0 * tf.math.log(tf.maximum(magnitude, 1e-10)) / tf.math.log(10.0)
        decibels = decibels - tf.reduce_max(decibels, axis=[1, 2], keepdims=True)
        decibels = tf.maximum(decibels, -80.0)
        return tf.expand_dims(tf.transpose(decibels, [0, 2, 1]), -1)

    return spectrogram


def build_model(input_repr: str, filterbank: np.ndarray | None, layers: list[list[np.ndarray]]) -> tf.keras.Model:
    keras = tf.keras
    inputs = keras.Input((SAMPLE_RATE,))
    x = keras.layers.Lambda(front_end(input_repr, filterbank))(inputs)
    weighted = [keras.layers.BatchNormalization(epsilon=1e-3)]
    x = weighted[0](x)
    for width in WIDTHS[:3]:
        for _ in range(2):
            conv, norm = keras.layers.Conv2D(width, 3, padding="same"), keras.layers.BatchNormalization(epsilon=1e-3)
            x = keras.layers.Activation("relu")(norm(conv(x)))
            weighted += [conv, norm]
        x = keras.layers.MaxPooling2D(2)(x)
    conv, norm = keras.layers.Conv2D(WIDTHS[3], 3, padding="same"), keras.layers.BatchNormalization(epsilon=1e-3)
    x = keras.layers.Activation("relu")(norm(conv(x)))
    last = keras.layers.Conv2D(WIDTHS[3], 3, padding="same")
    x = last(x)
    weighted += [conv, norm, last]
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(POOL_FOR_6144[input_repr])(x))
    model = keras.Model(inputs, x)
    if len(layers) != len(weighted):
        raise SystemExit(f"the weight file has {len(layers)} layers with weights, the model {len(weighted)}")
    for layer, arrays in zip(weighted, layers):
        layer.set_weights(arrays)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--input-repr", required=True, choices=sorted(N_FFT))
    parser.add_argument("--filterbank", help=".npy of the mel filterbank (n_mels, n_fft // 2 + 1)")
    parser.add_argument("--windows", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    filterbank = np.load(args.filterbank) if args.filterbank else None
    model = build_model(args.input_repr, filterbank, read_layers(args.weights))
    windows = np.load(args.windows).astype(np.float32)
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    forward(windows[: args.batch_size])
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        outputs = [forward(windows[i : i + args.batch_size]).numpy() for i in range(0, len(windows), args.batch_size)]
        best = min(best, time.perf_counter() - start)
    np.save(args.out, np.concatenate(outputs))
    print(json.dumps({"seconds": best, "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
