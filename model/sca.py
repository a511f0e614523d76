"""The self- and cross-attention (SCA) unit of CM-RoBERTa (the paper's Section 3.2, eqs. 1-9).

Each of the unit's stacked layers runs four attention blocks side by side on the two modality
streams of a dialogue, [B, T, d] each:

    audio ◄─ text    cross-attention, eqs. 1, 3, 5: the audio stream asks, text answers
    text  ◄─ audio   cross-attention, eqs. 2, 4, 6: the text stream asks, audio answers
    audio ◄─ audio   self-attention, eqs. 7-9
    text  ◄─ text    self-attention, eqs. 7-9

A block is attention, joined to its query stream, then a feed-forward joined the same way:
H' = join(H, Attention(H, C)), out = join(H', FeedForward(H')).

In a cross block the stream being updated gives the queries and the other modality the keys and
values. The paper's prose says so ("we update the features of one modality with the information
propagating from the other modality", following Cross-Modal BERT); its eq. 3 pairs H_a with the
term that eq. 2 builds from audio values, which would feed the audio stream audio again, so the
prose is followed.

The cross path and the self path each stack on themselves: layer 2's cross blocks read layer 1's
cross outputs and its self blocks layer 1's self outputs, so after the last layer the unit holds
two cross-modal streams (H_a^c, H_t^c) and two within-modality streams (H_a^s, H_t^s), the four
outputs the paper names. Both paths start from the BiLSTM encodings H_a, H_t.
"""

import math
from typing import Literal

import torch
from torch import nn

SublayerJoinMode = Literal["concat", "residual"]


class MaskedAttention(nn.Module):
    """Scaled dot-product attention of `query` [B, T, d] over `context` [B, S, d], padded keys excluded.

    softmax(Q Kᵀ / √d_k) V with Q, K, V linear maps of the inputs (eqs. 1, 2 and 7). With one head
    d_k = d and this is the equations as written; with several, each head attends in its own d/heads
    wide slice (d_k = d/heads) and an output projection mixes the heads, as in the Transformer.
    """

    def __init__(self, size: int, heads: int, dropout: float):
        super().__init__()
        if size % heads:
            raise ValueError(f"attention width {size} must be a multiple of the number of heads {heads}")
        self.heads = heads
        self.head_size = size // heads
        self.query = nn.Linear(size, size)
        # A key bias adds the same q·b to every score of a query, which softmax cancels: it could never learn.
        self.key = nn.Linear(size, size, bias=False)
        self.value = nn.Linear(size, size)
        self.output = nn.Linear(size, size) if heads > 1 else nn.Identity()
        self.weights_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_size).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, d]: for each query row, the values of `context`'s real rows (`context_mask` True) it attends to."""
        q = self._split_heads(self.query(query))
        k = self._split_heads(self.key(context))
        v = self._split_heads(self.value(context))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)
        # The most negative finite score, not -inf: a dialogue with no real key (all padding) then
        # gets uniform weights instead of 0/0 = NaN, and real keys still take all the weight (exp underflows to 0).
        scores = scores.masked_fill(~context_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = self.weights_dropout(scores.softmax(dim=-1))
        attended = (weights @ v).transpose(1, 2).reshape(query.shape)
        return self.output(attended)


class SublayerJoin(nn.Module):
    """LayerNorm of a sublayer's input x joined with its output f(x), by concatenation or by sum.

    'concat' is LayerNorm(W [x ⊕ f(x)] + b): the ⊕ of the paper's eqs. 3-6 and 8-9, projected back to
    width d so that layers stack. 'residual' is the Transformer's LayerNorm(x + f(x)).
    """

    def __init__(self, size: int, mode: SublayerJoinMode):
        super().__init__()
        if mode not in ("concat", "residual"):
            raise ValueError(f"sublayer join must be 'concat' or 'residual', not {mode!r}")
        self.project = nn.Linear(2 * size, size) if mode == "concat" else None
        self.norm = nn.LayerNorm(size)

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        joined = x + fx if self.project is None else self.project(torch.cat([x, fx], dim=-1))
        return self.norm(joined)


class FeedForward(nn.Module):
    """Position-wise Linear(d, inner) → GELU → dropout → Linear(inner, d) → dropout."""

    def __init__(self, size: int, inner_size: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(size, inner_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner_size, size),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AttentionBlock(nn.Module):
    """Attention of a stream over a context, joined, then a feed-forward, joined.

    Eqs. 1-6 with the other modality as context; eqs. 7-9 with the stream itself.
    """

    def __init__(self, size: int, heads: int, feedforward_size: int, dropout: float, join: SublayerJoinMode):
        super().__init__()
        self.attention = MaskedAttention(size, heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.join_attention = SublayerJoin(size, join)
        self.feedforward = FeedForward(size, feedforward_size, dropout)
        self.join_feedforward = SublayerJoin(size, join)

    def forward(self, stream: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        propagated = self.dropout(self.attention(stream, context, mask))
        h = self.join_attention(stream, propagated)
        return self.join_feedforward(h, self.feedforward(h))


class SCALayer(nn.Module):
    """One layer of the SCA unit: cross-attention both ways and self-attention in each modality, in parallel."""

    def __init__(self, size: int, heads: int, feedforward_size: int, dropout: float, join: SublayerJoinMode):
        super().__init__()
        self.audio_from_text = AttentionBlock(size, heads, feedforward_size, dropout, join)
        self.text_from_audio = AttentionBlock(size, heads, feedforward_size, dropout, join)
        self.audio_self = AttentionBlock(size, heads, feedforward_size, dropout, join)
        self.text_self = AttentionBlock(size, heads, feedforward_size, dropout, join)

    def forward(
        self,
        cross_audio: torch.Tensor,
        cross_text: torch.Tensor,
        self_audio: torch.Tensor,
        self_text: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The four streams after this layer, in the order they came in."""
        return (
            self.audio_from_text(cross_audio, cross_text, mask),
            self.text_from_audio(cross_text, cross_audio, mask),
            self.audio_self(self_audio, self_audio, mask),
            self.text_self(self_text, self_text, mask),
        )


class SCAUnit(nn.Module):
    """Stacked SCA layers: (H_a, H_t) [B, T, d] each -> (H_a^c, H_t^c, H_a^s, H_t^s) [B, T, d] each."""

    def __init__(
        self, layers: int, size: int, heads: int, feedforward_size: int, dropout: float, join: SublayerJoinMode
    ):
        super().__init__()
        self.layers = nn.ModuleList(SCALayer(size, heads, feedforward_size, dropout, join) for _ in range(layers))

    def forward(
        self, audio: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        streams = (audio, text, audio, text)
        for layer in self.layers:
            streams = layer(*streams, mask)
        return streams
