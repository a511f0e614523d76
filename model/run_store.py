"""Which feature store a run was trained on: recorded by identity and path, found again, and checked.

A run names its store in its config by path, and a path alone binds nothing: another store can be
put at that path (the same extraction config, another corpus), and a relative path means another
folder from another working directory. So a run folder also holds `store.json`:

    path        the store's absolute path when the run started
    relative    the store's path relative to the run folder, to find it when a whole tree is moved
    identity    the store's identity (`extract.manifest.store_identity`): config hash and plan digest
    label_set   the store's label set (`extract.labels.LabelSet.to_json`): the run's own, which its output
                width, loss, metrics and reports follow; a run made before runs recorded it is MELD's

`open_run_store` finds the store (the configured path, then the recorded absolute path, then the
relative one: the first whose identity is the recorded one) and refuses, in one line naming both
identities, a store that is not the one the run was trained on. `evaluate`, `predict`, `verify`
and `train --resume` all go through it.

`refuse_other_label_set` refuses, in one line naming both label sets, a store labelled in another
set than the run's (`run_label_set`): a run's outputs are class indices in its own label set, and
the same index means another label in another set.
"""

import json
import os
from pathlib import Path
from typing import Any

from cluster.durable_files import atomic_write_json
from extract.feature_store import FeatureStore
from extract.labels import MELD_EMOTIONS, LabelSet, UnknownLabelError
from extract.manifest import MANIFEST_NAME, read_manifest, store_identity
from model.checkpoint import RunFolderError
from model.run_folder import RunFolder

_RECORD_FIELDS = ("path", "relative", "identity")


def record_run_store(run_dir: Path, store: FeatureStore) -> None:
    """Write `store.json`: the store's absolute and run-relative paths and its identity."""
    run_dir = Path(run_dir)
    absolute = store.path.resolve()
    record = {
        "path": str(absolute),
        "relative": os.path.relpath(absolute, run_dir.resolve()),
        "identity": store_identity(store.manifest),
        "label_set": store.label_set.to_json(),
    }
    atomic_write_json(RunFolder(run_dir).store_record_path, record)


def read_run_store_record(run_dir: Path) -> dict[str, Any] | None:
    """`store.json` validated (three strings, and a label set where recorded), or None for a run made before
    runs recorded their store."""
    path = RunFolder(run_dir).store_record_path
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is damaged ({type(error).__name__}); train the run again") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in _RECORD_FIELDS):
        raise RunFolderError(
            f"{path} is damaged: it needs the strings {', '.join(_RECORD_FIELDS)}; train the run again"
        )
    if "label_set" in record:
        try:
            LabelSet.from_json(record["label_set"], where=f"{path} label_set")
        except UnknownLabelError as error:
            raise RunFolderError(f"{path} is damaged: {error}; train the run again") from None
    return record


def run_label_set(run_dir: Path) -> LabelSet:
    """The label set a run was trained in, as its `store.json` records it (MELD's for a run made before runs
    recorded one)."""
    record = read_run_store_record(run_dir)
    if record is None or "label_set" not in record:
        return MELD_EMOTIONS
    return LabelSet.from_json(record["label_set"])


def _candidates(run_dir: Path, configured: str, record: dict[str, str] | None) -> list[Path]:
    """Where the store may be: the configured path, then (when recorded) the absolute and the run-relative one."""
    candidates = [Path(configured).expanduser()]
    if record is not None:
        candidates += [Path(record["path"]), Path(run_dir) / record["relative"]]
    return candidates


def refuse_other_label_set(store: FeatureStore, label_set: LabelSet, whose: str) -> FeatureStore:
    """`store` when its label set is `label_set` (that of `whose`, e.g. "run runs/x"); otherwise a
    RunFolderError naming both sets."""
    if not store.label_set.same_labels(label_set):
        raise RunFolderError(
            f"{whose} is trained in label set {label_set.describe()}, but store {store.path} is labelled in "
            f"{store.label_set.describe()}; a run scores only its own label set, so use a store of "
            f"{label_set.name} or train a new run on this one"
        )
    return store


def refuse_mixed_label_sets(stores: list[FeatureStore]) -> None:
    """A RunFolderError naming two stores and their sets when `stores` are not all in one label set: the runs of
    one sweep are pooled into one report, and scores in different label sets do not pool."""
    first = stores[0]
    for store in stores[1:]:
        if not store.label_set.same_labels(first.label_set):
            raise RunFolderError(
                f"store {first.path} is labelled in {first.label_set.describe()} but store {store.path} in "
                f"{store.label_set.describe()}; one sweep pools its runs into one report, so sweep each label "
                "set on its own"
            )


def open_run_store(run_dir: Path, configured: str) -> FeatureStore:
    """Open the run's store; a RunFolderError, naming both identities, when no candidate is the recorded store.

    The first candidate that holds a store of the recorded identity is opened (a run without
    `store.json` opens the configured path). The recorded paths are only ever read from. A store in
    another label set than the run's (`run_label_set`) is refused (`refuse_other_label_set`).
    """
    record = read_run_store_record(run_dir)
    label_set, whose = run_label_set(run_dir), f"run {run_dir}"
    stores = [path for path in _candidates(run_dir, configured, record) if (path / MANIFEST_NAME).is_file()]
    if record is None or not stores:
        store = FeatureStore.open(stores[0] if stores else Path(configured).expanduser())
        return refuse_other_label_set(store, label_set, whose)
    identities = {path: store_identity(read_manifest(path)) for path in stores}
    for path, identity in identities.items():
        if identity == record["identity"]:
            return refuse_other_label_set(FeatureStore.open(path), label_set, whose)
    raise RunFolderError(
        f"run {run_dir} was trained on store {record['identity']} ({record['path']}), but the store at "
        f"{stores[0]} is {identities[stores[0]]}: another corpus or plan. Point the run at its own store, "
        "or train a new run on this one"
    )
