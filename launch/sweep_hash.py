"""The sweep hash: the 64-hex-digit key of one configuration of a sweep, seeds aside.

A sweep names its run folders by it (`launch.sweep`), `run.json` records it (under its on-disk key
`config_hash`), and a report groups run folders by it (`launch.run_groups`), so a sweep's
configurations and a report's groups are one and the same. It leaves out the seed and the keys that never
change a run's result, as `model.run_folder` defines them once (`replicate_settings`), so changing
`checkpoint.every_steps` keeps a configuration's runs. It is not the store's 12-digit
`extract.manifest.config_hash`, which keys feature extraction settings.

Sweeps made before `checkpoint` and `monitor` were left out named their run folders by
`earlier_sweep_hash`; `launch.sweep` finds those folders by it.
"""

import hashlib
import json
from typing import Any

from model.run_folder import REPLICATE_KEY, replicate_settings

# What the hash left out before `model.run_folder.RESULT_FREE_KEYS` was its one definition.
_EARLIER_IGNORED_KEYS = (REPLICATE_KEY, "runs_root")


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def sweep_hash(data: dict[str, Any]) -> str:
    """sha256 of a resolved config (as plain values) as canonical JSON, without the seed and the keys that never
    change a result."""
    return _digest(replicate_settings(data))


def earlier_sweep_hash(data: dict[str, Any]) -> str:
    """The sweep hash as sweeps made before it left out `checkpoint` and `monitor` computed it (seed and
    `runs_root` left out only): the name of their run folders."""
    return _digest({key: value for key, value in data.items() if key not in _EARLIER_IGNORED_KEYS})
