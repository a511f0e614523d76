"""Every GPU measurement of the project in one go (at most about 8 minutes on one GPU), printed as one table.

    python bench/gpu_check.py                      # on a GPU node
    srun --gpus=2 python bench/gpu_check.py        # two GPUs: also the two-actor placement check

Rows:
- OpenL3 (mel256, 6144 values) windows/s in fp32 and bf16, and the largest difference of
  each from the CPU result on the same windows, relative to the largest CPU value;
- text extraction (RoBERTa-Large's shape, random weights, bf16) and speech-family
  extraction (WavLM-Base's shape, random weights, bf16, all layers, mean + sd)
  utterances/s, through the project's own extractors;
- end-to-end training of RoBERTa-Large's shape with the fusion head at bf16 under ZeRO-2
  (bench/bench_end_to_end.py, one process): tokens/s, sequences (utterances)/s,
  dialogues/s, peak GPU memory, and MFU against the GPU's dense bf16 peak (989 TFLOP/s
  for H100 and H200, or --peak-tflops);
- whether the fusion head's LSTMs run in bf16 under torch.use_deterministic_algorithms(True)
  (forward and backward, twice, bit-identical), and in which dtype they computed;
- with 2 or more GPUs, two extraction actors on a Ray of this node: the GPU each holds
  (Ray's id and the device's UUID), which must differ.

Weights are random everywhere: the cost of a forward pass does not depend on them. A step
that fails prints its error in its row and the others still run. It refuses at once, in
one line and with exit status 2, when no CUDA GPU is visible; it is not part of .ci/run.
"""

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# `python bench/gpu_check.py` puts bench/ on the path, not the repository that holds bench.bench_openl3.
sys.path.insert(0, str(REPO))

from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder  # noqa: E402

BUDGET_SECONDS = 8 * 60
# The same shapes as bench/bench_end_to_end.py: tiny for checking the script, RoBERTa-Large's for measuring.
SHAPES = {
    "tiny": TinyEncoderConfig(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, vocab_size=600),
    "roberta-large-shape": TinyEncoderConfig(
        hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, vocab_size=2000, max_tokens=512
    ),
}
SPEECH_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32},
    "wavlm-base": {},
}
# Dense bf16 tensor-core peaks in TFLOP/s, by a part of the device name.
PEAK_BF16_TFLOPS: dict[str, float] = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def refuse_without_gpu() -> None:
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False); run it on a GPU node, "
            "e.g. `srun --gpus=1 python bench/gpu_check.py`",
            file=sys.stderr,
        )
        raise SystemExit(2)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_tflops(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    return next((peak for part, peak in PEAK_BF16_TFLOPS.items() if part in name), None)


class Table:
    """Rows of (measurement, value, note), printed together at the end."""

    def __init__(self, deadline: float):
        self.rows: list[tuple[str, str, str]] = []
        self.deadline = deadline

    def add(self, measurement: str, value: str, note: str = "") -> None:
        self.rows.append((measurement, value, note))
        print(f"  {measurement}: {value} {note}", flush=True)

    def run(self, name: str, step: Callable[["Table"], None]) -> None:
        if time.monotonic() > self.deadline:
            self.add(name, "skipped", f"the {BUDGET_SECONDS // 60}-minute budget was spent")
            return
        started = time.monotonic()
        try:
            step(self)
        except Exception as error:  # one failed measurement must not hide the others
            self.add(name, "FAILED", f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
        logging.info("%s took %.0f s", name, time.monotonic() - started)

    def print(self) -> None:
        width = max(len(row[0]) for row in self.rows)
        value_width = max(len(row[1]) for row in self.rows)
        print()
        print(f"{'measurement':<{width}}  {'value':>{value_width}}  note")
        for measurement, value, note in self.rows:
            print(f"{measurement:<{width}}  {value:>{value_width}}  {note}")


def openl3_step(args) -> Callable[[Table], None]:
    def step(table: Table) -> None:
        from bench.bench_openl3 import (
            random_keras_layers,
            speech_like_windows,
            torch_embeddings,
            write_keras_weight_file,
        )
        from extract.openl3 import OpenL3Config, OpenL3Embedder

        work = Path(tempfile.mkdtemp(prefix="gpu_check_openl3_"))
        weights = str(write_keras_weight_file(work / "openl3.h5", random_keras_layers()))
        windows = speech_like_windows(args.openl3_windows)
        reference_windows = windows[: args.openl3_cpu_windows]
        cpu = OpenL3Embedder(OpenL3Config(weights=weights, device="cpu", batch_size=args.openl3_cpu_windows))
        reference, _ = torch_embeddings(cpu, reference_windows, args.openl3_cpu_windows, True, 1)
        scale = float(abs(reference).max())
        for precision in ("fp32", "bf16") if args.device == "cuda" else ("fp32",):
            gpu = OpenL3Embedder(OpenL3Config(weights=weights, device=args.device, precision=precision, batch_size=256))
            _, seconds = torch_embeddings(gpu, windows, 256, True, 2)
            same, _ = torch_embeddings(gpu, reference_windows, 256, True, 1)
            diff = float(abs(same - reference).max()) / scale
            rate = f"{len(windows) / seconds:,.0f} windows/s"
            note = f"max rel diff from CPU {diff:.1e}"
            if precision == "fp32" and args.device == "cuda":
                note += f" (cuDNN TF32 allowed: {torch.backends.cudnn.allow_tf32})"
            table.add(f"OpenL3 mel256 {precision}", rate, note)

    return step


def text_step(args) -> Callable[[Table], None]:
    def step(table: Table) -> None:
        from extract.text_features import TextFeatureConfig, TextFeatureExtractor
        from extract.utterance import Utterance

        words = "okay so we were on a break you know I can not believe this oh my god what is going on here".split()
        texts = [" ".join(words[i % 7 : i % 7 + 4 + i % 15]) for i in range(args.utterances)]
        shape = SHAPES[args.text_shape]
        folder = build_tiny_text_encoder(Path(tempfile.mkdtemp(prefix="gpu_check_text_")), texts, shape)
        config = TextFeatureConfig(model=str(folder), dtype="bfloat16", device=args.device, batch_size=64)
        extractor = TextFeatureExtractor(config)
        utterances = [
            Utterance(
                split="train",
                dialogue_id=i // 10,
                utterance_id=i % 10,
                speaker="A",
                transcript=text,
                transcript_raw=text,
                emotion="neutral",
                sentiment="neutral",
                media_path=None,
                start_time=0.0,
                end_time=0.0,
            )
            for i, text in enumerate(texts)
        ]
        extractor(utterances[:64])
        synchronize(args.device)
        started = time.perf_counter()
        extractor(utterances)
        synchronize(args.device)
        rate = len(utterances) / (time.perf_counter() - started)
        note = f"{config.last_layers} x {shape.hidden_size} values"
        table.add(f"text extraction ({args.text_shape}, bf16)", f"{rate:,.0f} utterances/s", note)

    return step


def speech_step(args) -> Callable[[Table], None]:
    def step(table: Table) -> None:
        import numpy as np
        from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

        from extract.speech_features import SpeechFeatureConfig, SpeechFeatureExtractor

        folder = Path(tempfile.mkdtemp(prefix="gpu_check_speech_"))
        WavLMModel(WavLMConfig(**SPEECH_SHAPES[args.speech_shape])).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
        config = SpeechFeatureConfig(
            model=str(folder), layers="all", pooling="mean_std", dtype="bfloat16", device=args.device, batch_size=32
        )
        extractor = SpeechFeatureExtractor(config)
        rng = np.random.default_rng(0)
        lengths = (16000 * rng.uniform(1.5, 4.5, args.utterances // 2)).astype(int)
        clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
        extractor(clips[:32])
        synchronize(args.device)
        started = time.perf_counter()
        features = extractor(clips)
        synchronize(args.device)
        rate = len(clips) / (time.perf_counter() - started)
        note = f"3 s mean clips, width {features.shape[1]}"
        table.add(f"speech extraction ({args.speech_shape}, bf16)", f"{rate:,.0f} utterances/s", note)

    return step


def training_step(args, peak: float | None) -> Callable[[Table], None]:
    def step(table: Table) -> None:
        command = [sys.executable, str(REPO / "bench" / "bench_end_to_end.py"), "--model", args.text_shape]
        precision = "bf16" if args.device == "cuda" else "fp32"
        command += ["--precision", precision, "--zero-stage", "2", "--batch-dialogues", str(args.batch_dialogues)]
        command += ["--steps", str(args.train_steps), "--dialogues", str(4 * args.batch_dialogues)]
        if peak is not None:
            command += ["--peak-tflops", str(peak)]
        environment = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=args.train_timeout, env=environment, cwd=REPO
        )
        output = result.stdout
        if result.returncode != 0:
            raise RuntimeError((result.stderr.strip().splitlines() or ["no output"])[-1])
        rates = re.search(r"([\d,]+) tokens/s, ([\d.]+) dialogues/s, ([\d.]+) utterances/s", output)
        memory = re.search(r"peak memory ([\d.]+) GB", output)
        mfu = re.search(r"MFU ([\d.]+)%", output)
        if rates is None or memory is None:
            raise RuntimeError(f"unexpected output of bench_end_to_end.py: {output[-300:]!r}")
        name = f"end-to-end training {args.text_shape}, {precision}, ZeRO-2"
        table.add(f"{name}: tokens/s", rates.group(1))
        table.add(f"{name}: sequences/s", rates.group(3), f"utterances; {rates.group(2)} dialogues/s")
        table.add(f"{name}: peak memory", f"{memory.group(1)} GB", "GPU allocated" if args.device == "cuda" else "RSS")
        note = f"of {peak:g} TFLOP/s dense bf16" if peak else "unknown GPU: pass --peak-tflops"
        table.add(f"{name}: MFU", f"{mfu.group(1)}%" if mfu else "n/a", note)

    return step


def lstm_step(args) -> Callable[[Table], None]:
    return lambda table: _lstm_check(table, torch.device(args.device))


def _lstm_check(table: Table, device: torch.device) -> None:
    # cuBLAS is deterministic only with a fixed workspace; it must be set before the first cuBLAS call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from model.fusion import FusionConfig, build_fusion_model

    torch.use_deterministic_algorithms(True)
    try:
        seen: list[torch.dtype] = []
        torch.manual_seed(0)
        model = build_fusion_model(FusionConfig(), 6552 + 6144, 4096).to(device)
        lstms = [module for module in model.modules() if isinstance(module, torch.nn.LSTM)]
        hooks = [
            lstm.register_forward_hook(lambda module, inputs, output: seen.append(_first_tensor(output).dtype))
            for lstm in lstms
        ]
        generator = torch.Generator().manual_seed(0)
        audio = torch.randn(8, 12, 6552 + 6144, generator=generator).to(device)
        text = torch.randn(8, 12, 4096, generator=generator).to(device)
        mask = torch.ones(8, 12, dtype=torch.bool, device=device)
        mask[1:, 9:] = False
        gradients = []
        for _ in range(2):
            # Dropout stays on, as in training, with the same draws both times.
            torch.manual_seed(1)
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(audio, text, mask)
            logits.float()[mask].sum().backward()
            gradients.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
        for hook in hooks:
            hook.remove()
        identical = bool(torch.equal(gradients[0], gradients[1]))
        dtypes = sorted({str(dtype).removeprefix("torch.") for dtype in seen})
        table.add(
            "fusion LSTMs in bf16, deterministic algorithms",
            "yes" if dtypes == ["bfloat16"] and identical else "no",
            f"{len(lstms)} LSTMs computed in {', '.join(dtypes)}; two backward passes bit-identical: {identical}",
        )
    finally:
        torch.use_deterministic_algorithms(False)


def _first_tensor(output) -> torch.Tensor:
    # An LSTM returns (output, (h, c)); a packed output is a PackedSequence, itself a tuple (data, ...).
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def actors_step(table: Table) -> None:
    import ray

    from cluster.ray_config import RayConfig
    from cluster.ray_runtime import ray_session
    from extract.extract_config import ExtractConfig
    from extract.pipeline import plan_workers, start_actors
    from extract.text_features import TextFeatureConfig

    folder = Path(tempfile.mkdtemp(prefix="gpu_check_actors_"))
    model = build_tiny_text_encoder(folder, ["okay so we were on a break", "oh my god"], TinyEncoderConfig())
    ray_config = RayConfig(num_workers=max(2, torch.cuda.device_count()))
    text = TextFeatureConfig(model=str(model))
    config = ExtractConfig(corpus=str(REPO), families=["text"], text=text, ray=ray_config)
    with ray_session(ray_config) as resources:
        plan = plan_workers(config.families, resources, 1.0, shards=2)
        actors = start_actors(config, plan)
        try:
            placements = ray.get([actor.placement.remote() for actor in actors])
        finally:
            for actor in actors:
                ray.kill(actor)
    devices = [(p["gpu_ids"], p["cuda_device"]) for p in placements]
    distinct = len(actors) == 2 and devices[0] != devices[1] and devices[0][1] != devices[1][1]
    note = "; ".join(f"actor {i}: Ray GPU {ids}, device {uuid}" for i, (ids, uuid) in enumerate(devices))
    table.add("two extraction actors on distinct GPUs", "yes" if distinct else "no", note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the GPU is not known")
    parser.add_argument("--openl3-windows", type=int, default=2048, help="windows per OpenL3 GPU measurement")
    parser.add_argument("--openl3-cpu-windows", type=int, default=16, help="windows of the CPU reference")
    parser.add_argument("--utterances", type=int, default=2048, help="utterances for text (speech: half of them)")
    parser.add_argument("--batch-dialogues", type=int, default=8, help="global training batch in dialogues")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--train-timeout", type=int, default=240, help="seconds the training measurement may take")
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: run every step on the CPU, with --text-shape tiny --speech-shape tiny, to check the script itself",
    )
    parser.add_argument("--text-shape", default="roberta-large-shape", choices=sorted(SHAPES))
    parser.add_argument("--speech-shape", default="wavlm-base", choices=sorted(SPEECH_SHAPES))
    args = parser.parse_args()
    if args.device == "cuda":
        refuse_without_gpu()
    logging.basicConfig(level=logging.WARNING)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    peak = peak_tflops(name, args.peak_tflops)
    count = torch.cuda.device_count() if args.device == "cuda" else 0
    print(f"gpu_check: {max(count, 1)} x {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    started = time.monotonic()
    table = Table(deadline=started + BUDGET_SECONDS)
    table.run("OpenL3", openl3_step(args))
    table.run("text extraction", text_step(args))
    table.run("speech extraction", speech_step(args))
    table.run("fusion LSTMs", lstm_step(args))
    table.run("end-to-end training", training_step(args, peak))
    if count >= 2:
        table.run("two extraction actors", actors_step)
    else:
        table.add("two extraction actors on distinct GPUs", "not run", "needs 2 or more GPUs")
    table.print()
    print(f"\ngpu_check took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
