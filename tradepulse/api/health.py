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
  (`tradepulse.bus.heartbeat.status_path` + `write_json_atomic`: temp file + `os.replace`), so a reader
  never sees half a file. Other runner instances write `runner-status-<instance>.json`.
- In AWS (no shared disk between the ECS runners and the Lambda API) the same object also goes to the hot
  store: `DynamoHotStore.put_runner_status(status, instance)`; `get_runner_statuses()` lists every
  instance (optional methods beyond the HotStore protocol, SQLite has none). On ECS each processor task
  is an instance named by its hostname. The runner always publishes through `publish_status` (file, plus
  the store when it has `put_runner_status`); the API reads the store when `hot_store == "dynamodb"`
  (`HotStoreRunnerStatusSource`), else the files (`FileRunnerStatusSource`).
- A runner that stops gracefully publishes a last heartbeat with `stopped_at` set: it left, it is not lost.

Consumer lag comes from the runner's own view (its consumer knows positions and high watermarks for
free); computing it here from committed offsets would cost two admin round trips per check.

## Rules
Every runner instance that reported is judged on its own and listed as a component `runner:<instance>`;
the `runner` component sums them up. Stopped runners, and runners silent for longer than
`health_runner_forget_s` (a replaced task), are not listed.
- unhealthy (HTTP 503): no heartbeat at all, no runner with a heartbeat younger than
  `health_commit_stale_s` (all dead or hung), a runner that has not committed for `health_commit_stale_s`
  while it has lag (stuck; an idle, caught-up runner has nothing to commit and is fine), or the broker is
  unreachable.
  Also when reading the heartbeat raises (DynamoDB unavailable, an unreadable file): the component that
  failed (`hot_store`, or `runner` for the file) is `down` with the exception's class in `error` (never its
  message, which may name endpoints or credentials), and the runner's state is `unknown`.
- degraded: some runners live but another is missing (its heartbeat went stale: a crashed task whose
  partitions wait for the group to reassign them), consumer lag (summed over the live runners) >
  `health_lag_degraded`, or hot-store write p99 (the worst runner's) > `health_write_p99_degraded_ms`.
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
from tradepulse.bus.heartbeat import status_files, status_path
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

    stopped_at: float | None = None

    @property
    def heartbeat_at(self) -> float:
        return self.updated_at if self.updated_at is not None else self.last_commit_at


def _newest(statuses: dict[str, RunnerStatus]) -> RunnerStatus | None:
    return max(statuses.values(), key=lambda s: s.heartbeat_at, default=None)


class RunnerStatusSource(Protocol):
    def read_all(self) -> dict[str, RunnerStatus]:
        """instance → latest heartbeat, of every runner instance that reported ({} if none). May raise
        when its backing component fails; a source may name that component in a `component` attribute
        (default: runner)."""


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
        return _newest(self.read_all())


class HotStoreRunnerStatusSource:
    """Reads the heartbeats the runners put in the hot store (AWS: DynamoDB items, all instances with one
    query when the store can list them); store errors raise."""

    component = "hot_store"

    def __init__(self, hot_store: Any) -> None:
        self._store = hot_store

    def read_all(self) -> dict[str, RunnerStatus]:
        listing = getattr(self._store, "get_runner_statuses", None)
        if listing is not None:
            raw: dict[str, Any] = listing()
        else:
            getter = getattr(self._store, "get_runner_status", None)
            one = getter() if getter is not None else None
            raw = {"0": one} if one else {}
        statuses: dict[str, RunnerStatus] = {}
        for instance, document in raw.items():
            try:
                statuses[instance] = RunnerStatus.model_validate(document)
            except ValidationError:
                continue
        return statuses

    def read(self) -> RunnerStatus | None:
        """The newest heartbeat of any instance (None if none reported)."""
        return _newest(self.read_all())


@dataclass(frozen=True)
class RunnerView:
    """One runner instance as /health judges it at `now`."""

    instance: str
    status: RunnerStatus
    heartbeat_age: float
    commit_age: float
    state: str  # "ok", "missing" (heartbeat stale), "stuck" (lag but no commit)

    @property
    def detail(self) -> str:
        if self.state == "missing":
            return f"no heartbeat for {self.heartbeat_age:.0f} s (runner down?)"
        if self.state == "stuck":
            return f"no commit for {self.commit_age:.0f} s with {self.status.consumer_lag} messages of lag"
        return f"committed {self.commit_age:.1f} s ago"


def judge_runners(
    statuses: dict[str, RunnerStatus], now: float, stale_s: float, forget_s: float
) -> list[RunnerView]:
    """The runners /health reports (sorted by instance): not stopped, heard from within `forget_s`."""
    views = []
    for instance, status in sorted(statuses.items()):
        heartbeat_age = max(0.0, now - status.heartbeat_at)
        if status.stopped_at is not None or heartbeat_age > forget_s:
            continue
        commit_age = max(0.0, now - status.last_commit_at)
        if heartbeat_age > stale_s:
            state = "missing"
        elif commit_age > stale_s and status.consumer_lag > 0:
            state = "stuck"
        else:
            state = "ok"
        views.append(RunnerView(instance, status, heartbeat_age, commit_age, state))
    return views


def combine(views: list[RunnerView]) -> RunnerStatus | None:
    """One pipeline-wide status over the runners that are not missing (all of them when every one is):
    lag, events, throughput and backpressure summed; latencies and DLQ depth the worst; the newest
    heartbeat and commit."""
    basis = [v.status for v in views if v.state != "missing"] or [v.status for v in views]
    if not basis:
        return None

    def worst(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    return RunnerStatus(
        updated_at=max(s.heartbeat_at for s in basis),
        last_commit_at=max(s.last_commit_at for s in basis),
        consumer_lag=sum(s.consumer_lag for s in basis),
        events_processed=sum(s.events_processed for s in basis),
        events_per_s=round(sum(s.events_per_s for s in basis), 1),
        write_p99_ms=worst([s.write_p99_ms for s in basis]),
        backpressure_activations=sum(s.backpressure_activations for s in basis),
        dlq_depth=max(s.dlq_depth for s in basis),
        e2e_latency_p99_ms=worst([s.e2e_latency_p99_ms for s in basis]),
        batch_p99_ms=worst([s.batch_p99_ms for s in basis]),
    )


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
        self._permanent_cached: tuple[float, int | None] | None = None
        self.runner_source = runner
        self._broker = broker
        self._store = hot_store
        self._wall = wall_clock
        self._monotonic = monotonic
        self._started = monotonic()

    def read_runners(self) -> tuple[list[RunnerView], BaseException | None, bool]:
        """(the runners to report, the exception their source raised, whether any runner ever reported).
        A failing store must not fail /health."""
        try:
            statuses = self.runner_source.read_all()
        except Exception as exc:
            component = getattr(self.runner_source, "component", "runner")
            log.warning("runner status unreadable (%s failed)", component, exc_info=True)
            return [], exc, False
        s = self._settings
        views = judge_runners(statuses, self._wall(), s.health_commit_stale_s, s.health_runner_forget_s)
        return views, None, bool(statuses)

    def read_runner_status(self) -> tuple[RunnerStatus | None, BaseException | None]:
        """The pipeline-wide view over the runners (`combine`), or the exception their source raised."""
        views, error, _ = self.read_runners()
        return combine(views), error

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

    def dlq_permanent(self) -> int | None:
        """Pending permanent dead letters (never redriven; waiting for inspection), from the DLQ itself
        when this process has one (cached a few seconds); None without one or when it fails."""
        if self._dlq is None:
            return None
        now = self._monotonic()
        if self._permanent_cached is None or now - self._permanent_cached[0] >= BROKER_CACHE_S:
            try:
                count: int | None = int(self._dlq.counts()["permanent"])
            except Exception:
                count = None
            self._permanent_cached = (now, count)
        return self._permanent_cached[1]

    def write_p99_ms(self, status: RunnerStatus | None) -> float | None:
        """The runner's measured write p99 (it does the writing); else this process's store, if it wrote."""
        if status is not None and status.write_p99_ms is not None:
            return status.write_p99_ms
        own = self._store.write_latency_p99_ms() if self._store is not None else 0.0
        return own if own and own > 0 else None

    def check(self) -> HealthResponse:
        s = self._settings
        now = self._wall()
        views, status_error, ever_reported = self.read_runners()
        status = combine(views)
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
            detail = (
                "no runner is running (the last one stopped or went silent long ago)"
                if ever_reported
                else "the runner has never reported a heartbeat"
            )
            components["runner"] = ComponentHealth(status="down", detail=detail)
            unhealthy.append("runner")
        else:
            live = [v for v in views if v.state != "missing"]
            missing = [v for v in views if v.state == "missing"]
            stuck = [v for v in views if v.state == "stuck"]
            for v in views:
                components[f"runner:{v.instance}"] = ComponentHealth(
                    status="ok" if v.state == "ok" else "down",
                    detail=v.detail,
                    metrics={
                        "heartbeat_age_s": round(v.heartbeat_age, 3),
                        "last_commit_age_s": round(v.commit_age, 3),
                        "consumer_lag": v.status.consumer_lag,
                        "events_per_s": v.status.events_per_s,
                    },
                )
            metrics = {
                "heartbeat_age_s": round(max(0.0, now - status.heartbeat_at), 3),
                "last_commit_age_s": round(max(0.0, now - status.last_commit_at), 3),
                "events_processed": status.events_processed,
                "events_per_s": status.events_per_s,
                "backpressure_activations": status.backpressure_activations,
                "dlq_depth": status.dlq_depth,
                "e2e_latency_p99_ms": status.e2e_latency_p99_ms,
                "batch_p99_ms": status.batch_p99_ms,
                "runners_live": len(live),
                "runners_missing": len(missing),
            }
            runs = f" ({len(live)} runners)" if len(live) > 1 else ""
            if not live:
                detail, state = (
                    missing[0].detail
                    if len(missing) == 1
                    else (
                        f"no heartbeat from any of {len(missing)} runners for "
                        f"{min(v.heartbeat_age for v in missing):.0f} s (runners down?)"
                    ),
                    "down",
                )
            elif stuck:
                named = len(views) > 1  # with one runner, its name adds nothing
                detail = "; ".join(f"{v.instance}: {v.detail}" if named else v.detail for v in stuck)
                state = "down"
            elif missing:
                names = ", ".join(f"{v.instance} ({v.detail})" for v in missing)
                detail, state = f"{len(live)} of {len(views)} runners live; missing: {names}", "degraded"
            else:
                detail, state = f"committed {max(0.0, now - status.last_commit_at):.1f} s ago{runs}", "ok"
            components["runner"] = ComponentHealth(status=state, detail=detail, metrics=metrics)
            if state == "down":
                unhealthy.append("runner")
            elif state == "degraded":
                degraded.append("runner")

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
