"""Checkpoint save and load: the project's format (`model.checkpoint`) against DeepSpeed's own.

Two engines, each after one optimizer step so that its optimizer state exists:

- the default fusion head at the paper's widths (12,696 audio + 4,096 text, 37.4M parameters),
  torch Adam, ZeRO off (the frozen-feature runs' engine);
- the end-to-end model with a tiny RoBERTa from `extract.tiny_text_encoder` behind a small head,
  AdamW over layer-wise groups, ZeRO stage 2 (the end-to-end default).

For each: seconds to save and to load, and bytes on disk, of `Checkpoints.save` / `Checkpoints.restore`
(safetensors weights, weights-only rank files, SHA-256 of every file) and of DeepSpeed's
`save_checkpoint` / `load_checkpoint` (pickled), median of --repeats, and the ratios ours / DeepSpeed's.

    python bench/bench_checkpoint.py
    python bench/bench_checkpoint.py --repeats 5 --folder /scratch/bench   # a parallel filesystem
"""

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cluster.distributed_session import distributed_session
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from model.checkpoint import checkpoint_tag
from model.end_to_end import EndToEndModel
from model.fusion import FusionConfig, build_fusion_model
from model.param_groups import ParamGroupsConfig, build_param_groups
from model.run_folder import RunFolder
from model.text_encoder import TextEncoder, TextEncoderConfig

WORDS = "okay so we were on a break you know I can not believe this oh my god".split()


def deepspeed_config(zero_stage: int) -> dict:
    return {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": zero_stage},
            "zero_allow_untested_optimizer": True, "steps_per_print": 2**31 - 1}


def stepped(model: torch.nn.Module, optimizer: torch.optim.Optimizer, zero_stage: int):
    """The engine around `model` after one step on a loss that reaches every parameter."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(zero_stage))
    engine.backward(sum(p.float().square().sum() for p in engine.module.parameters()))
    engine.step()
    return engine


def head_engine():
    torch.manual_seed(0)
    model = build_fusion_model(FusionConfig(), 6552 + 6144, 4096)
    return stepped(model, torch.optim.Adam(model.parameters(), lr=1e-4), 0)


def end_to_end_engine(folder: Path):
    torch.manual_seed(0)
    encoder_folder = build_tiny_text_encoder(folder / "tiny", WORDS * 2, TinyEncoderConfig(hidden_size=64))
    encoder = TextEncoder(TextEncoderConfig(model=str(encoder_folder)))
    head = build_fusion_model(FusionConfig(hidden_size=32), 64, encoder.dim)
    groups = build_param_groups(encoder.model, encoder.num_layers, head, ParamGroupsConfig(), head_lr=1e-4,
                                head_weight_decay=0.0)
    return stepped(EndToEndModel(encoder, head), torch.optim.AdamW(groups), 2)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure(name: str, engine, root: Path, repeats: int) -> None:
    parameters = sum(p.numel() for p in engine.module.parameters())
    ours_save, ours_load, theirs_save, theirs_load = [], [], [], []
    for repeat in range(repeats):
        ours = RunFolder(root / f"ours-{repeat}").checkpoints()
        ours_save.append(timed(lambda: ours.save(engine, checkpoint_tag(1), client_state={}, rank_state={},
                                                 end_of_epoch=True, best_epoch=1)))
        ours_load.append(timed(lambda: ours.restore(engine)))
        theirs = root / f"deepspeed-{repeat}"
        theirs_save.append(timed(lambda: engine.save_checkpoint(str(theirs), tag="t", save_latest=False)))
        theirs_load.append(timed(lambda: engine.load_checkpoint(str(theirs), tag="t")))
    ours_bytes = folder_bytes(root / "ours-0" / "checkpoints" / checkpoint_tag(1))
    theirs_bytes = folder_bytes(root / "deepspeed-0" / "t")
    save, load = statistics.median(ours_save), statistics.median(ours_load)
    ds_save, ds_load = statistics.median(theirs_save), statistics.median(theirs_load)
    print(f"{name}: {parameters / 1e6:.1f}M parameters")
    print(f"  save  ours {save:7.3f} s   DeepSpeed {ds_save:7.3f} s   ratio {save / ds_save:5.2f}")
    print(f"  load  ours {load:7.3f} s   DeepSpeed {ds_load:7.3f} s   ratio {load / ds_load:5.2f}")
    print(f"  size  ours {ours_bytes / 2**20:7.1f} MiB DeepSpeed {theirs_bytes / 2**20:7.1f} MiB ratio "
          f"{ours_bytes / theirs_bytes:5.2f}")
    for folder in root.iterdir():
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (the median is printed)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write checkpoints (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cmroberta" / "torch_extensions"))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=args.folder) as temp, distributed_session():
        root = Path(temp)
        measure("default fusion head, Adam, ZeRO off", head_engine(), root, args.repeats)
        measure("end to end, tiny RoBERTa + head, AdamW, ZeRO-2", end_to_end_engine(root), root, args.repeats)


if __name__ == "__main__":
    main()
