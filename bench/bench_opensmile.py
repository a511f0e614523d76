"""Per-utterance openSMILE extraction time for a 3-second clip, for each feature set.

    python bench/bench_opensmile.py [--repeats 20]

Prints the extractor's set-up time and the median and best time of one utterance.
"""

import argparse
import statistics
import time

import numpy as np

from extract.opensmile_features import OpenSmileConfig, OpenSmileExtractor

CLIP_SECONDS = 3.0


def synthetic_utterance(seconds: float, sample_rate: int) -> np.ndarray:
    """A harmonic tone with a gliding F0 around 200 Hz plus light noise: voiced, speech-like load."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(200.0 * (1.0 + 0.15 * np.sin(2 * np.pi * 0.7 * t))) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    return (0.3 * tone / np.abs(tone).max() + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed utterances per feature set")
    args = parser.parse_args()
    clip = synthetic_utterance(CLIP_SECONDS, OpenSmileExtractor.SAMPLE_RATE)
    print(f"{'feature set':<14} {'dim':>5} {'set-up s':>9} {'median s':>9} {'best s':>8} {'x real time':>12}")
    for feature_set in ("emo_large", "ComParE_2016", "eGeMAPSv02"):
        start = time.perf_counter()
        extractor = OpenSmileExtractor(OpenSmileConfig(feature_set=feature_set))
        setup = time.perf_counter() - start
        extractor(clip)  # warm-up, untimed
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            extractor(clip)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(
            f"{feature_set:<14} {extractor.dim:>5} {setup:>9.3f} {median:>9.3f} {min(times):>8.3f} "
            f"{CLIP_SECONDS / median:>12.0f}"
        )


if __name__ == "__main__":
    main()
