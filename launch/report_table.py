"""The report's tables: cells over seeds (mean ± sample sd, the mean's interval below), notes and a legend,
printed as text or Markdown and written as CSV; and the cells of paired differences, shared by the paper-style
report (`launch.paired_report`) and a sweep's aggregate (`launch.aggregate`)."""

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launch.statistics import CONFIDENCE, PairedTests, Spread, holm, spread
from launch.tables import format_table, p_value_text

# Scores in percent cannot leave [0, 100]; their intervals are clipped there (see `launch.statistics`).
PERCENT_BOUNDS = (0.0, 100.0)
# Marks an interval that was clipped to its bounds; the table's legend says what it means.
CLIPPED_MARK = "*"


@dataclass(frozen=True)
class Cell:
    """One table cell over seeds: the values, shown as mean ± sample sd, with the mean's confidence interval."""

    values: tuple[float, ...]
    """Per-run values, in percent."""
    bounds: tuple[float, float] | None = PERCENT_BOUNDS
    """What the values cannot leave (a score in percent); None for a difference of scores, which is unbounded
    for this purpose."""

    @property
    def summary(self) -> Spread:
        """Mean, sample sd and the 95% t interval of the mean, clipped to `bounds` (no sd or interval for one run)."""
        return spread(self.values, CONFIDENCE, self.bounds)

    @property
    def mean(self) -> float:
        """Mean over runs."""
        return self.summary.mean

    @property
    def std(self) -> float | None:
        """Sample standard deviation, None for a single run."""
        return self.summary.std

    def interval(self) -> str | None:
        """'[low, high]', the confidence interval of the mean (marked when clipped); None for a single run."""
        s = self.summary
        if s.ci_low is None:
            return None
        return f"[{s.ci_low:.2f}, {s.ci_high:.2f}]" + (CLIPPED_MARK if s.clipped else "")

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass(frozen=True, kw_only=True)
class Table:
    """A report table: a title, column names, rows of (row name, cells), and notes printed below it."""

    title: str
    """Heading above the table."""
    name: str
    """File stem of its CSV."""
    columns: list[str]
    """Column names, the row-name column first."""
    rows: list[tuple[str, list[Cell | float | int | str | None]]]
    """Row name and one cell per column after the first; None is an empty cell."""
    notes: list[str] = field(default_factory=list)
    """Lines printed under the table: how to read it, and what it leaves out and why."""

    def text_rows(self) -> list[list[object]]:
        """Rows for `format_table`: cells as strings, empty cells as '–'; under a row with seeds, its 95% CIs."""
        lines: list[list[object]] = []
        for name, cells in self.rows:
            shown = ("–" if cell is None else str(cell) if isinstance(cell, Cell) else cell for cell in cells)
            lines.append([name, *shown])
            intervals = [cell.interval() if isinstance(cell, Cell) else None for cell in cells]
            if any(intervals):
                lines.append([f"  {100 * CONFIDENCE:.0f}% CI", *(interval or "" for interval in intervals)])
        return lines

    def legend(self) -> list[str]:
        """The notes, and a line on clipped intervals when a cell has one."""
        clipped = any(isinstance(cell, Cell) and cell.summary.clipped for _, cells in self.rows for cell in cells)
        bounds = f"[{PERCENT_BOUNDS[0]:g}, {PERCENT_BOUNDS[1]:g}]"
        clip_line = f"{CLIPPED_MARK} the t interval reached past {bounds}, where a score must lie, and is clipped there"
        return [*self.notes, *([clip_line] if clipped else [])]

    def render(self, markdown: bool = False) -> str:
        """The table as aligned text, or as Markdown, with its legend below."""
        legend = self.legend()
        text = format_table(self.columns, self.text_rows(), markdown=markdown)
        return text + ("\n\n" + "\n".join(f"{'- ' if markdown else ''}{line}" for line in legend) if legend else "")

    def write_csv(self, path: Path) -> Path:
        """CSV of the same shape: a mean column per column, and `<column> std`, `<column> ci_low` and
        `<column> ci_high` columns when any run has seeds."""
        has_std = any(isinstance(cell, Cell) and cell.std is not None for _, cells in self.rows for cell in cells)
        spread_columns = ("std", "ci_low", "ci_high") if has_std else ()
        header = [self.columns[0]]
        for column in self.columns[1:]:
            header.extend([column, *(f"{column} {part}" for part in spread_columns)])
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            for name, cells in self.rows:
                row: list[object] = [name]
                for cell in cells:
                    mean = cell.mean if isinstance(cell, Cell) else cell
                    row.append("" if mean is None else mean if isinstance(mean, (int, str)) else f"{mean:.4f}")
                    summary = cell.summary if isinstance(cell, Cell) else None
                    for part in spread_columns:
                        value = None if summary is None else getattr(summary, part)
                        row.append("" if value is None else f"{value:.4f}")
                writer.writerow(row)
        return path


# How to read the three paired tests together, printed under every table of paired differences.
PAIRED_READING = (
    "The t-test sees only seed noise (the test set held fixed), the dialogue bootstrap only test sampling (the "
    "trained models held fixed); when they disagree, the difference is established only against the noise of the "
    "one that finds it. The seeds × dialogues interval carries both and is the one to read."
)
PAIRED_HOLM = "p-values: raw (Holm-corrected across this table's rows, one family per test)"


def paired_columns(confidence: float = CONFIDENCE) -> list[str]:
    """The columns `paired_cells` fills, after a table's own leading columns."""
    level = f"{100 * confidence:.0f}% CI"
    return [
        "seeds", "difference", level, "t-test p", "dialogues", f"bootstrap {level}", "bootstrap p",
        f"seeds × dialogues {level}", "seeds × dialogues p",
    ]  # fmt: skip


def _interval_text(low: float | None, high: float | None, scale: float) -> str | None:
    return None if low is None else f"[{scale * low:.2f}, {scale * high:.2f}]"


def _p_text(raw: float | None, corrected: float | None, resamples: int | None = None) -> str | None:
    return None if raw is None else f"{p_value_text(raw, resamples)} ({p_value_text(corrected, resamples)})"


def paired_cells(found: Sequence[PairedTests], scale: float) -> list[list[str | int | None]]:
    """One row of cells per comparison, in percentage points: the per-seed differences (times `scale`: 100 for
    fractions, 1 for percentages), then each test with its p-value raw and Holm-corrected across `found`."""
    t_holm = holm([tests.t_test.p_value for tests in found])
    dialogue_holm = holm([None if tests.bootstrap is None else tests.bootstrap.p_value for tests in found])
    both_holm = holm([None if tests.hierarchical is None else tests.hierarchical.p_value for tests in found])
    rows = []
    for i, tests in enumerate(found):
        s, dialogue, both = tests.difference, tests.bootstrap, tests.hierarchical
        rows.append(
            [
                len(tests.seeds),
                f"{scale * s.mean:.2f}" if s.std is None else f"{scale * s.mean:.2f} ± {scale * s.std:.2f}",
                _interval_text(s.ci_low, s.ci_high, scale),
                _p_text(tests.t_test.p_value, t_holm[i]),
                None if dialogue is None else dialogue.dialogues,
                None if dialogue is None else _interval_text(dialogue.ci_low, dialogue.ci_high, 100),
                None if dialogue is None else _p_text(dialogue.p_value, dialogue_holm[i], dialogue.resamples),
                None if both is None else _interval_text(both.ci_low, both.ci_high, 100),
                None if both is None else _p_text(both.p_value, both_holm[i], both.resamples),
            ]
        )
    return rows
