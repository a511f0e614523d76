"""What a folder holds (a feature store, a sweep, a corpus, a run), by the file that marks it.

A command that writes one kind of folder refuses a folder that holds another kind, in one line,
before it writes anything: `train --run-dir STORE` would replace the store's extraction config with a
run config, `demo-corpus --out CORPUS` would replace a user's CSVs. `verify` tells the kinds apart
the same way.
"""

from pathlib import Path

from cluster.config import RESOLVED_CONFIG_NAME
from launch.cli import UserError

STORE_MARKER = "manifest.json"
SWEEP_MARKER = "sweep.json"
# A run folder's config.toml (`model.run_folder.RunFolder.config_path`): the name every output folder's config has.
RUN_MARKER = RESOLVED_CONFIG_NAME
CORPUS_MARKER = "*_sent_emo.csv"

# Checked in this order: a store and a corpus hold a config.toml too, so a run is what is left.
KIND_NAMES = {"store": "feature store", "sweep": "sweep folder", "corpus": "corpus", "run": "run folder"}


def folder_kind(path: Path) -> str | None:
    """'store', 'sweep', 'corpus' or 'run' by the file that marks it; None for a folder of none of them, or none."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / STORE_MARKER).is_file():
        return "store"
    if (path / SWEEP_MARKER).is_file():
        return "sweep"
    if any(path.glob(CORPUS_MARKER)):
        return "corpus"
    if (path / RUN_MARKER).is_file():
        return "run"
    return None


def refuse_other_kind(path: Path, writes: str, option: str) -> None:
    """A UserError when `path` holds a kind of folder other than `writes`, which the command would overwrite."""
    kind = folder_kind(path)
    if kind is not None and kind != writes:
        raise UserError(
            f"{option} {path} holds a {KIND_NAMES[kind]}, and this command writes a {KIND_NAMES[writes]} there, "
            "which would overwrite it; choose another folder"
        )
