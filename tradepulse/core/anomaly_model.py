"""What the anomaly refit computes: the model of one stream from its training rows.

A pure function of picklable arguments (`timed_fit`), so the runner's refit worker process
(`tradepulse.bus.refit_pool`) can run it. Unpickling that call imports this module, and this module
imports numpy and the forest only: the worker loads nothing else (no pandas, no feature core).
`tradepulse.core.anomaly` holds the determinism argument these fits take part in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tradepulse.core.iforest import IsolationForest

POOLED = "*"  # key of the single forest of a stream in pooled mode


@dataclass(frozen=True)
class FitParams:
    """How a model is fitted (`AnomalyConfig.fit_params`)."""

    n_trees: int
    contamination: float
    per_ticker: bool
    seed: int


@dataclass(frozen=True)
class AnomalyModel:
    """A fitted model of one stream: one forest (pooled, key "*") or one per ticker."""

    version: int
    forests: dict[str, IsolationForest]
    thresholds: dict[str, float]
    stats: dict[str, tuple[np.ndarray, np.ndarray]]  # ticker -> (mean, std) of its training rows


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x - mean) / std


def training_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature of a ticker's training rows; a std that is zero for the feature's scale
    is 1, so a constant feature standardises to 0 instead of dividing by zero."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)


def fit_model(params: FitParams, version: int, data: dict[str, np.ndarray]) -> AnomalyModel:
    """The model of `version` on the training rows `data` (pure: same inputs, same forest), seeded with
    `params.seed + version`; each forest's threshold is the `contamination` quantile of its rows' scores."""
    stats = {t: training_stats(rows) for t, rows in data.items()}
    z = {t: standardise(rows, *stats[t]) for t, rows in data.items()}
    groups = z if params.per_ticker else {POOLED: np.concatenate(list(z.values()))}
    forests, thresholds = {}, {}
    for key, train in groups.items():
        forest = IsolationForest.fit(train, n_trees=params.n_trees, seed=params.seed + version)
        forests[key] = forest
        thresholds[key] = forest.offset(train, params.contamination)
    return AnomalyModel(version, forests, thresholds, stats)


def timed_fit(params: FitParams, version: int, data: dict[str, np.ndarray]) -> tuple[AnomalyModel, float]:
    """`fit_model` and the seconds it took (where it ran: a worker process measures its own fit)."""
    started = time.perf_counter()
    return fit_model(params, version, data), time.perf_counter() - started
