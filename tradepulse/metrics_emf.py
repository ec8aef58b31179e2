"""CloudWatch metrics of the `TradePulse` namespace as EMF (embedded metric format) lines on stdout: the
one writer of the ECS services and of the Lambda functions.

Why this writer and not Powertools' `Metrics` (which the Lambdas used before): one document shape and one
list of metric names (below) for the whole namespace; no shared state (Powertools keeps its metric set
at class level, shared by every instance in the process, while the services emit from worker threads);
nothing to import but orjson (Powertools' metrics module costs ~0.4 s of import on a service start and
is in the [aws] extra only). The documents are the same EMF either way; `tests/test_metrics_emf.py`
checks a Lambda's and a service's against the specification and against each other.

How they reach CloudWatch: each ECS container logs through the `awslogs` driver, which sends every
stdout line as one log event with CloudWatch Logs' PutLogEvents. CloudWatch Logs extracts the metrics of
any event that is an EMF document; the `x-amzn-logs-format: json/emf` header "tells CloudWatch Logs the
metrics should be extracted, but it's not required" (AWS, "Using the PutLogEvents API to send
manually-created embedded metric format logs",
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Generation_PutLogEvents.html).
So no CloudWatch agent sidecar and no FireLens: the task only needs `TRADEPULSE_METRICS=emf` and its log
group (set in `cdk/services.py`). The CloudWatch-agent route ("Using the CloudWatch agent to send
embedded metric format logs") is for shipping EMF over TCP/UDP, which we do not need.

The EMF specification (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)
requires the log event to be exactly one JSON object, with no other data before or after it; so the
line is written straight to stdout, never through `logging` (whose format adds a prefix). Each document
carries `_aws.Timestamp` (ms since the epoch) and one `CloudWatchMetrics` directive (Namespace,
Dimensions = [["service"]], Metrics[].Name/Unit); the `service` value and every metric value are
top-level members.

Cadence: at most one line per `metrics_interval_s` per process (the callers are the runner's status
publication and the ingest/news progress lines, which run more often). Counters are sent as the
increase since the last line, so the alarms' Sum statistic counts events and skipped calls lose nothing.

The metric names below are the single source: `cdk/monitoring.py` and `cdk/services.py` alarm and scale
on these constants, and `tests/test_metrics_emf.py` checks every TradePulse metric of the synthesized
template against what the code actually emits.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:
    from tradepulse.stores.base import HotStore

NAMESPACE = "TradePulse"
DIMENSION = "service"  # Powertools' name for it; the value is POWERTOOLS_SERVICE_NAME

# --- metric names (processor) ---------------------------------------------------------------------
CONSUMER_LAG = "ConsumerLag"
HOT_WRITE_P99_MS = "HotWriteLatencyP99Ms"
HOT_WRITE_THROTTLES = "HotWriteThrottles"
EVENTS_PER_S = "EventsPerSecond"
E2E_P99_MS = "EndToEndLatencyP99Ms"
BACKPRESSURE_ACTIVATIONS = "BackpressureActivations"
DEAD_LETTERS = "DeadLetters"
# --- metric names (ingest, news) ------------------------------------------------------------------
PRODUCER_ERRORS = "ProducerErrors"
EVENTS_PUBLISHED = "EventsPublished"
# --- metric names (Lambda functions: dead-letter archival and redrive) -----------------------------
DEAD_LETTERS_ARCHIVED = "DeadLettersArchived"
DEAD_LETTER_ARCHIVE_FAILURES = "DeadLetterArchiveFailures"
REDRIVE_OUTCOMES = ("redriven", "requeued", "archived", "permanent", "failed", "deferred")


def redrive_metric(outcome: str) -> str:
    """The metric counting the dead letters of one redrive outcome (`DeadLetters_<outcome>`)."""
    return f"DeadLetters_{outcome}"


UNITS = {
    CONSUMER_LAG: "Count",
    HOT_WRITE_P99_MS: "Milliseconds",
    HOT_WRITE_THROTTLES: "Count",
    EVENTS_PER_S: "Count/Second",
    E2E_P99_MS: "Milliseconds",
    BACKPRESSURE_ACTIVATIONS: "Count",
    DEAD_LETTERS: "Count",
    PRODUCER_ERRORS: "Count",
    EVENTS_PUBLISHED: "Count",
    DEAD_LETTERS_ARCHIVED: "Count",
    DEAD_LETTER_ARCHIVE_FAILURES: "Count",
    **{redrive_metric(outcome): "Count" for outcome in REDRIVE_OUTCOMES},
}


class EmfEmitter:
    """Writes EMF documents for one service, at most one per `interval_s` (see the module docstring)."""

    def __init__(
        self,
        service: str,
        *,
        interval_s: float = 10.0,
        namespace: str = NAMESPACE,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.interval_s = interval_s
        self.namespace = namespace
        self._stream = stream
        self._clock = clock
        self._last_emit: float | None = None
        self._last_counters: dict[str, float] = {}
        self._lock = threading.Lock()

    def document(self, values: Mapping[str, float], timestamp_ms: int | None = None) -> dict[str, Any]:
        """One EMF document holding `values` (names from UNITS)."""
        return {
            "_aws": {
                "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [[DIMENSION]],
                        "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in values],
                    }
                ],
            },
            DIMENSION: self.service,
            **{name: float(value) for name, value in values.items()},
        }

    def emit(
        self, gauges: Mapping[str, float], counters: Mapping[str, float] | None = None, *, force: bool = False
    ) -> bool:
        """Write one line if the interval has passed (or `force`): `gauges` as they are, `counters`
        (cumulative totals) as their increase since the last line. True when a line was written."""
        with self._lock:
            now = self._clock()
            if not force and self._last_emit is not None and now - self._last_emit < self.interval_s:
                return False
            self._last_emit = now
            values = dict(gauges)
            for name, total in (counters or {}).items():
                last = self._last_counters.get(name, 0.0)
                # A total below the last one means its owner restarted from zero.
                values[name] = total - last if total >= last else total
                self._last_counters[name] = total
            stream = self._stream or sys.stdout
            stream.write(orjson.dumps(self.document(values)).decode() + "\n")
            stream.flush()  # stdout is block-buffered in a container; the line must leave now
            return True

    def emit_runner(self, status: Mapping[str, Any], hot_store: HotStore | None = None) -> bool:
        """The processor's metrics from one runner status document (`RunnerMetrics.snapshot()`) and the
        hot store's throttle counter (SQLite never throttles: 0)."""
        gauges = {
            CONSUMER_LAG: status["consumer_lag"],
            HOT_WRITE_P99_MS: status["write_p99_ms"],
            EVENTS_PER_S: status["events_per_s"],
        }
        window = status.get("e2e_latency_window_ms") or {}
        if window.get("count"):
            gauges[E2E_P99_MS] = window["p99"]
        counters = {
            HOT_WRITE_THROTTLES: hot_store.throttles if hot_store is not None else 0,
            BACKPRESSURE_ACTIVATIONS: status["backpressure_activations"],
            DEAD_LETTERS: status["dead_letters"],
        }
        return self.emit(gauges, counters)

    def emit_producer(self, published: int, failed: int, *, force: bool = False) -> bool:
        """An ingest/news service's Kafka delivery counters (acknowledged, failed)."""
        return self.emit({}, {EVENTS_PUBLISHED: published, PRODUCER_ERRORS: failed}, force=force)


def service_emitter(default_service: str, *, interval_s: float = 10.0) -> EmfEmitter:
    """An emitter whose `service` dimension is POWERTOOLS_SERVICE_NAME (set per ECS service and per
    Lambda function by the CDK app), `default_service` without it."""
    return EmfEmitter(os.environ.get("POWERTOOLS_SERVICE_NAME") or default_service, interval_s=interval_s)


def emitter_from_settings(settings: Any, default_service: str) -> EmfEmitter | None:
    """The service process's emitter when `settings.metrics == "emf"`, else None."""
    if settings.metrics != "emf":
        return None
    return service_emitter(default_service, interval_s=settings.metrics_interval_s)
