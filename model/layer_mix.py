"""A learned weighted sum of a speech encoder's layers, in front of the fusion head.

A `speech` family extracted with `speech.layers = "all"` stores every hidden state of its
encoder side by side, each pooled over frames (`extract.speech_features`). Which layer
carries emotion best differs between encoders, so the training recipe of SUPERB is used:
one scalar weight per layer, softmax-normalised and learned with the head, mixes the L + 1
layer blocks into one block of one layer's width. The head then sees that mixed block where
the stored layers were; the rest of the audio vector is untouched.

Pooling came first, so the mixed mean is exactly the mean of the mixed frames; the mixed
standard deviation is a weighted sum of per-layer standard deviations, not the standard
deviation of the mixed frames: a cheaper stand-in that keeps the store model-agnostic.
Weights start at zero, an equal mix of all layers, so the start is the same for every seed.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerBlock:
    """Where a family's stored layers sit in the audio vector."""

    offset: int
    """First column of the block in the audio vector."""
    layers: int
    """Hidden states stored side by side."""
    width: int
    """Columns per hidden state (its pooled statistics)."""

    @property
    def end(self) -> int:
        return self.offset + self.layers * self.width


def mixed_width(audio_dim: int, blocks: Sequence[LayerBlock]) -> int:
    """Width of the audio vector once every block is mixed down to one layer."""
    return audio_dim - sum((block.layers - 1) * block.width for block in blocks)


class LayerMix(nn.Module):
    """audio [..., audio_dim] -> [..., mixed_width]: each block replaced by the softmax-weighted sum of its layers."""

    def __init__(self, blocks: Sequence[LayerBlock]):
        super().__init__()
        if not blocks:
            raise ValueError("LayerMix needs at least one block of stored layers")
        self.blocks = tuple(sorted(blocks, key=lambda block: block.offset))
        self.layer_logits = nn.ParameterList([nn.Parameter(torch.zeros(block.layers)) for block in self.blocks])

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        parts = []
        position = 0
        for block, logits in zip(self.blocks, self.layer_logits):
            parts.append(audio[..., position : block.offset])
            layers = audio[..., block.offset : block.end].unflatten(-1, (block.layers, block.width))
            weights = torch.softmax(logits, dim=0).to(audio.dtype)
            parts.append((layers * weights[:, None]).sum(-2))
            position = block.end
        parts.append(audio[..., position:])
        return torch.cat(parts, dim=-1)


class LayerMixedHead(nn.Module):
    """A fusion head behind a `LayerMix` of its audio input; same forward(audio, text, mask) as the head."""

    def __init__(self, mix: LayerMix, head: nn.Module):
        super().__init__()
        self.mix = mix
        self.head = head

    @property
    def uses_audio(self) -> bool:
        return bool(getattr(self.head, "uses_audio", True))

    @property
    def uses_text(self) -> bool:
        return bool(getattr(self.head, "uses_text", True))

    def forward(self, audio: torch.Tensor | None, text: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(audio) if audio is not None else None, text, mask)
