"""The readers of the runner heartbeat: the status files (local) and the hot store (AWS).

The heartbeat's fields, where each runner publishes it and how /health judges it are the contract in
the docstring of `tradepulse.api.health`, which combines what these sources return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tradepulse.bus.heartbeat import status_files, status_path
from tradepulse.config import Settings
from tradepulse.stores.base import HotStore


class RunnerStatus(BaseModel):
    """The runner heartbeat (see the module docstring for the contract)."""

    model_config = ConfigDict(extra="allow")

    updated_at: float | None = None
    last_commit_at: float
    consumer_lag: int = 0
    events_processed: int = 0
    events_per_s: float = 0.0
    write_p99_ms: float | None = None
    backpressure_activations: int = 0
    unknown_conditions: int = 0
    dlq_depth: int = 0
    e2e_latency_p50_ms: float | None = None
    e2e_latency_p99_ms: float | None = None
    batch_p99_ms: float | None = None
    outliers: dict[str, int] = Field(default_factory=dict)  # suspect trades flagged per reason, since start
    bar_checks: dict[str, int] = Field(default_factory=dict)  # ticker-minutes reconciled per status
    bar_mismatch_fields: dict[str, int] = Field(default_factory=dict)  # bar mismatches per field

    stopped_at: float | None = None

    @property
    def heartbeat_at(self) -> float:
        return self.updated_at if self.updated_at is not None else self.last_commit_at


def newest(statuses: dict[str, RunnerStatus]) -> RunnerStatus | None:
    return max(statuses.values(), key=lambda s: s.heartbeat_at, default=None)


class RunnerStatusSource(Protocol):
    component: str
    """The component /health reports down when `read_all` raises: "runner" (files) or "hot_store"."""

    def read_all(self) -> dict[str, RunnerStatus]:
        """instance → latest heartbeat, of every runner instance that reported ({} if none). May raise
        when its backing component fails."""


def runner_status_path(settings: Settings) -> Path:
    """The heartbeat file of the (first) runner under `settings.data_dir`."""
    return status_path(settings.data_dir)


class FileRunnerStatusSource:
    """Reads `<data_dir>/runner-status.json` (instance "0", the given `path`) and the
    `runner-status-<instance>.json` files beside it; a missing or malformed file reads as no heartbeat,
    any other read error (permissions, a directory in its place) raises."""

    component = "runner"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read_all(self) -> dict[str, RunnerStatus]:
        paths = {"0": self.path} | {i: p for i, p in status_files(self.path.parent).items() if i != "0"}
        statuses: dict[str, RunnerStatus] = {}
        for instance, path in paths.items():
            try:
                statuses[instance] = RunnerStatus.model_validate_json(path.read_bytes())
            except (FileNotFoundError, ValidationError):
                continue
        return statuses

    def read(self) -> RunnerStatus | None:
        """The newest heartbeat of any instance (None if none reported)."""
        return newest(self.read_all())


class HotStoreRunnerStatusSource:
    """Reads the heartbeats the runners put in the hot store (AWS: DynamoDB items, all instances with one
    query); store errors raise."""

    component = "hot_store"

    def __init__(self, hot_store: HotStore) -> None:
        self._store = hot_store

    def read_all(self) -> dict[str, RunnerStatus]:
        statuses: dict[str, RunnerStatus] = {}
        for instance, document in self._store.get_runner_statuses().items():
            try:
                statuses[instance] = RunnerStatus.model_validate(document)
            except ValidationError:
                continue
        return statuses

    def read(self) -> RunnerStatus | None:
        """The newest heartbeat of any instance (None if none reported)."""
        return newest(self.read_all())
