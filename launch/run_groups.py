"""Runs grouped by their configuration, seeds aside, and the names that tell the groups apart.

A group is every run whose resolved config is the same once the seed and the keys that never change a result
(`model.run_folder.replicate_settings`: `runs_root`, `checkpoint`, `monitor`) are left out:
the key a sweep names its run folders by (`launch.sweep_hash`), so a sweep's configurations
and a report's groups are one and the same. The seeds of one group are pooled; two groups never are,
and a paired comparison pairs the runs of two groups seed by seed.

A report names a group by what sets it apart: its variant and text mode, then every other key whose
value differs between the groups reported together (`keys_apart`), in words for the keys people look
for (audio families, modality dropout) and as `key=value` for the rest.

Only `end_to_end` reads the `end_to_end` section and only `finetuned` the `finetune` section, and the
text family is what a text mode changes (a `finetuned` run reads a family made by its own encoder), so
two configs whose `mode_setting` is equal differ in the text mode alone: the condition for comparing
text modes, and for an audio-only group (which reads no text) to stand beside a text mode's rows.

A run folder's config.toml is the config as it ran. A `finetuned` run's records what its seed decided:
`finetune.seed` (the run's seed, unless set) and `data.text_family` (named by a hash of the store and
the fine-tuning, seed included). `settings_of` leaves both out there, as it leaves out the seed, so the
seeds of one sweep configuration form one group, as `launch.aggregate` groups them by the sweep's key.
An explicit `finetune.seed` equal to one run's seed looks like the default in that run alone.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from launch.sweep_hash import sweep_hash
from model.run_folder import replicate_settings

T = TypeVar("T")

VARIANT_KEY = "model.variant"
TEXT_MODE_KEY = "text_mode"
AUDIO_FAMILIES_KEY = "data.audio_families"
TEXT_FAMILY_KEY = "data.text_family"
FINETUNE_SEED_KEY = "finetune.seed"
MODALITY_DROPOUT_KEY = "model.modality_dropout"
# Config section -> the one text mode that reads it.
MODE_ONLY_SECTIONS: dict[str, str] = {"end_to_end": "end_to_end", "finetune": "finetuned"}


class ReportError(Exception):
    """Run folders that cannot be reported together; the message names the folder and the fix."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {'model': {'variant': 'text'}} -> {'model.variant': 'text'}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as dotted keys, without the seed and the keys that never change its result
    (`model.run_folder.replicate_settings`) and those its seed decided (a `finetuned` run's resolved fine-tuning
    seed and text family)."""
    settings = flatten(replicate_settings(config))
    if settings.get(TEXT_MODE_KEY) == "finetuned":
        settings.pop(TEXT_FAMILY_KEY, None)
        if settings.get(FINETUNE_SEED_KEY) == config.get("seed"):
            settings.pop(FINETUNE_SEED_KEY)
    return settings


@dataclass(frozen=True, kw_only=True)
class ConfigGroup(Generic[T]):
    """The runs of one configuration, one per seed, in seed order."""

    sweep_hash: str
    """`launch.sweep_hash.sweep_hash` of `settings`: one per configuration, as a sweep's key is."""
    settings: dict[str, Any]
    """The config as dotted keys, without the seed and the keys that never change a result."""
    members: list[T]
    """Its runs, by seed."""
    seeds: list[int]
    """Their seeds, ascending."""

    @property
    def variant(self) -> str:
        """The model variant."""
        return str(self.settings.get(VARIANT_KEY, "?"))

    @property
    def text_mode(self) -> str:
        """The text mode (audio-only runs record 'frozen')."""
        return str(self.settings.get(TEXT_MODE_KEY, "frozen"))

    def by_seed(self) -> dict[int, T]:
        """Seed -> its run."""
        return dict(zip(self.seeds, self.members))


def group_by_config(
    items: Sequence[T],
    config_of: Callable[[T], dict[str, Any]],
    seed_of: Callable[[T], int],
    name_of: Callable[[T], str],
) -> list[ConfigGroup[T]]:
    """Items grouped by their config without the seed, groups in the order first seen; two items of one group
    with one seed are refused, naming both."""
    found: dict[str, dict[int, T]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        one = settings_of(config_of(item))
        digest = sweep_hash(one)
        settings.setdefault(digest, one)
        seeds = found.setdefault(digest, {})
        seed = seed_of(item)
        if seed in seeds:
            raise ReportError(
                f"{name_of(seeds[seed])} and {name_of(item)} are one configuration with one seed ({seed}); "
                "report only one of them"
            )
        seeds[seed] = item
    return [
        ConfigGroup(
            sweep_hash=digest,
            settings=settings[digest],
            members=[seeds[seed] for seed in sorted(seeds)],
            seeds=sorted(seeds),
        )
        for digest, seeds in found.items()
    ]


def _reader_mode(key: str) -> str | None:
    """The only text mode that reads `key`, or None when every mode does."""
    return MODE_ONLY_SECTIONS.get(key.split(".", 1)[0])


def _mode_dependent(key: str) -> bool:
    """Whether `key` is one a text mode changes: its text family, or a section one mode alone reads."""
    return key == TEXT_FAMILY_KEY or _reader_mode(key) is not None


def mode_setting(settings: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two configs to differ in their variant and text mode alone: every key but the
    variant, the text mode and the keys a text mode changes."""
    return {
        key: value
        for key, value in settings.items()
        if key not in (VARIANT_KEY, TEXT_MODE_KEY) and not _mode_dependent(key)
    }


def distinguishing_keys(settings: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose value is not the same in all of `settings` (a key some lack counts as differing), sorted."""
    keys = sorted({key for one in settings for key in one})
    return [key for key in keys if len({json.dumps(one.get(key), sort_keys=True) for one in settings}) > 1]


def keys_apart(settings: Sequence[dict[str, Any]]) -> list[list[str]]:
    """For each config of `settings`, the keys that tell it apart from the others, besides its variant and text
    mode: keys no text mode changes that differ anywhere, then keys its own mode changes that differ between
    configs of that mode."""
    common = distinguishing_keys([mode_setting(one) for one in settings])
    keys = []
    for one in settings:
        mode = one.get(TEXT_MODE_KEY, "frozen")
        same_mode = [other for other in settings if other.get(TEXT_MODE_KEY, "frozen") == mode]
        own = [
            key
            for key in distinguishing_keys(same_mode)
            if _mode_dependent(key) and _reader_mode(key) in (None, mode)
        ]
        keys.append(common + own)
    return keys


def describe(key: str, value: Any) -> str:
    """One setting in words: 'audio opensmile+openl3', 'modality dropout 0.3', 'train.max_epochs=15'."""
    if value is None:
        return f"{key} unset"
    if key == AUDIO_FAMILIES_KEY:
        return "audio " + "+".join(map(str, value))
    if key == MODALITY_DROPOUT_KEY:
        return f"modality dropout {float(value):g}"
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict, str)) else value}"


def named(base: str, settings: dict[str, Any], keys: Sequence[str]) -> str:
    """`base`, then the settings of `keys` in brackets when there are any."""
    return base + (f" [{', '.join(describe(key, settings.get(key)) for key in keys)}]" if keys else "")


def differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The keys two configs disagree on, with both values: 'train.max_epochs (6 vs 15), train.patience (3 vs 4)'."""
    return ", ".join(
        f"{key} ({json.dumps(a.get(key))} vs {json.dumps(b.get(key))})" for key in distinguishing_keys([a, b])
    )
