"""A run folder as an object: every file name in it, its lock, the "new or resumable" check and `verify()`.

A run folder holds:
    config.toml                 the resolved RunConfig (its presence makes a folder a run folder)
    store.json                  the store the run was trained on (`model.run_store`)
    feature_statistics.npz      train-split standardisation, applied again at evaluation
    encoder/                    the trained text encoder (end_to_end), selected epoch, Hugging Face format
    monitor/                    DeepSpeed's monitor files, when [monitor] switches them on
    metrics.jsonl               one line per epoch (`model.train`)
    checkpoints/                the last two checkpoints and the best one (their format: `model.checkpoint`)
    learning_curves.png, confusion_<split>.png, predictions.jsonl (<split>_predictions.jsonl)
    <split>_metrics.json        a split's scores (`model.evaluate`); test_metrics.json is written last: its
                                presence means the run is finished
    robustness/                 perturbed test scores (`model.predict.evaluate_perturbed`)
    run.json, submission.json   in a sweep's run folders: the run's place in the sweep and its job (`launch.sweep`)
    attempts.jsonl              every start of a submitted job, requeues included (`launch.jobs`)
    logs/                       Submitit's logs of a run submitted alone (`cmroberta launch train`)

No other module spells these names: they ask a `RunFolder` for the path. The checkpoint manager is handed
`checkpoints/` and names the files inside it itself (its own format).

This module is also the one definition of the config keys that never change a run's result
(`RESULT_FREE_KEYS`) and of the replicate axis (`REPLICATE_KEY`, the seed): a resume may change the first
(`config_differences`), and the sweep hash and the report's groups leave out both (`replicate_settings`).
"""

import functools
import shlex
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cluster.config import RESOLVED_CONFIG_NAME, ConfigError, load_config, to_dict
from cluster.durable_files import LockHeldError, exclusive_lock
from model.checkpoint import CheckpointDamagedError, Checkpoints, RunFolderError
from model.metrics_record import MetricsDamagedError, read_metrics_record
from model.run_config import RunConfig

# Dotted config keys (a key names its whole section) that never change what a run computes, each with why:
RESULT_FREE_KEYS = (
    # where `cmroberta train` makes a run folder when none is named: a place, not a setting.
    "runs_root",
    # when checkpoints are taken: a resume replays bit for bit from any of them (`model.checkpoint`).
    "checkpoint",
    # DeepSpeed's TensorBoard and CSV monitor: it writes copies of losses and rates the loop has computed.
    "monitor",
)
# The replicate axis: runs that differ only in it are one configuration, and their results are pooled.
REPLICATE_KEY = "seed"

_CHECKPOINT_FOLDER = "checkpoints"
_METRICS_NAME = "metrics.jsonl"
_CURVES_NAME = "learning_curves.png"
_STATISTICS_NAME = "feature_statistics.npz"
_ENCODER_FOLDER = "encoder"
_MONITOR_FOLDER = "monitor"
_STORE_RECORD_NAME = "store.json"
_ROBUSTNESS_FOLDER = "robustness"
_RUN_RECORD_NAME = "run.json"
_SUBMISSION_NAME = "submission.json"
_CLAIM_NAME = ".claim"
_ATTEMPTS_NAME = "attempts.jsonl"
_LOGS_FOLDER = "logs"
_TEST_PREDICTIONS_NAME = "predictions.jsonl"


def _without(data: dict[str, Any], dotted_keys: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    kept = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in dotted_keys:
            continue
        kept[key] = _without(value, dotted_keys, f"{dotted}.") if isinstance(value, dict) else value
    return kept


def result_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A config (as plain values) without the keys that never change a run's result (`RESULT_FREE_KEYS`)."""
    return _without(data, RESULT_FREE_KEYS)


def replicate_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A config without the keys that never change a result and without the seed: what the seeds of one
    configuration share (the sweep hash and the report's groups are computed from it)."""
    return _without(data, (*RESULT_FREE_KEYS, REPLICATE_KEY))


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], prefix: str = "", free: tuple[str, ...] = ()
) -> list[str]:
    """Dotted keys whose values differ, as 'key: saved -> current', leaving out `RESULT_FREE_KEYS` and `free`."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in (*RESULT_FREE_KEYS, *free):
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences.extend(config_differences(a, b, f"{dotted}.", free))
        elif a != b:
            differences.append(f"{dotted}: {a!r} -> {b!r}")
    return differences


class RunFolder:
    """One run folder: its paths as properties, its lock, its checks. Built from a path; nothing is read until
    asked, and the saved config is read once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- paths ----------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """config.toml: the resolved config the run trained with."""
        return self.path / RESOLVED_CONFIG_NAME

    @property
    def checkpoints_folder(self) -> Path:
        """checkpoints/: handed to `model.checkpoint.Checkpoints`."""
        return self.path / _CHECKPOINT_FOLDER

    @property
    def metrics_path(self) -> Path:
        """metrics.jsonl: one line per epoch."""
        return self.path / _METRICS_NAME

    @property
    def curves_path(self) -> Path:
        """learning_curves.png."""
        return self.path / _CURVES_NAME

    @property
    def statistics_path(self) -> Path:
        """feature_statistics.npz: the train split's standardisation."""
        return self.path / _STATISTICS_NAME

    @property
    def encoder_folder(self) -> Path:
        """encoder/: the trained text encoder, Hugging Face format."""
        return self.path / _ENCODER_FOLDER

    @property
    def monitor_folder(self) -> Path:
        """monitor/: DeepSpeed's monitor files, unless [monitor] names another folder."""
        return self.path / _MONITOR_FOLDER

    @property
    def store_record_path(self) -> Path:
        """store.json: the store the run was trained on."""
        return self.path / _STORE_RECORD_NAME

    @property
    def robustness_folder(self) -> Path:
        """robustness/: perturbed test scores, one JSON file per condition and seed."""
        return self.path / _ROBUSTNESS_FOLDER

    def robustness_path(self, condition: str, seed: int, split: str = "test") -> Path:
        """One perturbed condition's scores: `robustness/[<split>-]<condition>-seed<N>.json` (the split unless test)."""
        prefix = "" if split == "test" else f"{split}-"
        return self.robustness_folder / f"{prefix}{condition}-seed{seed}.json"

    @property
    def run_record_path(self) -> Path:
        """run.json: the run's place in its sweep."""
        return self.path / _RUN_RECORD_NAME

    @property
    def submission_path(self) -> Path:
        """submission.json: the sweep's job for this run."""
        return self.path / _SUBMISSION_NAME

    @property
    def logs_folder(self) -> Path:
        """logs/: Submitit's logs of a run submitted alone (`cmroberta launch train`)."""
        return self.path / _LOGS_FOLDER

    @property
    def attempts_path(self) -> Path:
        """attempts.jsonl: one line per start of a submitted job (`launch.jobs`), requeues included."""
        return self.path / _ATTEMPTS_NAME

    def split_metrics_path(self, split: str) -> Path:
        """`<split>_metrics.json`: a split's scores."""
        return self.path / f"{split}_metrics.json"

    def split_metrics_paths(self) -> dict[str, Path]:
        """Every split's metrics file in the folder, by split, in file-name order."""
        suffix = self.split_metrics_path("").name
        return {path.name.removesuffix(suffix): path for path in sorted(self.path.glob(f"*{suffix}"))}

    @property
    def test_metrics_path(self) -> Path:
        """test_metrics.json: written last, so its presence means the run is finished."""
        return self.split_metrics_path("test")

    def predictions_path(self, split: str) -> Path:
        """predictions.jsonl for test, `<split>_predictions.jsonl` otherwise."""
        return self.path / (_TEST_PREDICTIONS_NAME if split == "test" else f"{split}_predictions.jsonl")

    def confusion_plot_path(self, split: str) -> Path:
        """`confusion_<split>.png`."""
        return self.path / f"confusion_{split}.png"

    # --- state ----------------------------------------------------------------------------------------

    @property
    def is_run(self) -> bool:
        """Whether the folder is a run folder (it holds config.toml)."""
        return self.config_path.is_file()

    @property
    def finished(self) -> bool:
        """Whether the run is finished (test_metrics.json exists)."""
        return self.test_metrics_path.is_file()

    @staticmethod
    def finished_below(root: Path) -> list["RunFolder"]:
        """The finished run folders under `root`, in path order."""
        probe = RunFolder(root)
        return [RunFolder(path.parent) for path in sorted(Path(root).rglob(probe.test_metrics_path.name))]

    def checkpoints(self, rank: int = 0, world_size: int = 1) -> Checkpoints:
        """The run's checkpoints, seen from one rank."""
        return Checkpoints(self.checkpoints_folder, rank, world_size)

    def started(self) -> bool:
        """Whether a run has begun here: a checkpoint, or a finished run's test metrics."""
        return self.checkpoints().progress() is not None or self.finished

    @functools.cached_property
    def saved_config(self) -> RunConfig:
        """The resolved config the run was trained with, read once; a RunFolderError when it is not a TOML text."""
        try:
            return load_config(RunConfig, self.config_path)
        except (UnicodeDecodeError, OSError) as error:
            raise RunFolderError(
                f"{self.config_path} cannot be read ({type(error).__name__}); it is not the config this project "
                "wrote: train the run again in a new folder"
            ) from None

    @contextmanager
    def lock(self, is_main: bool) -> Iterator[None]:
        """Hold the run folder for this job alone; another writer gets a RunFolderError naming the holder.

        Rank 0 holds it for all ranks of its job (each rank of one job writes its own files there).
        """
        if not is_main:
            yield
            return
        try:
            with exclusive_lock(self.path, "run folder"):
                yield
        except LockHeldError as error:
            raise RunFolderError(str(error)) from None

    @contextmanager
    def claim(self) -> Iterator[bool]:
        """Whether this process holds the run's claim for the block; False while another process holds it.

        The queues of a local sweep share their runs (`launch.jobs.RunQueueJob`): the claim decides which
        queue trains a run. It is a lock file of its own, apart from the one training takes inside it, and
        goes with the process that holds it, so a killed queue leaves no run claimed.
        """
        held = ExitStack()
        try:
            held.enter_context(exclusive_lock(self.path, "run folder", lock_name=_CLAIM_NAME))
        except LockHeldError:
            yield False
            return
        with held:
            yield True

    def check_new_or_resumable(self, config: RunConfig, resume: bool) -> None:
        """Refuse to overwrite a run, and to resume one with a config that changes its result.

        A change of `RESULT_FREE_KEYS` is accepted. A run that records its store's identity was checked
        against it (`model.run_store.open_run_store`), so its store's path may move.
        """
        if not self.started():
            return
        if not resume:
            raise RunFolderError(
                f"run folder {self.path} already holds a run; pass --resume to continue it, or choose another --run-dir"
            )
        if not self.is_run:
            return
        free = ("store",) if self.store_record_path.is_file() else ()
        differences = config_differences(to_dict(self.saved_config), to_dict(config), free=free)
        if differences:
            raise RunFolderError(
                f"run folder {self.path} was trained with another config ({'; '.join(differences)}); "
                "resume it with the same config, or choose another --run-dir"
            )

    def verify(self) -> list[str]:
        """What is wrong with the run folder, each with the command that repairs it; empty when all is well.

        Checks the resolved config, progress.json, that every checkpoint it names is complete and loads
        with the safe loaders (checksums, weights-only torch files, safetensors), and the test metrics.
        """
        if not self.path.is_dir():
            return [
                f"{self.path} does not exist; train a run into it: "
                f"cmroberta train STORE --run-dir {shlex.quote(str(self.path))}"
            ]
        problems = []
        quoted = shlex.quote(str(self.path))
        store = "STORE"
        try:
            store = shlex.quote(load_config(RunConfig, self.config_path).store)
        except (ConfigError, OSError, ValueError) as error:
            problems.append(
                f"{self.config_path} cannot be read as a run config ({error}); the run cannot be resumed or "
                f"re-evaluated: train it again, cmroberta train STORE --run-dir NEW_FOLDER"
            )
        resume = f"cmroberta train {store} --run-dir {quoted} --resume"
        checkpoints = self.checkpoints()
        try:
            progress = checkpoints.progress()
        except RunFolderError as error:
            problems.append(f"{error}: rm {shlex.quote(str(checkpoints.progress_path))} && {resume}")
            progress = None
        test_path = self.test_metrics_path
        if progress is None and not problems:
            problems.append(f"{self.path} holds no checkpoint yet; train it: {resume}")
        for tag in progress.kept() if progress else []:
            selected_of_finished = tag == progress.best and test_path.is_file()
            try:
                manifest = checkpoints.manifest(tag)
                checkpoints.read_weights(tag, manifest)
            except CheckpointDamagedError as error:
                if selected_of_finished:
                    retrain = f"cmroberta train {store} --run-dir NEW_FOLDER"
                    fix = f"the run's selected model is lost: train it again, {retrain}"
                else:
                    fix = f"rm -r {shlex.quote(str(checkpoints.folder / tag))} && {resume}"
                problems.append(f"checkpoint {tag} is damaged: {error}; {fix}")
                continue
            try:
                checkpoints.check_rank_files(tag, manifest)
            except CheckpointDamagedError as error:
                if selected_of_finished:
                    # Only resuming reads the optimizer and RNG state; evaluate and predict read the weights alone.
                    fix = ("its weights are intact, and `evaluate` and `predict` use them; only resuming training "
                           "needs this file, and the run is finished")
                else:
                    fix = f"rm -r {shlex.quote(str(checkpoints.folder / tag))} && {resume}"
                problems.append(f"checkpoint {tag}'s training state is damaged: {error}; {fix}")
        if progress is not None and not test_path.is_file():
            problems.append(f"the run is unfinished (no {test_path.name}); finish it: {resume}")
        elif test_path.is_file():
            try:
                valid = read_metrics_record(test_path)["checkpoint"] == (progress.best if progress else None)
            except MetricsDamagedError:
                valid = False
            if not valid:
                problems.append(f"{test_path} is damaged or does not match the selected checkpoint; score it "
                                f"again: cmroberta evaluate {quoted}")
        return problems
