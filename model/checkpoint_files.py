"""A checkpoint's files as bytes on disk: plain state that a weights-only load accepts, written so that a full
disk is the OSError it is.

`model.checkpoint` decides what a checkpoint holds and where; this module only converts and writes.
DeepSpeed's optimizer state holds objects, enums and named tuples, which a weights-only `torch.load`
refuses: `plain_state` turns them into their fields before saving, and `rebuild_like` rebuilds them
on the live optimizer's own objects after loading. `file_record` is what the checkpoint's manifest
records of each file (size and SHA-256).
"""

import copy
import enum
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from cluster.durable_files import atomic_write_bytes, file_sha256, publish, unique_temp_path


def file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}



def plain_state(value: Any, where: str) -> Any:
    """`value` as tensors, containers, numbers and strings only, which a weights-only load accepts.

    DeepSpeed's optimizer state holds its loss scaler as an object, the ZeRO stage as an enum and
    parameter fragments as named tuples; they become their fields, a number and a list.
    """
    if value is None or isinstance(value, (bool, str, torch.Tensor, torch.dtype, torch.Size)):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, dict):
        return {key: plain_state(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return [plain_state(item, where) for item in value]
    if isinstance(value, (list, tuple)):
        return type(value)(plain_state(item, where) for item in value)
    if hasattr(value, "__dict__"):
        return {key: plain_state(item, f"{where}.{key}") for key, item in vars(value).items()}
    raise TypeError(f"{where} holds a {type(value).__name__}, which a checkpoint cannot store without pickling")



def rebuild_like(saved: Any, live: Any) -> Any:
    """`saved` (from `plain_state`) rebuilt in the types of the live optimizer's state `live`."""
    if isinstance(live, enum.Enum):
        return type(live)(saved)
    if isinstance(live, tuple) and hasattr(live, "_fields") and isinstance(saved, list):
        return type(live)(*saved)
    if isinstance(live, dict) and isinstance(saved, dict):
        return type(live)((key, rebuild_like(item, live.get(key))) for key, item in saved.items())
    if isinstance(live, list) and isinstance(saved, list) and len(live) == len(saved):
        return [rebuild_like(item, template) for item, template in zip(saved, live)]
    if hasattr(live, "__dict__") and not isinstance(live, torch.Tensor) and isinstance(saved, dict):
        rebuilt = copy.copy(live)
        vars(rebuilt).update(saved)
        return rebuilt
    return saved



class _WriteErrorKept:
    """A binary file whose first failed write is kept: torch's zip writer turns it into 'unexpected pos'."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.stream.flush()



def save_torch(obj: Any, path: Path) -> None:
    """torch.save through Python's own file writes, so that a full disk is the OSError it is (ENOSPC), naming `path`."""
    temp = unique_temp_path(path)
    try:
        with open(temp, "wb") as stream:
            kept = _WriteErrorKept(stream)
            try:
                torch.save(obj, kept)
            except RuntimeError:
                if kept.error is None:
                    raise
                raise kept.error from None
        publish(temp, path)
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        temp.unlink(missing_ok=True)



def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """The module's weights as a safetensors file at `path`, written atomically."""

    # Copies: ZeRO's parameters are views of one flat buffer, which safetensors refuses as shared memory.
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()}
    # Serialised in memory and written by Python: safetensors' own writer reports a full disk as a
    # SafetensorError, not as the OSError that names the errno and the file.
    atomic_write_bytes(path, save(tensors))

