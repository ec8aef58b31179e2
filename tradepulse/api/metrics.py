"""Prometheus metrics: the pipeline's signals (read from the runner heartbeat at scrape time) and the API's
own request counts, latencies and cache hits. Each app has its own registry, so several apps in one
process (tests) never collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tradepulse.models import BAR_CHECK_FIELDS, BAR_CHECK_STATUSES, OUTLIER_REASONS

if TYPE_CHECKING:
    from tradepulse.api.cache import TTLCache
    from tradepulse.api.health import HealthChecker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `*_created` timestamp series double the output and no dashboard of ours uses them.
disable_created_metrics()


class PipelineCollector(Collector):
    """Throughput, lag, latencies, DLQ depth and backpressure from the runner status; broker reachability."""

    def __init__(self, health: HealthChecker, cache: TTLCache) -> None:
        self._health = health
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        status, error = self._health.read_runner_status()
        if error is None:  # unknown while its source fails (/health names the failure): no sample
            up = GaugeMetricFamily("tradepulse_runner_up", "1 if the runner has ever reported a heartbeat.")
            up.add_metric([], 1.0 if status is not None else 0.0)
            yield up
        broker = self._health.broker_check()
        b = GaugeMetricFamily(
            "tradepulse_broker_up", "1 if a Kafka metadata request succeeded (cached ≤ 3 s)."
        )
        b.add_metric([], 1.0 if broker.reachable else 0.0)
        yield b
        p99 = self._health.write_p99_ms(status)
        if p99 is not None:
            g = GaugeMetricFamily(
                "tradepulse_hot_store_write_p99_seconds", "p99 of hot-store batch write latency."
            )
            g.add_metric([], p99 / 1000)
            yield g
        hits = CounterMetricFamily("tradepulse_api_cache_hits", "Server-side response cache hits.")
        hits.add_metric([], self._cache.hits)
        yield hits
        misses = CounterMetricFamily("tradepulse_api_cache_misses", "Server-side response cache misses.")
        misses.add_metric([], self._cache.misses)
        yield misses
        depth, _ = self._health.dlq_depth(status)
        if depth is not None:
            d = GaugeMetricFamily("tradepulse_dlq_depth", "Dead letters pending.")
            d.add_metric([], float(depth))
            yield d
        permanent = self._health.dlq_permanent()
        if permanent is not None:
            g = GaugeMetricFamily(
                "tradepulse_dlq_permanent", "Pending dead letters that can never succeed (never redriven)."
            )
            g.add_metric([], float(permanent))
            yield g
        if status is None:
            return
        gauges = {
            "tradepulse_consumer_lag_messages": ("Messages behind the high watermarks.", status.consumer_lag),
            "tradepulse_events_per_second": ("Recent processing throughput.", status.events_per_s),
            "tradepulse_runner_last_commit_age_seconds": (
                "Seconds since the runner last committed offsets.",
                max(0.0, time.time() - status.last_commit_at),
            ),
        }
        if status.e2e_latency_p50_ms is not None:
            gauges["tradepulse_e2e_latency_p50_seconds"] = (
                "p50 latency from WebSocket receive to hot-store commit, trades of the last minute.",
                status.e2e_latency_p50_ms / 1000,
            )
        if status.e2e_latency_p99_ms is not None:
            gauges["tradepulse_e2e_latency_p99_seconds"] = (
                "p99 latency from WebSocket receive to hot-store commit, trades of the last minute.",
                status.e2e_latency_p99_ms / 1000,
            )
        if status.batch_p99_ms is not None:
            gauges["tradepulse_batch_latency_p99_seconds"] = (
                "p99 duration of one micro-batch.",
                status.batch_p99_ms / 1000,
            )
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        counters = {
            "tradepulse_events_processed": (
                "Events processed by the runner since it started.",
                status.events_processed,
            ),
            "tradepulse_backpressure_activations": (
                "Times consumption paused for a slow sink since the runner started.",
                status.backpressure_activations,
            ),
            "tradepulse_unknown_condition_trades": (
                "Trades with a condition code missing from the condition rules (treated as regular "
                "sales) since the runner started; `tradepulse conditions refresh` updates the table.",
                status.unknown_conditions,
            ),
        }
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c
        outliers = CounterMetricFamily(
            "tradepulse_outliers",
            "Trades flagged outlier (kept, left out of features) since the runner started, per reason.",
            labels=["reason"],
        )
        for reason in OUTLIER_REASONS:
            outliers.add_metric([reason], float(status.outliers.get(reason, 0)))
        yield outliers
        checks = CounterMetricFamily(
            "tradepulse_bar_checks",
            "Ticker-minutes whose bar the runner reconciled with the vendor's (`AM`) since it started, per "
            "status (match, outlier: explained by flagged prints, mismatch, vendor_only, ours_only).",
            labels=["status"],
        )
        for name in BAR_CHECK_STATUSES:
            checks.add_metric([name], float(status.bar_checks.get(name, 0)))
        yield checks
        fields = CounterMetricFamily(
            "tradepulse_bar_mismatches",
            "Bar mismatches with the vendor since the runner started, per differing field.",
            labels=["field"],
        )
        for name in BAR_CHECK_FIELDS:
            fields.add_metric([name], float(status.bar_mismatch_fields.get(name, 0)))
        yield fields


class ApiMetrics:
    """The registry of one app: request metrics plus the pipeline collector."""

    def __init__(self, health: HealthChecker, cache: TTLCache) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "tradepulse_api_requests",
            "API requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tradepulse_api_request_duration_seconds",
            "API request latency by route template.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.registry.register(PipelineCollector(health, cache))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
