"""The sweep hash: the 64-hex-digit key of one configuration of a sweep, seeds aside.

A sweep names its run folders by it (`launch.sweep`), `run.json` records it (under its on-disk key
`config_hash`), and a report groups run folders by it (`launch.run_groups`), so a sweep's
configurations and a report's groups are one and the same. It is not the store's 12-digit
`extract.manifest.config_hash`, which keys feature extraction settings.
"""

import hashlib
import json
from collections.abc import Sequence
from typing import Any

# Keys that do not change a run's result, left out of its hash.
HASH_IGNORED_KEYS = ("seed", "runs_root")


def sweep_hash(data: dict[str, Any], ignored: Sequence[str] = HASH_IGNORED_KEYS) -> str:
    """sha256 of a resolved config (as plain values) as canonical JSON, without the top-level keys in `ignored`."""
    kept = {key: value for key, value in data.items() if key not in ignored}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()
