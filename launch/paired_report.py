"""The report's paired differences: one group of runs minus another, seed by seed.

Within each block of the report (groups that differ only in their variant, `launch.report_groups.blocks`):
bimodal − text and SCA − no SCA (bimodal − bimodal without SCA). Across text modes, per variant:
each other mode − frozen, only between blocks whose configs differ in the text mode and the keys that
mode alone reads (`launch.run_groups.mode_setting`): the same head, budget, patience and head
schedule. Otherwise the row is not printed, and a line under the table names the keys that differ.

Each row has Student's paired t-test across seeds, the paired bootstrap over test dialogues, and the
hierarchical bootstrap over seeds and dialogues (`launch.statistics` documents each), and each p-value
raw and Holm-corrected across the table's rows, one family per test.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from launch.report_groups import TEXT_MODE_NAMES, RunGroup, blocks
from launch.report_table import PAIRED_HOLM, PAIRED_READING, Table, paired_cells, paired_columns
from launch.run_groups import differences, mode_setting
from launch.run_results import VARIANT_NAMES, RunResult
from launch.statistics import PairedTests, paired_over_common_seeds


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """One group minus another, seed by seed, in percent."""

    name: str
    """What is compared, 'bimodal − text'."""
    text_mode: str
    """The block compared in ('end-to-end [train.max_epochs=6]'), or 'end-to-end − frozen' across modes."""
    tests: PairedTests
    """The per-seed differences of test weighted F1 and every paired test of them."""


def _compare(name: str, where: str, a: RunGroup | None, b: RunGroup | None) -> PairedDifference | None:
    """Group `a` minus group `b` over the seeds both have; None when they share none."""
    if a is None or b is None:
        return None
    tests = paired_over_common_seeds(
        a.by_seed(), b.by_seed(), lambda run: 100 * run.test["weighted_f1"], lambda run: run.predictions
    )
    return None if tests is None else PairedDifference(name=name, text_mode=where, tests=tests)


def paired_differences(runs: Sequence[RunResult]) -> tuple[list[PairedDifference], list[str]]:
    """bimodal − text and SCA − no SCA in each block, then each other mode − frozen per variant between blocks
    that differ in the text mode alone; and a line for each mode − frozen left out, naming the keys that differ."""
    found, refused = [], []
    report_blocks = blocks(runs)
    for block in report_blocks:
        for name, a, b in (("bimodal − text", "bimodal", "text"), ("SCA − no SCA", "bimodal", "bimodal_no_sca")):
            found.append(_compare(name, block.where, block.groups.get(a), block.groups.get(b)))
    frozen = [block for block in report_blocks if block.text_mode == "frozen"]
    for block in report_blocks:
        if block.text_mode == "frozen":
            continue
        across = f"{TEXT_MODE_NAMES[block.text_mode]} − frozen"
        for variant in ("text", "bimodal_no_sca", "bimodal"):
            if variant not in block.groups:
                continue
            candidates = [other for other in frozen if variant in other.groups]
            same = [other for other in candidates if mode_setting(other.settings) == mode_setting(block.settings)]
            for other in same:
                found.append(_compare(VARIANT_NAMES[variant], across, block.groups[variant], other.groups[variant]))
            if candidates and not same:
                closest = min(
                    (differences(mode_setting(block.settings), mode_setting(other.settings)) for other in candidates),
                    key=len,
                )
                refused.append(
                    f"{across}, {VARIANT_NAMES[variant]}: not printed; besides the text mode the runs differ in "
                    f"{closest} (train both modes with the same head, budget, patience and head schedule)"
                )
    return [difference for difference in found if difference is not None], refused


def paired_differences_table(runs: Sequence[RunResult]) -> Table | None:
    """The paired differences as a table (percentage points); None when no two groups share a seed and none
    was refused."""
    found, refused = paired_differences(runs)
    if not found and not refused:
        return None
    cells = paired_cells([d.tests for d in found], scale=1)
    return Table(
        title=(
            "Paired differences of test weighted F1 (percentage points): across seeds (mean ± sd, t interval, "
            "paired t-test), across test dialogues (paired bootstrap), and across both (seeds × dialogues)"
        ),
        name="paired_differences",
        columns=["comparison", "text mode", *paired_columns()],
        rows=[(d.name, [d.text_mode, *row]) for d, row in zip(found, cells)],
        notes=[PAIRED_READING, PAIRED_HOLM, *refused],
    )
