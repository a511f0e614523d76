"""OpenL3 throughput: windows/s and utterances/s on 3-second clips, per input representation and hop.

Untrained ('random') weights cost exactly what the official ones do, so no weight file is
needed. Run on a CPU (the default where CUDA sees no GPU) or a GPU:

    python bench/bench_openl3.py
    python bench/bench_openl3.py --device cuda --precision bf16 --clips 256 --batch-size 256
"""

import argparse
import logging
import time

import numpy as np
import torch

from extract.openl3 import OpenL3Config, OpenL3Embedder
from extract.openl3_frontend import count_windows

CLIP_SECONDS = 3.0


def synthetic_clips(count: int, seed: int = 0) -> list[np.ndarray]:
    """Noise with a moving tone, 3 s at 48 kHz: content does not change the cost, only the length does."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(CLIP_SECONDS * OpenL3Embedder.SAMPLE_RATE)) / OpenL3Embedder.SAMPLE_RATE
    clips = []
    for _ in range(count):
        pitch = rng.uniform(100, 300) * (1 + 0.2 * np.sin(2 * np.pi * 0.5 * t))
        tone = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / OpenL3Embedder.SAMPLE_RATE)
        clips.append((tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def measure(config: OpenL3Config, clips: list[np.ndarray]) -> tuple[int, float]:
    """(windows embedded, seconds) for one pass over `clips`, after a warm-up batch of one-window clips."""
    embedder = OpenL3Embedder(config)
    embedder.embed([clip[: config.hop_samples] for clip in clips[: config.batch_size]])
    if embedder.device.type == "cuda":
        torch.cuda.synchronize(embedder.device)
    windows = sum(count_windows(len(clip), config.hop_samples) for clip in clips)
    start = time.perf_counter()
    embedder.embed(clips)
    if embedder.device.type == "cuda":
        torch.cuda.synchronize(embedder.device)
    return windows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4, help="3-second clips per measurement")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast on a GPU")
    parser.add_argument(
        "--hops", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="hops for the mel256 sweep"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    clips = synthetic_clips(args.clips)
    common = dict(weights="random", batch_size=args.batch_size, device=args.device, precision=args.precision)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}, "
        f"precision {args.precision}, {args.clips} clips of {CLIP_SECONDS:.0f} s, batch {args.batch_size}"
    )
    print(f"{'input_repr':<10} {'hop s':>6} {'windows/clip':>12} {'windows/s':>10} {'utterances/s':>13}")
    runs = [(repr_, 0.1) for repr_ in ("mel128", "mel256", "linear")]
    runs += [("mel256", hop) for hop in args.hops if hop != 0.1]
    for input_repr, hop in runs:
        config = OpenL3Config(input_repr=input_repr, hop_seconds=hop, **common)
        windows, seconds = measure(config, clips)
        print(
            f"{input_repr:<10} {hop:>6.2f} {windows // len(clips):>12d} {windows / seconds:>10.1f} "
            f"{len(clips) / seconds:>13.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
