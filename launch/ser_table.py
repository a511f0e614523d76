"""The speech-emotion benchmark's table, for runs in IEMOCAP's `ser4` label set.

SER papers on IEMOCAP report unweighted accuracy (UA: the mean of the per-class recalls,
scikit-learn's `balanced_accuracy_score`) and weighted accuracy (WA: the share of utterances right,
`accuracy_score`); the table gives both beside weighted F1, mean ± sample sd over seeds.

Leave-one-session-out: each fold is its own store (`iemocap.fold=k` at extract time), so runs of
the five folds differ in their store only and form one group per fold. After the folds' rows, each
model whose runs span several folds gets a row of the mean over its folds (± the sd over folds).
"""

from collections.abc import Sequence

from sklearn.metrics import balanced_accuracy_score

from extract.iemocap import SER4_LABELS
from launch.report_groups import RunGroup, base_name, group_cell, group_names, group_runs, runs_label_set
from launch.report_table import Cell, Table
from launch.run_results import RunResult

# The config key that tells one fold's runs from another's: each fold is extracted into its own store.
FOLD_KEY = "store"


def _unweighted_accuracy(run: RunResult) -> float:
    return float(balanced_accuracy_score(run.predictions.gold, run.predictions.pred))


def _cells(group: RunGroup) -> list[Cell | None]:
    """UA, WA and weighted F1 of one group, in percent; UA is None when a run lacks its predictions."""
    has_predictions = all(run.predictions is not None for run in group.members)
    return [
        group_cell(group, _unweighted_accuracy) if has_predictions else None,
        group_cell(group, lambda run: run.test["accuracy"]),
        group_cell(group, lambda run: run.test["weighted_f1"]),
    ]


def _model_of(group: RunGroup) -> str:
    """The group's config without the fold's key: the same for one model's runs on every fold."""
    return repr(sorted((key, repr(value)) for key, value in group.settings.items() if key != FOLD_KEY))


def ser_table(runs: Sequence[RunResult]) -> Table | None:
    """UA, WA and weighted F1 per group (one per fold), then each model's mean over folds; None unless the runs
    are in the ser4 label set."""
    if not runs or not runs_label_set(runs).same_labels(SER4_LABELS):
        return None
    names = group_names(runs)
    rows: list[tuple[str, list[Cell | float | int | str | None]]] = []
    folds: dict[str, tuple[RunGroup, list[list[Cell | None]]]] = {}
    for group in group_runs(runs):
        cells = _cells(group)
        rows.append((f"{names[group.members[0].run_dir]} (n={len(group.members)})", [*cells]))
        folds.setdefault(_model_of(group), (group, []))[1].append(cells)
    for first, fold_cells in folds.values():
        if len(fold_cells) < 2:
            continue
        means = [
            None if any(cell is None for cell in column) else Cell(tuple(cell.mean for cell in column))
            for column in zip(*fold_cells)
        ]
        rows.append((f"{base_name(first)}: mean over {len(fold_cells)} folds", [*means]))
    return Table(
        title="IEMOCAP ser4: unweighted and weighted accuracy (%) on test; fold means ± sd over folds",
        name="ser4",
        columns=["run group", "UA", "WA", "weighted F1"],
        rows=rows,
    )
