"""OpenL3 throughput on the CPU: the torch port against openl3's Keras model, same weights, same windows.

For each input representation and thread count it prints windows/s of
- the port as loaded, layer for layer openl3's (`OpenL3Embedder.network`), channels last;
- the port as it runs (`OpenL3Embedder.inference`: batch-norms folded into the convolutions);
- with `--keras-python`, openl3's Keras model (bench/openl3_keras_reference.py) run by a
  TensorFlow interpreter from another environment, so TensorFlow never becomes a dependency:

      python -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu h5py
      python bench/bench_openl3.py --keras-python /work/tfvenv/bin/python

and the ratios, with the largest difference between the port's and Keras's embeddings
(relative to the largest embedding value). Weights are random but not trivial (He-normal
kernels, batch-norm statistics away from identity), written as a Keras 2 weight file that
both sides load. Each figure is the best of `--repeats` passes, the sides interleaved, so a
machine shared with other work biases neither. On a GPU:

    python bench/bench_openl3.py --device cuda --precision bf16 --windows 1024 --batch-size 256
"""

import argparse
import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from extract.openl3 import OpenL3AudioNetwork, OpenL3Config, OpenL3Embedder, pool_embedding
from extract.openl3_frontend import SAMPLE_RATE, OpenL3Spectrogram, frame_windows

KERAS_SCRIPT = Path(__file__).with_name("openl3_keras_reference.py")


def random_keras_layers(seed: int = 0) -> list[list[np.ndarray]]:
    """Arrays of every weighted layer of OpenL3's audio network in Keras order and layout."""
    rng = np.random.default_rng(seed)
    network = OpenL3AudioNetwork()
    layers = []
    for layer in network.keras_layers():
        if isinstance(layer, torch.nn.Conv2d):
            out_channels, in_channels, height, width = layer.weight.shape
            std = np.sqrt(2.0 / (height * width * in_channels))
            kernel = rng.normal(0.0, std, (height, width, in_channels, out_channels))
            layers.append([kernel.astype(np.float32), rng.uniform(-0.05, 0.05, out_channels).astype(np.float32)])
        else:
            n = layer.num_features
            layers.append(
                [
                    rng.uniform(0.5, 1.5, n).astype(np.float32),
                    rng.uniform(-0.1, 0.1, n).astype(np.float32),
                    rng.uniform(-0.1, 0.1, n).astype(np.float32),
                    rng.uniform(0.5, 1.5, n).astype(np.float32),
                ]
            )
    return layers


def write_keras_weight_file(path: Path, layers: list[list[np.ndarray]]) -> Path:
    """Save `layers` in Keras 2's HDF5 weight layout (what openl3 ships and the port loads)."""
    with h5py.File(path, "w") as file:
        names = []
        for index, arrays in enumerate(layers):
            name = f"layer_{index:02d}"
            group = file.create_group(name)
            weight_names = [f"{name}/w{k}:0" for k in range(len(arrays))]
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            for weight_name, array in zip(weight_names, arrays):
                group.create_dataset(weight_name, data=array)
            names.append(name.encode())
        file.attrs["layer_names"] = names
    return path


def speech_like_windows(count: int, seed: int = 0) -> torch.Tensor:
    """`count` 1-second windows cut at a 0.1 s hop from tones with noise: content does not change the cost."""
    rng = np.random.default_rng(seed)
    seconds = 1.0 + 0.1 * (count - 1)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 160 * (1 + 0.2 * np.sin(2 * np.pi * 0.5 * t))
    clip = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE) + 0.02 * rng.standard_normal(t.size)
    return frame_windows(torch.from_numpy(clip.astype(np.float32)), SAMPLE_RATE // 10)[:count].contiguous()


def torch_embeddings(
    embedder: OpenL3Embedder, windows: torch.Tensor, batch_size: int, folded: bool, repeats: int
) -> tuple[np.ndarray, float]:
    """(embeddings [n, 6144], best seconds) of the port, as it runs or as loaded."""
    network = embedder.inference if folded else embedder.network.to(embedder.device, memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        parts = []
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size].to(embedder.device)
            spectrograms = embedder.frontend(batch).contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                embedder.device.type, dtype=embedder.autocast_dtype, enabled=embedder.autocast_dtype is not None
            ):
                feature_map = network(spectrograms)
            parts.append(pool_embedding(feature_map.float(), embedder.pool_size))
        return torch.cat(parts)

    with torch.inference_mode():
        run_once = windows[:batch_size]
        network(embedder.frontend(run_once.to(embedder.device)).contiguous(memory_format=torch.channels_last))
        best, outputs = float("inf"), None
        for _ in range(repeats):
            _synchronize(embedder.device)
            start = time.perf_counter()
            outputs = run()
            _synchronize(embedder.device)
            best = min(best, time.perf_counter() - start)
    return outputs.cpu().numpy(), best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def keras_embeddings(
    python: str, work: Path, weights: Path, input_repr: str, windows: torch.Tensor, threads: int, args
) -> tuple[np.ndarray, float]:
    windows_file, out = work / "windows.npy", work / f"keras-{input_repr}-{threads}.npy"
    np.save(windows_file, windows.numpy())
    command = [python, str(KERAS_SCRIPT), "--weights", str(weights), "--input-repr", input_repr]
    command += ["--windows", str(windows_file), "--out", str(out), "--threads", str(threads)]
    command += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    if input_repr != "linear":
        filterbank = work / f"filterbank-{input_repr}.npy"
        np.save(filterbank, OpenL3Spectrogram(input_repr).filterbank.numpy())
        command += ["--filterbank", str(filterbank)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the Keras reference failed:\n{result.stderr[-3000:]}")
    return np.load(out), json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=32, help="windows per measurement")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--reprs", nargs="+", default=["mel128", "mel256"], choices=["linear", "mel128", "mel256"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per figure; the best is kept")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast on a GPU")
    parser.add_argument("--keras-python", help="a Python with tensorflow-cpu and h5py, for the Keras figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="bench_openl3_"))
    weights = write_keras_weight_file(work / "openl3_weights.h5", random_keras_layers())
    windows = speech_like_windows(args.windows)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"torch {torch.__version__}, device {args.device}, precision {args.precision}, {args.windows} windows, "
        f"batch {args.batch_size}, best of {args.repeats}; load average {load} on {os.cpu_count()} CPUs"
    )
    header = f"{'repr':<7} {'threads':>7} {'as loaded':>10} {'folded':>8} {'keras':>8} {'folded/loaded':>14} "
    print(header + f"{'folded/keras':>13} {'max rel diff':>13}   (windows/s)")
    for input_repr in args.reprs:
        config = OpenL3Config(
            input_repr=input_repr,
            weights=str(weights),
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
        )
        embedder = OpenL3Embedder(config)
        for threads in args.threads if args.device == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            loaded, loaded_s = torch_embeddings(embedder, windows, args.batch_size, False, args.repeats)
            folded, folded_s = torch_embeddings(embedder, windows, args.batch_size, True, args.repeats)
            keras_rate, ratio, diff = "-", "-", "-"
            if args.keras_python:
                reference, keras_s = keras_embeddings(
                    args.keras_python, work, weights, input_repr, windows, threads, args
                )
                keras_rate, ratio = f"{len(windows) / keras_s:8.2f}", f"{keras_s / folded_s:12.2f}x"
                diff = f"{np.abs(folded - reference).max() / np.abs(reference).max():13.1e}"
            print(
                f"{input_repr:<7} {threads:>7} {len(windows) / loaded_s:>10.2f} {len(windows) / folded_s:>8.2f} "
                f"{keras_rate:>8} {loaded_s / folded_s:>13.2f}x {ratio:>13} {diff:>13}",
                flush=True,
            )


if __name__ == "__main__":
    main()
