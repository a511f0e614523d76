"""Table 3 of the report: the audio model by its audio features (OpenL3 only, openSMILE only, both), as the paper's
audio-feature ablation, beside its figures. It appears whenever audio-only runs read a store holding both
openSMILE and OpenL3; a configuration not run is an empty row with a note. The audio families of a run are
its `data.audio_families`; groups of one family set that differ in another key are named by that key.
"""

import json
from collections.abc import Sequence
from pathlib import Path

from extract.manifest import MANIFEST_NAME
from launch.report_groups import RunGroup, group_cell, group_runs
from launch.report_table import Cell, Table
from launch.run_groups import AUDIO_FAMILIES_KEY, keys_apart, named
from launch.run_results import RunResult

# The paper's Table 3: the audio model's weighted F1 on test by its audio families, in the paper's row order.
PAPER_TABLE3: dict[tuple[str, ...], tuple[str, float]] = {
    ("openl3",): ("OpenL3 only (without the low-level descriptors)", 37.3),
    ("opensmile",): ("openSMILE only (without OpenL3)", 41.3),
    ("openl3", "opensmile"): ("openSMILE and OpenL3", 43.1),
}


def _store_families(run: RunResult) -> set[str]:
    """The families the run's store holds, from its manifest; empty when the store is not here."""
    manifest_path = Path(str(run.config.get("store", ""))) / MANIFEST_NAME
    try:
        return set(json.loads(manifest_path.read_text(encoding="utf-8")).get("families", {}))
    except (OSError, json.JSONDecodeError, AttributeError):
        return set()


def table3(runs: Sequence[RunResult]) -> Table | None:
    """The audio model by its audio families (OpenL3 only, openSMILE only, both), beside the paper's Table 3;
    None unless audio-only runs read a store holding both families."""
    audio = [group for group in group_runs(runs) if group.variant == "audio"]
    stores_with_both = [g for g in audio if {"opensmile", "openl3"} <= _store_families(g.members[0])]
    if not stores_with_both:
        return None
    by_families: dict[tuple[str, ...], list[RunGroup]] = {}
    for group in stores_with_both:
        families = tuple(sorted(group.settings.get(AUDIO_FAMILIES_KEY, ["opensmile", "openl3"])))
        if families in PAPER_TABLE3:
            by_families.setdefault(families, []).append(group)
    shown = [group for groups in by_families.values() for group in groups]
    # Groups of one family set that differ in another key are named by it; the families are the row itself.
    apart = dict(zip((g.sweep_hash for g in shown), keys_apart([g.settings for g in shown])))
    rows: list[tuple[str, list[Cell | float | int | str | None]]] = []
    missing = []
    for families, (name, paper) in PAPER_TABLE3.items():
        groups = by_families.get(families, [])
        if not groups:
            missing.append("+".join(families))
            rows.append((name, [None, None, paper]))
        for group in groups:
            keys = [key for key in apart[group.sweep_hash] if key != AUDIO_FAMILIES_KEY]
            cell = group_cell(group, lambda run: run.test["weighted_f1"])
            rows.append((named(name, group.settings, keys), [len(group.members), cell, paper]))
    notes = [f"not run: the audio model on {', '.join(missing)} (`cmroberta reproduce` runs it)"] if missing else []
    return Table(
        title="Table 3: the audio model's weighted F1 (%) on test by its audio features",
        name="table3",
        columns=["audio features", "seeds", "weighted F1", "paper"],
        rows=rows,
        notes=notes,
    )
