"""The CM-RoBERTa fusion network (the paper's Section 3.2) and its Table 1 ablations.

Input is a batch of dialogues, each a sequence of utterance vectors: audio is openSMILE
and OpenL3 concatenated (12696 numbers), text the four-layer RoBERTa vector (4096).

    x_a, x_t ─► BiLSTM ─► H_a, H_t ─► SCA unit (2 layers) ─► H_a^c, H_t^c (cross), H_a^s, H_t^s (self)
    x_a, x_t ─► 2-layer LSTM each ─► join ─► BiLSTM ─► feed-forward ─► H_mid            (eq. 10)
    x_a, x_t ─► linear + LayerNorm ─► H_a^r, H_t^r                                       (residual)
    [H_a^c, H_t^c, H_a^s, H_t^s, H_mid, H_a^r, H_t^r] ─► two fully-connected layers ─► 7 logits

Each SCA layer runs four attention blocks side by side: audio queries text and text queries
audio (eqs. 1-6), and each modality attends to itself (eqs. 7-9). The cross path and the self
path each stack on themselves: layer 2's cross blocks read layer 1's cross outputs, its self
blocks layer 1's self outputs; the paper names the outputs of the last layer of each path.

End-to-end training (RoBERTa fine-tuned with the head) composes this head unchanged: an
encoder maps each dialogue's token ids to [B, T, text_dim] vectors inside the graph
(`model.end_to_end`), and those take the place of the stored text features.

Every recurrent layer runs on packed sequences and every attention masks padded keys, so
padding never changes the output of a real utterance.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from extract.labels import EMOTIONS

Variant = Literal["bimodal", "bimodal_no_sca", "text", "audio"]


@dataclass(kw_only=True)
class FusionConfig:
    """The fusion network: which variant of the paper's Table 1, and its sizes."""

    variant: Variant = "bimodal"
    """bimodal: the full model; bimodal_no_sca: without the SCA unit; text or audio: that modality's
    BiLSTM encoder and residual branch alone (the paper's unimodal models)."""
    hidden_size: int = 128
    """Width d of every representation (the paper's 128 hidden neurons); BiLSTMs use d/2 per direction."""
    sca_layers: int = 2
    """Stacked self- and cross-attention layers in the SCA unit (the paper: 2)."""
    attention_heads: int = 4
    """Heads of each attention block; d must divide by it. Heads split d without adding parameters;
    1 is the single-head attention the paper's equations write."""
    sublayer_join: Literal["concat", "residual"] = "concat"
    """How an attention or feed-forward output joins its input: 'concat' is the paper's eqs. 3-6 and
    8-9, LayerNorm(W[x ⊕ f(x)]); 'residual' is the Transformer's LayerNorm(x + f(x)). The default is
    'concat' because it is what the paper writes (⊕ is concatenation there, as in its eq. for x^a),
    so results reproduce the paper; 'residual' is the usual reading of such diagrams, kept to compare."""
    feedforward_size: int = 256
    """Inner width of the feed-forward blocks."""
    mid_lstm_layers: int = 2
    """Stacked LSTM layers per modality in the mid-level fusion (the paper: 2)."""
    classifier_hidden: int = 128
    """Width of the first of the two fully-connected classification layers."""
    dropout: float = 0.2
    """Dropout inside attention, feed-forward and classifier blocks."""
    input_dropout: float = 0.1
    """Dropout on the raw utterance vectors, which are wide and few."""

    def __post_init__(self) -> None:
        if self.variant not in ("bimodal", "bimodal_no_sca", "text", "audio"):
            raise ValueError(f"variant must be bimodal, bimodal_no_sca, text or audio, not {self.variant!r}")
        for name in ("hidden_size", "sca_layers", "attention_heads", "feedforward_size", "mid_lstm_layers",
                     "classifier_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even (a BiLSTM gives d/2 per direction), not {self.hidden_size}")
        if self.hidden_size % self.attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of attention_heads ({self.attention_heads})"
            )
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be within [0, 1), not {getattr(self, name)}")

    @property
    def uses_audio(self) -> bool:
        return self.variant != "text"

    @property
    def uses_text(self) -> bool:
        return self.variant != "audio"


def _lengths(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=1).clamp(min=1).cpu()


class MaskedLSTM(nn.Module):
    """An LSTM over the real utterances of each dialogue only (packed), zeros at padded positions."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=bidirectional)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, _lengths(mask), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


class SublayerJoin(nn.Module):
    """Joins a block's input x and its output f(x), then LayerNorm: by concatenation or by sum."""

    def __init__(self, size: int, mode: str):
        super().__init__()
        self.mode = mode
        self.project = nn.Linear(2 * size, size) if mode == "concat" else None
        self.norm = nn.LayerNorm(size)

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            return self.norm(self.project(torch.cat([x, fx], dim=-1)))
        return self.norm(x + fx)


class AttentionBlock(nn.Module):
    """Attention of `query` over `context`, joined to the query, then a feed-forward joined the same way.

    With context = query this is the self-attention of eqs. 7-9; with the other modality
    as context, the cross-attention of eqs. 1-6.
    """

    def __init__(self, config: FusionConfig):
        super().__init__()
        d = config.hidden_size
        self.attention = nn.MultiheadAttention(d, config.attention_heads, dropout=config.dropout, batch_first=True)
        self.join_attention = SublayerJoin(d, config.sublayer_join)
        self.feedforward = nn.Sequential(
            nn.Linear(d, config.feedforward_size), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.feedforward_size, d), nn.Dropout(config.dropout),
        )
        self.join_feedforward = SublayerJoin(d, config.sublayer_join)

    def forward(self, query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        propagated, _ = self.attention(query, context, context, key_padding_mask=~mask, need_weights=False)
        h = self.join_attention(query, propagated)
        return self.join_feedforward(h, self.feedforward(h))


class SCALayer(nn.Module):
    """One layer of the SCA unit: cross-attention both ways and self-attention in each modality, in parallel."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.audio_from_text = AttentionBlock(config)
        self.text_from_audio = AttentionBlock(config)
        self.audio_self = AttentionBlock(config)
        self.text_self = AttentionBlock(config)

    def forward(self, cross: tuple[torch.Tensor, torch.Tensor], own: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        cross_a, cross_t = cross
        self_a, self_t = own
        new_cross = (self.audio_from_text(cross_a, cross_t, mask), self.text_from_audio(cross_t, cross_a, mask))
        new_self = (self.audio_self(self_a, self_a, mask), self.text_self(self_t, self_t, mask))
        return new_cross, new_self


class ModalityBranch(nn.Module):
    """What every variant computes for one modality: the BiLSTM encoder and the residual branch."""

    def __init__(self, input_size: int, config: FusionConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.input_dropout)
        self.encoder = MaskedLSTM(input_size, config.hidden_size // 2, bidirectional=True)
        self.residual = nn.Sequential(nn.Linear(input_size, config.hidden_size), nn.LayerNorm(config.hidden_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dropout(x)
        return x, self.encoder(x, mask), self.residual(x)


class MidLevelFusion(nn.Module):
    """Eq. 10: two stacked LSTMs per modality on the raw inputs, joined, then a BiLSTM and a feed-forward."""

    def __init__(self, audio_dim: int, text_dim: int, config: FusionConfig):
        super().__init__()
        d = config.hidden_size
        self.audio_lstm = MaskedLSTM(audio_dim, d, num_layers=config.mid_lstm_layers)
        self.text_lstm = MaskedLSTM(text_dim, d, num_layers=config.mid_lstm_layers)
        self.joint = MaskedLSTM(2 * d, d // 2, bidirectional=True)
        self.feedforward = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(config.dropout))

    def forward(self, x_a: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.audio_lstm(x_a, mask), self.text_lstm(x_t, mask)], dim=-1)
        return self.feedforward(self.joint(joined, mask))


class FusionModel(nn.Module):
    """CM-RoBERTa's head, or one of its ablations: forward(audio, text, mask) -> logits [B, T, 7]."""

    def __init__(self, config: FusionConfig, audio_dim: int, text_dim: int):
        super().__init__()
        self.config = config
        self.uses_audio, self.uses_text = config.uses_audio, config.uses_text
        self.audio = ModalityBranch(audio_dim, config) if self.uses_audio else None
        self.text = ModalityBranch(text_dim, config) if self.uses_text else None
        bimodal = self.uses_audio and self.uses_text
        self.sca = nn.ModuleList(SCALayer(config) for _ in range(config.sca_layers)) if config.variant == "bimodal" else None
        self.mid = MidLevelFusion(audio_dim, text_dim, config) if bimodal else None
        parts = {"bimodal": 7, "bimodal_no_sca": 5, "text": 2, "audio": 2}[config.variant]
        self.classifier = nn.Sequential(
            nn.Linear(parts * config.hidden_size, config.classifier_hidden), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.classifier_hidden, len(EMOTIONS)),
        )

    def forward(self, audio: torch.Tensor | None, text: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        parts = []
        if self.audio is not None:
            if audio is None:
                raise ValueError(f"the {self.config.variant} variant needs audio features, but none were given")
            x_a, h_a, r_a = self.audio(audio, mask)
        if self.text is not None:
            if text is None:
                raise ValueError(f"the {self.config.variant} variant needs text features, but none were given")
            x_t, h_t, r_t = self.text(text, mask)
        if self.config.variant == "audio":
            parts = [h_a, r_a]
        elif self.config.variant == "text":
            parts = [h_t, r_t]
        else:
            h_mid = self.mid(x_a, x_t, mask)
            if self.sca is None:
                parts = [h_a, h_t, h_mid, r_a, r_t]
            else:
                cross, own = (h_a, h_t), (h_a, h_t)
                for layer in self.sca:
                    cross, own = layer(cross, own, mask)
                parts = [*cross, *own, h_mid, r_a, r_t]
        return self.classifier(torch.cat(parts, dim=-1))


def build_fusion_model(config: FusionConfig, audio_dim: int, text_dim: int) -> FusionModel:
    """The fusion network for inputs of these widths (a width a variant does not read may be 0)."""
    if config.uses_audio and audio_dim < 1:
        raise ValueError(f"the {config.variant} variant reads audio, but the audio width is {audio_dim}")
    if config.uses_text and text_dim < 1:
        raise ValueError(f"the {config.variant} variant reads text, but the text width is {text_dim}")
    return FusionModel(config, audio_dim, text_dim)
