"""Ingest service: Massive WebSocket → validated trades/quotes → Kafka (`market.trades`, `market.quotes`).

Two asyncio tasks joined by a bounded queue of parsed frames:

    socket reader (MassiveClient.frames) ──► asyncio.Queue(maxsize=N frames) ──► publisher (Producer)

Backpressure: when librdkafka's local queue is full, `produce()` raises BufferError. The publisher then
serves delivery reports (`poll`) and waits until there is room — it never drops. Meanwhile the reader
fills the hand-off queue and then blocks on it, so the socket is no longer read and the server is
slowed by TCP flow control. Memory stays bounded by the producer queue plus N frames.

Invalid events go to the dead-letter queue with their raw payload and reason; the stream continues. So do
events of a ticker the service did not subscribe to (`UnknownTicker`; not checked for a `*` subscription).
Events already published are dropped — the idempotent producer only dedupes its own retries — by two
means. Per topic and ticker a *mark*, the (sequence, exchange time) of the newest record published: a
feed's resend after a reconnect is everything at or below the marks as they were when the connection's
events began (`covered`). On start the marks come from the topics' tail, read by time
(`ingest_replay_horizon_s`, `seed_published_sequences`), so a feed that replays recent events to a
restarted ingest (after a crash) gets exactly the ones its killed predecessor never got into Kafka
published. And a bounded window of recent event ids, for what the marks cannot tell: the overlap of a
backfill with the live stream that follows it (REST may lack a trade the live stream has, so a live
trade below the backfill's newest one is not necessarily a copy).

The real Massive feed replays nothing, so after every (re)connect — the first connection of a restarted
service included — the publisher first backfills each subscribed ticker's trades since the last one it
knows to be published (from its own produce calls, or the seed's highest sequence and its time) from
the REST trades endpoint (`tradepulse.sources.backfill`), in order, through the same dedupe (sequence
mark and event id) and producer; only then does it go on with the live frames, whose overlap with the
backfill is dropped by event id. So each ticker's trades reach Kafka once and in sequence order.
The backfill runs at the connection's first events and reaches up to their exchange time: the feed's
clock, not the wall clock, so a delayed feed, a replayed day or a simulator behind schedule is covered
like the live feed (on the wall clock it was not, and a starved restart lost trades: postmortem 4).
Bounded by `ingest_backfill_max_s` of feed time; off for a `*` subscription (one request per ticker).

Why one module of this size: the reader, the publisher, the backfill after every (re)connect and the
dedupe marks are one no-loss/no-duplicate argument (docs/postmortem.md section 4) whose invariants
must be read together; the parsing (`parse.py`), the REST backfill client (`backfill.py`) and the
WebSocket client (`massive.py`) already live apart.
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
from tradepulse.topics import QUOTES, TRADES, VENDOR_BARS

log = logging.getLogger(__name__)

#: How long the publisher sleeps between checks while the producer queue is full.
BACKPRESSURE_SLEEP_S = 0.005
#: How often delivery reports are served when no frames arrive.
REPORT_INTERVAL_S = 0.05
#: How long a stopping service waits for the brokers to acknowledge what it produced.
FLUSH_TIMEOUT_S = 30.0
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
    aggregates: int = 0  # the vendor's `AM` aggregates handed to the producer (market.vendor_bars)
    aggregates_published: int = 0  # ... and acknowledged (not in `published`: trades and quotes)

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
    """A MassiveClient for the configured (or given) endpoint, subscribed to trades and quotes, and to
    the per-minute aggregates (`AM`, the bar reconciliation's reference) if `vendor_bars` is on."""
    default_url, default_key = feed_endpoint(settings)
    channels = ("T", "Q", "AM") if settings.vendor_bars_enabled else ("T", "Q")
    return MassiveClient(
        url or default_url,
        api_key if api_key is not None else default_key,
        subscription_params(tickers or settings.tickers, channels),
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


#: (sequence, exchange time in ms) of the newest record of a ticker known to be in Kafka or on its way.
Mark = tuple[int, int]


def covered(mark: Mark | None, sequence: int, ts_ms: int) -> bool:
    """Whether a record is at or below `mark`, i.e. already published. Both must hold: sequence numbers
    restart every day, so a lower sequence with a later time is the next day's trade, not a resend."""
    return mark is not None and sequence <= mark[0] and ts_ms <= mark[1]


def advance(marks: dict[str, Mark], ticker: str, sequence: int, ts_ms: int) -> None:
    """Move `ticker`'s mark to the record if it is newer: by time first (a day's restart of the
    sequences is newer), then by sequence."""
    mark = marks.get(ticker)
    if mark is None or (ts_ms, sequence) > (mark[1], mark[0]):
        marks[ticker] = (sequence, ts_ms)


#: Added to `ingest_replay_horizon_s` when seeding: slack for a feed whose resend spans a little more
#: wall time than nominal (e.g. a simulator behind schedule).
SEED_MARGIN_S = 10.0


@dataclass
class Seed:
    """What a starting ingest learns from the topics' tail (`seed_published_sequences`)."""

    #: {topic: {ticker: mark of its newest record in Kafka}}; a trade mark is where its backfill starts
    marks: dict[str, dict[str, Mark]] = field(default_factory=lambda: {TRADES: {}, QUOTES: {}})
    #: Feed (exchange) time of the oldest record read from the tail; None if the topics are empty. A
    #: ticker without a trade in the tail has none in Kafka after it either, so its backfill can start
    #: there. Feed time, not Kafka time: backfill windows are on the feed's clock (see `_backfill`).
    floor_ms: int | None = None
    read: int = 0  # records read


def seed_published_sequences(settings: Settings, timeout_s: float = 60.0) -> Seed:
    """The mark (sequence and time of the newest record) per ticker already in market.trades /
    market.quotes, and how many records were read to find it.

    Every partition is read by *time*, from (newest record − `ingest_replay_horizon_s` − margin) to its
    end, so a busy partition and a quiet one cover the same span of the feed. A per-ticker high-water
    mark suffices because the feed's sequences increase per ticker and the idempotent producer lands a
    prefix of what it was given in each partition, also when killed: whatever of a replay is at or below
    the mark is in Kafka, whatever is above is not (contiguity is not assumed).
    """
    seed = Seed()
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
        since_ms = newest - int((settings.ingest_replay_horizon_s + SEED_MARGIN_S) * 1000)
        found = consumer.offsets_for_times(
            [TopicPartition(t, p, since_ms) for t, p in ends], timeout=max(1.0, deadline - time.monotonic())
        )
        # offset -1: no record at or after since_ms in that partition, nothing there can be resent.
        starts = {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
        for message in _read_to_end(consumer, starts, deadline):
            seed.read += 1
            source, key, value = message.topic(), message.key(), message.value()
            if source is None or key is None or value is None:
                continue  # not one of our records (they all have a key and a value)
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                record = orjson.loads(value)
                ticker, seq, ms = (
                    key.decode(),
                    int(record["sequence"]),
                    int(record["exchange_ts_ms"]),
                )
                if seed.floor_ms is None or ms < seed.floor_ms:
                    seed.floor_ms = ms
                advance(seed.marks[source], ticker, seq, ms)
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
        # Per topic, ticker → mark of its newest record published (the seed's, then every produce's);
        # a trade mark is also where the ticker's next backfill starts.
        self._marks: dict[str, dict[str, Mark]] = {TRADES: {}, QUOTES: {}}
        # The marks as they were when the current connection's events began: its resends are below them.
        self._resend_marks: dict[str, dict[str, Mark]] = {TRADES: {}, QUOTES: {}}
        # Since when (feed ms) a trade of any subscribed ticker would have been seen (see Seed.floor_ms).
        self._floor_ms: int | None = None
        self._connection = 0  # the client connection whose frames are being published
        self._producer = Producer(
            producer_config(settings, on_delivery=self._on_delivery, **(producer_overrides or {}))
        )
        self._on_ack_latency = on_ack_latency
        self._queue: asyncio.Queue[ParsedFrame | None] = asyncio.Queue(maxsize=settings.ingest_queue_frames)
        self._recent = RecentIds(settings.ingest_dedupe_window)
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
        self._marks = seed.marks
        self._floor_ms = seed.floor_ms
        if seed.read:
            log.info(
                "ingest: %d tickers already in Kafka (read %d records of the last %.0f s + %.0f s in %.2f s)",
                sum(map(len, self._marks.values())),
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
            undelivered = await asyncio.to_thread(self._producer.flush, FLUSH_TIMEOUT_S)
            if undelivered:
                # Not lost for good: what is not in Kafka is above the next start's marks, so its trades
                # are backfilled then. Said loudly, since quotes are not.
                log.error(
                    "ingest: %d messages still undelivered after %.0f s at shutdown; the next start "
                    "backfills the trades among them",
                    undelivered,
                    FLUSH_TIMEOUT_S,
                )
            self._dead_letter_failed_deliveries()
            self._producer.close()
            if self._rest is not None:
                await self._rest.aclose()
        for task in (reader, publisher):
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

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
        marks = self._marks
        while (frame := await queue.get()) is not None:
            if frame.connection != self._connection and (frame.trades or frame.quotes):
                # The first events of a new connection: the subscription is live, so what the feed did not
                # send since the last published trade is on the REST tape now. Fill that first, up to the
                # feed's own clock (its newest event time here), not the wall clock: a feed that replays
                # the past or runs behind must be backfilled all the same. Whatever this connection
                # resends is below the marks as they are now, before the backfill (a live trade below a
                # backfilled one may be one that REST lacked: the id window decides those).
                self._connection = frame.connection
                self._resend_marks = {topic: dict(by_ticker) for topic, by_ticker in marks.items()}
                await self._backfill(feed_time_ms(frame))
            metrics.received += frame.events
            for topic, records in ((TRADES, frame.trades), (QUOTES, frame.quotes)):
                resent, published = self._resend_marks[topic], marks[topic]
                for record in records:
                    key, sequence, ts_ms = record["ticker"], record["sequence"], record["exchange_ts_ms"]
                    if tickers is not None and key not in tickers:
                        frame.rejects.append(_unknown_ticker(record, topic))
                        continue
                    if covered(resent.get(key), sequence, ts_ms) or recent.seen(record["event_id"]):
                        metrics.duplicates += 1
                        continue
                    value = orjson.dumps(record)
                    try:
                        produce(topic, value, key)
                    except BufferError:
                        await self._wait_for_room(topic, value, key)
                    metrics.produced += 1
                    advance(published, key, sequence, ts_ms)
            for record in frame.aggregates:
                # The vendor's bars: a reference only (no marks, no backfill); a resent one is the same
                # (ticker, minute), which the reconciliation keys on.
                await self._publish_aggregate(record, tickers, frame.rejects)
            if frame.rejects:
                self._dead_letter(frame.rejects)
            poll(0)  # serve delivery reports
            if self._failed_deliveries:
                self._dead_letter_failed_deliveries()

    async def _backfill(self, now_ms: int) -> None:
        """Publish each subscribed ticker's trades missed before this connection (see the module doc):
        those after its last published trade up to `now_ms`, the feed time of the connection's first
        events (the live stream has everything after it; the overlap is dropped by event id)."""
        if self._rest is None or self._tickers is None:
            return
        max_s = self.settings.ingest_backfill_max_s
        windows: dict[str, Window] = {}
        for ticker in sorted(self._tickers):
            last = self._marks[TRADES].get(ticker)
            window = backfill_window(last[1] if last else None, self._floor_ms, now_ms, max_s)
            if window is not None:
                windows[ticker] = window
        if self._floor_ms is None:
            # A fresh start with nothing in Kafka: no gap yet. From now (feed time) every trade is seen.
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
        metrics, recent, marks = self._metrics, self._recent, self._marks[TRADES]
        # At or below the last published trade: in Kafka (the window starts at that trade's millisecond).
        # Fixed for the whole backfill, so REST's time order need not be sequence order.
        mark = marks.get(ticker)
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
                        sequence, ts_ms = record["sequence"], record["exchange_ts_ms"]
                        if covered(mark, sequence, ts_ms) or recent.seen(record["event_id"]):
                            metrics.duplicates += 1
                            continue
                        value = orjson.dumps(record)
                        try:
                            self._producer.produce(TRADES, value, ticker)
                        except BufferError:
                            await self._wait_for_room(TRADES, value, ticker)
                        metrics.produced += 1
                        metrics.backfilled += 1
                        advance(marks, ticker, sequence, ts_ms)
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
                    _iso(marks[ticker][1] if ticker in marks else window.start_ms),
                )

    async def _serve_reports(self) -> None:
        """Delivery reports arrive only through poll(): the publisher polls after every frame, this
        covers quiet periods so the last acks of a burst are counted without waiting for traffic."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            self._producer.poll(0)
            if self._failed_deliveries:
                self._dead_letter_failed_deliveries()

    async def _publish_aggregate(
        self, record: dict[str, Any], tickers: set[str] | None, rejects: list[Reject]
    ) -> None:
        """Publish one `AM` aggregate to market.vendor_bars, keyed by ticker like the trades."""
        key = record["ticker"]
        if tickers is not None and key not in tickers:
            rejects.append(_unknown_ticker(record, VENDOR_BARS))
            return
        value = orjson.dumps(record)
        while True:
            try:
                self._producer.produce(VENDOR_BARS, value, key, on_delivery=self._on_aggregate_delivery)
                break
            except BufferError:  # producer queue full: as `_wait_for_room`, with this callback
                self._producer.poll(0)
                await asyncio.sleep(BACKPRESSURE_SLEEP_S)
        self._metrics.aggregates += 1

    def _on_aggregate_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._metrics.aggregates_published += 1
        else:
            self._on_delivery(err, msg)  # dead-lettered like a trade

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
            latency = msg.latency()  # set on every acknowledged message
            if self._on_ack_latency is not None and latency is not None:
                self._on_ack_latency(latency)
            return
        self._metrics.failed += 1
        key = msg.key()
        self._failed_deliveries.append(
            Reject(
                msg.value() or b"",
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


def feed_time_ms(frame: ParsedFrame) -> int:
    """The feed's clock as of `frame`: the newest exchange (SIP) time of its trades and quotes."""
    return max(r["exchange_ts_ms"] for records in (frame.trades, frame.quotes) for r in records)


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
