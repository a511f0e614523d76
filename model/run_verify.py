"""`cmroberta verify` of a run folder: what is wrong with it, each problem with the command that repairs it.

It reads the folder only through the modules that own its files: the resolved config (`model.run_config`),
the checkpoints (`model.checkpoint`) and the test metrics (`model.evaluate`).
"""

import shlex
from pathlib import Path

from cluster.config import RESOLVED_CONFIG_NAME, ConfigError, load_config
from model.checkpoint import CheckpointDamagedError, Checkpoints, RunFolderError
from model.evaluate import TEST_METRICS_NAME, MetricsDamagedError, read_metrics_record
from model.run_config import RunConfig


def verify_run_folder(run_dir: Path) -> list[str]:
    """What is wrong with a run folder, each with the command that repairs it; empty when all is well.

    Checks the resolved config, progress.json, that every checkpoint it names is complete and loads
    with the safe loaders (checksums, weights-only torch files, safetensors), and the test metrics.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return [
            f"{run_dir} does not exist; train a run into it: "
            f"cmroberta train STORE --run-dir {shlex.quote(str(run_dir))}"
        ]
    problems = []
    quoted = shlex.quote(str(run_dir))
    store = "STORE"
    config_path = run_dir / RESOLVED_CONFIG_NAME
    try:
        store = shlex.quote(load_config(RunConfig, config_path).store)
    except (ConfigError, OSError, ValueError) as error:
        problems.append(f"{config_path} cannot be read as a run config ({error}); the run cannot be resumed or "
                        f"re-evaluated: train it again, cmroberta train STORE --run-dir NEW_FOLDER")
    resume = f"cmroberta train {store} --run-dir {quoted} --resume"
    checkpoints = Checkpoints(run_dir)
    try:
        progress = checkpoints.progress()
    except RunFolderError as error:
        problems.append(f"{error}: rm {shlex.quote(str(checkpoints.progress_path))} && {resume}")
        progress = None
    test_path = run_dir / TEST_METRICS_NAME
    if progress is None and not problems:
        problems.append(f"{run_dir} holds no checkpoint yet; train it: {resume}")
    good = []
    for tag in progress.kept() if progress else []:
        selected_of_finished = tag == progress.best and test_path.is_file()
        try:
            manifest = checkpoints.manifest(tag)
            checkpoints.read_weights(tag, manifest)
        except CheckpointDamagedError as error:
            if selected_of_finished:
                fix = f"the run's selected model is lost: train it again, cmroberta train {store} --run-dir NEW_FOLDER"
            else:
                fix = f"rm -r {shlex.quote(str(checkpoints.folder / tag))} && {resume}"
            problems.append(f"checkpoint {tag} is damaged: {error}; {fix}")
            continue
        try:
            checkpoints.check_rank_files(tag, manifest)
            good.append(tag)
        except CheckpointDamagedError as error:
            if selected_of_finished:
                # Only resuming reads the optimizer and RNG state; evaluate and predict read the weights alone.
                fix = ("its weights are intact, and `evaluate` and `predict` use them; only resuming training "
                       "needs this file, and the run is finished")
            else:
                fix = f"rm -r {shlex.quote(str(checkpoints.folder / tag))} && {resume}"
            problems.append(f"checkpoint {tag}'s training state is damaged: {error}; {fix}")
    if progress is not None and not test_path.is_file():
        problems.append(f"the run is unfinished (no {TEST_METRICS_NAME}); finish it: {resume}")
    elif test_path.is_file():
        try:
            valid = read_metrics_record(test_path)["checkpoint"] == (progress.best if progress else None)
        except MetricsDamagedError:
            valid = False
        if not valid:
            problems.append(f"{test_path} is damaged or does not match the selected checkpoint; score it again: "
                            f"cmroberta evaluate {quoted}")
    return problems
