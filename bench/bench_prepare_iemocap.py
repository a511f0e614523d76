"""How long `prepare` takes to read a release of IEMOCAP's size: 151 dialogues, about 10,000 turns.

The layout is synthetic (tests/iemocap_layout.py writes it): 5 sessions of 30 or 31
dialogues, 66 turns each with IEMOCAP's label codes drawn at roughly the release's rates,
and a short wav per turn (its length does not matter: the reader opens each wav's header
and compares the file size, it never reads the samples). Printed: the time to write the
layout, then per protocol the wall time of `read_iemocap`, turns per second, and the peak
RSS of this process.

    python bench/bench_prepare_iemocap.py
    python bench/bench_prepare_iemocap.py --turns-per-dialogue 20
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# `python bench/bench_prepare_iemocap.py` puts bench/ on the path, not the repository that holds tests/.
sys.path.insert(0, str(REPO))

from extract.iemocap import IemocapConfig, read_iemocap  # noqa: E402
from tests.iemocap_layout import write_layout  # noqa: E402

# Approximate shares of the majority codes over the release's 10,039 turns (neu 1,708, fru 1,849, ...).
CODE_SHARES: dict[str, float] = {
    "neu": 0.170, "fru": 0.184, "ang": 0.110, "sad": 0.108, "exc": 0.104, "hap": 0.059,
    "xxx": 0.240, "sur": 0.011, "fea": 0.004, "dis": 0.0002, "oth": 0.0028,
}


def synthetic_release(turns_per_dialogue: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    codes, shares = list(CODE_SHARES), np.array(list(CODE_SHARES.values()))
    dialogs = {}
    for index in range(151):
        session = 1 + index * 5 // 151
        name = f"Ses0{session}{'FM'[index % 2]}_impro{index:02d}"
        turns = []
        for turn in range(turns_per_dialogue):
            code = str(rng.choice(codes, p=shares / shares.sum()))
            turns.append((f"{'FM'[turn % 2]}{turn:03d}", 2.0 * turn, 2.0 * turn + 1.5, code, f"Line {turn}."))
        dialogs[name] = turns
    return dialogs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns-per-dialogue", type=int, default=66)
    parser.add_argument("--wav-seconds", type=float, default=0.05, help="length of every synthetic wav")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "IEMOCAP_full_release"
        dialogs = synthetic_release(args.turns_per_dialogue, seed=0)
        for turns in dialogs.values():
            turns[:] = [(suffix, start, start + args.wav_seconds, code, text) for suffix, start, _, code, text in turns]
        started = time.perf_counter()
        write_layout(root, dialogs)
        turns = sum(len(t) for t in dialogs.values())
        print(f"wrote {len(dialogs)} dialogues, {turns} turns in {time.perf_counter() - started:.1f} s")
        print(f"load average {os.getloadavg()[0]:.1f}")
        for config in (IemocapConfig(), IemocapConfig(protocol="ser4", fold=1)):
            started = time.perf_counter()
            corpus = read_iemocap(root, config)
            wall = time.perf_counter() - started
            print(
                f"{config.describe():>10}: {len(corpus.utterances)} utterances in {wall:.2f} s "
                f"({turns / wall:.0f} turns/s read)"
            )
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
