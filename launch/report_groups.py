"""The report's groups of runs, its blocks of groups, and their names.

Runs are grouped by their config without the seed (`launch.run_groups`). Groups that differ only in
their variant make one block (`blocks`), named by its text mode and by every key that sets it apart
from the other blocks; an audio-only group stands in a block whose other keys it shares. The report's
tables (`launch.report`, `launch.audio_ablation`, `launch.ser_table`, `launch.paired_report`) and the
robustness table (`launch.robustness_report`) all read their groups and names here.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract.labels import LabelSet
from launch.report_table import Cell
from launch.run_groups import ConfigGroup, ReportError, group_by_config, keys_apart, mode_setting, named
from launch.run_results import TEXT_MODE_SUFFIXES, VARIANT_NAMES, RunResult
from model.metrics_record import record_label_set

# Text mode -> its name in the report's "text" column.
TEXT_MODE_NAMES: dict[str, str] = {"frozen": "frozen", "end_to_end": "end-to-end", "finetuned": "fine-tuned"}

RunGroup = ConfigGroup[RunResult]


def group_runs(runs: Sequence[RunResult]) -> list[RunGroup]:
    """The runs grouped by their config without the seed, in the order given."""
    return group_by_config(runs, lambda run: run.config, lambda run: run.seed, lambda run: str(run.run_dir))


@dataclass(frozen=True, kw_only=True)
class Block:
    """Groups that differ only in their variant (the audio-only group: in the keys every text mode reads)."""

    text_mode: str
    """The text mode of its text-reading groups."""
    groups: dict[str, RunGroup]
    """Variant -> its group."""
    settings: dict[str, Any]
    """The groups' config as dotted keys, variant aside."""
    keys: tuple[str, ...] = ()
    """The keys that set it apart from the report's other blocks, besides the text mode."""

    @property
    def name(self) -> str:
        """The text mode's row-name suffix, then ' [key=value, ...]' of `keys`."""
        return named(TEXT_MODE_SUFFIXES[self.text_mode], self.settings, self.keys)

    @property
    def where(self) -> str:
        """The text mode's name, then ' [key=value, ...]' of `keys`: the block in a comparison's row."""
        return named(TEXT_MODE_NAMES[self.text_mode], self.settings, self.keys)


def blocks(runs: Sequence[RunResult]) -> list[Block]:
    """The report's blocks, text modes in report order, then in the order first seen.

    Text-reading groups with equal configs (variant aside) make a block; each block takes the audio-only
    group that shares its `mode_setting`. Without text-reading runs, each audio-only group is a block.
    """
    groups = group_runs(runs)
    readers = [group for group in groups if group.variant != "audio"] or groups
    found: dict[str, Block] = {}
    for group in readers:
        settings = {key: value for key, value in group.settings.items() if key != "model.variant"}
        identity = json.dumps(settings, sort_keys=True, default=str)
        block = found.setdefault(identity, Block(text_mode=group.text_mode, groups={}, settings=settings))
        block.groups[group.variant] = group
    for block in found.values():
        audio = [g for g in groups if g.variant == "audio" and mode_setting(g.settings) == mode_setting(block.settings)]
        if audio and "audio" not in block.groups:
            block.groups["audio"] = audio[0]
    ordered = sorted(found.values(), key=lambda block: list(TEXT_MODE_SUFFIXES).index(block.text_mode))
    apart = keys_apart([block.settings for block in ordered])
    return [
        Block(
            text_mode=block.text_mode,
            groups={variant: block.groups[variant] for variant in VARIANT_NAMES if variant in block.groups},
            settings=block.settings,
            keys=tuple(keys),
        )
        for block, keys in zip(ordered, apart)
    ]


def group_cell(group: RunGroup | None, read: Callable[[RunResult], float]) -> Cell | None:
    """One cell of a group's runs: `read` of each, in percent; None without a group."""
    if group is None:
        return None
    return Cell(tuple(100 * float(read(run)) for run in group.members))


def runs_label_set(runs: Sequence[RunResult]) -> LabelSet:
    """The one label set the runs were scored in; a ReportError naming two runs of different sets."""
    first = record_label_set(runs[0].test)
    for run in runs[1:]:
        other = record_label_set(run.test)
        if not other.same_labels(first):
            raise ReportError(
                f"run {runs[0].run_dir} is scored in label set {first.describe()} but run {run.run_dir} in "
                f"{other.describe()}; runs of different label sets are never pooled, so report each set's runs apart"
            )
    return first


def group_names(runs: Sequence[RunResult]) -> dict[Path, str]:
    """Each run folder -> its group's name: variant, text mode, and the keys that set the group apart."""
    groups = group_runs(runs)
    names = {}
    for group, keys in zip(groups, keys_apart([group.settings for group in groups])):
        for run in group.members:
            names[run.run_dir] = named(base_name(group), group.settings, keys)
    return names


def base_name(group: ConfigGroup) -> str:
    """A group's name before its distinguishing keys: the variant, and the text mode of one that reads text."""
    variant = VARIANT_NAMES.get(group.variant, group.variant)
    return variant if group.variant == "audio" else variant + TEXT_MODE_SUFFIXES.get(group.text_mode, "")
