"""Whether a checkpoint's weights fit the model a run's config.toml builds, said in one line.

A config.toml edited after training (another `model.hidden_size`, say) builds another model, and
torch's `load_state_dict` then lists every mismatched tensor. `evaluate` and `predict` compare the
shapes first and refuse in one line; `cmroberta verify RUN` compares the same shapes without
loading a tensor: the checkpoint's from its safetensors header, the config's from the model built
on the meta device.
"""

from pathlib import Path

import torch
from safetensors import safe_open

Shapes = dict[str, tuple[int, ...]]


def header_shapes(path: Path) -> Shapes:
    """The shape of every tensor in a safetensors file, read from its header alone."""
    with safe_open(str(path), framework="pt") as weights:
        return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}


def model_shapes(model: torch.nn.Module) -> Shapes:
    """The shape of every tensor in `model`'s state dict (a model on the meta device holds no data)."""
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def weights_misfit(tag: str, run_dir: Path, built: Shapes, saved: Shapes) -> str | None:
    """Why checkpoint `tag`'s weights (`saved`) do not fit the model the config builds (`built`); None when they do."""
    wrong = sorted(name for name in set(built) | set(saved) if built.get(name) != saved.get(name))
    if not wrong:
        return None
    return (
        f"checkpoint {tag} of {run_dir} does not fit the model its config.toml describes ({len(wrong)} tensors "
        f"differ, e.g. {wrong[0]}: the checkpoint holds {saved.get(wrong[0])}, the config makes "
        f"{built.get(wrong[0])}): a model key of config.toml (such as model.hidden_size) was changed after "
        "training; restore the config.toml it was trained with, or train the run again"
    )
