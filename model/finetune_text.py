"""text_mode 'finetuned', the paper's recipe as one chain: fine-tune the encoder alone, export it,
extract its vectors into the store, then train the fusion head on them.

The paper fine-tuned RoBERTa-Large (section 4.1.3) and took the 4096-value vector of its last four
layers, as COSMIC (the paper's reference [25]) does: the encoder is first fine-tuned on
utterance-level emotion classification, then its vectors are extracted. `run_finetune_chain` does
the first three steps; `model.train.train` then trains the head on the new family, as in 'frozen'
mode:

1. fine-tune: the `TextEncoder` (first token of the last four layers) under a linear classifier over
   the seven emotions, one utterance at a time without its dialogue, under DeepSpeed, with the
   layer-wise learning rates and warmup/decay schedule of end-to-end runs; after every epoch the dev
   loss is measured, and the epoch with the lowest one is kept (early stopping after `patience`
   epochs without a lower one);
2. export: the kept encoder, in Hugging Face format (safetensors and the tokenizer), to the fine-tune
   run folder's `encoder/`;
3. extract: its vectors of every utterance of the store (`extract.text_features`, the extraction's
   own code, with the encoder's input format), written into the store as family
   `text_ft_<hash12>`, whose manifest entry records its provenance: the run folder, that folder's
   config hash, the encoder folder and the encoder it started from.

`hash12` is the hash of the store's config hash and the resolved fine-tuning config, which also
names the run folder `<runs_root>/<store name>/text-finetune-<hash12>/`. Each step is skipped when
its result exists (the family in the store; the run folder's `finetune.json`, written last), so a
second invocation redoes nothing, and head runs of many seeds share one fine-tuned encoder when
`finetune.seed` is set; left unset it follows the run's seed, so a seed sweep also spreads over
fine-tuning. A fine-tuning killed half way starts again from its first epoch.
"""

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cluster.config import to_dict, write_resolved_config
from cluster.durable_files import atomic_write_json, atomic_write_json_lines
from cluster.rendezvous import Rendezvous
from extract.feature_store import FeatureStore, add_family
from extract.labels import MELD_EMOTIONS, NO_LABEL
from extract.manifest import config_hash
from extract.text_features import TextFeatureConfig, TextFeatureExtractor
from model.batch_samplers import DialogueBatchSampler
from model.deepspeed_config import (
    EngineConfig,
    build_deepspeed_config,
    initialize_deepspeed,
    reduction_in_parameter_order,
)
from model.dialogue_data import IGNORE_LABEL
from model.lr_schedule import LRScheduleConfig, build_lr_scheduler
from model.metrics import classification_metrics
from model.param_groups import ParamGroupsConfig, build_optimizer, build_param_groups
from model.text_encoder import LAST_LAYERS, TextEncoder, TextEncoderConfig, export_encoder, load_tokenizer
from model.token_cache import TokenSplit, build_token_cache, read_token_split, store_utterances

log = logging.getLogger(__name__)

FAMILY_PREFIX = "text_ft_"
FINETUNE_FOLDER_PREFIX = "text-finetune-"
FINISHED_NAME = "finetune.json"
METRICS_NAME = "metrics.jsonl"
ENCODER_FOLDER = "encoder"
# Utterances per forward pass on dev: no gradient, so larger than a training batch.
_EVAL_BATCH = 64


@dataclass(kw_only=True)
class FinetuneConfig:
    """The utterance-level fine-tuning of the text encoder that text_mode 'finetuned' starts with."""

    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """Encoder to fine-tune ('store': the one the store's text family came from) and its input format."""
    param_groups: ParamGroupsConfig = field(default_factory=ParamGroupsConfig)
    """Layer-wise learning rates and decoupled weight decay of the encoder."""
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    """Warmup and decay of the encoder's rates, in epochs of the train split's utterances; the classifier's
    rate stays constant, as a head's does in every text mode (`model.lr_schedule`)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """ZeRO stage (0-2), precision and gradient clipping."""
    classifier_lr: float = 1e-4
    """Learning rate of the linear classifier over the utterance vector (constant)."""
    batch_utterances: int = 32
    """Utterances per optimizer step, over all ranks together."""
    max_epochs: int = 10
    """Most epochs."""
    patience: int = 3
    """Stop after this many epochs in a row without a lower dev loss."""
    seed: int | None = None
    """Seed of the classifier, the shuffle and dropout; unset: the run's seed."""

    def __post_init__(self) -> None:
        if self.encoder.freeze:
            raise ValueError("finetune.encoder.freeze would fine-tune nothing; use text_mode 'frozen' instead")
        if self.engine.zero_stage == 3:
            raise ValueError(
                "finetune.engine.zero_stage 3 partitions the weights, but the fine-tuning keeps the best "
                "epoch's encoder in memory; choose stage 0, 1 or 2"
            )
        if not self.classifier_lr > 0:
            raise ValueError(f"classifier_lr must be positive, not {self.classifier_lr}")
        for name in ("batch_utterances", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be 0 or more, not {self.seed}")


class UtteranceClassifier(nn.Module):
    """The text encoder and a linear layer: token ids of N utterances -> logits [N, classes] (MELD's seven by
    default; the store's label set when fine-tuned)."""

    def __init__(self, encoder: TextEncoder, num_classes: int = len(MELD_EMOTIONS)):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(input_ids, attention_mask))


def resolve_finetune(config: FinetuneConfig, run_seed: int) -> FinetuneConfig:
    """`config` with its seed filled in from the run's when unset."""
    return config if config.seed is not None else dataclasses.replace(config, seed=run_seed)


def finetune_hash(store: FeatureStore, config: FinetuneConfig) -> str:
    """The hash naming the fine-tuning's run folder and family: of the store's config and `config` (resolved)."""
    return config_hash({"store": store.manifest["config_hash"], "finetune": to_dict(config)})


def finetuned_family(store: FeatureStore, config: FinetuneConfig) -> str:
    """Name of the family `config`'s fine-tuned encoder gives in `store`."""
    return f"{FAMILY_PREFIX}{finetune_hash(store, config)}"


def finetune_folder(store: FeatureStore, config: FinetuneConfig, runs_root: str) -> Path:
    """The fine-tuning's run folder, `<runs_root>/<store name>/text-finetune-<hash12>`."""
    name = f"{FINETUNE_FOLDER_PREFIX}{finetune_hash(store, config)}"
    return Path(runs_root).expanduser().resolve() / store.path.name / name


def run_finetune_chain(
    store_path: str, config: FinetuneConfig, family: str, runs_root: str, rendezvous: Rendezvous
) -> None:
    """Steps 1-3 of the module docstring, each skipped when its result exists; on return `family` is in the store.

    Every rank fine-tunes; rank 0 exports and extracts while the others wait.
    """
    store = FeatureStore.open(store_path)
    if family in store.families:
        log.info("store %s already holds the fine-tuned family %s; reusing it", store.path, family)
        return
    folder = finetune_folder(store, config, runs_root)
    if (folder / FINISHED_NAME).is_file():
        log.info("reusing the fine-tuned encoder in %s", folder)
    else:
        finetune_encoder(store, config, folder, rendezvous)
    if rendezvous.is_main:
        extract_family(store, config, folder, family)
    if rendezvous.world_size > 1:
        if not dist.is_initialized():
            # deferred: deepspeed takes seconds to import, and every reader of RunConfig imports this module
            import deepspeed

            deepspeed.init_distributed()
        dist.barrier()


def _labelled_tokens(store: FeatureStore, cache: Path, split: str) -> tuple[TokenSplit, np.ndarray]:
    """Token ids and labels of a split's labelled utterances: fine-tuning is per utterance, so one without a
    label (NO_LABEL) adds nothing."""
    rows = store.read_split(split, families=[])
    labelled = np.flatnonzero(rows.emotion != NO_LABEL)
    return read_token_split(cache, split, rows.keys).take(labelled), rows.emotion[labelled]


def finetune_encoder(store: FeatureStore, config: FinetuneConfig, folder: Path, rendezvous: Rendezvous) -> None:
    """Fine-tune the encoder on utterance emotion, keep the lowest-dev-loss epoch, export it; finetune.json last."""
    tokenizer = load_tokenizer(config.encoder)
    cache = build_token_cache(store, tokenizer, config.encoder)
    tokens, labels = {}, {}
    for split in ("train", "dev"):
        tokens[split], labels[split] = _labelled_tokens(store, cache, split)
    seed = int(config.seed or 0)
    torch.manual_seed(seed)
    model = UtteranceClassifier(TextEncoder(config.encoder), len(store.label_set))
    groups = build_param_groups(
        model.encoder.model, model.encoder.num_layers, model.classifier, config.param_groups,
        head_lr=config.classifier_lr, head_weight_decay=0.0,
    )
    optimizer = build_optimizer(groups)
    steps_per_epoch = math.ceil(len(labels["train"]) / config.batch_utterances)
    scheduler = build_lr_scheduler(optimizer, config.schedule, steps_per_epoch, config.max_epochs)
    micro = math.ceil(config.batch_utterances / rendezvous.world_size)
    ds_config = build_deepspeed_config(config.engine, micro, rendezvous.world_size)
    # Not `model.engine.initialize_engine`: that builds a RunConfig's fusion model, its optimizer and schedule,
    # while this engine holds an utterance classifier with its own groups, schedule and batch (FinetuneConfig);
    # both share DeepSpeed's config and engine (`model.deepspeed_config`). model.engine also imports this
    # module through model.run_config, so the reverse import would be a cycle.
    engine = initialize_deepspeed(model, optimizer, scheduler, ds_config, rendezvous.world_size)
    if rendezvous.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        write_resolved_config(config, folder)
    sampler = DialogueBatchSampler(
        len(labels["train"]), config.batch_utterances, rank=rendezvous.rank, world_size=rendezvous.world_size,
        shuffle=True, seed=seed,
    )
    history: list[dict[str, Any]] = []
    best: dict[str, torch.Tensor] | None = None
    best_loss, best_epoch, since_best = math.inf, 0, 0
    for epoch in tqdm(range(1, config.max_epochs + 1), desc="fine-tuning the encoder", unit="epoch",
                      disable=not rendezvous.is_main):
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rendezvous.rank]).generate_state(1)[0]))
        sampler.set_epoch(epoch)
        train_loss = _train_epoch(engine, tokens["train"], labels["train"], sampler, rendezvous)
        dev_loss, dev = _evaluate(engine, tokens["dev"], labels["dev"], store.label_set.labels)
        history.append({"epoch": epoch, "train_loss": train_loss, "dev_loss": dev_loss,
                        "dev_weighted_f1": dev.weighted_f1, "dev_accuracy": dev.accuracy})
        log.info("fine-tuning epoch %d: train loss %.4f, dev loss %.4f, dev weighted F1 %.2f",
                 epoch, train_loss, dev_loss, 100 * dev.weighted_f1)
        if rendezvous.is_main:
            atomic_write_json_lines(folder / METRICS_NAME, history)
        if dev_loss < best_loss:
            best_loss, best_epoch, since_best = dev_loss, epoch, 0
            weights = engine.module.encoder.model.state_dict()
            best = {name: value.detach().cpu().clone() for name, value in weights.items()}
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    if rendezvous.is_main:
        encoder = engine.module.encoder.model
        encoder.load_state_dict(best)
        export_encoder(encoder, tokenizer, folder / ENCODER_FOLDER)
        selected = history[best_epoch - 1]
        atomic_write_json(folder / FINISHED_NAME, {"config_hash": folder.name.removeprefix(FINETUNE_FOLDER_PREFIX),
                                                   "selected_epoch": best_epoch, **selected})
    if rendezvous.world_size > 1:
        dist.barrier()


def _train_epoch(
    engine: Any, tokens: TokenSplit, labels: np.ndarray, sampler: DialogueBatchSampler, rendezvous: Rendezvous
) -> float:
    """One pass over the train utterances; the mean loss over all ranks."""
    engine.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    count = 0
    for rank_batch in sampler:
        rows = torch.as_tensor(rank_batch.indices).view(-1, 1)
        batch = tokens.batch(rows).to(engine.device)
        targets = torch.as_tensor(labels[rank_batch.indices])
        targets[~torch.as_tensor(rank_batch.counted)] = IGNORE_LABEL
        logits = engine(batch.input_ids, batch.attention_mask)
        loss = F.cross_entropy(logits.float(), targets.to(engine.device), reduction="sum", ignore_index=IGNORE_LABEL)
        global_count = len(rank_batch.global_indices)
        with reduction_in_parameter_order(engine, rendezvous.world_size) as end_micro_batch:
            engine.backward(loss * (rendezvous.world_size / global_count), scale_wrt_gas=False)
            end_micro_batch()
        loss_sum += loss.detach().double()
        count += global_count
    if rendezvous.world_size > 1:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
    return float(loss_sum.item() / count)


@torch.no_grad()
def _evaluate(engine: Any, tokens: TokenSplit, labels: np.ndarray, names: tuple[str, ...]) -> tuple[float, Any]:
    """(mean loss, classification metrics) over every utterance of a split; every rank computes the same."""
    engine.eval()
    loss_sum, predictions = 0.0, []
    for start in range(0, len(labels), _EVAL_BATCH):
        rows = np.arange(start, min(start + _EVAL_BATCH, len(labels)))
        batch = tokens.batch(torch.as_tensor(rows).view(-1, 1)).to(engine.device)
        logits = engine(batch.input_ids, batch.attention_mask).float()
        targets = torch.as_tensor(labels[rows]).to(engine.device)
        loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        predictions.append(logits.argmax(dim=-1).cpu().numpy())
    return loss_sum / len(labels), classification_metrics(labels, np.concatenate(predictions), names)


def extract_family(store: FeatureStore, config: FinetuneConfig, folder: Path, family: str) -> None:
    """Extract the exported encoder's vectors of every utterance into the store as `family`, with its provenance."""
    encoder_folder = folder / ENCODER_FOLDER
    extractor = TextFeatureExtractor(
        TextFeatureConfig(
            model=str(encoder_folder),
            last_layers=LAST_LAYERS,
            context_window=config.encoder.context_window,
            with_speaker=config.encoder.with_speaker,
            max_tokens=config.encoder.max_tokens,
        )
    )
    features = {}
    for split in tqdm(store.splits, desc="extracting fine-tuned text vectors", unit="split"):
        rows = store.read_split(split, families=[])
        features[split] = (rows.keys, extractor(store_utterances(split, rows)))
    finished = json.loads((folder / FINISHED_NAME).read_text(encoding="utf-8"))
    provenance = {
        "kind": "finetuned text encoder",
        "run_folder": str(folder),
        "config_hash": finished["config_hash"],
        "encoder": str(encoder_folder),
        "base_encoder": config.encoder.model,
        "selected_epoch": finished["selected_epoch"],
        "dev_weighted_f1": finished["dev_weighted_f1"],
    }
    add_family(store.path, family, features, provenance)
    log.info("store %s: added family %s from %s", store.path, family, encoder_folder)
