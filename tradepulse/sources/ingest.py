"""Ingest service: Massive WebSocket → validated trades/quotes → Kafka (`market.trades`, `market.quotes`).

Two asyncio tasks joined by a bounded queue of parsed frames:

    socket reader (MassiveClient.frames) ──► asyncio.Queue(maxsize=N frames) ──► publisher (Producer)

Backpressure: when librdkafka's local queue is full, `produce()` raises BufferError. The publisher then
serves delivery reports (`poll`) and waits until there is room — it never drops. Meanwhile the reader
fills the hand-off queue and then blocks on it, so the socket is no longer read and the server is
slowed by TCP flow control. Memory stays bounded by the producer queue plus N frames.

Invalid events go to the dead-letter queue with their raw payload and reason; the stream continues. So do
events of a ticker the service did not subscribe to (`UnknownTicker`; not checked for a `*` subscription).
Events already published (a server resending after a reconnect) are dropped by event id using a bounded
window of recent ids — the idempotent producer only dedupes its own retries. On start the service reads
the topics' tail by time (`ingest_replay_horizon_s`) for each ticker's highest published sequence, so a
feed that replays recent events to a restarted ingest (after a crash) gets exactly the ones its killed
predecessor never got into Kafka published (`seed_published_sequences`).

The real Massive feed replays nothing, so after every (re)connect — the first connection of a restarted
service included — the publisher first backfills each subscribed ticker's trades since the last one it
knows to be published (from its own produce calls, or the seed's highest sequence and its time) from
the REST trades endpoint (`tradepulse.sources.backfill`), in order, through the same dedupe (sequence
mark and event id) and producer; only then does it go on with the live frames, whose overlap with the
backfill is dropped by event id. So each ticker's trades reach Kafka once and in sequence order.
Bounded by `ingest_backfill_max_s`; off for a `*` subscription (one request per ticker of the market).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import SecretStr

from tradepulse.bus.clients import consumer_config, producer_config
from tradepulse.config import Settings
from tradepulse.sources.backfill import BackfillError, TradesRestClient, Window, backfill_window
from tradepulse.sources.massive import MassiveClient, subscription_params
from tradepulse.sources.parse import InvalidEvent, ParsedFrame, Reject, rest_trade_record, rest_trade_reject
from tradepulse.stores.base import DeadLetterQueue
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.topics import QUOTES, TRADES

log = logging.getLogger(__name__)

#: How long the publisher sleeps between checks while the producer queue is full.
BACKPRESSURE_SLEEP_S = 0.005
#: How often delivery reports are served when no frames arrive.
REPORT_INTERVAL_S = 0.05
#: Tickers backfilled at the same time (each pages through its own gap in order).
BACKFILL_CONCURRENCY = 8


@dataclass
class IngestMetrics:
    """Counters of one ingest service. `published`/`failed` come from delivery reports."""

    received: int = 0  # market events in frames (valid or not; status messages excluded)
    produced: int = 0  # handed to the producer
    published: int = 0  # acknowledged by the brokers
    failed: int = 0  # delivery failed (also dead-lettered)
    dead_lettered: int = 0
    duplicates: int = 0  # resent events dropped by id
    backpressure_waits: int = 0  # times produce() found the producer queue full
    reconnects: int = 0
    queue_depth: int = 0  # frames waiting between reader and publisher
    backfilled: int = 0  # trades fetched by REST after a (re)connect and handed to the producer
    backfill_pages: int = 0
    backfill_errors: int = 0  # tickers whose backfill failed (their gap may have lost trades)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def feed_endpoint(settings: Settings) -> tuple[str, Any]:
    """(WebSocket URL, API key) of the configured feed: Massive, or the local simulator without a key."""
    if settings.use_simulator:
        return (
            f"ws://{settings.simulator_host}:{settings.simulator_ws_port}/stocks",
            settings.simulator_api_key,
        )
    return settings.massive_ws_url, settings.massive_api_key


def client_from_settings(
    settings: Settings, url: str | None = None, api_key: Any = None, tickers: Sequence[str] | None = None
) -> MassiveClient:
    """A MassiveClient for the configured (or given) endpoint, subscribed to trades and quotes."""
    default_url, default_key = feed_endpoint(settings)
    return MassiveClient(
        url or default_url,
        api_key if api_key is not None else default_key,
        subscription_params(tickers or settings.tickers),
        backoff_initial_s=settings.massive_reconnect_initial_s,
        backoff_max_s=settings.massive_reconnect_max_s,
        max_connections_retries=settings.massive_max_connections_retries,
        max_frame_bytes=settings.massive_max_frame_bytes,
    )


def rest_endpoint(settings: Settings, client: MassiveClient) -> tuple[str, SecretStr]:
    """(REST base URL, API key) for the trades backfill: Massive's REST API with the feed's key, or, in
    simulator mode, the simulator the client streams from (it answers REST on its WebSocket port)."""
    if settings.use_simulator:
        parts = urlsplit(client.url)
        return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}", client.api_key
    assert settings.massive_api_key is not None
    return settings.massive_rest_url, settings.massive_api_key


class RecentIds:
    """The last `capacity` ids seen, with O(1) membership and eviction."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def seen(self, event_id: str) -> bool:
        """True if `event_id` is in the window; otherwise remember it and return False."""
        if event_id in self._ids:
            return True
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return False


#: Added to `ingest_replay_horizon_s` when seeding: slack for a feed whose resend spans a little more
#: wall time than nominal (e.g. a simulator behind schedule).
SEED_MARGIN_S = 10.0


@dataclass
class Seed:
    """What a starting ingest learns from the topics' tail (`seed_published_sequences`)."""

    #: {topic: {ticker: highest sequence in Kafka}}
    sequences: dict[str, dict[str, int]] = field(default_factory=lambda: {TRADES: {}, QUOTES: {}})
    #: ticker → SIP time (ms) of its highest-sequence trade: where its trades backfill starts
    trade_ms: dict[str, int] = field(default_factory=dict)
    #: Kafka time (ms) the tail was read from; None if the topics are empty. A ticker without a trade
    #: since then has none in Kafka after it either, so its backfill can start there.
    since_ms: int | None = None
    read: int = 0  # records read


def seed_published_sequences(settings: Settings, timeout_s: float = 60.0) -> Seed:
    """Highest sequence per ticker already in market.trades / market.quotes (and the time of each
    ticker's highest trade), and how many records were read to find it.

    Every partition is read by *time*, from (newest record − `ingest_replay_horizon_s` − margin) to its
    end, so a busy partition and a quiet one cover the same span of the feed. A per-ticker high-water
    mark suffices because the feed's sequences increase per ticker and the idempotent producer lands a
    prefix of what it was given in each partition, also when killed: whatever of a replay is at or below
    the mark is in Kafka, whatever is above is not (contiguity is not assumed).
    """
    seed = Seed()
    marks, trade_ms = seed.sequences, seed.trade_ms
    if settings.ingest_replay_horizon_s <= 0:
        return seed
    # read_committed is moot: ingest's producer is idempotent, not transactional, so LSO = high watermark.
    consumer = Consumer(consumer_config(settings, "tradepulse-ingest-seed", **{"enable.partition.eof": True}))
    deadline = time.monotonic() + timeout_s
    try:
        metadata = consumer.list_topics(timeout=10).topics
        ends: dict[tuple[str, int], int] = {}
        for topic in (TRADES, QUOTES):
            for p in metadata[topic].partitions if topic in metadata else ():
                low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
                if high > low:
                    ends[(topic, p)] = high
        if not ends:
            return seed
        last = {k: high - 1 for k, high in ends.items()}
        newest = max((m.timestamp()[1] for m in _read_to_end(consumer, last, deadline)), default=None)
        if newest is None:
            return seed
        since_ms = seed.since_ms = newest - int((settings.ingest_replay_horizon_s + SEED_MARGIN_S) * 1000)
        found = consumer.offsets_for_times(
            [TopicPartition(t, p, since_ms) for t, p in ends], timeout=max(1.0, deadline - time.monotonic())
        )
        # offset -1: no record at or after since_ms in that partition, nothing there can be resent.
        starts = {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
        for message in _read_to_end(consumer, starts, deadline):
            seed.read += 1
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                topic, by_ticker = message.topic(), marks[message.topic()]
                record = orjson.loads(message.value())
                ticker, seq = message.key().decode(), int(record["sequence"])
                if seq > by_ticker.get(ticker, -1):
                    by_ticker[ticker] = seq
                    if topic == TRADES:
                        trade_ms[ticker] = int(record["exchange_ts_ms"])
        return seed
    finally:
        consumer.close()


def _read_to_end(
    consumer: Consumer, starts: dict[tuple[str, int], int], deadline: float
) -> Iterator[Message]:
    """Every record from each partition's start offset to its end (partition EOF), in a stream."""
    pending = set(starts)
    if not pending:
        return
    consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in starts.items()])
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(10_000, timeout=0.5):
            error = message.error()
            if error is None:
                yield message
            elif error.code() == KafkaError._PARTITION_EOF:
                pending.discard((message.topic(), message.partition()))
            elif error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise KafkaException(error)  # no ReadData: fail now, not after the whole timeout
    if pending:
        log.warning("ingest: dedupe seed did not reach the end of %s", sorted(pending))


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    # Right after topics are created the leader may not be known yet (NOT_LEADER_FOR_PARTITION): retry.
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class IngestService:
    """Streams the Massive feed into Kafka. `await run()`; `await stop()` ends it after draining."""

    def __init__(
        self,
        settings: Settings,
        *,
        dlq: DeadLetterQueue,
        client: MassiveClient | None = None,
        producer_overrides: dict[str, Any] | None = None,
        on_ack_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.dlq = dlq
        self.client = client or client_from_settings(settings)
        self._rest: TradesRestClient | None = None  # built in run(): it belongs to the running loop
        # ticker → (SIP ms, sequence) of its newest trade known to be published: where a backfill starts.
        self._last_trade: dict[str, tuple[int, int]] = {}
        # Since when (ms) a trade of any subscribed ticker would have been seen (see Seed.since_ms).
        self._floor_ms: int | None = None
        self._connection = 0  # the client connection whose frames are being published
        self._producer = Producer(
            producer_config(settings, on_delivery=self._on_delivery, **(producer_overrides or {}))
        )
        self._on_ack_latency = on_ack_latency
        self._queue: asyncio.Queue[ParsedFrame | None] = asyncio.Queue(maxsize=settings.ingest_queue_frames)
        self._recent = RecentIds(settings.ingest_dedupe_window)
        # Per topic, ticker → highest sequence already in Kafka when this service started (see run()).
        self._published: dict[str, dict[str, int]] = {TRADES: {}, QUOTES: {}}
        self._failed_deliveries: list[Reject] = []
        self._metrics = IngestMetrics()
        subscribed = {sub.split(".", 1)[-1] for sub in self.client.subscriptions}
        self._tickers: set[str] | None = None if "*" in subscribed else subscribed

    @property
    def metrics(self) -> IngestMetrics:
        """Current counters (reconnects and queue depth are refreshed on read)."""
        self._metrics.reconnects = self.client.stats.reconnects
        self._metrics.queue_depth = self._queue.qsize()
        return self._metrics

    async def run(self) -> None:
        """Stream until `stop()` (returns after flushing) or a fatal feed error (raised after flushing)."""
        started = time.monotonic()
        seed = await asyncio.to_thread(seed_published_sequences, self.settings)
        self._published = seed.sequences
        for ticker, ms in seed.trade_ms.items():
            self._last_trade[ticker] = (ms, seed.sequences[TRADES][ticker])
        self._floor_ms = seed.since_ms
        if seed.read:
            log.info(
                "ingest: %d tickers already in Kafka (read %d records of the last %.0f s + %.0f s in %.2f s)",
                sum(map(len, self._published.values())),
                seed.read,
                self.settings.ingest_replay_horizon_s,
                SEED_MARGIN_S,
                time.monotonic() - started,
            )
        if self.settings.ingest_backfill_max_s > 0 and self._tickers is not None:
            base_url, key = rest_endpoint(self.settings, self.client)
            self._rest = TradesRestClient(base_url, key, page_limit=self.settings.ingest_backfill_page_limit)
        elif self.settings.ingest_backfill_max_s > 0:
            log.warning("ingest: no trades backfill for a '*' subscription (one REST request per ticker)")
        reader = asyncio.create_task(self._read(), name="ingest-reader")
        publisher = asyncio.create_task(self._publish(), name="ingest-publisher")
        reports = asyncio.create_task(self._serve_reports(), name="ingest-delivery-reports")
        try:
            await asyncio.wait({reader, publisher}, return_when=asyncio.FIRST_EXCEPTION)
            if publisher.done():  # it only ends before the reader on an error: nobody drains the queue
                reader.cancel()
            # A finished reader has queued the end marker, so the publisher drains what was received.
            await asyncio.gather(reader, publisher, return_exceptions=True)
        finally:
            for task in (reader, publisher, reports):
                task.cancel()
            await asyncio.gather(reader, publisher, reports, return_exceptions=True)
            await asyncio.to_thread(self._producer.flush, 30)
            self._dead_letter_failed_deliveries()
            self._producer.close()
            if self._rest is not None:
                await self._rest.aclose()
        for task in (reader, publisher):
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Close the feed; frames already received are still published."""
        await self.client.close()

    async def _read(self) -> None:
        try:
            async for frame in self.client.frames():
                await self._queue.put(frame)  # blocks when the publisher is behind: backpressure
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await self._queue.put(None)

    async def _publish(self) -> None:
        queue, metrics, recent, tickers = self._queue, self._metrics, self._recent, self._tickers
        produce, poll = self._producer.produce, self._producer.poll
        last_trade = self._last_trade
        while (frame := await queue.get()) is not None:
            if frame.connection != self._connection:
                # The first frame of a new connection: the subscription is live, so what the feed did not
                # send since the last published trade is on the REST tape now. Fill that first.
                self._connection = frame.connection
                await self._backfill()
            metrics.received += frame.events
            for topic, records in ((TRADES, frame.trades), (QUOTES, frame.quotes)):
                published = self._published[topic]
                for record in records:
                    if tickers is not None and record["ticker"] not in tickers:
                        frame.rejects.append(_unknown_ticker(record, topic))
                        continue
                    # A feed's replay to this (restarted) service: at or below the mark it is in Kafka.
                    # Resends after a reconnect of this service are caught by the id window.
                    if record["sequence"] <= published.get(record["ticker"], -1) or recent.seen(
                        record["event_id"]
                    ):
                        metrics.duplicates += 1
                        continue
                    value, key = orjson.dumps(record), record["ticker"]
                    try:
                        produce(topic, value, key)
                    except BufferError:
                        await self._wait_for_room(topic, value, key)
                    metrics.produced += 1
                    if topic == TRADES:
                        last_trade[key] = (record["exchange_ts_ms"], record["sequence"])
            if frame.rejects:
                self._dead_letter(frame.rejects)
            poll(0)  # serve delivery reports
            if self._failed_deliveries:
                self._dead_letter_failed_deliveries()

    async def _backfill(self) -> None:
        """Publish each subscribed ticker's trades missed before this connection (see the module doc)."""
        if self._rest is None or self._tickers is None:
            return
        now_ms = time.time_ns() // 1_000_000
        max_s = self.settings.ingest_backfill_max_s
        windows: dict[str, Window] = {}
        for ticker in sorted(self._tickers):
            last = self._last_trade.get(ticker)
            window = backfill_window(last[0] if last else None, self._floor_ms, now_ms, max_s)
            if window is not None:
                windows[ticker] = window
        if self._floor_ms is None:
            # A fresh start with nothing in Kafka: no gap yet. From now on every trade would be seen.
            self._floor_ms = now_ms
        if not windows:
            return
        clipped = sorted(t for t, w in windows.items() if w.clipped)
        if clipped:
            log.warning(
                "ingest: backfill reaches back only %.0f s (ingest_backfill_max_s): trades of %s before %s "
                "are not fetched",
                max_s,
                ", ".join(clipped[:10]) + (f" (+{len(clipped) - 10})" if len(clipped) > 10 else ""),
                _iso(now_ms - int(max_s * 1000)),
            )
        started, before = time.monotonic(), (self._metrics.backfilled, self._metrics.backfill_pages)
        duplicates = self._metrics.duplicates
        gate = asyncio.Semaphore(BACKFILL_CONCURRENCY)
        await asyncio.gather(*(self._backfill_ticker(t, w, gate) for t, w in windows.items()))
        log.info(
            "ingest: backfilled connection %d: %d tickers, %d pages, %d trades published, %d already in "
            "Kafka, %d failed, %.2f s (from %s)",
            self._connection,
            len(windows),
            self._metrics.backfill_pages - before[1],
            self._metrics.backfilled - before[0],
            self._metrics.duplicates - duplicates,
            self._metrics.backfill_errors,
            time.monotonic() - started,
            _iso(min(w.start_ms for w in windows.values())),
        )

    async def _backfill_ticker(self, ticker: str, window: Window, gate: asyncio.Semaphore) -> None:
        assert self._rest is not None
        metrics, recent, last_trade = self._metrics, self._recent, self._last_trade
        # At or below the last published sequence: in Kafka (the window starts at that trade's millisecond).
        # Fixed for the whole backfill, so REST's time order need not be sequence order.
        mark = last_trade[ticker][1] if ticker in last_trade else -1
        async with gate:
            try:
                async for page in self._rest.pages(
                    ticker, window.start_ms * 1_000_000, window.end_ms * 1_000_000 + 999_999
                ):
                    metrics.backfill_pages += 1
                    received_ts_us = time.time_ns() // 1000
                    rejects: list[Reject] = []
                    for result in page:
                        try:
                            record = rest_trade_record(ticker, result, received_ts_us)
                        except (InvalidEvent, KeyError, TypeError) as exc:
                            rejects.append(rest_trade_reject(ticker, result, exc))
                            continue
                        # The id window catches what this connection's live stream already had.
                        if record["sequence"] <= mark or recent.seen(record["event_id"]):
                            metrics.duplicates += 1
                            continue
                        value = orjson.dumps(record)
                        try:
                            self._producer.produce(TRADES, value, ticker)
                        except BufferError:
                            await self._wait_for_room(TRADES, value, ticker)
                        metrics.produced += 1
                        metrics.backfilled += 1
                        if ticker not in last_trade or record["sequence"] > last_trade[ticker][1]:
                            last_trade[ticker] = (record["exchange_ts_ms"], record["sequence"])
                    if rejects:
                        for reject in rejects:
                            reject.topic = TRADES
                        self._dead_letter(rejects)
                    self._producer.poll(0)
            except (BackfillError, httpx.HTTPError) as exc:
                metrics.backfill_errors += 1
                log.error(
                    "ingest: backfill of %s failed (%s); its trades since %s may be missing",
                    ticker,
                    exc,
                    _iso(last_trade[ticker][0] if ticker in last_trade else window.start_ms),
                )

    async def _serve_reports(self) -> None:
        """Delivery reports arrive only through poll(): the publisher polls after every frame, this
        covers quiet periods so the last acks of a burst are counted without waiting for traffic."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            self._producer.poll(0)
            if self._failed_deliveries:
                self._dead_letter_failed_deliveries()

    async def _wait_for_room(self, topic: str, value: bytes, key: str) -> None:
        """Producer queue full: serve delivery reports and yield until the message fits. While we
        wait the reader fills the bounded hand-off queue and then stops reading the socket."""
        self._metrics.backpressure_waits += 1
        while True:
            self._producer.poll(0)
            await asyncio.sleep(BACKPRESSURE_SLEEP_S)
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                continue

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._metrics.published += 1
            if self._on_ack_latency is not None:
                self._on_ack_latency(msg.latency())
            return
        self._metrics.failed += 1
        key = msg.key()
        self._failed_deliveries.append(
            Reject(
                msg.value(),
                f"delivery to {msg.topic()} failed: {err.str()}",
                "DeliveryFailed",
                key.decode() if key else None,
                topic=msg.topic(),
            )
        )

    def _dead_letter(self, rejects: list[Reject]) -> None:
        self.dlq.put(
            [
                make_dead_letter(
                    stage="ingest",
                    payload=r.payload,
                    error_type=r.error_type,
                    reason=r.reason,
                    source_topic=r.topic,
                    ticker=r.ticker,
                )
                for r in rejects
            ]
        )
        self._metrics.dead_lettered += len(rejects)
        for reject in rejects[:3]:  # enough to diagnose; the DLQ has them all
            log.warning("ingest: dead-lettered %s: %s", reject.error_type, reject.reason)

    def _dead_letter_failed_deliveries(self) -> None:
        failed, self._failed_deliveries = self._failed_deliveries, []
        if failed:
            self._dead_letter(failed)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _unknown_ticker(record: dict[str, Any], topic: str) -> Reject:
    return Reject(
        orjson.dumps(record),
        f"ticker {record['ticker']!r} is not among the subscribed tickers",
        "UnknownTicker",
        record["ticker"],
        topic=topic,
    )
