"""The volume z-score's fixed point as `tradepulse.core.features` defines it, written out for the tests'
independent references (the rounding is part of the definition, so a reference applies it too): sizes
in units of 2^-16, at most 2^24; bucket values log(1 + v) to 2^-32 (raw mode: v itself, at most 2^48
units)."""

from __future__ import annotations

import numpy as np

from tradepulse.core.features import FeatureConfig


def quantised(size: np.ndarray | float) -> np.ndarray:
    """Sizes in the z-score's fixed-point units (integers)."""
    return np.minimum(np.rint(np.asarray(size, dtype=np.float64) * 2**16), 2**40).astype(np.int64)


def bucket_value(capped_volume: np.ndarray | float, cfg: FeatureConfig) -> np.ndarray:
    """A bucket's z-score value x from its capped volume (in shares)."""
    if cfg.zscore_log_volume:
        return np.rint(np.log1p(capped_volume) * 2**32) / 2**32
    return np.minimum(capped_volume, (2**48 - 1) / 2**16)
