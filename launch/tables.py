"""Plain-text tables for the terminal and Markdown files: one formatter for every printed table."""

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned.

    With `markdown`, the same table is a GitHub-flavoured Markdown table.
    """
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(header))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = (
            "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
        )
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def p_value_text(p: float | None, resamples: int | None = None) -> str:
    """A p-value to three decimals; '-' when there is none; below the resolution of `resamples` as '< 1/resamples'."""
    if p is None:
        return "-"
    if resamples is not None and p < 1.0 / resamples:
        return f"< {1.0 / resamples:.2g}"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
