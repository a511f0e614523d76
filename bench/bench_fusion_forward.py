"""Size and speed of the fusion network at the paper's widths (audio 6552 + 6144 = 12696, text 4096).

For each Table 1 variant it prints the parameter count, split by part (modality branches, SCA
unit, mid-level fusion, classifier), and the time of one forward and backward pass (cross-entropy
over the real utterances) of a batch of random dialogues, the median of several after a warm-up.

    python bench/bench_fusion_forward.py                          # 32 dialogues x 10 utterances, CPU
    python bench/bench_fusion_forward.py --threads 1 --repeats 3
    python bench/bench_fusion_forward.py --device cuda --repeats 20
    python bench/bench_fusion_forward.py sublayer_join=residual attention_heads=4
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cluster.config import load_config
from model.fusion import FusionConfig, build_fusion_model

AUDIO_DIM = 6552 + 6144
TEXT_DIM = 4096
VARIANTS = ("bimodal", "bimodal_no_sca", "text", "audio")


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per top-level part of the model, and the total."""
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        part = name.split(".")[0]
        counts[part] = counts.get(part, 0) + parameter.numel()
    counts["total"] = sum(counts.values())
    return counts


def step_seconds(model: torch.nn.Module, dialogues: int, utterances: int, repeats: int, device: str) -> list[float]:
    """Wall seconds of `repeats` forward+backward passes on one random, fully real batch (after one warm-up)."""
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(dialogues, utterances, AUDIO_DIM, generator=generator).to(device)
    text = torch.randn(dialogues, utterances, TEXT_DIM, generator=generator).to(device)
    mask = torch.ones(dialogues, utterances, dtype=torch.bool, device=device)
    labels = torch.randint(0, 7, (dialogues, utterances), generator=generator).to(device)
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        F.cross_entropy(model(audio, text, mask)[mask], labels[mask]).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="FusionConfig fields as key=value (variant is swept)")
    parser.add_argument("--dialogues", type=int, default=32)
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"audio {AUDIO_DIM}, text {TEXT_DIM}; batch {args.dialogues} dialogues x {args.utterances} utterances "
          f"on {args.device} ({torch.get_num_threads()} threads); forward+backward, median of {args.repeats}")
    for variant in tqdm(VARIANTS, desc="variants", leave=False):
        config = load_config(FusionConfig, overrides=[*args.overrides, f"variant={variant}"])
        torch.manual_seed(0)
        model = build_fusion_model(config, AUDIO_DIM, TEXT_DIM).to(args.device).train()
        counts = parameter_counts(model)
        times = step_seconds(model, args.dialogues, args.utterances, args.repeats, args.device)
        parts = ", ".join(f"{part} {count / 1e6:.2f}M" for part, count in counts.items() if part != "total")
        tqdm.write(f"{variant:>15}: {counts['total']:>11,} parameters ({parts}); "
                   f"{statistics.median(times) * 1e3:8.1f} ms per step (min {min(times) * 1e3:.1f})")


if __name__ == "__main__":
    main()
