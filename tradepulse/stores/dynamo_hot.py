"""DynamoDB hot store: one on-demand table, pk (S) + sk (S), TTL attribute `expires_at`.

Item types (pk → sk):
- trades: `TRADE#<TICKER>#<n>` → `<exchange_ts_ms:015>#<sequence:012>#<event_id>`, write-sharded over
  n = shard_of(event_id, shards) (default 8) so a hot ticker spreads over 8 partitions. The latest trade
  of a ticker queries all shards in parallel (newest first, Limit 1) and takes the newest by
  (exchange_ts_ms, sequence), never the first shard that answers;
- feature vectors: the final revision of each second `FEAT#<TICKER>` → `<snapshot_start_ms:015>` (batch
  writes cannot be conditional, and a final revision is the same vector on every write), and the latest
  features `FEAT#<TICKER>` → `LATEST`: every revision, provisional ones included, by a conditional put
  that only replaces a lower (second start, revision) (`feature_key`; "LATEST" sorts after every digit
  string, so history range queries never see it);
- anomalies: `ANOM#<TICKER>` → `<ts_ms:015>#<anomaly_id>`; correlations: `CORR#<TICKER>` →
  `<published_ts_ms:015>#<correlation_id>`; one-minute bars: `BAR#<TICKER>` → `<start_ms:015>` (a bar
  is final when emitted, so a replayed one overwrites an identical item); the ticker set: `TICKERS` → `<TICKER>`;
- trades flagged outlier by the runner: `OUTL#<TICKER>` → `<exchange_ts_ms:015>#<event_id>` (whatever
  `dynamodb_trades` is; GET /outliers reads them);
- the runner heartbeats (what /health reads in Lambda): `STATUS` → `runner#<instance>` (one per processor
  task, instance = the task's hostname on ECS), the status document as a JSON string attribute `status`
  (see `tradepulse.api.health`); /health lists them all with one Query.

Writes: trades, snapshots and the ticker set go through BatchWriteItem (idempotent overwrites of
identical items; UnprocessedItems are retried). Anomalies and correlations are conditional PutItems
(`attribute_not_exists(pk)`) because a duplicate must be detected (it is not new, so it is not counted
or alerted again); ConditionalCheckFailedException is a success. One retry layer per call:
botocore's standard retry mode (`client_config`: throttling, 5xx and connection errors, exponential
backoff with jitter, `CALL_ATTEMPTS` attempts); the store never re-loops a failed call. The only loop
here re-sends a BatchWriteItem's UnprocessedItems (a partial success, which botocore does not retry).
Floats are stored as Decimal (via their shortest repr, so they round-trip exactly); non-finite floats
become null. Every item carries `expires_at` = now + TTL (epoch seconds) and
DynamoDB deletes it after that, so `purge_expired` has nothing to do.

Cost knob `dynamodb_trades`: "all" stores every trade (like SQLite), "latest" only the newest trade per
ticker of each micro-batch (what /quotes needs, ~100× fewer writes at market open).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import orjson
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from tradepulse.errors import StoreError
from tradepulse.ids import shard_of
from tradepulse.percentiles import nearest_rank
from tradepulse.retry import backoff_delay
from tradepulse.stores.base import Row, feature_key

TICKERS_REFRESH_S = 3600.0

CALL_ATTEMPTS = 3
"""Attempts of one DynamoDB call (botocore standard mode); the runner bounds the whole batch write."""

THROTTLING = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
}


def client_config() -> Any:
    """The botocore config of the store's client: bounded calls (botocore's default 60 s timeouts would let
    one hung request outlive API Gateway's 29 s and stall a runner batch) and the one retry layer."""
    from botocore.config import Config

    return Config(
        connect_timeout=3,
        read_timeout=10,
        retries={"mode": "standard", "total_max_attempts": CALL_ATTEMPTS},
    )


_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_KEY_FIELDS = {"pk", "sk", "expires_at", "item_type"}


def to_dynamo(value: Any) -> Any:
    """Python → DynamoDB-compatible values: float → Decimal (exact repr), NaN/inf → None."""
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    return value


def from_dynamo(value: Any) -> Any:
    """Inverse of `to_dynamo`: Decimal → int when integral, else float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    return value


def _serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _SERIALIZER.serialize(to_dynamo(v)) for k, v in item.items()}


def _deserialize(item: dict[str, Any]) -> Row:
    return {k: from_dynamo(_DESERIALIZER.deserialize(v)) for k, v in item.items() if k not in _KEY_FIELDS}


def _ts(value: int) -> str:
    return f"{int(value):015d}"


class DynamoHotStore:
    """HotStore on one DynamoDB table (pk/sk strings, TTL `expires_at`, on-demand)."""

    def __init__(
        self,
        table: str,
        *,
        client: Any = None,
        region: str | None = None,
        shards: int = 8,
        ttl_hours: int = 48,
        trades_mode: str = "all",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 5,
        latency_window: int = 256,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb", region_name=region, config=client_config())
        # Every throttled attempt (botocore retries them) counts towards HotWriteThrottles.
        client.meta.events.register("needs-retry.dynamodb", self._count_throttle)
        self.client = client
        self.table = table
        self.shards = shards
        self.ttl_s = ttl_hours * 3600
        self.trades_mode = trades_mode
        self.clock = clock
        self.sleep = sleep
        self.max_attempts = max_attempts  # BatchWriteItem rounds for UnprocessedItems
        self._latencies: deque[float] = deque(maxlen=latency_window)
        # Ticker → when its TICKERS item was last written; rewriting it every batch would be about
        # half of all write units, so it is written once and refreshed well inside the TTL.
        self._tickers_written: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(shards, 4), thread_name_prefix="ddb")
        self._lock = threading.Lock()
        self.duplicates = 0  # conditional puts that found the item already there
        # Throttled attempts and BatchWriteItem responses with UnprocessedItems (each retried with
        # backoff): the HotWriteThrottles metric (tradepulse.metrics_emf).
        self.throttles = 0

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> DynamoHotStore:
        return cls(
            settings.dynamodb_table,
            region=settings.aws_region,
            shards=settings.dynamodb_shards,
            ttl_hours=settings.hot_ttl_hours,
            trades_mode=settings.dynamodb_trades,
            **kw,
        )

    # --- low level -----------------------------------------------------------------------------

    def _call(self, op: str, **kwargs: Any) -> Any:
        """One API call (botocore retries it; see `client_config`)."""
        return getattr(self.client, op)(**kwargs)

    def _count_throttle(self, response: Any = None, **_: Any) -> None:
        """botocore `needs-retry` hook: count a throttled attempt; the retry decision stays botocore's."""
        if response is not None and response[1].get("Error", {}).get("Code") in THROTTLING:
            with self._lock:
                self.throttles += 1

    def _batch_write(self, items: list[dict[str, Any]]) -> None:
        """BatchWriteItem in chunks of 25, re-sending UnprocessedItems with backoff (`max_attempts` rounds)."""
        unique = {(i["pk"], i["sk"]): i for i in items}  # a request may not name a key twice
        requests = [{"PutRequest": {"Item": _serialize(i)}} for i in unique.values()]
        for start in range(0, len(requests), 25):
            pending = {self.table: requests[start : start + 25]}
            for attempt in range(self.max_attempts):
                response = self._call("batch_write_item", RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                with self._lock:
                    self.throttles += 1
                self.sleep(backoff_delay(attempt, 0.05, 5.0))
            else:
                raise StoreError(f"DynamoDB left {len(pending[self.table])} items unprocessed")

    def _put_new(self, item: dict[str, Any]) -> bool:
        """Conditional put; False when the item already existed (a duplicate is a success)."""
        try:
            self._call(
                "put_item",
                TableName=self.table,
                Item=_serialize(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                with self._lock:
                    self.duplicates += 1
                return False
            raise

    def _put_latest(self, item: dict[str, Any], key: tuple[int, int]) -> None:
        """Replace the LATEST item only with a newer one: a later second, or a revision of the same
        second at least as high (an item from before revisions: by ts_ms)."""
        start, revision = key
        try:
            self._call(
                "put_item",
                TableName=self.table,
                Item=_serialize(item),
                ConditionExpression=(
                    "attribute_not_exists(pk) OR snapshot_start_ms < :start OR "
                    "(snapshot_start_ms = :start AND revision <= :revision) OR "
                    "(attribute_not_exists(snapshot_start_ms) AND ts_ms <= :ts)"
                ),
                ExpressionAttributeValues={
                    ":start": {"N": str(int(start))},
                    ":revision": {"N": str(int(revision))},
                    ":ts": {"N": str(int(item["ts_ms"]))},
                },
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def _query(
        self,
        pk: str,
        *,
        lo: str | None = None,
        hi: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[Row]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "ScanIndexForward": not newest_first,
            "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        if lo is not None and hi is not None:
            kwargs["KeyConditionExpression"] = "pk = :pk AND sk BETWEEN :lo AND :hi"
            kwargs["ExpressionAttributeValues"] |= {":lo": {"S": lo}, ":hi": {"S": hi}}
        else:
            kwargs["KeyConditionExpression"] = "pk = :pk"
        rows: list[Row] = []
        while True:
            if limit is not None:
                kwargs["Limit"] = limit - len(rows)
            response = self._call("query", **kwargs)
            rows += [_deserialize(i) for i in response.get("Items", [])]
            last = response.get("LastEvaluatedKey")
            if not last or (limit is not None and len(rows) >= limit):
                return rows
            kwargs["ExclusiveStartKey"] = last

    # --- HotStore ----------------------------------------------------------------------------------

    def trade_pk(self, row: Row) -> str:
        return f"TRADE#{row['ticker']}#{shard_of(row['event_id'], self.shards)}"

    def _tickers_to_refresh(self, trades: Sequence[Row], features: Sequence[Row]) -> list[str]:
        """Tickers whose TICKERS item is missing or older than an hour (the TTL is 48 h)."""
        now = self.clock()
        return [
            t
            for t in {r["ticker"] for r in (*trades, *features)}
            if now - self._tickers_written.get(t, float("-inf")) > TICKERS_REFRESH_S
        ]

    def write_batch(
        self,
        *,
        trades: Sequence[Row] = (),
        features: Sequence[Row] = (),
        anomalies: Sequence[Row] = (),
        correlations: Sequence[Row] = (),
        bars: Sequence[Row] = (),
    ) -> None:
        """Upsert one micro-batch (no cross-item transaction in DynamoDB; every write is idempotent)."""
        started = time.perf_counter()
        expires = int(self.clock()) + self.ttl_s
        # Outliers are few and what GET /outliers reads: always stored, whatever `trades_mode` keeps.
        items = [
            {
                **t,
                "pk": f"OUTL#{t['ticker']}",
                "sk": f"{_ts(t['exchange_ts_ms'])}#{t['event_id']}",
                "expires_at": expires,
            }
            for t in trades
            if t.get("outlier")
        ]
        if self.trades_mode == "latest":
            newest: dict[str, Row] = {}
            for t in trades:
                best = newest.get(t["ticker"])
                if best is None or (t["exchange_ts_ms"], t["sequence"]) > (
                    best["exchange_ts_ms"],
                    best["sequence"],
                ):
                    newest[t["ticker"]] = t
            trades = list(newest.values())
        items += [
            {
                **t,
                "pk": self.trade_pk(t),
                "sk": f"{_ts(t['exchange_ts_ms'])}#{int(t['sequence']):012d}#{t['event_id']}",
                "expires_at": expires,
            }
            for t in trades
        ]
        items += [
            {**f, "pk": f"FEAT#{f['ticker']}", "sk": _ts(feature_key(f)[0]), "expires_at": expires}
            for f in features
            if f.get("final", True)
        ]
        items += [
            {**b, "pk": f"BAR#{b['ticker']}", "sk": _ts(b["start_ms"]), "expires_at": expires} for b in bars
        ]
        due_tickers = self._tickers_to_refresh(trades, features)
        items += [{"pk": "TICKERS", "sk": t, "ticker": t, "expires_at": expires} for t in due_tickers]
        if items:
            self._batch_write(items)
        # Only after the write succeeded: a failed batch is retried and must write them again.
        self._tickers_written.update(dict.fromkeys(due_tickers, self.clock()))
        latest: dict[str, Row] = {}
        for f in features:
            if f["ticker"] not in latest or feature_key(f) > feature_key(latest[f["ticker"]]):
                latest[f["ticker"]] = f
        puts: list[Callable[[], Any]] = [
            functools.partial(
                self._put_latest,
                {**f, "pk": f"FEAT#{f['ticker']}", "sk": "LATEST", "expires_at": expires},
                feature_key(f),
            )
            for f in latest.values()
        ]
        puts += [
            functools.partial(
                self._put_new,
                {
                    **a,
                    "pk": f"ANOM#{a['ticker']}",
                    "sk": f"{_ts(a['ts_ms'])}#{a['anomaly_id']}",
                    "expires_at": expires,
                },
            )
            for a in anomalies
        ]
        puts += [
            functools.partial(
                self._put_new,
                {
                    **c,
                    "pk": f"CORR#{c['ticker']}",
                    "sk": f"{_ts(c['published_ts_ms'])}#{c['correlation_id']}",
                    "expires_at": expires,
                },
            )
            for c in correlations
        ]
        for future in [self._pool.submit(p) for p in puts]:
            future.result()
        self._latencies.append((time.perf_counter() - started) * 1000)

    def latest_trade(self, ticker: str) -> Row | None:
        """Newest trade over all shards, queried in parallel."""
        futures = [
            self._pool.submit(self._query, f"TRADE#{ticker}#{n}", newest_first=True, limit=1)
            for n in range(self.shards)
        ]
        candidates = [row for f in futures for row in f.result()]
        if not candidates:
            return None
        return max(candidates, key=lambda r: (r["exchange_ts_ms"], r["sequence"]))

    def latest_features(self, ticker: str) -> Row | None:
        rows = self._query(f"FEAT#{ticker}", lo="LATEST", hi="LATEST")
        return rows[0] if rows else None

    def feature_history(self, ticker: str, since_ms: int, limit: int = 2000) -> list[Row]:
        rows = self._query(f"FEAT#{ticker}", lo=_ts(since_ms), hi="9" * 15, newest_first=True, limit=limit)
        rows.reverse()
        return rows

    def _ranged(
        self, prefix: str, ticker: str | None, since_ms: int, limit: int, time_field: str
    ) -> list[Row]:
        tickers = [ticker] if ticker is not None else self.tickers()
        futures = [
            self._pool.submit(
                self._query,
                f"{prefix}#{t}",
                lo=_ts(since_ms),
                hi="9" * 15 + "~",
                newest_first=True,
                limit=limit,
            )
            for t in tickers
        ]
        rows = [row for f in futures for row in f.result()]
        rows.sort(key=lambda r: r[time_field])
        return rows[-limit:]

    def anomalies(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        return self._ranged("ANOM", ticker, since_ms, limit, "ts_ms")

    def correlations(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        return self._ranged("CORR", ticker, since_ms, limit, "published_ts_ms")

    def outliers(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        return self._ranged("OUTL", ticker, since_ms, limit, "exchange_ts_ms")

    def bars(self, ticker: str, since_ms: int, limit: int = 1000) -> list[Row]:
        rows = self._query(f"BAR#{ticker}", lo=_ts(since_ms), hi="9" * 15, newest_first=True, limit=limit)
        rows.reverse()
        return rows

    def tickers(self) -> list[str]:
        return sorted(r["ticker"] for r in self._query("TICKERS"))

    def purge_expired(self, now_ms: int, *, chunk_rows: int = 5000) -> int:
        """Nothing to do: DynamoDB's TTL deletes items after `expires_at`."""
        return 0

    def write_latency_p99_ms(self) -> float:
        return nearest_rank(list(self._latencies), 99)

    # --- runner heartbeat (the contract is in tradepulse.api.health) -------------------------------

    def _status_key(self, instance: str) -> dict[str, Any]:
        return {"pk": {"S": "STATUS"}, "sk": {"S": f"runner#{instance}"}}

    def put_runner_status(self, status: dict[str, Any], instance: str = "0") -> None:
        """Store one runner's status document, replacing the previous one.

        Kept as a JSON string: it round-trips exactly (floats, nested maps) without Decimal conversion and
        nothing queries inside it. No retry beyond botocore's own: the next heartbeat supersedes it
        a second later, and the runner must not stall on it."""
        self.client.put_item(
            TableName=self.table,
            Item=self._status_key(instance)
            | {
                "status": {"S": orjson.dumps(status).decode()},
                "expires_at": {"N": str(int(self.clock()) + self.ttl_s)},
            },
        )

    def get_runner_status(self, instance: str = "0") -> dict[str, Any] | None:
        """The latest status document of a runner instance, None if it never reported."""
        item = self._call("get_item", TableName=self.table, Key=self._status_key(instance)).get("Item")
        return orjson.loads(item["status"]["S"]) if item else None

    def get_runner_statuses(self) -> dict[str, dict[str, Any]]:
        """instance → latest status document, of every runner instance that reported (one Query of the
        `STATUS` partition; on ECS the instances are task hostnames, unknown in advance)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :runner)",
            "ExpressionAttributeValues": {":pk": {"S": "STATUS"}, ":runner": {"S": "runner#"}},
        }
        statuses: dict[str, dict[str, Any]] = {}
        while True:
            response = self._call("query", **kwargs)
            for item in response.get("Items", []):
                statuses[item["sk"]["S"].removeprefix("runner#")] = orjson.loads(item["status"]["S"])
            if not response.get("LastEvaluatedKey"):
                return statuses
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
