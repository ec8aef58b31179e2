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
      "unknown_conditions": 0,          # optional: trades with an unknown condition code, since start
      "dlq_depth": 0,                   # dead letters pending
      "batch_p99_ms": 9.0,              # optional: one micro-batch, p99
      "e2e_latency_p50_ms": 12.0,       # optional: WebSocket receive → hot-store commit, p50 and p99
      "e2e_latency_p99_ms": 85.0,       #   of the trades of the last minute (null: none in that minute)
      "outliers": {"above_band": 2},    # optional: suspect trades flagged per reason, since start
      "bar_checks": {"match": 40},      # optional: ticker-minutes reconciled with the vendor, per status
      "bar_mismatch_fields": {},        # optional: of those, mismatches per field
      ...                               # any other fields: accepted and ignored
    }

- Locally the runner writes it atomically to `<data_dir>/runner-status.json`
  (`tradepulse.bus.heartbeat.status_path` + `write_json_atomic`: temp file + `os.replace`), so a reader
  never sees half a file. Other runner instances write `runner-status-<instance>.json`.
- In AWS (no shared disk between the ECS runners and the Lambda API) the same object also goes to the hot
  store: `DynamoHotStore.put_runner_status(status, instance)`; `get_runner_statuses()` lists every
  instance (`HotStore.get_runner_statuses`; SQLite answers {}, its runners write files). On ECS each processor task
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tradepulse.api.responses import ComponentHealth, HealthResponse, iso_ms

# The runner-status readers moved to runner_status.py; importable from here as before (explicit re-export).
from tradepulse.api.runner_status import FileRunnerStatusSource as FileRunnerStatusSource
from tradepulse.api.runner_status import HotStoreRunnerStatusSource as HotStoreRunnerStatusSource
from tradepulse.api.runner_status import RunnerStatus, RunnerStatusSource
from tradepulse.api.runner_status import runner_status_path as runner_status_path
from tradepulse.config import Settings
from tradepulse.stores.base import DeadLetterQueue, HotStore

BROKER_TIMEOUT_S = 1.0
BROKER_CACHE_S = 3.0

log = logging.getLogger(__name__)
# librdkafka reports every failed connect attempt; /health already says the broker is down, so keep the
# client's own log quiet instead of flooding the API's stderr while the broker is away.
_rdkafka_log = logging.getLogger("tradepulse.api.broker_probe")
_rdkafka_log.setLevel(logging.CRITICAL)


def error_name(exc: BaseException) -> str:
    """The exception's class, plus the AWS error code of a botocore ClientError when the class does not
    already say it (modeled errors such as ResourceNotFoundException do); never its message."""
    from botocore.exceptions import ClientError  # only the message of an AWS error carries a code

    name = type(exc).__name__
    code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
    return f"{name} ({code})" if code and code != name else name


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
        unknown_conditions=sum(s.unknown_conditions for s in basis),
        dlq_depth=max(s.dlq_depth for s in basis),
        e2e_latency_p50_ms=worst([s.e2e_latency_p50_ms for s in basis]),
        e2e_latency_p99_ms=worst([s.e2e_latency_p99_ms for s in basis]),
        batch_p99_ms=worst([s.batch_p99_ms for s in basis]),
        outliers=_sum_counts([s.outliers for s in basis]),
        bar_checks=_sum_counts([s.bar_checks for s in basis]),
        bar_mismatch_fields=_sum_counts([s.bar_mismatch_fields for s in basis]),
    )


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    """Per key, the sum over the runners' counts (keys sorted)."""
    return {k: sum(c.get(k, 0) for c in counts) for k in sorted({k for c in counts for k in c})}


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


State = Literal["ok", "degraded", "down", "unknown"]
Overall = Literal["healthy", "degraded", "unhealthy"]


@dataclass
class Verdict:
    """The components of one /health answer and which of them make it unhealthy or degraded."""

    components: dict[str, ComponentHealth] = field(default_factory=dict)
    unhealthy: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    def add(self, name: str, component: ComponentHealth) -> None:
        """Record a component; `down` makes the answer unhealthy, `degraded` degraded."""
        self.components[name] = component
        if component.status == "down":
            self.unhealthy.append(name)
        elif component.status == "degraded":
            self.degraded.append(name)

    @property
    def status(self) -> Overall:
        return "unhealthy" if self.unhealthy else "degraded" if self.degraded else "healthy"


def runner_read_failed(failed: str, error: BaseException, hot_store: str) -> dict[str, ComponentHealth]:
    """The components when the runner status could not be read: the failed source down, and the runner
    unknown when the source is another component (the hot store)."""
    name = error_name(error)
    where = f"{hot_store} " if failed == "hot_store" else ""
    components = {
        failed: ComponentHealth(status="down", detail=f"{where}runner status read failed: {name}", error=name)
    }
    if failed != "runner":
        components["runner"] = ComponentHealth(
            status="unknown", detail=f"runner status unreadable: {failed} failed"
        )
    return components


def runner_instances(views: list[RunnerView]) -> dict[str, ComponentHealth]:
    """One `runner:<instance>` component per reported runner."""
    return {
        f"runner:{v.instance}": ComponentHealth(
            status="ok" if v.state == "ok" else "down",
            detail=v.detail,
            metrics={
                "heartbeat_age_s": round(v.heartbeat_age, 3),
                "last_commit_age_s": round(v.commit_age, 3),
                "consumer_lag": v.status.consumer_lag,
                "events_per_s": v.status.events_per_s,
            },
        )
        for v in views
    }


def runner_state(views: list[RunnerView], status: RunnerStatus, now: float) -> tuple[State, str]:
    """(state, detail) of the pipeline's runners: down when none is live or one is stuck, degraded when
    some are missing, else ok."""
    live = [v for v in views if v.state != "missing"]
    missing = [v for v in views if v.state == "missing"]
    stuck = [v for v in views if v.state == "stuck"]
    if not live:
        if len(missing) == 1:
            return "down", missing[0].detail
        silent = min(v.heartbeat_age for v in missing)
        return "down", f"no heartbeat from any of {len(missing)} runners for {silent:.0f} s (runners down?)"
    if stuck:
        named = len(views) > 1  # with one runner, its name adds nothing
        return "down", "; ".join(f"{v.instance}: {v.detail}" if named else v.detail for v in stuck)
    if missing:
        names = ", ".join(f"{v.instance} ({v.detail})" for v in missing)
        return "degraded", f"{len(live)} of {len(views)} runners live; missing: {names}"
    runs = f" ({len(live)} runners)" if len(live) > 1 else ""
    return "ok", f"committed {max(0.0, now - status.last_commit_at):.1f} s ago{runs}"


def runner_summary(views: list[RunnerView], status: RunnerStatus, now: float) -> ComponentHealth:
    """The `runner` component: the state over all instances and the combined numbers."""
    state, detail = runner_state(views, status, now)
    metrics = {
        "heartbeat_age_s": round(max(0.0, now - status.heartbeat_at), 3),
        "last_commit_age_s": round(max(0.0, now - status.last_commit_at), 3),
        "events_processed": status.events_processed,
        "events_per_s": status.events_per_s,
        "backpressure_activations": status.backpressure_activations,
        "dlq_depth": status.dlq_depth,
        "e2e_latency_p50_ms": status.e2e_latency_p50_ms,
        "e2e_latency_p99_ms": status.e2e_latency_p99_ms,
        "batch_p99_ms": status.batch_p99_ms,
        "runners_live": sum(1 for v in views if v.state != "missing"),
        "runners_missing": sum(1 for v in views if v.state == "missing"),
    }
    return ComponentHealth(status=state, detail=detail, metrics=metrics)


def broker_component(broker: BrokerCheck) -> ComponentHealth:
    return ComponentHealth(
        status="ok" if broker.reachable else "down",
        detail=broker.detail,
        metrics={"metadata_latency_ms": broker.latency_ms},
    )


def lag_component(lag: int | None, threshold: int) -> ComponentHealth:
    if lag is None:
        return ComponentHealth(status="unknown", detail="no runner status")
    return ComponentHealth(
        status="degraded" if lag > threshold else "ok",
        detail=f"{lag} messages behind (degraded above {threshold})",
        metrics={"consumer_lag": lag},
    )


def hot_store_component(p99: float | None, backend: str, threshold_ms: float) -> ComponentHealth:
    if p99 is None:
        return ComponentHealth(status="unknown", detail=f"{backend}: no write latency reported yet")
    return ComponentHealth(
        status="degraded" if p99 > threshold_ms else "ok",
        detail=f"{backend} write p99 {p99:.1f} ms (degraded above {threshold_ms:g} ms)",
        metrics={"write_p99_ms": p99},
    )


def dlq_component(depth: int | None, source: str) -> ComponentHealth:
    return ComponentHealth(
        status="unknown" if depth is None else "ok",
        detail=f"{'?' if depth is None else depth} dead letters pending ({source})",
        metrics={"dlq_depth": depth},
    )


class HealthChecker:
    """Combines the signals into the /health answer."""

    def __init__(
        self,
        settings: Settings,
        runner: RunnerStatusSource,
        broker: BrokerProbe | None,
        hot_store: HotStore | None,
        *,
        dlq: DeadLetterQueue | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
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
            log.warning("runner status unreadable (%s failed)", self.runner_source.component, exc_info=True)
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
        verdict = Verdict()
        self._add_runner(verdict, views, status, status_error, ever_reported, now)
        verdict.add("broker", broker_component(self.broker_check()))
        lag = status.consumer_lag if status is not None else None
        verdict.add("consumer_lag", lag_component(lag, s.health_lag_degraded))
        p99 = self.write_p99_ms(status)
        if "hot_store" not in verdict.components:  # else already down: reading from it failed
            verdict.add("hot_store", hot_store_component(p99, s.hot_store, s.health_write_p99_degraded_ms))
        verdict.add("dlq", dlq_component(*self.dlq_depth(status)))
        return HealthResponse(
            status=verdict.status,
            consumer_lag=lag,
            dynamo_latency_p99=p99,
            uptime_seconds=round(self._monotonic() - self._started, 3),
            checked_at=iso_ms(int(now * 1000)),
            components=verdict.components,
        )

    def _add_runner(
        self,
        verdict: Verdict,
        views: list[RunnerView],
        status: RunnerStatus | None,
        error: BaseException | None,
        ever_reported: bool,
        now: float,
    ) -> None:
        """The runner components: the failed status source, no runner at all, or one per instance plus
        the summary."""
        if error is not None:
            failed = self.runner_source.component
            for name, component in runner_read_failed(failed, error, self._settings.hot_store).items():
                verdict.add(name, component)
            return
        if status is None:
            detail = (
                "no runner is running (the last one stopped or went silent long ago)"
                if ever_reported
                else "the runner has never reported a heartbeat"
            )
            verdict.add("runner", ComponentHealth(status="down", detail=detail))
            return
        verdict.components.update(runner_instances(views))  # the summary below judges them
        verdict.add("runner", runner_summary(views, status, now))
