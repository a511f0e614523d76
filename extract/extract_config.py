"""What an extraction computes: `ExtractConfig`, the settings that name its store, and the store's folder.

`feature_settings` is the part of the config that decides the features' values; the store folder
`<store_root>/<name>-<hash12>` is named by its hash, so extraction, `train`, `predict` and `reproduce`
all find one config's store in one place. No Ray is imported here: `predict` reads a store's config back.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cluster.config import refuse_control_characters
from cluster.ray_config import RayConfig
from extract.corpus_reader import corpus_kind
from extract.feature_store import store_folder_name
from extract.iemocap import IemocapConfig
from extract.openl3 import OpenL3Config
from extract.opensmile_features import OpenSmileConfig
from extract.speech_features import SpeechFeatureConfig
from extract.text_features import TextFeatureConfig
from extract.utterance import SPLITS

Family = Literal["opensmile", "openl3", "text", "speech"]
FAMILIES: tuple[str, ...] = ("opensmile", "openl3", "text", "speech")
PAPER_FAMILIES: tuple[str, ...] = ("opensmile", "openl3", "text")
"""The families the paper uses: the default."""
AUDIO_FAMILIES: tuple[str, ...] = ("opensmile", "openl3", "speech")

# Settings that change how fast features are computed, not their values: left out of the store hash.
_RUNTIME_SETTINGS: frozenset[str] = frozenset({"batch_size", "device", "allow_download"})


@dataclass(kw_only=True)
class ExtractConfig:
    """What to extract from which corpus into which store, and on which Ray."""

    corpus: str
    """The corpus: a folder in MELD's layout (MELD.Raw, or a demo corpus), an IEMOCAP_full_release folder, or a
    manifest (.csv, or a folder holding manifest.csv)."""
    store_root: str = "features"
    """Folder that holds feature stores; each config gets its own `<name>-<hash12>` folder in it."""
    name: str | None = None
    """Store name, the folder's prefix; None: the corpus folder's name."""
    families: list[Family] = field(default_factory=lambda: list(PAPER_FAMILIES))
    """Feature families to extract: opensmile, openl3, text (the paper's three), and speech (a
    self-supervised speech encoder, see `speech`)."""
    splits: list[Literal["train", "dev", "test"]] = field(default_factory=lambda: list(SPLITS))
    """Corpus splits to extract."""
    shard_dialogues: int = 32
    """Dialogues per shard: the unit of work an actor computes and the driver writes. MELD's ~10
    utterances a dialogue make a 32-dialogue shard about 21 MB of float32 features (the paper's families)."""
    max_audio_seconds: float = 30.0
    """Decode at most this much of each clip; MELD has a few wrongly cut clips of minutes."""
    check_clips: bool = True
    """Probe every clip's header when reading the corpus, so unusable clips and twin files are
    sorted out before extraction (tens of milliseconds a clip)."""
    gpus_per_task: float = 1.0
    """GPU share each extraction actor holds when the cluster has GPUs: one actor per share
    (0.5: two actors share each GPU). The actors run OpenL3, text and speech."""
    opensmile: OpenSmileConfig = field(default_factory=OpenSmileConfig)
    """openSMILE settings."""
    openl3: OpenL3Config = field(default_factory=OpenL3Config)
    """OpenL3 settings; `weights` must name the official weight file (or 'random' for tests)."""
    text: TextFeatureConfig = field(default_factory=TextFeatureConfig)
    """Text encoder settings."""
    speech: SpeechFeatureConfig = field(default_factory=SpeechFeatureConfig)
    """Speech encoder settings (the `speech` family): any local Hugging Face audio encoder."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the tasks run."""
    iemocap: IemocapConfig = field(default_factory=IemocapConfig)
    """IEMOCAP only: the protocol (erc6, ser4), fold and dev rule; part of the store's hash for an IEMOCAP corpus,
    so each protocol and fold is its own store. Refused for any other corpus unless left at its defaults."""

    def __post_init__(self) -> None:
        if not self.corpus.strip():
            raise ValueError("corpus must be the corpus folder (MELD.Raw, IEMOCAP_full_release) or a manifest .csv")
        if not self.families:
            raise ValueError(f"families must name at least one of {', '.join(FAMILIES)}")
        for family in self.families:
            if family not in FAMILIES:
                raise ValueError(f"families: unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families lists a family twice: {self.families}")
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must name each of train, dev, test at most once, not {self.splits}")
        if self.shard_dialogues < 1:
            raise ValueError(f"shard_dialogues must be at least 1, not {self.shard_dialogues}")
        if not self.max_audio_seconds > 0:
            raise ValueError(f"max_audio_seconds must be positive, not {self.max_audio_seconds}")
        if not 0 < self.gpus_per_task <= 1:
            raise ValueError(f"gpus_per_task must be in (0, 1], not {self.gpus_per_task}")
        if self.name is not None:
            if not self.name.strip() or "/" in self.name or self.name in (".", ".."):
                raise ValueError(f"name must be a plain folder name, not {self.name!r}")
            refuse_control_characters(self.name, "name")
        refuse_control_characters(self.store_root, "store_root")


def feature_settings(config: ExtractConfig) -> dict[str, Any]:
    """The part of the config that decides the features' values: what the store folder is named by.

    The corpus folder, the splits, the families and each chosen family's extractor
    settings, and for IEMOCAP the protocol keys; not Ray, sharding or speed settings,
    which change nothing in the features.
    """
    settings: dict[str, Any] = {
        "corpus": str(Path(config.corpus).expanduser().resolve()),
        "splits": sorted(config.splits),
        "families": sorted(config.families),
    }
    if corpus_kind(Path(config.corpus)) == "iemocap":
        settings["iemocap"] = dataclasses.asdict(config.iemocap)
    if any(family in AUDIO_FAMILIES for family in config.families):
        settings["max_audio_seconds"] = config.max_audio_seconds
    for family in config.families:
        extractor = dataclasses.asdict(getattr(config, family))
        settings[family] = {key: value for key, value in extractor.items() if key not in _RUNTIME_SETTINGS}
    return json.loads(json.dumps(settings, default=str))


def store_path(config: ExtractConfig) -> Path:
    """The store folder this config writes: `<store_root>/<name>-<hash12>`."""
    corpus = Path(config.corpus).expanduser().resolve()
    # A manifest file names the store by its stem (`mine.csv` -> `mine`); a folder by its name.
    name = config.name or (corpus.stem if corpus.is_file() else corpus.name).lower() or "corpus"
    return Path(config.store_root).expanduser() / store_folder_name(name, feature_settings(config))
