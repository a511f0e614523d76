"""`cmroberta verify PATH`: check a feature store, a run folder or a sweep folder, e.g. after copying it
between clusters.

Each problem is printed on a line of its own, with the command that repairs it; the exit status
is 0 only when nothing is wrong (1 when something is, 2 when PATH is none of the three).

- A store is checked as `FeatureStore.open` checks it, in full: the plan, every shard's presence,
  size and sha256 (the cache of verified shards is used and refreshed), and labels in range.
- A run folder is checked by `run_folder_problems`: its config, progress.json, every checkpoint it
  names (loaded with the safe loaders), its metrics files, its store's identity, and that the
  selected checkpoint's weights fit the model its config.toml builds (shapes only, nothing loaded).
- A sweep folder: sweep.json, each run's run.json and submission.json (validated as typed records,
  `launch.sweep_records`), and every run folder.
"""

import argparse
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.config import ConfigError, load_config
from extract.manifest import FeatureStoreError, read_manifest
from launch.cli import UserError
from launch.folder_kinds import RUN_MARKER, STORE_MARKER, SWEEP_MARKER, folder_kind
from launch.sweep_records import SweepRecordError, read_run_record, read_submission

if TYPE_CHECKING:
    from extract.feature_store import FeatureStore
    from model.run_config import RunConfig


def _json_problem(path: Path, lines: bool = False) -> str | None:
    """Why a JSON (or JSON lines) file does not parse, naming the line; None when it does."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return f"{path.name} cannot be read ({error})"
    documents = (
        [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()] if lines else [(1, text)]
    )
    for number, document in documents:
        try:
            value = json.loads(document)
        except json.JSONDecodeError as error:
            where = f"line {number}" if lines else f"line {error.lineno}"
            return f"{path.name} {where} is not valid JSON ({error.msg})"
        if not isinstance(value, dict):
            return f"{path.name} line {number} is not a JSON object"
    return None


def store_problems(store_dir: Path) -> list[str]:
    """What is wrong with a feature store, each with the command that finishes or repairs it."""
    # deferred: imports h5py; `cmroberta --help` imports every verb's module
    from extract.feature_store import FeatureStore, repair_command
    from extract.feature_store import store_problems as shard_problems

    try:
        manifest = read_manifest(store_dir)
    except FeatureStoreError as error:
        return [str(error)]
    repair = repair_command(store_dir, manifest)
    problems = [f"{problem}; repair: {repair}" for problem in shard_problems(store_dir, manifest)]
    if problems:
        return problems
    store = FeatureStore(store_dir, manifest)
    for split in store.splits:
        try:
            store.read_split(split, families=[])
        except FeatureStoreError as error:
            problems.append(f"{error}; repair: {repair}")
    return problems


def _run_repair(run_dir: Path) -> str:
    return f"cmroberta train STORE --run-dir {shlex.quote(str(run_dir))} --resume"


def _store_problems(run_dir: Path, config: "RunConfig") -> list[str]:
    """The run's store, when one is found, must be the one it was trained on, and build a model its weights fit.

    A store's own damage is its verify's, not the run's problem.
    """
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from model.checkpoint import RunFolderError
    from model.run_store import open_run_store

    try:
        store = open_run_store(run_dir, config.store)
    except RunFolderError as error:
        return [f"{error}; repair: point the run at its own store"]
    except FeatureStoreError:
        return []  # a missing or damaged store is reported by `cmroberta verify STORE`, not as the run's problem
    problem = _weights_misfit(run_dir, config, store)
    return [problem] if problem else []


def _weights_misfit(run_dir: Path, config: "RunConfig", store: "FeatureStore") -> str | None:
    """Whether the selected checkpoint's weights fit the model config.toml builds, from shapes alone.

    The checkpoint's shapes come from its safetensors header, the config's from the model built on
    the meta device, so no tensor is read or allocated. A damaged checkpoint is `RunFolder.verify`'s
    problem, not this one's; without its text encoder on this machine, an end-to-end run is not checked.
    """
    # deferred: torch and the model take seconds to import; `cmroberta --help` imports every verb's module
    import torch

    from extract.text_features import TextEncoderError
    from model.checkpoint import CheckpointDamagedError, RunFolderError
    from model.engine import build_model, run_modalities
    from model.run_folder import RunFolder
    from model.weights_fit import header_shapes, model_shapes, weights_misfit

    checkpoints = RunFolder(run_dir).checkpoints()
    try:
        progress = checkpoints.progress()
        if progress is None or progress.best is None:
            return None
        path = checkpoints.checked_weights(progress.best)
    except (RunFolderError, CheckpointDamagedError):
        return None
    try:
        with torch.device("meta"):
            model = build_model(config, run_modalities(config, store), store.label_set)
    except TextEncoderError:
        return None  # `evaluate` names the missing encoder; the checkpoint is still checked by RunFolder.verify
    return weights_misfit(progress.best, run_dir, model_shapes(model), header_shapes(path))


def run_folder_problems(run_dir: Path) -> list[str]:
    """What is wrong with a run folder, each with the command that repairs it.

    `model.run_folder.RunFolder.verify` checks the config, progress.json, every checkpoint it names
    (with the safe loaders) and the test metrics; the other metrics files must parse.
    """
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from model.run_config import RunConfig
    from model.run_folder import RunFolder

    run = RunFolder(run_dir)
    problems = run.verify()
    try:
        config = load_config(RunConfig, run.config_path)
        retrain = f"cmroberta train {shlex.quote(str(config.store))} --run-dir {shlex.quote(str(run_dir))} --resume"
        problems.extend(_store_problems(run_dir, config))
    except ConfigError:
        retrain = _run_repair(run_dir)
    for path in (run.metrics_path, run.predictions_path("test")):
        if path.is_file():
            problem = _json_problem(path, lines=True)
            if problem:
                problems.append(f"{problem}; repair: {retrain}")
    for split, path in run.split_metrics_paths().items():
        problem = None if path == run.test_metrics_path else _json_problem(path)
        if problem:
            problems.append(f"{problem}; repair: cmroberta evaluate {shlex.quote(str(run_dir))} --split {split}")
    return problems


def sweep_problems(sweep_dir: Path) -> list[str]:
    """What is wrong with a sweep folder and the runs in it."""
    # deferred: imports torch; `cmroberta --help` imports every verb's module
    from launch.sweep import RUNS_FOLDER
    from model.run_folder import RunFolder

    again = "run the `cmroberta sweep` command that made it again (it submits only missing or failed runs)"
    problem = _json_problem(sweep_dir / SWEEP_MARKER)
    if problem:
        return [f"{problem}; repair: {again}"]
    record = json.loads((sweep_dir / SWEEP_MARKER).read_text(encoding="utf-8"))
    problems = [
        f"{SWEEP_MARKER} has no {key!r} entry; repair: {again}"
        for key in ("configurations", "seeds")
        if key not in record
    ]
    runs = sorted(path for path in (sweep_dir / RUNS_FOLDER).glob("*") if path.is_dir())
    for run_dir in runs:
        where = f"{RUNS_FOLDER}/{run_dir.name}"
        run = RunFolder(run_dir)
        for path, read in ((run.run_record_path, read_run_record), (run.submission_path, read_submission)):
            if path.is_file():
                problem = _json_problem(path)
                if problem:
                    problems.append(f"{where}: {problem}; repair: delete it and {again}")
                    continue
                try:
                    read(path)
                except SweepRecordError as error:
                    problems.append(f"{where}: {error}")
        if run.is_run:
            problems.extend(f"{where}: {problem}" for problem in run_folder_problems(run_dir))
    expected = len(record.get("configurations", {})) * len(record.get("seeds", []))
    if len(runs) < expected:
        problems.append(f"{len(runs)} run folders, the sweep asked for {expected}; repair: {again}")
    return problems


def verified_kind(path: Path) -> str:
    """store, sweep or run: what PATH is (`launch.folder_kinds`); a UserError when it is none of them."""
    if not path.is_dir():
        raise UserError(f"{path} does not exist or is not a folder")
    kind = folder_kind(path)
    if kind == "corpus":
        raise UserError(
            f"{path} is a corpus, not a store, run or sweep folder; check it with `cmroberta prepare {path}`"
        )
    if kind is None:
        raise UserError(
            f"{path} is not a feature store ({STORE_MARKER}), a sweep folder ({SWEEP_MARKER}) "
            f"or a run folder ({RUN_MARKER})"
        )
    return kind


CHECKS = {"store": store_problems, "sweep": sweep_problems, "run": run_folder_problems}


def run_verify(path: Path) -> int:
    """Print what is wrong and how to repair it; 0 when all is well, 1 otherwise."""
    kind = verified_kind(path)
    problems = CHECKS[kind](path)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        print(f"{kind} {path}: {len(problems)} problem(s)")
        return 1
    print(f"{kind} {path}: all is well")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a feature store, run folder or sweep folder; print what is wrong and how to repair it",
        description=(
            "Check PATH in full: a feature store (its plan, every shard's size and sha256, labels), a run folder "
            "(config and metrics files) or a sweep folder (its records and every run folder). Each problem is "
            "printed with the command that repairs it. Exits 0 only when all is well. Useful after copying results "
            "between clusters."
        ),
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="store, run or sweep folder")
    parser.set_defaults(handler=lambda args: run_verify(args.path))
