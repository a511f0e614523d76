"""A sweep run's own records, `run.json` and `submission.json`, read into typed records and validated.

`run.json` says where a run folder sits in its sweep (its grid label, seed and sweep hash, under the
key `config_hash`);
`submission.json` says which job trains it (`launch.sweep` writes it in two steps: the intent, then
the job id). Both are read only through here, so a record of the wrong shape is one line naming the
file, the field and the repair (a SweepRecordError), never a KeyError or a wrong guess later.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTERS = ("local", "slurm")
SUBMISSION_STATES = ("submitting", "submitted")


class SweepRecordError(Exception):
    """A run.json or submission.json that is not what the sweep writes; the message names the file, field and fix."""


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """run.json: a run folder's place in its sweep."""

    label: str
    """The configuration's grid values, e.g. 'model.variant=text'."""
    seed: int
    """The run's seed."""
    sweep_hash: str
    """`launch.sweep_hash.sweep_hash` of the run's config, the configuration it belongs to (run.json's
    `config_hash`)."""


@dataclass(frozen=True, kw_only=True)
class SubmissionRecord:
    """submission.json: the job that trains a run, or the intent to submit one."""

    state: str
    """'submitting' (the intent: a crash may have come before SLURM answered) or 'submitted'."""
    cluster: str
    """'local' or 'slurm'."""
    log_folder: str
    """Submitit's log folder of the submission."""
    job_name: str | None = None
    """The submission's own job name, by which SLURM is asked after a crash (every intent has one)."""
    job_id: str | None = None
    """The job id, once submitted."""
    array_index: int | None = None
    """The run's task in the job array; None for a job of its own."""
    intent: float | None = None
    """When the intent was written (Unix time): SLURM is asked for jobs of the name since then."""
    submitted: float | None = None
    """When the job was submitted (Unix time)."""


def _read_object(path: Path, again: str, torn_is_none: bool = False) -> dict[str, Any] | None:
    """The JSON object in `path`; with `torn_is_none`, None when the file is missing or is not JSON (a torn write)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        if torn_is_none:
            return None
        raise SweepRecordError(f"{path} is missing or not JSON; {again}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SweepRecordError(f"{path} cannot be read ({type(error).__name__}); {again}") from None
    if not isinstance(record, dict):
        raise SweepRecordError(f"{path} is damaged: it is not a JSON object; {again}")
    return record


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_run_record(path: Path) -> RunRecord:
    """run.json read and validated; a SweepRecordError names the file and the field."""
    again = "delete it and run the `cmroberta sweep` command that made the sweep again"
    record = _read_object(path, again)
    checks = {
        "label": isinstance(record.get("label"), str),
        "seed": _is_int(record.get("seed")) and record["seed"] >= 0,
        "config_hash": isinstance(record.get("config_hash"), str) and bool(record["config_hash"]),
    }
    wrong = [name for name, fine in checks.items() if not fine]
    if wrong:
        raise SweepRecordError(f"{path} is damaged: its {wrong[0]} is missing or not what the sweep writes; {again}")
    return RunRecord(label=record["label"], seed=record["seed"], sweep_hash=record["config_hash"])


def read_submission(path: Path) -> SubmissionRecord | None:
    """submission.json read and validated; None when there is none, or it is torn (not JSON), as if never submitted.

    Valid JSON of the wrong shape is a SweepRecordError naming the file and the field. The repair
    it names checks the queue first: deleting the record of a job that still runs would let the
    next sweep submit the run twice.
    """
    again = (
        "check with squeue (or ps, for --cluster local) that no job of the run still runs, then delete it and run "
        "the `cmroberta sweep` command again"
    )
    record = _read_object(path, again, torn_is_none=True)
    if record is None:
        return None
    state = record.get("state", "submitted")
    checks = {
        "state": state in SUBMISSION_STATES,
        "cluster": record.get("cluster", "local") in CLUSTERS,
        "log_folder": isinstance(record.get("log_folder", ""), str),
        "job_name": isinstance(record.get("job_name"), str)
        or (record.get("job_name") is None and state != "submitting"),
        "job_id": isinstance(record.get("job_id"), (str, int)) and not isinstance(record.get("job_id"), bool)
        or (record.get("job_id") is None and state == "submitting"),
        "array_index": record.get("array_index") is None
        or (_is_int(record["array_index"]) and record["array_index"] >= 0),
        "intent": _is_time(record.get("intent")),
        "submitted": _is_time(record.get("submitted")),
    }
    wrong = [name for name, fine in checks.items() if not fine]
    if wrong:
        raise SweepRecordError(f"{path} is damaged: its {wrong[0]} is missing or not what the sweep writes; {again}")
    return SubmissionRecord(
        state=state,
        cluster=record.get("cluster", "local"),
        log_folder=record.get("log_folder", ""),
        job_name=record.get("job_name"),
        job_id=None if record.get("job_id") is None else str(record["job_id"]),
        array_index=record.get("array_index"),
        intent=record.get("intent"),
        submitted=record.get("submitted"),
    )
