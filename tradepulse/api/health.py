"""Pipeline health from real signals: the runner's heartbeat, a Kafka metadata round trip, hot-store latency.

## Runner-status contract (written by `tradepulse/bus/runner.py`, read here)

After every committed micro-batch (at most once per second) and while idle, the runner publishes one JSON
object describing itself (`tradepulse.bus.status.RunnerMetrics.snapshot()` builds it):

    {
      "updated_at": 1764000000.5,       # epoch s, when this heartbeat was written (required)
      "last_commit_at": 1764000000.4,   # epoch s of the last successful offset commit (required;
                                        #   the runner's start time until its first commit)
      "consumer_lag": 1234,             # Σ over assigned partitions of high watermark − position
      "events_processed": 987654,       # monotonically increasing since the runner started
      "events_per_s": 4100.0,           # recent throughput (over the last ~10 s)
      "write_p99_ms": 12.5,             # p99 of recent hot-store write_batch latencies
      "backpressure_activations": 3,    # times consumption was paused for a slow sink, since start
      "dlq_depth": 0,                   # dead letters pending
      "batch_p99_ms": 9.0,              # optional: one micro-batch, p99
      "e2e_latency_p99_ms": 85.0,       # optional: receive → hot store, p99
      ...                               # any other fields: accepted and ignored
    }

- Locally the runner writes it atomically to `<data_dir>/runner-status.json`
  (`tradepulse.bus.status.status_path` + `write_json_atomic`: temp file + `os.replace`), so a reader never
  sees half a file. Additional runner instances write `runner-status-<n>.json`; /health reads instance 0.
- In AWS (no shared disk between the ECS runner and the Lambda API) the same object also goes to the hot
  store: `DynamoHotStore.put_runner_status(status, instance)` / `get_runner_status(instance) -> dict | None`
  (optional methods beyond the HotStore protocol, SQLite has none). The runner always publishes through
  `tradepulse.bus.status.publish_status` (file, plus the store when it has `put_runner_status`); the API
  reads the store when `hot_store == "dynamodb"` (`HotStoreRunnerStatusSource`), else the file.

Consumer lag comes from the runner's own view (its consumer knows positions and high watermarks for
free); computing it here from committed offsets would cost two admin round trips per check.

## Rules
- unhealthy (HTTP 503): no heartbeat at all, the heartbeat is older than `health_commit_stale_s`
  (runner dead or hung), the runner has not committed for `health_commit_stale_s` while it has lag
  (stuck; an idle, caught-up runner has nothing to commit and is fine), or the broker is unreachable.
  Also when reading the heartbeat raises (DynamoDB unavailable, an unreadable file): the component that
  failed (`hot_store`, or `runner` for the file) is `down` with the exception's class in `error` (never its
  message, which may name endpoints or credentials), and the runner's state is `unknown`.
- degraded: consumer lag > `health_lag_degraded` or hot-store write p99 > `health_write_p99_degraded_ms`.
- healthy otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from tradepulse.api.responses import ComponentHealth, HealthResponse, iso_ms
from tradepulse.bus.status import status_path
from tradepulse.config import Settings

BROKER_TIMEOUT_S = 1.0
BROKER_CACHE_S = 3.0

log = logging.getLogger(__name__)
# librdkafka reports every failed connect attempt; /health already says the broker is down, so keep the
# client's own log quiet instead of flooding the API's stderr while the broker is away.
_rdkafka_log = logging.getLogger("tradepulse.api.broker_probe")
_rdkafka_log.setLevel(logging.CRITICAL)


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
    dlq_depth: int = 0
    e2e_latency_p99_ms: float | None = None
    batch_p99_ms: float | None = None

    @property
    def heartbeat_at(self) -> float:
        return self.updated_at if self.updated_at is not None else self.last_commit_at


class RunnerStatusSource(Protocol):
    def read(self) -> RunnerStatus | None:
        """The latest heartbeat, or None if the runner has never reported. May raise when its backing
        component fails; a source may name that component in a `component` attribute (default: runner)."""


def error_name(exc: BaseException) -> str:
    """The exception's class, plus the AWS error code of a botocore ClientError when the class does not
    already say it (modeled errors such as ResourceNotFoundException do); never its message."""
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return f"{name} ({code})" if code and code != name else name


def runner_status_path(settings: Settings) -> Path:
    """The heartbeat file of the (first) runner under `settings.data_dir`."""
    return status_path(settings.data_dir)


class FileRunnerStatusSource:
    """Reads `<data_dir>/runner-status.json`; a missing or malformed file reads as no heartbeat, any other
    read error (permissions, a directory in its place) raises."""

    component = "runner"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> RunnerStatus | None:
        try:
            return RunnerStatus.model_validate_json(self.path.read_bytes())
        except (FileNotFoundError, ValidationError):
            return None


class HotStoreRunnerStatusSource:
    """Reads the heartbeat the runner put in the hot store (AWS: DynamoDB item); store errors raise."""

    component = "hot_store"

    def __init__(self, hot_store: Any) -> None:
        self._store = hot_store

    def read(self) -> RunnerStatus | None:
        getter = getattr(self._store, "get_runner_status", None)
        if getter is None:
            return None
        raw = getter()
        try:
            return RunnerStatus.model_validate(raw) if raw else None
        except ValidationError:
            return None


@dataclass(frozen=True)
class BrokerCheck:
    reachable: bool
    detail: str
    latency_ms: float | None = None


class BrokerProbe:
    """A Kafka metadata request (≤ 1 s timeout), cached for a few seconds so /health stays cheap."""

    def __init__(
        self, settings: Settings, *, cache_s: float = BROKER_CACHE_S, clock: Any = time.monotonic
    ) -> None:
        self._settings = settings
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._admin: Any = None
        self._cached: tuple[float, BrokerCheck] | None = None

    def check(self) -> BrokerCheck:
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self._cache_s:
                return self._cached[1]
            result = self._probe()
            self._cached = (self._clock(), result)
            return result

    def _probe(self) -> BrokerCheck:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from tradepulse.bus.clients import NoBrokerError, base_config

        try:
            if self._admin is None:
                self._admin = AdminClient(
                    base_config(self._settings)
                    | {"socket.connection.setup.timeout.ms": 1000, "logger": _rdkafka_log}
                )
            started = time.perf_counter()
            metadata = self._admin.list_topics(timeout=BROKER_TIMEOUT_S)
            latency_ms = (time.perf_counter() - started) * 1000
        except NoBrokerError as exc:
            return BrokerCheck(False, str(exc))
        except KafkaException as exc:
            return BrokerCheck(False, f"metadata request failed: {exc.args[0] if exc.args else exc}")
        return BrokerCheck(
            True, f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topic(s)", round(latency_ms, 3)
        )


class HealthChecker:
    """Combines the signals into the /health answer."""

    def __init__(
        self,
        settings: Settings,
        runner: RunnerStatusSource,
        broker: BrokerProbe | None,
        hot_store: Any,
        *,
        dlq: Any = None,
        wall_clock: Any = time.time,
        monotonic: Any = time.monotonic,
    ) -> None:
        self._settings = settings
        self._dlq = dlq
        self._dlq_cached: tuple[float, int | None] | None = None
        self.runner_source = runner
        self._broker = broker
        self._store = hot_store
        self._wall = wall_clock
        self._monotonic = monotonic
        self._started = monotonic()

    def runner_status(self) -> RunnerStatus | None:
        return self.runner_source.read()

    def read_runner_status(self) -> tuple[RunnerStatus | None, BaseException | None]:
        """The heartbeat, or the exception its source raised (a failing store must not fail /health)."""
        try:
            return self.runner_status(), None
        except Exception as exc:
            component = getattr(self.runner_source, "component", "runner")
            log.warning("runner status unreadable (%s failed)", component, exc_info=True)
            return None, exc

    def broker_check(self) -> BrokerCheck:
        if self._broker is None:
            return BrokerCheck(False, "no broker probe configured")
        return self._broker.check()

    def dlq_depth(self, status: RunnerStatus | None) -> tuple[int | None, str]:
        """Pending dead letters and where the number came from: the DLQ itself when this process has
        one (Lambda: SQS, cached a few seconds), else the runner's report."""
        if self._dlq is not None:
            now = self._monotonic()
            if self._dlq_cached is None or now - self._dlq_cached[0] >= BROKER_CACHE_S:
                try:
                    depth: int | None = int(self._dlq.depth())
                except Exception:  # an unreachable queue is reported as unknown, not a failed /health
                    depth = None
                self._dlq_cached = (now, depth)
            return self._dlq_cached[1], f"{self._settings.dlq_backend} queue"
        if status is not None:
            return status.dlq_depth, "runner status"
        return None, "no runner status"

    def write_p99_ms(self, status: RunnerStatus | None) -> float | None:
        """The runner's measured write p99 (it does the writing); else this process's store, if it wrote."""
        if status is not None and status.write_p99_ms is not None:
            return status.write_p99_ms
        own = self._store.write_latency_p99_ms() if self._store is not None else 0.0
        return own if own and own > 0 else None

    def check(self) -> HealthResponse:
        s = self._settings
        now = self._wall()
        status, status_error = self.read_runner_status()
        broker = self.broker_check()
        unhealthy: list[str] = []
        degraded: list[str] = []
        components: dict[str, ComponentHealth] = {}

        if status_error is not None:
            failed = getattr(self.runner_source, "component", "runner")
            error = error_name(status_error)
            where = f"{s.hot_store} " if failed == "hot_store" else ""
            components[failed] = ComponentHealth(
                status="down", detail=f"{where}runner status read failed: {error}", error=error
            )
            if failed != "runner":
                components["runner"] = ComponentHealth(
                    status="unknown", detail=f"runner status unreadable: {failed} failed"
                )
            unhealthy.append(failed)
        elif status is None:
            components["runner"] = ComponentHealth(
                status="down", detail="the runner has never reported a heartbeat"
            )
            unhealthy.append("runner")
        else:
            heartbeat_age = max(0.0, now - status.heartbeat_at)
            commit_age = max(0.0, now - status.last_commit_at)
            metrics = {
                "heartbeat_age_s": round(heartbeat_age, 3),
                "last_commit_age_s": round(commit_age, 3),
                "events_processed": status.events_processed,
                "events_per_s": status.events_per_s,
                "backpressure_activations": status.backpressure_activations,
                "dlq_depth": status.dlq_depth,
                "e2e_latency_p99_ms": status.e2e_latency_p99_ms,
                "batch_p99_ms": status.batch_p99_ms,
            }
            if heartbeat_age > s.health_commit_stale_s:
                detail, state = f"no heartbeat for {heartbeat_age:.0f} s (runner down?)", "down"
            elif commit_age > s.health_commit_stale_s and status.consumer_lag > 0:
                detail, state = (
                    f"no commit for {commit_age:.0f} s with {status.consumer_lag} messages of lag",
                    "down",
                )
            else:
                detail, state = f"committed {commit_age:.1f} s ago", "ok"
            components["runner"] = ComponentHealth(status=state, detail=detail, metrics=metrics)
            if state == "down":
                unhealthy.append("runner")

        components["broker"] = ComponentHealth(
            status="ok" if broker.reachable else "down",
            detail=broker.detail,
            metrics={"metadata_latency_ms": broker.latency_ms},
        )
        if not broker.reachable:
            unhealthy.append("broker")

        lag = status.consumer_lag if status is not None else None
        if lag is None:
            components["consumer_lag"] = ComponentHealth(status="unknown", detail="no runner status")
        else:
            over = lag > s.health_lag_degraded
            components["consumer_lag"] = ComponentHealth(
                status="degraded" if over else "ok",
                detail=f"{lag} messages behind (degraded above {s.health_lag_degraded})",
                metrics={"consumer_lag": lag},
            )
            if over:
                degraded.append("consumer_lag")

        p99 = self.write_p99_ms(status)
        if "hot_store" in components:
            pass  # already down: reading from it failed
        elif p99 is None:
            components["hot_store"] = ComponentHealth(
                status="unknown", detail=f"{s.hot_store}: no write latency reported yet"
            )
        else:
            over = p99 > s.health_write_p99_degraded_ms
            components["hot_store"] = ComponentHealth(
                status="degraded" if over else "ok",
                detail=f"{s.hot_store} write p99 {p99:.1f} ms (degraded above {s.health_write_p99_degraded_ms:g} ms)",
                metrics={"write_p99_ms": p99},
            )
            if over:
                degraded.append("hot_store")

        depth, source = self.dlq_depth(status)
        components["dlq"] = ComponentHealth(
            status="unknown" if depth is None else "ok",
            detail=f"{'?' if depth is None else depth} dead letters pending ({source})",
            metrics={"dlq_depth": depth},
        )

        overall = "unhealthy" if unhealthy else "degraded" if degraded else "healthy"
        return HealthResponse(
            status=overall,
            consumer_lag=lag,
            dynamo_latency_p99=p99,
            uptime_seconds=round(self._monotonic() - self._started, 3),
            checked_at=iso_ms(int(now * 1000)),
            components=components,
        )
