"""The run folder's checkpoints: their format, rotation and fallback.

Training, evaluation and `cmroberta verify` (`model.run_folder.RunFolder.verify`) all read checkpoints through
this module, handed the run folder's `checkpoints/` by `model.run_folder.RunFolder`. It is handed what it saves
(an engine, the loop's JSON state, a rank's tensors) and imports neither the training loop, the run config nor
the run folder; converting and writing the files is
`model.checkpoint_files`, a signal's request to checkpoint and stop is `model.checkpoint_request`. Nothing
in one is unpickled: DeepSpeed's own `load_checkpoint` calls `torch.load(weights_only=False)`, which
runs any code a file holds, so the state a resume needs is saved and loaded here instead.

A checkpoint is a folder `checkpoints/<tag>/`:

    model.safetensors   the module's weights, whole (rank 0 writes it; ZeRO 1-2 keep whole weights on every rank)
    rank-NNNNN.pt       one per rank: its torch RNG state and its share of the epoch's loss so far, and the
                        optimizer and learning-rate schedule state it owns (its own ZeRO partition; without
                        ZeRO only rank 0's file carries them). Tensors, containers and numbers only, read back
                        with `torch.load(weights_only=True)`: DeepSpeed's loss-scaler object and enums are
                        stored as their plain fields and rebuilt on the live optimizer's own objects.
    checkpoint.json     written last, by rank 0: the loop's state (JSON), DeepSpeed's step counters, the world
                        size and ZeRO stage, and the size and SHA-256 of every file above. A folder without it
                        is an interrupted save.

`checkpoints/progress.json` names the checkpoints that count: the two latest (newest first) and the one
with the best dev loss. It is rewritten only after a checkpoint is complete, and folders it does not
name are removed, so while it trains the run keeps the last two checkpoints and the best one; once it has
been tested, only the best is kept (`keep_only_best`), the one its scores come from. It is validated when
read; without it, the checkpoints' own checkpoint.json files say which is latest and best.

Resuming tries the latest checkpoint, then the previous one, then the best: a damaged one (missing,
truncated, garbage, a checksum that does not match, anything a weights-only load refuses) is passed
over with a warning that names the damaged file. Every rank checks the files it reads and the ranks
agree, so all of them load the same checkpoint.
"""

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from cluster.durable_files import atomic_write_json, file_sha256, is_temp_file
from cluster.pause_points import pause_point
from model.checkpoint_files import file_record, plain_state, rebuild_like, save_torch, save_weights

log = logging.getLogger(__name__)

PROGRESS_NAME = "progress.json"
MANIFEST_NAME = "checkpoint.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = 1
KEEP_LATEST = 2
"""Latest checkpoints kept besides the best: two, so a damaged latest one has a good one behind it."""
_TAG = re.compile(r"^epoch-\d{4,}(-step-\d{5,})?$")


class RunFolderError(Exception):
    """A run folder that cannot be used as asked: already holds a run, is in use, holds no trained model,
    or holds a checkpoint that cannot be loaded. The message names the file and the fix."""


class NonFiniteLossError(RunFolderError):
    """The loss became NaN or infinite; the run stops at the last good checkpoint."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """When training checkpoints, besides the end of every epoch."""

    every_steps: int = 0
    """Also checkpoint after every this many optimizer steps (0: at epoch ends only). A job that is
    killed without warning then loses at most this many steps; a requeue signal always checkpoints
    the step in progress first."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be 0 (epoch ends only) or positive, not {self.every_steps}")


def checkpoint_tag(epoch: int, step: int | None = None) -> str:
    """`epoch-0003` after epoch 3; `epoch-0004-step-00012` after 12 optimizer steps of epoch 4."""
    return f"epoch-{epoch:04d}" if step is None else f"epoch-{epoch:04d}-step-{step:05d}"


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


@dataclass(kw_only=True)
class Progress:
    """progress.json: which checkpoints count."""

    latest: list[str]
    """The latest checkpoints, newest first (at most KEEP_LATEST)."""
    best: str | None
    """The checkpoint of the epoch with the lowest dev loss; None before an epoch has ended."""
    best_epoch: int
    """That epoch (0 before an epoch has ended)."""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "latest": self.latest, "best": self.best, "best_epoch": self.best_epoch}

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "Progress":
        """Validate progress.json's content; a RunFolderError names what is wrong."""

        def invalid(what: str) -> RunFolderError:
            return RunFolderError(
                f"{path} is not valid ({what}); remove it and resume the run with `cmroberta train ... --resume`, "
                "which rebuilds it from the checkpoints"
            )

        if not isinstance(data, dict):
            raise invalid("not a JSON object")
        if data.get("format") != FORMAT:
            raise invalid(f"format {data.get('format')!r}, expected {FORMAT}")
        latest, best, best_epoch = data.get("latest"), data.get("best"), data.get("best_epoch")
        if not isinstance(latest, list) or not 1 <= len(latest) <= KEEP_LATEST:
            raise invalid(f"'latest' must be a list of 1 to {KEEP_LATEST} checkpoint names")
        for tag in [*latest, *([] if best is None else [best])]:
            if not isinstance(tag, str) or not _TAG.match(tag):
                raise invalid(f"{tag!r} is not a checkpoint name")
        if type(best_epoch) is not int or best_epoch < 0:
            raise invalid("'best_epoch' must be a whole number, 0 or more")
        if (best is None) != (best_epoch == 0) or (best is not None and best != checkpoint_tag(best_epoch)):
            raise invalid(f"'best' {best!r} does not match 'best_epoch' {best_epoch}")
        return cls(latest=latest, best=best, best_epoch=best_epoch)

    def kept(self) -> list[str]:
        """Every checkpoint this names, newest first."""
        return list(dict.fromkeys([*self.latest, *([self.best] if self.best else [])]))


@dataclass(kw_only=True)
class Restored:
    """What a checkpoint gave back to the training loop besides the engine's state."""

    tag: str
    """The checkpoint loaded."""
    client_state: dict[str, Any]
    """The loop's JSON state, as saved."""
    rank_state: dict[str, torch.Tensor]
    """This rank's tensors, as saved (its share of the epoch's loss)."""


class CheckpointDamagedError(Exception):
    """One checkpoint cannot be loaded; the message names the file and why."""


def require_supported(engine: Any) -> None:
    """Refuse, before any step is lost, an engine whose state this format cannot hold yet."""
    if engine.zero_optimization_partition_weights():
        raise RunFolderError(
            "ZeRO stage 3 partitions the weights, which these checkpoints cannot hold yet; train with ZeRO stage 2"
        )


def _partitioned(engine: Any) -> bool:
    """Whether each rank holds its own part of the optimizer state (ZeRO, DeepSpeed's bf16 optimizer).

    Such optimizers also load from a list of per-rank state dicts.
    """
    # deferred: deepspeed takes seconds to import, and readers of a run folder (verify, report) need none of it
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    return isinstance(engine.optimizer, ZeROOptimizer)


def _owns_optimizer_state(engine: Any, rank: int) -> bool:
    """Whether this rank's file carries optimizer state: its own part when partitioned, else rank 0's copy."""
    return engine.optimizer is not None and (_partitioned(engine) or rank == 0)


def _device_rng(device: torch.device) -> torch.Tensor | None:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


class Checkpoints:
    """The checkpoints of one run folder, seen from one rank of the job that trains or evaluates it."""

    def __init__(self, folder: Path, rank: int = 0, world_size: int = 1):
        """`folder` is the run folder's checkpoints folder, as `model.run_folder.RunFolder` names it."""
        self.folder = Path(folder)
        # The run folder that holds the checkpoints, named in messages.
        self.run_dir = self.folder.parent
        self.progress_path = self.folder / PROGRESS_NAME
        self.rank = rank
        self.world_size = world_size

    # --- which checkpoints count ---------------------------------------------------------------------

    def progress(self) -> Progress | None:
        """progress.json, validated; rebuilt from the checkpoints when it is absent; None before any checkpoint."""
        if self.progress_path.is_file():
            try:
                data = json.loads(self.progress_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RunFolderError(
                    f"{self.progress_path} cannot be read ({type(error).__name__}: {error}); remove it and resume "
                    "the run with `cmroberta train ... --resume`, which rebuilds it from the checkpoints"
                ) from None
            return Progress.from_json(data, self.progress_path)
        return self._progress_from_manifests()

    def _progress_from_manifests(self) -> Progress | None:
        """The latest and best checkpoints, as the complete checkpoints' own manifests record them."""
        found = []
        for folder in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            try:
                manifest = self.manifest(folder.name)
            except CheckpointDamagedError:
                continue
            found.append((manifest["engine"]["global_steps"], manifest["end_of_epoch"], folder.name, manifest))
        if not found:
            return None
        found.sort(key=lambda item: item[:3], reverse=True)
        newest = found[0][3]
        return Progress(
            latest=[tag for *_, tag, _ in found[:KEEP_LATEST]], best=newest["best"], best_epoch=newest["best_epoch"]
        )

    # --- saving ----------------------------------------------------------------------------------------

    def save(
        self,
        engine: Any,
        tag: str,
        *,
        client_state: dict[str, Any],
        rank_state: dict[str, torch.Tensor],
        end_of_epoch: bool,
        best_epoch: int,
    ) -> None:
        """Write checkpoint `tag` (every rank writes its file, then rank 0 the manifest), then point progress.json
        at it.

        `client_state` is the loop's JSON state; `rank_state` this rank's own tensors; `best_epoch` the
        epoch whose checkpoint is the best so far (0: none yet).
        """
        require_supported(engine)
        folder = self.folder / tag
        folder.mkdir(parents=True, exist_ok=True)
        own: dict[str, Any] = {
            "rng": torch.get_rng_state(),
            "device_rng": _device_rng(engine.device),
            "tensors": {name: tensor.detach().cpu() for name, tensor in rank_state.items()},
        }
        if _owns_optimizer_state(engine, self.rank):
            own["optimizer"] = plain_state(engine.optimizer.state_dict(), "optimizer state")
            if engine.lr_scheduler is not None:
                own["lr_scheduler"] = plain_state(engine.lr_scheduler.state_dict(), "learning-rate schedule state")
        save_torch(own, folder / _rank_file(self.rank))
        records = {_rank_file(self.rank): file_record(folder / _rank_file(self.rank))}
        if self.rank == 0:
            save_weights(engine.module.state_dict(), folder / WEIGHTS_NAME)
            records[WEIGHTS_NAME] = file_record(folder / WEIGHTS_NAME)
        if self.world_size > 1:
            gathered: list[dict[str, Any]] = [{} for _ in range(self.world_size)]
            dist.all_gather_object(gathered, records)
            records = {name: record for part in gathered for name, record in part.items()}
        if self.rank != 0:
            return
        best = checkpoint_tag(best_epoch) if best_epoch else None
        manifest = {
            "format": FORMAT,
            "tag": tag,
            "end_of_epoch": end_of_epoch,
            "world_size": self.world_size,
            "zero_stage": int(engine.zero_optimization_stage()),
            "best": best,
            "best_epoch": best_epoch,
            "engine": {
                "global_steps": engine.global_steps,
                "global_samples": engine.global_samples,
                "skipped_steps": engine.skipped_steps,
                "micro_steps": engine.micro_steps,
            },
            "client_state": client_state,
            "files": dict(sorted(records.items())),
        }
        atomic_write_json(folder / MANIFEST_NAME, manifest)
        previous = self.progress()
        latest = [tag, *[t for t in (previous.latest if previous else []) if t != tag]][:KEEP_LATEST]
        progress = Progress(latest=latest, best=best, best_epoch=best_epoch)
        atomic_write_json(self.progress_path, progress.to_json())
        self._prune(set(progress.kept()))
        pause_point(f"checkpoint-saved-{tag}")

    def _prune(self, keep: set[str]) -> None:
        """Remove checkpoint folders other than `keep`: older ones and leftovers of interrupted saves."""
        for path in self.folder.iterdir():
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
            elif is_temp_file(path):
                path.unlink(missing_ok=True)

    def keep_only_best(self) -> None:
        """At the end of a run: drop every checkpoint but the best, which the run's scores come from."""
        progress = self.progress()
        if progress is None or progress.best is None:
            return
        atomic_write_json(self.progress_path, Progress(latest=[progress.best], best=progress.best,
                                                       best_epoch=progress.best_epoch).to_json())
        self._prune({progress.best})

    # --- reading ---------------------------------------------------------------------------------------

    def manifest(self, tag: str) -> dict[str, Any]:
        """Checkpoint `tag`'s checkpoint.json, validated; CheckpointDamagedError names what is wrong."""
        path = self.folder / tag / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointDamagedError(f"{path} is missing (the save was interrupted)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointDamagedError(f"{path} cannot be read ({type(error).__name__})") from None
        expected = {"format": int, "tag": str, "end_of_epoch": bool, "world_size": int, "zero_stage": int,
                    "best_epoch": int, "engine": dict, "client_state": dict, "files": dict}
        if not isinstance(manifest, dict) or any(not isinstance(manifest.get(k), t) for k, t in expected.items()):
            raise CheckpointDamagedError(f"{path} is not a checkpoint manifest of this project")
        if manifest["format"] != FORMAT or manifest["tag"] != tag:
            raise CheckpointDamagedError(f"{path} has format {manifest['format']} and tag {manifest['tag']!r}, "
                                         f"expected format {FORMAT} and tag {tag!r}")
        for name, record in manifest["files"].items():
            if not (isinstance(record, dict) and isinstance(record.get("bytes"), int)
                    and isinstance(record.get("sha256"), str)) or "/" in name:
                raise CheckpointDamagedError(f"{path} lists file {name!r} without its size and checksum")
        if WEIGHTS_NAME not in manifest["files"]:
            raise CheckpointDamagedError(f"{path} lists no {WEIGHTS_NAME}")
        return manifest

    def checked_weights(self, tag: str) -> Path:
        """Checkpoint `tag`'s weights file, once its manifest validates and its size and checksum match."""
        return self._checked(tag, self.manifest(tag), WEIGHTS_NAME)

    def _checked(self, tag: str, manifest: dict[str, Any], name: str) -> Path:
        """The path of `name` in checkpoint `tag`, once its size and checksum match the manifest's."""
        path = self.folder / tag / name
        record = manifest["files"].get(name)
        if record is None:
            raise CheckpointDamagedError(f"{self.folder / tag / MANIFEST_NAME} does not list {name}")
        if not path.is_file():
            raise CheckpointDamagedError(f"{path} is missing")
        if path.stat().st_size != record["bytes"]:
            raise CheckpointDamagedError(f"{path} has {path.stat().st_size} bytes, not the {record['bytes']} saved "
                                         "(truncated or overwritten)")
        if file_sha256(path) != record["sha256"]:
            raise CheckpointDamagedError(f"{path} does not match its checksum (damaged or overwritten)")
        return path

    def _read_tensors(self, path: Path) -> dict[str, Any]:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointDamagedError(
                f"{path} is not a checkpoint file of this project; a weights-only load refuses it "
                f"({type(error).__name__}: {first_line[:160]})"
            ) from None
        if not isinstance(data, dict):
            raise CheckpointDamagedError(f"{path} does not hold a rank's checkpoint state")
        return data

    def read_weights(self, tag: str, manifest: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """The module weights of checkpoint `tag`, checked against its manifest; CheckpointDamagedError if damaged."""
        manifest = manifest if manifest is not None else self.manifest(tag)
        path = self._checked(tag, manifest, WEIGHTS_NAME)
        try:
            return load_file(str(path))
        except Exception as error:
            raise CheckpointDamagedError(f"{path} is not a safetensors file ({type(error).__name__})") from None

    def check_rank_files(self, tag: str, manifest: dict[str, Any]) -> None:
        """Every rank file of checkpoint `tag` (the optimizer, schedule and RNG state a resume reads) checked
        against `manifest` and loaded weights-only; CheckpointDamagedError names the first damaged one."""
        for name in manifest["files"]:
            if name.endswith(".pt"):
                self._read_tensors(self._checked(tag, manifest, name))

    def load_weights(self, tag: str) -> dict[str, torch.Tensor]:
        """The weights of checkpoint `tag`, for evaluation; a one-line RunFolderError when it is damaged."""
        try:
            return self.read_weights(tag)
        except CheckpointDamagedError as error:
            raise RunFolderError(f"checkpoint {tag} of run {self.run_dir} cannot be used: {error}; train the run "
                                 "again in a new folder") from None

    def _read(self, tag: str, engine: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict, dict | None]:
        """Checkpoint `tag`'s manifest, weights, this rank's file and the file holding its optimizer state."""
        manifest = self.manifest(tag)
        resumes_mid_epoch = not manifest["end_of_epoch"]
        if manifest["world_size"] != self.world_size and (_partitioned(engine) or resumes_mid_epoch):
            raise CheckpointDamagedError(
                f"{self.folder / tag} was saved by {manifest['world_size']} ranks; resume it on that many "
                f"(ZeRO partitions and a part-done epoch are per rank), not {self.world_size}"
            )
        if manifest["zero_stage"] != int(engine.zero_optimization_stage()):
            raise CheckpointDamagedError(f"{self.folder / tag} was saved with ZeRO stage {manifest['zero_stage']}")
        weights = self.read_weights(tag, manifest)
        own_name = _rank_file(self.rank) if self.rank < manifest["world_size"] else None
        own = self._read_tensors(self._checked(tag, manifest, own_name)) if own_name else {}
        optimizer_holder = own
        if engine.optimizer is not None and not _owns_optimizer_state(engine, self.rank):
            optimizer_holder = self._read_tensors(self._checked(tag, manifest, _rank_file(0)))
        if engine.optimizer is not None and "optimizer" not in optimizer_holder:
            raise CheckpointDamagedError(f"{self.folder / tag} holds no optimizer state for rank {self.rank}")
        return manifest, weights, own, optimizer_holder

    def restore(self, engine: Any) -> Restored | None:
        """Load the newest good checkpoint into `engine` (weights, optimizer, schedule, counters, RNG).

        Damaged ones are passed over with a warning naming the file; None when there is no checkpoint;
        a one-line RunFolderError when none of them can be loaded.
        """
        progress = self.progress()
        if progress is None:
            return None
        failures = []
        for tag in progress.kept():
            try:
                read = self._read(tag, engine)
                reason = ""
            except CheckpointDamagedError as error:
                read, reason = None, str(error)
            if not self._all_ranks_agree(read is not None, engine.device):
                reason = reason or "another rank could not read its part"
                log.warning("checkpoint %s cannot be loaded, passing over it: %s", tag, reason)
                failures.append(f"{tag}: {reason}")
                continue
            manifest, weights, own, optimizer_holder = read
            self._apply(engine, manifest, weights, own, optimizer_holder)
            if failures:
                log.warning("resuming from checkpoint %s, the newest good one", tag)
            return Restored(tag=tag, client_state=manifest["client_state"], rank_state=own.get("tensors", {}))
        raise RunFolderError(
            f"no checkpoint of run {self.run_dir} can be loaded ({'; '.join(failures)}); train the run again in a "
            "new folder"
        )

    def _all_ranks_agree(self, ok: bool, device: torch.device) -> bool:
        if self.world_size == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _apply(self, engine: Any, manifest: dict, weights: dict, own: dict, optimizer_holder: dict) -> None:
        engine.load_module_state_dict({"module": weights}, strict=True)
        optimizer = engine.optimizer
        if optimizer is not None:
            state = rebuild_like(optimizer_holder["optimizer"], optimizer.state_dict())
            if _partitioned(engine):
                # DeepSpeed reads the list entry of this rank's own partition; the others stay unread.
                states = [None] * self.world_size
                states[self.rank] = state
                optimizer.load_state_dict(
                    state_dict_list=states,
                    load_optimizer_states=True,
                    load_from_fp32_weights=engine.zero_load_from_fp32_weights(),
                )
            elif engine.fp16_enabled() or engine.bfloat16_enabled():
                optimizer.load_state_dict(state, load_optimizer_states=True)
            else:
                optimizer.load_state_dict(state)
            if engine.lr_scheduler is not None:
                engine.lr_scheduler.load_state_dict(optimizer_holder["lr_scheduler"])
        counters = manifest["engine"]
        engine.global_steps = counters["global_steps"]
        engine.global_samples = counters["global_samples"]
        engine.skipped_steps = counters["skipped_steps"]
        engine.micro_steps = counters["micro_steps"]
        if "rng" in own:
            torch.set_rng_state(own["rng"])
        if own.get("device_rng") is not None and engine.device.type == "cuda":
            torch.cuda.set_rng_state(own["device_rng"], engine.device)
