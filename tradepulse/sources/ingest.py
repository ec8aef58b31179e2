"""Ingest service: Massive WebSocket → validated trades/quotes → Kafka (`market.trades`, `market.quotes`).

Two asyncio tasks joined by a bounded queue of parsed frames:

    socket reader (MassiveClient.frames) ──► asyncio.Queue(maxsize=N frames) ──► publisher (Producer)

Backpressure: when librdkafka's local queue is full, `produce()` raises BufferError. The publisher then
serves delivery reports (`poll`) and waits until there is room — it never drops. Meanwhile the reader
fills the hand-off queue and then blocks on it, so the socket is no longer read and the server is
slowed by TCP flow control. Memory stays bounded by the producer queue plus N frames.

Latency: a frame with no other frame queued behind it is sent as soon as its records are produced
(`flush`, at most `ingest_linger_ms`), not after librdkafka's linger: nothing more will join its
requests. The linger only batches the frames of a backlog (queued behind one another), which is when
fewer, larger requests save the CPU a busy box needs.

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
The seed finds each subscribed ticker's own last trade, reading market.trades further back than the
tail where needed: a killed backfill leaves some tickers filled and others not (postmortem 5).
The backfill runs at the connection's first events and reaches up to their exchange time: the feed's
clock, not the wall clock, so a delayed feed, a replayed day or a simulator behind schedule is covered
like the live feed (on the wall clock it was not, and a starved restart lost trades: postmortem 4). A
stream that falls silent for `QUIET_BACKFILL_S` — a new connection after subscribing (the market
closed, a replay that ended), or one that stopped sending while the market went on — is backfilled up to
REST's newest trade instead of waiting for an event that may never come.
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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
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
#: How long the stream may stay silent (after events or a new subscription) before a backfill up to REST's
#: newest trade: once per silent spell.
QUIET_BACKFILL_S = 2.0
#: Per REST request: a page of 50,000 trades from a busy server takes seconds (the busy chaos run timed
#: out at 10 s, four times in a row).
BACKFILL_TIMEOUT_S = 30.0
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


#: (oldest, newest) exchange time (ms) among records read.
FeedSpan = tuple[int, int]

#: Added to `ingest_replay_horizon_s` when seeding: slack for a feed whose resend spans a little more
#: wall time than nominal (e.g. a simulator behind schedule).
SEED_MARGIN_S = 10.0


@dataclass
class Seed:
    """What a starting ingest learns from the topics (`seed_published_sequences`)."""

    #: {topic: {ticker: mark of its newest record in Kafka}}; a trade mark is where its backfill starts
    marks: dict[str, dict[str, Mark]] = field(default_factory=lambda: {TRADES: {}, QUOTES: {}})
    #: Feed time from which a subscribed ticker without a trade mark is known to have had no trade in
    #: Kafka: None if the topics are empty (there is no gap yet); otherwise 0, since such a ticker was not
    #: found within the scan's reach (`ingest_backfill_max_s`), so its backfill reaches back as far as
    #: backfills do. (The oldest exchange time of the tail was used before, and lost trades: postmortem 5.)
    floor_ms: int | None = None
    read: int = 0  # records read


def seed_published_sequences(
    settings: Settings, tickers: Collection[str] | None = None, timeout_s: float = 60.0
) -> Seed:
    """The mark (sequence and time of the newest record) per ticker already in market.trades /
    market.quotes, and how many records were read to find it.

    First every partition is read by *time*, from (newest record − `ingest_replay_horizon_s` − margin) to
    its end, so a busy partition and a quiet one cover the same span of the feed: the marks that tell a
    feed's resend from new events. A per-ticker high-water mark suffices because the feed's sequences
    increase per ticker and the idempotent producer lands a prefix of what it was given in each
    partition, also when killed: whatever of a replay is at or below the mark is in Kafka, whatever is
    above is not (contiguity is not assumed).

    Then, for each of `tickers` (the subscribed ones) without a trade in that tail, market.trades is read
    further back, in spans doubling towards the partitions' start, until its newest trade is found: that
    is where its backfill must start. A ticker absent from the tail is not thereby complete up to the
    tail: a killed ingest may have backfilled some tickers and not others. The scan gives up on a ticker
    once it has covered `ingest_backfill_max_s` (plus margin) of both broker and feed time, beyond which
    a backfill is clipped anyway.
    """
    seed = Seed()
    if settings.ingest_replay_horizon_s <= 0:
        return seed
    # read_committed is moot: ingest's producer is idempotent, not transactional, so LSO = high watermark.
    consumer = Consumer(consumer_config(settings, "tradepulse-ingest-seed", **{"enable.partition.eof": True}))
    deadline = time.monotonic() + timeout_s
    try:
        metadata = consumer.list_topics(timeout=10).topics
        ranges: dict[tuple[str, int], tuple[int, int]] = {}
        for topic in (TRADES, QUOTES):
            for p in metadata[topic].partitions if topic in metadata else ():
                low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
                if high > low:
                    ranges[(topic, p)] = (low, high)
        if not ranges:
            return seed
        seed.floor_ms = 0
        last = {k: high - 1 for k, (_, high) in ranges.items()}
        newest = max((m.timestamp()[1] for m in _read_range(consumer, last, {}, deadline)), default=None)
        if newest is None:
            return seed
        span_ms = int((settings.ingest_replay_horizon_s + SEED_MARGIN_S) * 1000)
        starts = _offsets_at(consumer, ranges, newest - span_ms, deadline)
        feed = _read_marks(seed, _read_range(consumer, starts, {}, deadline), None)
        missing = set(tickers or ()) - seed.marks[TRADES].keys()
        # The deep scan, market.trades only: `ends` = where the part read so far begins, per partition.
        reach_ms = int((settings.ingest_backfill_max_s + SEED_MARGIN_S) * 1000)
        ends = {k: starts.get(k, high) for k, (_, high) in ranges.items() if k[0] == TRADES}
        while missing and any(ends[k] > ranges[k][0] for k in ends) and time.monotonic() < deadline:
            if span_ms >= reach_ms and feed is not None and feed[1] - feed[0] >= reach_ms:
                break
            span_ms *= 2
            begins = _offsets_at(consumer, {k: ranges[k] for k in ends}, newest - span_ms, deadline)
            chunk = {k: begins.get(k, end) for k, end in ends.items() if begins.get(k, end) < end}
            feed = _read_marks(seed, _read_range(consumer, chunk, ends, deadline), feed)
            missing -= seed.marks[TRADES].keys()
            ends.update(chunk)
        if missing:
            log.info(
                "ingest: no trade of %s in Kafka's last %.0f s: backfilling them from %.0f s back",
                ", ".join(sorted(missing)),
                span_ms / 1000,
                settings.ingest_backfill_max_s,
            )
        return seed
    finally:
        consumer.close()


def _offsets_at(
    consumer: Consumer, ranges: dict[tuple[str, int], tuple[int, int]], since_ms: int, deadline: float
) -> dict[tuple[str, int], int]:
    """Per partition, the first offset with a broker timestamp ≥ `since_ms` (its start if `since_ms` is
    before everything); partitions with no record that new are left out."""
    found = consumer.offsets_for_times(
        [TopicPartition(t, p, max(since_ms, 0)) for t, p in ranges],
        timeout=max(1.0, deadline - time.monotonic()),
    )
    # offset -1: no record at or after since_ms in that partition.
    return {
        (tp.topic, tp.partition): max(tp.offset, ranges[(tp.topic, tp.partition)][0])
        for tp in found
        if tp.offset >= 0
    }


def _read_marks(seed: Seed, messages: Iterable[Message], feed: FeedSpan | None) -> FeedSpan | None:
    """Advance the seed's marks over `messages`; `feed` widened by the exchange times read."""
    for message in messages:
        seed.read += 1
        source, key, value = message.topic(), message.key(), message.value()
        if source is None or key is None or value is None:
            continue  # not one of our records (they all have a key and a value)
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            record = orjson.loads(value)
            ticker, seq, ms = key.decode(), int(record["sequence"]), int(record["exchange_ts_ms"])
            feed = (ms, ms) if feed is None else (min(feed[0], ms), max(feed[1], ms))
            advance(seed.marks[source], ticker, seq, ms)
    return feed


def _read_range(
    consumer: Consumer,
    starts: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int],
    deadline: float,
) -> Iterator[Message]:
    """Every record from each partition's start offset up to its end offset (exclusive; the partition's
    end where none is given), in a stream."""
    pending = set(starts)
    if not pending:
        return
    consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in starts.items()])
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(10_000, timeout=0.5):
            error, where = message.error(), (message.topic() or "", message.partition() or 0)
            if error is None:
                offset, end = message.offset() or 0, ends.get(where)
                if end is None or offset < end:
                    yield message
                if end is not None and offset >= end - 1:
                    pending.discard(where)
            elif error.code() == KafkaError._PARTITION_EOF:
                pending.discard(where)
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
            producer_config(
                settings,
                on_delivery=self._on_delivery,
                **{"linger.ms": settings.ingest_linger_ms, **(producer_overrides or {})},
            )
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
        seed = await asyncio.to_thread(seed_published_sequences, self.settings, self._tickers)
        self._marks = seed.marks
        self._floor_ms = seed.floor_ms
        if seed.read:
            log.info(
                "ingest: trades of %d and quotes of %d tickers already in Kafka (read %d records of the last "
                "%.0f s + %.0f s in %.2f s)",
                len(self._marks[TRADES]),
                len(self._marks[QUOTES]),
                seed.read,
                self.settings.ingest_replay_horizon_s,
                SEED_MARGIN_S,
                time.monotonic() - started,
            )
        if self.settings.ingest_backfill_max_s > 0 and self._tickers is not None:
            base_url, key = rest_endpoint(self.settings, self.client)
            self._rest = TradesRestClient(
                base_url,
                key,
                page_limit=self.settings.ingest_backfill_page_limit,
                timeout_s=BACKFILL_TIMEOUT_S,
                # Transient failures are retried as long as the gap is worth fetching: giving up loses it
                # (a live trade of the ticker then moves its mark past the gap).
                retry_deadline_s=self.settings.ingest_backfill_max_s,
            )
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
        produce, poll, flush = self._producer.produce, self._producer.poll, self._producer.flush
        flush_s = self.settings.ingest_linger_ms / 1000
        marks = self._marks
        pending: int | None = None  # a new connection, subscribed, that has sent no events yet
        # Whether a silent spell of QUIET_BACKFILL_S is to trigger a backfill: set by events (or a new
        # subscription), cleared by the backfill, so each spell of silence costs one round of requests.
        armed = False
        while True:
            try:
                async with asyncio.timeout(QUIET_BACKFILL_S if armed else None):
                    frame = await queue.get()
            except TimeoutError:
                # A silent feed (the market closed, a replay that ended, a stream that stopped sending
                # while the market went on) gives no clock to backfill up to and may never send again:
                # fetch whatever REST has beyond the last published trades now.
                if pending is not None:
                    await self._begin_connection(pending, None)
                    pending = None
                else:
                    await self._backfill(None)
                armed = False
                continue
            if frame is None:
                break
            if frame.connection != self._connection and frame.connection != pending:
                pending = frame.connection
            if pending is not None and (frame.trades or frame.quotes):
                await self._begin_connection(pending, feed_time_ms(frame))
                pending = None
            armed |= pending is not None or bool(frame.trades or frame.quotes)
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
            if flush_s > 0 and queue.empty():
                # No frame is queued behind this one, so no record will join its requests while they
                # linger: send them now. librdkafka ignores linger.ms while flush() runs, which returns
                # once the broker has acknowledged them (or after `flush_s`, the linger they would have
                # waited anyway) and serves delivery reports as poll() does.
                flush(flush_s)
            else:
                poll(0)  # serve delivery reports
            if self._failed_deliveries:
                self._dead_letter_failed_deliveries()

    async def _begin_connection(self, connection: int, now_ms: int | None) -> None:
        """Take connection `connection`'s events from now on, after backfilling what the feed did not send
        since the last published trade: its subscription is live, so that is on the REST tape now. Up to
        the feed's own clock, `now_ms` (the connection's newest event time), not the wall clock: a feed
        that replays the past or runs behind must be backfilled all the same; None for a quiet connection
        (everything REST has). Whatever this connection resends is below the marks as they are now, before
        the backfill (a live trade below a backfilled one may be one that REST lacked: the id window
        decides those)."""
        self._connection = connection
        self._resend_marks = {topic: dict(by_ticker) for topic, by_ticker in self._marks.items()}
        await self._backfill(now_ms)

    async def _backfill(self, now_ms: int | None) -> None:
        """Publish each subscribed ticker's trades missed before this connection (see the module doc):
        those after its last published trade up to `now_ms`, the feed time of the connection's first
        events (the live stream has everything after it; the overlap is dropped by event id); None: up to
        REST's newest trade, with the horizon counted back from the newest feed time known."""
        if self._rest is None or self._tickers is None:
            return
        clock_ms = now_ms if now_ms is not None else newest_feed_ms(self._marks)
        if clock_ms is None:
            return  # a quiet first connection with nothing in Kafka: no gap, and no clock to start from
        max_s = self.settings.ingest_backfill_max_s
        windows: dict[str, Window] = {}
        for ticker in sorted(self._tickers):
            last = self._marks[TRADES].get(ticker)
            window = backfill_window(
                last[1] if last else None, self._floor_ms, clock_ms, max_s, open_end=now_ms is None
            )
            if window is not None:
                windows[ticker] = window
        if self._floor_ms is None:
            # A fresh start with nothing in Kafka: no gap yet. From now (feed time) every trade is seen.
            self._floor_ms = clock_ms
        if not windows:
            return
        clipped = sorted(t for t, w in windows.items() if w.clipped)
        if clipped:
            log.warning(
                "ingest: backfill reaches back only %.0f s (ingest_backfill_max_s): trades of %s before %s "
                "are not fetched",
                max_s,
                ", ".join(clipped[:10]) + (f" (+{len(clipped) - 10})" if len(clipped) > 10 else ""),
                _iso(clock_ms - int(max_s * 1000)),
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
                end_ns = None if window.end_ms is None else window.end_ms * 1_000_000 + 999_999
                async for page in self._rest.pages(ticker, window.start_ms * 1_000_000, end_ns):
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


def newest_feed_ms(marks: dict[str, dict[str, Mark]]) -> int | None:
    """The newest exchange time among the marks: the feed's clock as of the last record published."""
    return max((ts for by_ticker in marks.values() for _, ts in by_ticker.values()), default=None)


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
