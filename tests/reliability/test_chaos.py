"""Chaos: kill -9 the runner and the ingest service at random points of a deterministic simulator run,
restarting each time; afterwards Kafka, the hot store and the cold store hold exactly the simulator's
trade set, and every feature snapshot equals an independent batch recomputation. Every output topic
(features, anomalies, correlations, dead letters) is in its cold dataset exactly once (0 duplicates,
0 missing against the topic read read_committed), and the hot store (the DLQ store for dead letters)
holds every row of it; news articles and poison messages seeded into market.news before the run
(`harness.seed_news`) give the runner correlations and dead letters to produce. The anomalies and
correlations (topic and hot store) are exactly those of an uninterrupted run: the pure core fed once
with the input topics' final contents, partition by partition in offset order.

The simulator runs with `resend_blocks`: on every (re)subscription it replays its last blocks, so a
restarted ingest gets again what its killed predecessor had received but not yet published; the ingest
drops what is already in Kafka (each ticker's highest sequence in the topics' last 60 s). What a replay
does not cover (an outage longer than it, as under contention) the restarted ingest backfills from the
REST trades endpoint, up to the feed's clock; the real Massive feed does not replay at all, which
`tests/reliability/test_ingest_backfill.py` covers with a non-replaying simulator. The runner needs
nothing of the kind: offsets, outputs and sinks are committed together (see `tradepulse.bus.runner`).

Every run can be made under contention (`tests/reliability/contention.py`): `busy` (one busy loop per
core) or `throttle` (the services and the broker SIGSTOPped on a duty cycle). `test_chaos_short` (≈50k
trades, 3 + 2 kills; idle, and busy with a 2 s replay) runs in `make test`; `test_chaos_full` (≥ 1M
trades, 10 + 10 kills; idle, busy and throttled) in `make chaos`. Each writes its numbers to
`test-artifacts/chaos-<name>-<contention>.json`.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest

from tests.bus.test_runner import Recording, assert_features_match, reference_snapshots
from tests.reliability.contention import KINDS, contention, listener_pid
from tests.reliability.harness import (
    KEY,
    START_MS,
    TICKERS,
    ChaosReport,
    Reconciliation,
    Services,
    anomaly_keys,
    chaos_anomaly_env,
    child_env,
    cold_keys,
    committed_total,
    correlation_keys,
    drained,
    high_watermarks,
    hot_anomalies,
    hot_trade_keys,
    output_archive,
    outputs_archived,
    read_topic,
    seed_news,
    uninterrupted_outputs,
    wait_until,
)
from tests.sources.test_backfill import generated_trades
from tradepulse.bus.admin import recreate_topics
from tradepulse.config import Settings
from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread
from tradepulse.topics import ANOMALIES, CORRELATIONS, FEATURES, QUOTES, TRADES

pytestmark = pytest.mark.kafka


@dataclass(frozen=True)
class Plan:
    name: str
    duration_s: float
    rate: float  # events/s (trades + quotes)
    runner_kills: int
    ingest_kills: int
    seed: int = 2024
    trade_fraction: float = 0.8
    contention: str = "idle"  # see tests/reliability/contention.py
    #: Simulator blocks (50 ms ticks) resent to every new subscription: a feed with a replay.
    resend_blocks: int = 1200

    @property
    def expected_trades(self) -> float:
        return self.duration_s * self.rate * self.trade_fraction


class RssSampler:
    """Peak resident memory of each service process (sampled every 0.5 s)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, proc in list(self.services.procs.items()):
                try:
                    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak.get(name, 0.0), rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_chaos(plan: Plan, kafka_bootstrap: str, tmp_path: Path) -> ChaosReport:
    started = time.monotonic()
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        data_dir=tmp_path / "state",
        topic_partitions=3,
        consumer_group=f"chaos-{plan.name}",
        tickers=TICKERS,
    )
    recreate_topics(settings)
    news_articles, news_poison = seed_news(settings, plan.duration_s)
    # Resend the last blocks (60 s of 50 ms ticks by default) to every new subscription. Alone, a replay
    # covers what a killed ingest had received but not yet published only while the outage is shorter
    # than the replay: a 5 s window lost 4,677 of 1,072,706 trades in the first full run, and under
    # contention even 60 s lost 96,427 (a starved ingest restarting for tens of seconds while the
    # simulator raced ahead to catch up with its schedule, postmortem 4). The backfill from REST, on the
    # feed's clock, covers the rest.
    sim = run_simulator_in_thread(
        SimulatorConfig(
            seed=plan.seed,
            tickers=TICKERS,
            rate=plan.rate,
            trade_fraction=plan.trade_fraction,
            api_key=KEY,
            ws_port=0,
            http_port=0,
            record_sent=True,
            duration_s=plan.duration_s,
            start_ms=START_MS,
            resend_blocks=plan.resend_blocks,
        )
    )
    # A restarted ingest reads each input partition's last 60 s (the replay) for every ticker's highest
    # published sequence and drops the replay up to it. The id window only serves reconnects of a live
    # ingest, where the feed resends the same 60 s: it must hold that many events.
    window = max(200_000, int(60 * plan.rate))
    env = child_env(
        settings,
        TRADEPULSE_INGEST_DEDUPE_WINDOW=str(window),
        TRADEPULSE_INGEST_REPLAY_HORIZON_S="60",
        **chaos_anomaly_env(),
    )
    services = Services(tmp_path / "logs", env)
    broker = listener_pid(kafka_bootstrap)

    def throttled() -> list[int]:
        # The services as they are now (restarts included) and the broker.
        return [proc.pid for proc in list(services.procs.values())] + [broker]

    try:
        with RssSampler(services) as rss, contention(plan.contention, throttled) as load:
            services.start("runner", "process", "--instance", "0", "--progress-s", "5")
            services.start("ingest", "ingest", "--url", sim.ws_url + "/stocks", "--progress-s", "5")
            # Kill points: uniformly random over the generation window, per service.
            rng = random.Random(plan.seed)
            schedule = {
                "runner": sorted(rng.uniform(0.05, 0.95) * plan.duration_s for _ in range(plan.runner_kills)),
                "ingest": sorted(rng.uniform(0.05, 0.95) * plan.duration_s for _ in range(plan.ingest_kills)),
            }
            progress = {
                "runner": lambda: committed_total(settings),
                "ingest": lambda: sum(high_watermarks(settings).values()),
            }
            marks = {name: progress[name]() for name in schedule}
            t0 = time.monotonic()
            deadline = t0 + plan.duration_s * 4 + 300
            # Each service follows its own schedule. A kill only happens once the service has made
            # progress since its last start (committed offsets for the runner, records in Kafka for
            # ingest; or, for ingest, the market is over), otherwise kills could all land in start-ups.
            while any(schedule.values()):
                services.check_alive()
                assert time.monotonic() < deadline, f"kills left undone: {schedule}"
                for name, times in schedule.items():
                    if not times or time.monotonic() - t0 < times[0]:
                        continue
                    moved = progress[name]() > marks[name]
                    if moved or (name == "ingest" and sim.sim.finished.is_set()):
                        services.restart_after_kill(name)
                        marks[name] = progress[name]()
                        times.pop(0)
                time.sleep(0.1)
            assert sim.wait_finished(plan.duration_s * 3 + 120), "the simulator did not finish"
            # Ingest is done when market.trades holds as many records as the market generated trades,
            # or (when some are missing: the first few before the first connection, or a loss that the
            # reconciliation then reports) once nothing has moved for 30 s, far longer than a restarted
            # ingest needs, even starved, to start, seed, backfill and publish the resend. (A quiet
            # spell of 5 s was once the criterion: under contention a restart takes longer than that,
            # and ingest was stopped before it had published.)
            generated = generated_trades(sim)
            last = {"count": -1, "since": time.monotonic()}

            def settled() -> bool:
                count = sum(high_watermarks(settings, (TRADES,)).values())
                if count != last["count"]:
                    last.update(count=count, since=time.monotonic())
                return count >= len(generated) or time.monotonic() - last["since"] > 30

            wait_until(settled, 600, "ingest to publish everything", services.check_alive)
            assert services.stop("ingest") == 0
            wait_until(
                lambda: drained(settings), 900, "the runner to commit every record", services.check_alive
            )
            wait_until(
                lambda: outputs_archived(settings),
                300,
                "the runner to read back its outputs",
                services.check_alive,
            )
            assert services.stop("runner") == 0, services.tail("runner")
        sent = sim.sent_trade_keys()
        sent_quotes = sim.sent_quote_keys()
    finally:
        services.stop_all()
        sim.stop()

    trades = read_topic(settings, TRADES)
    quotes = read_topic(settings, QUOTES)
    in_kafka = [(t["ticker"], t["sequence"]) for t in trades]
    # The oracle is the market itself, regenerated: every trade from each ticker's first one published
    # (the first ingest connects a moment after the open) to the end. It includes what no ingest was
    # connected to receive (the backfill's part), so it is stricter than what the WebSocket sent.
    first = {ticker: min(q for t, q in in_kafka if t == ticker) for ticker in TICKERS}
    market = {(t, q) for t, q in generated if q >= first[t]}
    kafka = Reconciliation.of(in_kafka, market)
    hot = Reconciliation.of(hot_trade_keys(settings), market)
    cold = Reconciliation.of(cold_keys(settings), market)
    # Quotes are not backfilled (the next quote supersedes a lost one), so the market is not their
    # oracle: the cold store must hold exactly what reached Kafka, and the report says how many of the
    # quotes sent are missing from Kafka (a gap longer than the feed's replay).
    quote_keys = [(q["ticker"], q["sequence"]) for q in quotes]
    cold_quotes = Reconciliation.of(cold_keys(settings, "quotes"), set(quote_keys))

    # Features: what the runner committed to market.features vs a batch recomputation over the trades and
    # quotes in Kafka. The spread is left out: which quote precedes a trade depends on how far the
    # restarted runner's fetches of the two topics were apart while catching up.
    expected = reference_snapshots(
        Recording([(TRADES, t["ticker"], t) for t in trades] + [(QUOTES, q["ticker"], q) for q in quotes])
    )
    emitted = read_topic(settings, FEATURES)
    finals = assert_features_match(emitted, expected, spread=False)
    anomalies, correlations = assert_outputs_like_uninterrupted(settings, tmp_path / "oracle")
    # How many partitions' anomaly models restarted runners took back from checkpoints: recorded, not
    # asserted (kills that land before any trade is committed leave nothing to restore; the restore path
    # itself is asserted by tests/bus/test_anomaly_restart.py).
    runner_log = (tmp_path / "logs" / "runner.log").read_text(errors="replace")
    restores = runner_log.count("restored at trades offset")
    report = ChaosReport(
        name=f"{plan.name}-{plan.contention}",
        contention=load,
        sent_trades=len(sent),
        sent_quotes=len(sent_quotes),
        market_trades=len(market),
        sent_not_in_kafka=len(sent - set(in_kafka)),
        kafka_quotes=Reconciliation.of(quote_keys, sent_quotes),
        cold_quotes=cold_quotes,
        runner_kills=services.kills["runner"],
        ingest_kills=services.kills["ingest"],
        kafka=kafka,
        hot=hot,
        cold=cold,
        features_checked=len(finals),
        cold_outputs=output_archive(settings, read_topic),
        news_articles=news_articles,
        news_poison=news_poison,
        seconds=time.monotonic() - started,
        peak_rss_mb={k: round(v, 1) for k, v in rss.peak.items()},
        anomalies_checked=anomalies,
        correlations_checked=correlations,
        anomaly_restores=restores,
    )
    report.save()
    return report


def assert_outputs_like_uninterrupted(settings: Settings, oracle_dir: Path) -> tuple[int, int]:
    """market.anomalies, the hot store's anomalies and market.correlations equal (no duplicates, none
    missing, same scores, thresholds and model versions) what the core produces in one uninterrupted
    pass over the input topics. Returns how many of each were checked."""
    expected_anomalies, expected_correlations = uninterrupted_outputs(settings, oracle_dir)
    topic = read_topic(settings, ANOMALIES)
    assert len({a["anomaly_id"] for a in topic}) == len(topic), "duplicate anomalies on the topic"
    expected = anomaly_keys(expected_anomalies)
    assert len(expected) > 0, "the run scored no anomaly: the comparison would prove nothing"
    assert anomaly_keys(topic) == expected, (len(topic), len(expected))
    assert anomaly_keys(hot_anomalies(settings)) == expected
    correlations = read_topic(settings, CORRELATIONS)
    assert correlation_keys(correlations) == correlation_keys(expected_correlations)
    return len(expected), len(expected_correlations)


def check(report: ChaosReport, plan: Plan) -> None:
    assert report.runner_kills == plan.runner_kills and report.ingest_kills == plan.ingest_kills
    # Runner side first: with every runner kill, both stores hold exactly what reached Kafka.
    for store in (report.hot, report.cold):
        assert store.duplicates == 0 and store.unexpected == 0, report
        assert (store.distinct, store.missing) == (report.kafka.distinct, report.kafka.missing), report
    # Ingest side: Kafka holds exactly the market's trades (no duplicates, nothing missing), so
    # everything the simulator sent among them.
    assert report.kafka.exact, report
    assert report.sent_not_in_kafka == 0, report
    assert report.kafka_quotes.duplicates == 0 and report.kafka_quotes.unexpected == 0, report
    assert report.cold_quotes.exact, report
    # The live path carried most of the market (the rest came by REST backfill): a share of the trades the
    # market generated, not of the plan's nominal rate × duration, which a starved simulator falls short of
    # (fresh-clone run under load: 35,594 of 47,901 generated sent, 0.7 × nominal 51,200 = 35,840).
    assert report.sent_trades >= 0.7 * report.market_trades, report
    assert report.features_checked > 0
    check_cold_outputs(report)


def check_cold_outputs(report: ChaosReport) -> None:
    """Every output topic (features, anomalies, correlations, dead letters, bars) is in its cold dataset exactly
    once: 0 duplicates, 0 missing, nothing else, against the topic read read_committed; and the hot store
    (the DLQ store for dead letters) holds every row of the topic."""
    assert set(report.cold_outputs) == {"features", "anomalies", "correlations", "dead-letters", "bars"}, (
        report
    )
    for name, archive in report.cold_outputs.items():
        assert archive.exact, (name, archive)
        assert archive.hot.missing == 0, (name, archive)
    assert report.cold_outputs["features"].cold.distinct == report.features_checked
    # One letter per poison message seeded into market.news (`seed_news`).
    assert report.cold_outputs["dead-letters"].cold.distinct == report.news_poison > 0
    # Deterministic outputs: the hot store holds exactly what was committed. (Anomalies of an aborted
    # attempt may still be in the hot store until anomaly scoring is deterministic; the DLQ store also
    # holds the ingest's letters, which never go to market.dead-letters.)
    for name in ("features", "correlations", "bars"):
        assert report.cold_outputs[name].hot.exact, (name, report.cold_outputs[name])


SHORT = Plan("short", duration_s=16, rate=4000, runner_kills=3, ingest_kills=2)
# The failing configuration of issue 18 in the suite's time: a busy machine, and a replay (2 s) shorter
# than a starved ingest's restart, so the gap can only be closed by the feed-time backfill.
SHORT_BUSY = replace(SHORT, name="short-replay2s", contention="busy", resend_blocks=40)
FULL = Plan("full", duration_s=160, rate=8000, runner_kills=10, ingest_kills=10)


@pytest.mark.parametrize("plan", [SHORT, SHORT_BUSY], ids=lambda p: f"{p.name}-{p.contention}")
def test_chaos_short(plan: Plan, kafka_bootstrap: str, tmp_path: Path) -> None:
    check(run_chaos(plan, kafka_bootstrap, tmp_path), plan)


# A starved run takes longer than the suite's 10-minute default (a throttled one ≈ 11 min on 2 cores).
@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("kind", KINDS)
def test_chaos_full(kind: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    plan = replace(FULL, contention=kind)
    assert plan.expected_trades >= 1_000_000
    report = run_chaos(plan, kafka_bootstrap, tmp_path)
    check(report, plan)
    # Millions reconciled: the market's trades, each in Kafka and both stores exactly once (`check`). Not a
    # floor on what the socket delivered: under contention the REST backfill carries more of it (the busy
    # run on 2026-12-02: 993,678 sent live, the other 79,028 backfilled); `check` keeps the live share ≥ 70 %.
    assert report.kafka.distinct >= 1_000_000
