"""The CM-RoBERTa fusion network (the paper's Section 3.2) and its Table 1 ablations.

Input is a batch of B dialogues of at most T utterances, each utterance a vector per modality:
audio is openSMILE and OpenL3 concatenated (6552 + 6144 = 12696 numbers), text the RoBERTa vector
(its last four layers, 4096). With h = `hidden_size` (the paper's 128) every representation the
network builds is d = 2h wide, the two directions of a BiLSTM side by side:

    x_a, x_t ─► BiLSTM (h per direction) ─► H_a, H_t [B, T, d]
    H_a, H_t ─► SCA unit (model.sca, 2 layers) ─► H_a^c, H_t^c (cross), H_a^s, H_t^s (self)
    x_a, x_t ─► two stacked LSTMs (h) each ─► ⊕ ─► BiLSTM (h per direction) ─► feed-forward ─► H_mid  (eq. 10)
      (or, with mid_fusion_input = 'encodings': H_a ⊕ H_t ─► BiLSTM ─► feed-forward ─► H_mid)
    x_a, x_t ─► linear + LayerNorm ─► H_a^r, H_t^r                                               (residual)
    [H_a^c, H_t^c, H_a^s, H_t^s, H_mid, H_a^r, H_t^r] ─► linear ─► ReLU ─► dropout ─► linear ─► 7 logits

Eq. 10 has two readings, and `mid_fusion_input` gives both. Its formula is
H_mid = FeedForward(LSTM([H_a, H_t])): the BiLSTM encodings, joined ('encodings'). The sentence
that introduces it says more: "individual modalities (x_a, x_t) are passed in parallel through two
stacked LSTM layers separately to store single modality feature (H_a^m, H_t^m), then combined via
a bidirectional LSTM" ('inputs'). 'inputs' is the default because it is the only reading in which
every part the text names exists (the inputs x_a, x_t, the two stacked layers per modality, H^m,
the bidirectional join), while the formula's H_a, H_t read as shorthand for H_a^m, H_t^m; it also
keeps the mid-level path independent of the encoders the SCA unit reads, which is what the
paper's "in parallel" suggests. 'encodings' is the formula taken literally, and much cheaper on
the 12,696-wide audio input (no second pair of LSTMs over x_a, x_t).

Concatenating the BiLSTM's directions keeps the paper's 128 hidden units per LSTM and spends no
extra layer on folding them back to 128. The mid-level LSTMs are unidirectional (the paper's
"LSTM layers"); the BiLSTM after them reads both directions of the dialogue.

The Table 1 variants (`FusionConfig.variant`):
- bimodal: everything above;
- bimodal_no_sca: without the SCA unit; the BiLSTM encodings H_a, H_t take its place in the
  concatenation: [H_a, H_t, H_mid, H_a^r, H_t^r];
- text, audio: that modality's BiLSTM encoder and residual branch, [H_m, H_m^r] (the paper's
  "unimodal ... models are comprised of LSTM layer, and residual block").

Every LSTM runs on packed sequences and every attention excludes padded keys, so padding never
changes the output of a real utterance; padded positions get finite, meaningless logits.

Modality dropout (`FusionConfig.modality_dropout`, off by default as in the paper) trains a bimodal
model to cope with a missing modality. In training, each utterance loses its audio input with
probability p and, independently, its text input with probability p; where both are drawn, one of
the two, chosen at random, is kept, so an utterance never loses both. The model sees a dropped
modality through a mask: the utterance's input vector of that modality is multiplied by 0. We
chose the mask over a learned "absent" vector because zero is already what a missing modality looks
like here: inputs are standardised with the train split's statistics, so zero is the train mean,
and the store gives exactly that to a clip that failed extraction (MELD has such clips). Training with
the mask therefore teaches the model the same signal it meets at a corrupt clip, adds no parameter
(checkpoints with and without it have the same tensors), and lets a robustness evaluation remove a
modality the same way (`ModalityDropout.absent`). Dropout acts on the input before the branches, so
every path (SCA, mid-level fusion, residual) sees the same absent input.

End-to-end training (RoBERTa fine-tuned together with this head, the default text mode) composes the head unchanged: a
text encoder turns each dialogue's token ids into per-utterance vectors [B, T, text_dim] inside the
graph and passes them as `text`, so one backward pass trains encoder and head
(`model.end_to_end.EndToEndModel`). The head never sees token ids.
"""

import logging
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from extract.labels import EMOTIONS
from model.sca import FeedForward, SCAUnit, SublayerJoinMode

log = logging.getLogger(__name__)

Variant = Literal["bimodal", "bimodal_no_sca", "text", "audio"]
MidFusionInput = Literal["inputs", "encodings"]


@dataclass(kw_only=True)
class FusionConfig:
    """The fusion network: which variant of the paper's Table 1, and its sizes."""

    variant: Variant = "bimodal"
    """bimodal: the full model; bimodal_no_sca: without the SCA unit; text or audio: that modality's
    BiLSTM encoder and residual branch alone (the paper's unimodal models)."""
    hidden_size: int = 128
    """Hidden units h of every LSTM (the paper's 128 hidden neurons). A BiLSTM's two directions are
    concatenated, so the model width d (attention, feed-forward, residual branches) is 2h."""
    sca_layers: int = 2
    """Stacked self- and cross-attention layers in the SCA unit (the paper: 2)."""
    attention_heads: int = 1
    """Heads of each attention block; 2 * hidden_size must divide by it. 1 (the default) is the paper's
    eqs. 1, 2 and 7 as written, scaled by √d; with more, each head is d/heads wide and scaled by √(d/heads)."""
    # The default join is 'concat' because ⊕ is concatenation throughout the paper (it defines
    # x_a = a_LLF ⊕ a_OpenL3 with the same sign), so the default reproduces what the paper
    # writes; 'residual' is the common reading of such diagrams, kept to compare the two.
    sublayer_join: SublayerJoinMode = "concat"
    """How an attention or feed-forward output joins its input: 'concat' is LayerNorm(W [x ⊕ f(x)]),
    'residual' is the Transformer's LayerNorm(x + f(x))."""
    feedforward_size: int = 512
    """Inner width of the feed-forward blocks (the SCA unit's and eq. 10's)."""
    mid_lstm_layers: int = 2
    """Stacked LSTM layers per modality in the mid-level fusion (the paper: 2); read with mid_fusion_input 'inputs'."""
    mid_fusion_input: MidFusionInput = "inputs"
    """What eq. 10's bidirectional LSTM joins: 'inputs', two stacked LSTMs over each modality's input
    x_a, x_t (the paper's prose, the default); 'encodings', the BiLSTM encodings H_a, H_t as the
    formula LSTM([H_a, H_t]) writes it (see the module docstring)."""
    classifier_hidden: int = 128
    """Width of the first of the two fully-connected classification layers."""
    dropout: float = 0.2
    """Dropout on attention weights and outputs, inside feed-forward blocks, between stacked LSTM
    layers and between the two classification layers."""
    input_dropout: float = 0.1
    """Dropout on the utterance vectors as they enter, which are wide and few."""
    audio_projection: int | None = None
    """Width the audio vector is first mapped to by one linear layer, which every audio branch then
    reads: a cheaper model for the 12696-wide input. None (the default) feeds the raw vector, as the paper does."""
    modality_dropout: float = 0.0
    """Probability, per utterance and per modality, that training masks that modality's input to zeros
    (never both of one utterance; see the module docstring). 0, the paper's setting, turns it off;
    only the bimodal variants have a modality to spare."""

    def __post_init__(self) -> None:
        if self.variant not in get_args(Variant):
            raise ValueError(f"variant must be one of {', '.join(get_args(Variant))}, not {self.variant!r}")
        if self.mid_fusion_input not in get_args(MidFusionInput):
            raise ValueError(f"mid_fusion_input must be 'inputs' or 'encodings', not {self.mid_fusion_input!r}")
        if self.sublayer_join not in get_args(SublayerJoinMode):
            raise ValueError(f"sublayer_join must be 'concat' or 'residual', not {self.sublayer_join!r}")
        for name in ("hidden_size", "sca_layers", "attention_heads", "feedforward_size", "mid_lstm_layers",
                     "classifier_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.model_width % self.attention_heads:
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must divide the model width 2 * hidden_size "
                f"({self.model_width})"
            )
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be within [0, 1), not {getattr(self, name)}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be within [0, 1), not {self.modality_dropout}")
        if self.modality_dropout > 0 and not (self.uses_audio and self.uses_text):
            raise ValueError(
                f"modality_dropout needs two modalities, but the {self.variant} variant reads one; "
                "set it to 0 or choose bimodal or bimodal_no_sca"
            )
        if self.audio_projection is not None and self.audio_projection < 1:
            raise ValueError(f"audio_projection must be at least 1 (or left out for none), not {self.audio_projection}")

    @property
    def model_width(self) -> int:
        """d: the width of the BiLSTM encodings and of everything built on them."""
        return 2 * self.hidden_size

    @property
    def uses_audio(self) -> bool:
        """Whether this variant reads the audio features."""
        return self.variant != "text"

    @property
    def uses_text(self) -> bool:
        """Whether this variant reads the text vectors."""
        return self.variant != "audio"


class MaskedLSTM(nn.Module):
    """An LSTM over the real utterances of each dialogue only (packed); zeros at padded positions."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.lstm = nn.LSTM(
            input_size, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A dialogue with no real utterance is run as length 1: its outputs are padding either way.
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


MODALITIES: tuple[str, ...] = ("audio", "text")


class ModalityDropout(nn.Module):
    """Masks whole modalities of whole utterances: at random in training, and as told by `absent`.

    In training, each utterance drops each modality with probability `p`, never both (module
    docstring); in evaluation nothing is dropped at random. `absent` names modalities every
    utterance lacks, in training and evaluation alike: a robustness evaluation sets it to score a
    model with its audio or text missing. Draws come from torch's global generator, which the
    training loop seeds per epoch, so a resumed run draws the same masks.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.absent: frozenset[str] = frozenset()

    def keep_masks(self, mask: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Per modality, a float [B, T, 1] that is 0 where its input is dropped, or None where nothing is."""
        unknown = self.absent - set(MODALITIES)
        if unknown:
            raise ValueError(f"absent modalities must be among {', '.join(MODALITIES)}, not {sorted(unknown)}")
        keep: dict[str, torch.Tensor | None] = {name: None for name in MODALITIES}
        if self.training and self.p > 0:
            drop_audio = torch.rand(mask.shape, device=mask.device) < self.p
            drop_text = torch.rand(mask.shape, device=mask.device) < self.p
            both = drop_audio & drop_text
            # Where both were drawn, a fair coin picks the one modality that stays.
            keep_audio_instead = torch.rand(mask.shape, device=mask.device) < 0.5
            drop_audio = drop_audio & ~(both & keep_audio_instead)
            drop_text = drop_text & ~(both & ~keep_audio_instead)
            keep = {"audio": (~drop_audio).unsqueeze(-1), "text": (~drop_text).unsqueeze(-1)}
        for name in self.absent:
            keep[name] = torch.zeros((*mask.shape, 1), dtype=torch.bool, device=mask.device)
        return keep

    def forward(
        self, audio: torch.Tensor | None, text: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The inputs with dropped modalities masked to zeros (a modality given as None stays None)."""
        keep = self.keep_masks(mask)
        if audio is not None and keep["audio"] is not None:
            audio = audio * keep["audio"].to(audio.dtype)
        if text is not None and keep["text"] is not None:
            text = text * keep["text"].to(text.dtype)
        return audio, text


class ModalityBranch(nn.Module):
    """One modality's input, BiLSTM encoder and residual branch: x [B, T, D] -> (x', H_m, H_m^r).

    x' is the input after dropout (and the optional projection), which the mid-level fusion reads too.
    """

    def __init__(self, input_size: int, config: FusionConfig, projection: int | None = None):
        super().__init__()
        self.dropout = nn.Dropout(config.input_dropout)
        self.projection = nn.Linear(input_size, projection) if projection is not None else None
        width = projection if projection is not None else input_size
        self.encoder = MaskedLSTM(width, config.hidden_size, bidirectional=True)
        self.residual = nn.Sequential(nn.Linear(width, config.model_width), nn.LayerNorm(config.model_width))
        self.output_size = width

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dropout(x)
        if self.projection is not None:
            x = self.projection(x)
        return x, self.encoder(x, mask), self.residual(x)


class MidLevelFusion(nn.Module):
    """Eq. 10 -> H_mid: a BiLSTM over the two modalities side by side, then a feed-forward.

    With `mid_fusion_input` 'inputs' the BiLSTM joins two stacked LSTMs per modality run over the
    inputs x_a, x_t; with 'encodings' it joins the BiLSTM encodings H_a, H_t (d wide each).
    """

    def __init__(self, audio_dim: int, text_dim: int, config: FusionConfig):
        super().__init__()
        h = config.hidden_size
        self.reads = config.mid_fusion_input
        if self.reads == "inputs":
            self.audio_lstm = MaskedLSTM(audio_dim, h, num_layers=config.mid_lstm_layers, dropout=config.dropout)
            self.text_lstm = MaskedLSTM(text_dim, h, num_layers=config.mid_lstm_layers, dropout=config.dropout)
            joined_width = 2 * h
        else:
            joined_width = 2 * config.model_width
        self.joint_lstm = MaskedLSTM(joined_width, h, bidirectional=True)
        self.feedforward = FeedForward(config.model_width, config.feedforward_size, config.dropout)

    def forward(
        self, x_a: torch.Tensor, x_t: torch.Tensor, h_a: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        if self.reads == "inputs":
            joined = torch.cat([self.audio_lstm(x_a, mask), self.text_lstm(x_t, mask)], dim=-1)
        else:
            joined = torch.cat([h_a, h_t], dim=-1)
        return self.feedforward(self.joint_lstm(joined, mask))


# How many d-wide representations each variant concatenates for the classifier.
CLASSIFIER_INPUTS: dict[str, int] = {"bimodal": 7, "bimodal_no_sca": 5, "text": 2, "audio": 2}


class FusionModel(nn.Module):
    """CM-RoBERTa's head, or one of its ablations: forward(audio, text, mask) -> logits [B, T, 7]."""

    def __init__(self, config: FusionConfig, audio_dim: int, text_dim: int, num_classes: int = len(EMOTIONS)):
        super().__init__()
        self.config = config
        self.audio_dim, self.text_dim = audio_dim, text_dim
        self.uses_audio, self.uses_text = config.uses_audio, config.uses_text
        d = config.model_width
        self.modality_dropout = ModalityDropout(config.modality_dropout)
        self.audio = ModalityBranch(audio_dim, config, config.audio_projection) if self.uses_audio else None
        self.text = ModalityBranch(text_dim, config) if self.uses_text else None
        self.sca = (
            SCAUnit(config.sca_layers, d, config.attention_heads, config.feedforward_size, config.dropout,
                    config.sublayer_join)
            if config.variant == "bimodal" else None
        )
        self.mid = (
            MidLevelFusion(self.audio.output_size, self.text.output_size, config)
            if self.audio is not None and self.text is not None else None
        )
        self.classifier = nn.Sequential(
            nn.Linear(CLASSIFIER_INPUTS[config.variant] * d, config.classifier_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.classifier_hidden, num_classes),
        )

    def _check_input(self, name: str, x: torch.Tensor | None, width: int, mask: torch.Tensor) -> torch.Tensor:
        if x is None:
            raise ValueError(f"the {self.config.variant} variant reads {name} features, but none were given")
        if x.dim() != 3 or x.shape[:2] != mask.shape or x.shape[2] != width:
            raise ValueError(
                f"{name} features must be [batch, utterances, {width}] matching the mask {tuple(mask.shape)}, "
                f"not {tuple(x.shape)}"
            )
        return x

    def forward(self, audio: torch.Tensor | None, text: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, classes] from audio [B, T, Da] and text [B, T, Dt] (None for a modality the variant
        does not read) and the dialogue mask [B, T], True at real utterances."""
        if mask.dim() != 2:
            raise ValueError(f"mask must be [batch, utterances], not {tuple(mask.shape)}")
        mask = mask.bool()
        if self.audio is not None:
            audio = self._check_input("audio", audio, self.audio_dim, mask)
        if self.text is not None:
            text = self._check_input("text", text, self.text_dim, mask)
        audio, text = self.modality_dropout(audio, text, mask)
        if self.audio is not None:
            x_a, h_a, r_a = self.audio(audio, mask)
        if self.text is not None:
            x_t, h_t, r_t = self.text(text, mask)
        if self.config.variant == "audio":
            parts = [h_a, r_a]
        elif self.config.variant == "text":
            parts = [h_t, r_t]
        else:
            h_mid = self.mid(x_a, x_t, h_a, h_t, mask)
            encoded = [h_a, h_t] if self.sca is None else list(self.sca(h_a, h_t, mask))
            parts = [*encoded, h_mid, r_a, r_t]
        return self.classifier(torch.cat(parts, dim=-1))


def build_fusion_model(
    config: FusionConfig, audio_dim: int, text_dim: int, num_classes: int = len(EMOTIONS)
) -> FusionModel:
    """The fusion network for inputs of these widths (a width the variant does not read may be 0), with
    `num_classes` outputs: the run's label set (MELD's seven emotions by default)."""
    if config.uses_audio and audio_dim < 1:
        raise ValueError(f"the {config.variant} variant reads audio, but the audio width is {audio_dim}")
    if config.uses_text and text_dim < 1:
        raise ValueError(f"the {config.variant} variant reads text, but the text width is {text_dim}")
    model = FusionModel(config, audio_dim, text_dim, num_classes)
    log.info("fusion model %s: %s parameters", config.variant, f"{sum(p.numel() for p in model.parameters()):,}")
    return model
