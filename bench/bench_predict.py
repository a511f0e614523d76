"""Where `cmroberta predict` spends its time: reading the input, loading the run, computing features, scoring.

For a trained run and an input, it prints seconds and utterances/s of each stage and each stage's
share of the whole (after a first feature pass that loads the extractors), and the cost of a
perturbation's extra work (noise mixed into every clip, ASR errors and the text features again)
as a ratio against the clean run in the same process.

    python bench/bench_predict.py RUN demo-output/corpus --split test
    python bench/bench_predict.py RUN clips.csv --perturb audio_noise:noise=babble,snr_db=5
"""

import argparse
import time
from pathlib import Path

from extract.shard_extraction import decode_utterance
from extract.shard_plan import plan_shards
from model.perturb import parse_perturbation
from model.predict import compute_rows, noisy_decoder, predict, restore_run
from model.predict_input import read_predict_input


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("input", type=Path)
    parser.add_argument("--split", default=None)
    parser.add_argument("--perturb", default="audio_noise:noise=white,snr_db=10")
    args = parser.parse_args()

    found, read_seconds = timed(read_predict_input, args.input, args.split)
    run, load_seconds = timed(restore_run, args.run_dir)
    n = len(found.utterances)
    splits = list(dict.fromkeys(u.split for u in found.utterances))
    plans = plan_shards(found.utterances, splits, run.extraction.shard_dialogues)
    # A first pass loads the extractors (the text encoder): every timed pass then finds them loaded.
    _, warmup_seconds = timed(compute_rows, run, plans, run.modalities.families, found.unusable)
    _, feature_seconds = timed(compute_rows, run, plans, run.modalities.families, found.unusable)
    # predict reads the store's vectors for shards whose inputs the store already has (the run's own corpus).
    _, predict_feature_seconds = timed(
        compute_rows, run, plans, run.modalities.families, found.unusable, decode_utterance, True
    )
    _, predict_seconds = timed(predict, run, found)
    scoring_seconds = max(predict_seconds - predict_feature_seconds, 0.0)
    total = read_seconds + load_seconds + feature_seconds + scoring_seconds
    print(f"{n} utterances, run {args.run_dir} ({run.config.model.variant}, {run.config.text_mode})")
    print(f"  first feature pass, loading the extractors: {warmup_seconds:.2f} s")
    print(f"  predict's features, read from the store where its inputs are unchanged: {predict_feature_seconds:.2f} s")
    for name, seconds in (("read input", read_seconds), ("load run", load_seconds),
                          ("features", feature_seconds), ("scoring", scoring_seconds)):
        print(f"  {name:10s} {seconds:7.2f} s  {n / seconds if seconds else float('inf'):8.1f} utt/s  "
              f"{100 * seconds / total:5.1f}% of {total:.2f} s")
    perturbation = parse_perturbation(args.perturb)
    decode = noisy_decoder(perturbation, found.utterances, found.unusable, run.extraction.max_audio_seconds)
    families = run.modalities.audio_families if perturbation.changes_audio else run.modalities.families
    _, perturbed_seconds = timed(compute_rows, run, plans, families, found.unusable, decode)
    _, clean_seconds = timed(compute_rows, run, plans, families, found.unusable)
    print(f"  {perturbation.describe()}: features of {', '.join(families)} in {perturbed_seconds:.2f} s, "
          f"{perturbed_seconds / clean_seconds:.2f}x the clean {clean_seconds:.2f} s")


if __name__ == "__main__":
    main()
