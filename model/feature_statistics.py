"""Standardisation of the store's features with train-only statistics, saved beside the model.

Every family is standardised column by column with the mean and standard deviation of the train
split's valid rows, with relative thresholds: a column's scale is at least 1% of its own size, and a
column whose spread is negligible next to the family's typical spread is centred but not scaled, so
no column magnifies float noise in its values. The statistics (mean and scale, whatever rule chose
the scale) are saved beside the model, so that evaluation applies exactly the same transform, to a
run trained under an older rule too. A row whose family failed in extraction (a corrupt clip) is all
zeros after standardisation, that is, the train mean: it carries no signal and no outlier.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.feature_store import FeatureStoreError, SplitArrays

# Relative thresholds keep standardisation from magnifying noise (`ColumnStatistics.fit`). A column's scale is
# at least _OWN_SIZE_RATIO times its own root mean square, so its z-scores magnify a relative error in its
# values (float32 features computed again, with other threads or on other hardware, differ by about 1e-6 of
# their size) at most 100-fold; a column that varies by less than 1% of its size, such as an encoder's
# large-offset first-token columns, is shrunk rather than blown up. A column whose spread is at most
# _TYPICAL_SPREAD_RATIO times the family's median column spread is numerically dead (1e-33 beside a typical
# 7e-3 in a text encoder's vectors, 0 in openSMILE's): it is centred and not scaled.
_OWN_SIZE_RATIO = 1e-2
_TYPICAL_SPREAD_RATIO = 1e-6
# Rows per block when computing statistics in float64: bounds the temporary to ~100 MB at MELD's widths.
_STAT_BLOCK_ROWS = 1024


@dataclass(frozen=True, kw_only=True)
class ColumnStatistics:
    """Mean and scale of each column of one family, from the train split's valid rows."""

    mean: np.ndarray
    """float32 [dim]."""
    scale: np.ndarray
    """float32 [dim]: the standard deviation, floored at 1% of the column's root mean square; 1 for a dead column
    (relative thresholds, `fit`)."""

    @classmethod
    def fit(cls, features: np.ndarray, valid: np.ndarray) -> "ColumnStatistics":
        """Two-pass mean and standard deviation in float64 over the valid rows, block by block. A column's scale
        is floored at 1% of its own size; a dead column (its spread negligible next to the typical column's)
        is centred, not scaled."""
        rows = np.flatnonzero(valid)
        dim = features.shape[1]
        if rows.size == 0:
            return cls(mean=np.zeros(dim, np.float32), scale=np.ones(dim, np.float32))
        total = np.zeros(dim, np.float64)
        for start in range(0, rows.size, _STAT_BLOCK_ROWS):
            total += features[rows[start : start + _STAT_BLOCK_ROWS]].sum(axis=0, dtype=np.float64)
        mean = total / rows.size
        squares = np.zeros(dim, np.float64)
        for start in range(0, rows.size, _STAT_BLOCK_ROWS):
            centred = features[rows[start : start + _STAT_BLOCK_ROWS]].astype(np.float64) - mean
            squares += (centred * centred).sum(axis=0)
        std = np.sqrt(squares / rows.size)
        floored = np.maximum(std, _OWN_SIZE_RATIO * np.sqrt(std * std + mean * mean))
        scale = np.where(std <= _TYPICAL_SPREAD_RATIO * np.median(std), 1.0, floored)
        return cls(mean=mean.astype(np.float32), scale=scale.astype(np.float32))

    @classmethod
    def identity(cls, dim: int) -> "ColumnStatistics":
        """Statistics that leave features unchanged (standardisation switched off)."""
        return cls(mean=np.zeros(dim, np.float32), scale=np.ones(dim, np.float32))

    def apply(self, features: np.ndarray, valid: np.ndarray, out: np.ndarray) -> None:
        """Write standardised `features` into `out` (same shape); invalid rows become zeros."""
        np.subtract(features, self.mean, out=out)
        np.divide(out, self.scale, out=out)
        out[~valid] = 0.0


@dataclass(frozen=True, kw_only=True)
class FeatureStatistics:
    """Standardisation of every family a model reads; saved with the model as one .npz file."""

    families: dict[str, ColumnStatistics]
    """Family name -> its column statistics."""

    def save(self, path: Path) -> Path:
        """Write `<family>.mean` and `<family>.scale` arrays to `path` (an .npz file)."""
        path = Path(path)
        arrays = {}
        for family, stats in self.families.items():
            arrays[f"{family}.mean"] = stats.mean
            arrays[f"{family}.scale"] = stats.scale
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as stream:
            np.savez(stream, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "FeatureStatistics":
        """Read statistics written by `save`; a missing or damaged file is a FeatureStoreError."""
        path = Path(path)
        try:
            with np.load(path) as arrays:
                names = sorted({name.rsplit(".", 1)[0] for name in arrays.files})
                families = {
                    name: ColumnStatistics(mean=arrays[f"{name}.mean"], scale=arrays[f"{name}.scale"]) for name in names
                }
        except (OSError, KeyError, ValueError) as error:
            raise FeatureStoreError(
                f"standardisation statistics {path} cannot be read ({error}); retrain the run to rewrite them"
            ) from None
        return cls(families=families)


def fit_statistics(train: SplitArrays, families: Sequence[str], standardize: bool) -> FeatureStatistics:
    """Column statistics of each family over the train split's valid rows (identity if not `standardize`)."""
    statistics = {}
    for family in families:
        features, valid = train.features[family], train.valid[family]
        if not standardize:
            statistics[family] = ColumnStatistics.identity(features.shape[1])
            continue
        stats = ColumnStatistics.fit(features, valid)
        # A NaN or infinity anywhere in a column's valid rows makes its mean or scale non-finite.
        if not (np.isfinite(stats.mean).all() and np.isfinite(stats.scale).all()):
            raise FeatureStoreError(
                f"family {family!r} of the train split has NaN or infinite values in rows marked valid; "
                "re-run `cmroberta extract` to rebuild the store"
            )
        statistics[family] = stats
    return FeatureStatistics(families=statistics)
