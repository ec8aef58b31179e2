"""DynamoDB hot store on moto: duplicates, shard spread, TTL, Decimal round-trip, latest across shards,
UnprocessedItems and throttling retries, the runner heartbeat item."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from tests.aws import ThrottledSends, create_hot_table
from tests.stores.conftest import (
    BASE_MS,
    check_feature_revisions,
    make_anomaly,
    make_bar,
    make_correlation,
    make_feature,
    make_outlier,
    make_trade,
)
from tradepulse.bus.status import RunnerMetrics, publish_status
from tradepulse.config import Settings
from tradepulse.ids import shard_of
from tradepulse.retry import retry_call
from tradepulse.stores.dynamo_hot import CALL_ATTEMPTS, DynamoHotStore, client_config
from tradepulse.stores.factory import open_hot_store

NOW = 1_767_000_000.0
TABLE = "tradepulse-hot"


@pytest.fixture
def ddb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1", config=client_config())
        # Exactly the table the CDK stack builds.
        create_hot_table(client, TABLE)
        yield client


@pytest.fixture
def store(ddb: Any) -> Iterator[DynamoHotStore]:
    s = DynamoHotStore(TABLE, client=ddb, clock=lambda: NOW, sleep=lambda s: None)
    yield s
    s.close()


def items(ddb: Any) -> list[dict]:
    return ddb.scan(TableName=TABLE)["Items"]


def test_duplicate_writes_succeed_and_store_one_item(store: DynamoHotStore, ddb: Any) -> None:
    trade, anomaly, corr = make_trade(), make_anomaly(), make_correlation()
    for _ in range(2):
        store.write_batch(trades=[trade, trade], anomalies=[anomaly], correlations=[corr])
    assert store.duplicates == 2  # the second anomaly and correlation were detected, not errors
    pks = sorted(i["pk"]["S"] for i in items(ddb))
    assert pks == sorted(["ANOM#AAPL", "CORR#AAPL", "TICKERS", store.trade_pk(trade)])
    assert store.anomalies("AAPL", 0) == [anomaly]
    assert store.correlations("AAPL", 0) == [corr]


def test_trade_keys_spread_over_all_8_shards(store: DynamoHotStore, ddb: Any) -> None:
    trades = [make_trade(seq=i, ts_ms=BASE_MS + i) for i in range(80)]
    store.write_batch(trades=trades)
    pks = {i["pk"]["S"] for i in items(ddb) if i["pk"]["S"].startswith("TRADE#")}
    assert pks == {f"TRADE#AAPL#{n}" for n in range(8)}
    assert len(items(ddb)) == 80 + 1  # + the TICKERS item
    t = trades[0]
    assert store.trade_pk(t) == f"TRADE#AAPL#{shard_of(t['event_id'], 8)}"
    sks = [i["sk"]["S"] for i in items(ddb) if i["pk"]["S"].startswith("TRADE#")]
    assert f"{t['exchange_ts_ms']:015d}#{t['sequence']:012d}#{t['event_id']}" in sks


def test_ttl_attribute_is_now_plus_48h(store: DynamoHotStore, ddb: Any) -> None:
    store.write_batch(trades=[make_trade()], features=[make_feature()], anomalies=[make_anomaly()])
    assert {int(i["expires_at"]["N"]) for i in items(ddb)} == {int(NOW) + 48 * 3600}
    ttl = ddb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_floats_round_trip_through_decimal(store: DynamoHotStore, ddb: Any) -> None:
    feature = make_feature(price=0.1 + 0.2)  # 0.30000000000000004: needs the exact repr
    feature.update(volume_zscore=-1e-9, price_momentum=123.456789012345, bid_ask_spread=None)
    store.write_batch(features=[feature], anomalies=[make_anomaly(score=-0.123456789)])
    assert store.latest_features("AAPL") == feature
    assert store.feature_history("AAPL", 0) == [feature]
    assert store.anomalies("AAPL", 0)[0]["anomaly_score"] == -0.123456789
    raw = next(i for i in items(ddb) if i["sk"]["S"] == "LATEST")
    assert raw["price"] == {"N": "0.30000000000000004"}


def test_latest_trade_is_the_newest_across_shards(store: DynamoHotStore) -> None:
    trades = [make_trade(seq=i, ts_ms=BASE_MS + i * 10, price=100 + i) for i in range(40)]
    newest = trades[-1]
    # A same-millisecond trade with a higher sequence in another shard wins over the newest by time.
    tie = next(
        make_trade(seq=1000 + k, ts_ms=newest["exchange_ts_ms"], price=999.0)
        for k in range(100)
        if shard_of(make_trade(seq=1000 + k, ts_ms=newest["exchange_ts_ms"])["event_id"], 8)
        != shard_of(newest["event_id"], 8)
    )
    store.write_batch(trades=[tie, *trades])
    assert store.latest_trade("AAPL") == tie
    assert store.latest_trade("MSFT") is None
    assert store.tickers() == ["AAPL"]


def test_latest_features_only_move_forward(store: DynamoHotStore) -> None:
    feats = [make_feature(ts_ms=BASE_MS + i * 1000, price=100 + i) for i in range(5)]
    store.write_batch(features=feats[3:])
    store.write_batch(features=feats[:3])  # older snapshots arrive later
    assert store.latest_features("AAPL") == feats[4]
    assert store.feature_history("AAPL", BASE_MS + 1000) == feats[1:]
    assert store.feature_history("AAPL", 0, limit=2) == feats[3:]


def test_anomalies_across_tickers(store: DynamoHotStore) -> None:
    a1, a2, a3 = (
        make_anomaly("AAPL", BASE_MS),
        make_anomaly("TSLA", BASE_MS + 5),
        make_anomaly("AAPL", BASE_MS + 9),
    )
    store.write_batch(trades=[make_trade("AAPL"), make_trade("TSLA")], anomalies=[a1, a2, a3])
    assert store.anomalies(None, 0) == [a1, a2, a3]
    assert store.anomalies(None, BASE_MS + 1, limit=1) == [a3]


def test_bars_by_ticker_oldest_first_and_idempotent(store: DynamoHotStore, ddb: Any) -> None:
    minute = 60_000
    bars = [make_bar("AAPL", BASE_MS + i * minute) for i in range(4)] + [make_bar("TSLA", BASE_MS)]
    store.write_batch(bars=bars)
    store.write_batch(bars=bars[:2])  # a replayed batch overwrites its items
    assert store.bars("AAPL", 0) == bars[:4]  # round-trip exactly, the null-free floats included
    assert [b["start_ms"] for b in store.bars("AAPL", BASE_MS + 2 * minute)] == [
        BASE_MS + 2 * minute,
        BASE_MS + 3 * minute,
    ]
    assert [b["start_ms"] for b in store.bars("AAPL", 0, limit=1)] == [BASE_MS + 3 * minute]
    store.write_batch(bars=[make_bar("TSLA", BASE_MS, close=None)])
    assert store.bars("TSLA", 0)[0]["close"] is None
    assert sum(i["pk"]["S"].startswith("BAR#") for i in items(ddb)) == 5


def test_latest_mode_stores_only_the_newest_trade_per_ticker(ddb: Any) -> None:
    store = DynamoHotStore(TABLE, client=ddb, trades_mode="latest", clock=lambda: NOW)
    trades = [make_trade(seq=i, ts_ms=BASE_MS + i) for i in range(30)] + [make_trade("MSFT", seq=1)]
    store.write_batch(trades=trades)
    assert len([i for i in items(ddb) if i["pk"]["S"].startswith("TRADE#")]) == 2
    assert store.latest_trade("AAPL") == trades[29]
    store.close()


def test_outlier_trades_are_listed_by_ticker_and_time_whatever_the_trades_mode(ddb: Any) -> None:
    store = DynamoHotStore(TABLE, client=ddb, trades_mode="latest", clock=lambda: NOW)
    flagged = [make_outlier(seq=2, ts_ms=BASE_MS + 1), make_outlier("MSFT", seq=3, ts_ms=BASE_MS + 2)]
    store.write_batch(trades=[*flagged, make_trade(seq=4, ts_ms=BASE_MS + 3), make_trade("MSFT", seq=5)])
    store.write_batch(trades=flagged)  # a replay overwrites the same items
    assert store.outliers("AAPL", 0) == [flagged[0]]
    assert store.outliers(None, 0) == flagged
    assert store.outliers(None, BASE_MS + 2) == [flagged[1]]
    store.close()


class PartialWrites:
    """A client whose first multi-item BatchWriteItem writes one item and returns the rest as
    UnprocessedItems (a partial success, which botocore does not retry); then it delegates to moto."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.unprocessed = 1

    def batch_write_item(self, **kw: Any) -> Any:
        ((table, requests),) = kw["RequestItems"].items()
        if self.unprocessed and len(requests) > 1:
            self.unprocessed -= 1
            self.inner.batch_write_item(RequestItems={table: requests[:1]})
            return {"UnprocessedItems": {table: requests[1:]}}
        return self.inner.batch_write_item(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_throttling_is_retried_by_botocore_and_unprocessed_items_by_the_store(
    ddb: Any, botocore_sleeps: list[float]
) -> None:
    throttled = ThrottledSends(ddb, "BatchWriteItem", times=2)
    sleeps: list[float] = []
    store = DynamoHotStore(TABLE, client=PartialWrites(ddb), clock=lambda: NOW, sleep=sleeps.append)
    trades = [make_trade(seq=i, ts_ms=BASE_MS + i) for i in range(10)]
    store.write_batch(trades=trades)
    # 2 throttled sends + the partial write, retried by botocore; then 1 send for the unprocessed rest.
    assert throttled.sends == 4 and len(botocore_sleeps) == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 5  # the store's one UnprocessedItems round
    assert store.throttles == 3  # 2 throttled attempts + 1 response with UnprocessedItems
    assert len([i for i in items(ddb) if i["pk"]["S"].startswith("TRADE#")]) == 10
    store.close()


def test_a_throttled_batch_is_bounded_one_retry_layer_per_call(
    ddb: Any, botocore_sleeps: list[float]
) -> None:
    """Issue 15: retries used to stack (botocore 3 × the store's call loop 8 × its batch loop 8 × the
    runner's 3). Now a call is retried by botocore alone, and the runner's retry has a deadline: a table
    that throttles every request costs CALL_ATTEMPTS sends per started runner attempt, and no runner
    attempt starts (or sleeps) past the deadline."""
    throttled = ThrottledSends(ddb, "BatchWriteItem", times=10_000)
    store_sleeps: list[float] = []
    store = DynamoHotStore(TABLE, client=ddb, clock=lambda: NOW, sleep=store_sleeps.append)
    elapsed = [0.0]

    def sleep(seconds: float) -> None:
        elapsed[0] += seconds

    def write() -> None:
        before = len(botocore_sleeps)
        try:
            store.write_batch(trades=[make_trade(seq=1)])
        finally:
            elapsed[0] += sum(botocore_sleeps[before:])  # botocore's backoffs inside this attempt

    attempts, deadline_s = 3, 10.0
    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        retry_call(
            write, attempts=attempts, base_delay_s=1.0, max_delay_s=4.0, deadline_s=deadline_s,
            sleep=sleep, clock=lambda: elapsed[0], rng=random.Random(5),
        )  # fmt: skip
    started = throttled.sends // CALL_ATTEMPTS
    assert throttled.sends == started * CALL_ATTEMPTS and 1 <= started <= attempts
    assert store_sleeps == []  # the store did not re-loop the failed call
    assert store.throttles == throttled.sends
    # Each started attempt sleeps at most 1 + 2 s in botocore (standard mode, 3 attempts); the runner's
    # own backoffs end before the deadline.
    assert elapsed[0] <= deadline_s + 3.0
    store.close()


def test_other_errors_are_not_retried(ddb: Any) -> None:
    store = DynamoHotStore("no-such-table", client=ddb, sleep=lambda s: pytest.fail("retried"))
    sends = ThrottledSends(ddb, "BatchWriteItem", times=0)  # counts sends only
    with pytest.raises(ClientError):
        store.write_batch(trades=[make_trade()])
    assert sends.sends == 1  # botocore does not retry a missing table either
    store.close()


def test_factory_builds_dynamodb_from_settings(ddb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings(
        hot_store="dynamodb", dynamodb_table=TABLE, dynamodb_shards=4, dynamodb_trades="latest"
    )
    store = open_hot_store(settings)
    assert isinstance(store, DynamoHotStore)
    assert (store.shards, store.trades_mode, store.ttl_s) == (4, "latest", 48 * 3600)
    store.write_batch(trades=[make_trade()])
    assert store.latest_trade("AAPL") == make_trade()
    store.close()


def test_ticker_index_is_written_once_and_refreshed_inside_the_ttl(ddb: Any) -> None:
    now = [NOW]
    store = DynamoHotStore(TABLE, client=ddb, clock=lambda: now[0], sleep=lambda s: None)
    written: list[dict] = []
    original = store._batch_write
    store._batch_write = lambda batch: (written.extend(batch), original(batch))[1]  # type: ignore[method-assign]

    def ticker_items() -> list[str]:
        return sorted(i["sk"] for i in written if i["pk"] == "TICKERS")

    store.write_batch(trades=[make_trade("AAPL", 1)], features=[make_feature("MSFT")])
    store.write_batch(trades=[make_trade("AAPL", 2)], features=[make_feature("MSFT", ts_ms=BASE_MS + 1000)])
    assert ticker_items() == ["AAPL", "MSFT"]
    store.write_batch(trades=[make_trade("NVDA", 3)])
    assert ticker_items() == ["AAPL", "MSFT", "NVDA"]
    now[0] += 2 * 3600  # past the refresh interval, far inside the 48 h TTL
    store.write_batch(trades=[make_trade("AAPL", 4)])
    assert ticker_items() == ["AAPL", "AAPL", "MSFT", "NVDA"]
    assert store.tickers() == ["AAPL", "MSFT", "NVDA"]
    store.close()


def test_runner_status_round_trip(store: DynamoHotStore, ddb: Any) -> None:
    assert store.get_runner_status() is None
    metrics = RunnerMetrics(consumer_lag=42, dlq_depth=1)
    metrics.write_ms.extend([3.0, 4.5])
    metrics.committed(events=500, batch_ms=2.25)
    status = metrics.snapshot()  # the document the runner publishes: floats, nested maps, an empty map
    store.put_runner_status(status)
    assert store.get_runner_status() == status
    newer = status | {"updated_at": status["updated_at"] + 1.0, "consumer_lag": 0}
    store.put_runner_status(newer)
    store.put_runner_status(status | {"pid": 2}, instance="1")
    assert store.get_runner_status() == newer
    assert store.get_runner_status("1") == status | {"pid": 2}
    stored = [i for i in items(ddb) if i["pk"]["S"] == "STATUS"]
    assert sorted(i["sk"]["S"] for i in stored) == ["runner#0", "runner#1"]
    assert {int(i["expires_at"]["N"]) for i in stored} == {int(NOW) + 48 * 3600}


def test_publish_status_writes_the_file_and_the_item(
    ddb: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DynamoHotStore(TABLE, client=ddb)
    status = RunnerMetrics(consumer_lag=7).snapshot()
    publish_status(status, tmp_path / "runner-status.json", store)
    assert orjson.loads((tmp_path / "runner-status.json").read_bytes()) == status
    assert store.get_runner_status() == status
    # DynamoDB failing (here: no such table) costs one heartbeat in the store, never the runner.
    missing = DynamoHotStore("no-such-table", client=ddb)
    publish_status(status | {"consumer_lag": 8}, tmp_path / "runner-status.json", missing)
    assert orjson.loads((tmp_path / "runner-status.json").read_bytes())["consumer_lag"] == 8
    assert "not published to the hot store" in caplog.text
    store.close()
    missing.close()


def test_default_client_has_bounded_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung DynamoDB call must fail well inside API Gateway's 29 s, not after botocore's 60 s."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = DynamoHotStore(TABLE, region="us-east-1").client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 10)
    assert config.retries == {"mode": "standard", "total_max_attempts": CALL_ATTEMPTS}


def test_feature_revisions_never_go_back(store: DynamoHotStore) -> None:
    check_feature_revisions(store, history_has_provisional=False)
