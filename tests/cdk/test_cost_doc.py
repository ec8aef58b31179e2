"""The cost table of docs/deployment.md (issue 14, defect 12) against the code: the DynamoDB write cost at
15,000 events/s is what the hot store really writes, counted from its requests on moto, not a guess.

Per processor, per micro-batch (`batchMaxWaitMs` = 10 ms → at most 100 batches/s): the newest trade of
each ticker in the batch (`dynamodbTrades=latest`); per ticker at most once per
`TRADEPULSE_FEATURE_REVISION_INTERVAL_MS` (250 ms: 4 a second) the `LATEST` conditional put of its
provisional feature revision (docs/schema.md#featurevector-revisions); once per second per ticker the
closed 1-s feature snapshot (the final revision); once per second the runner heartbeat; the ticker set
only when a ticker's item is older than an hour (so not in a steady-state second).
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.aws import create_hot_table
from tests.cdk.conftest import REPO_ROOT, cdk_context
from tests.stores.conftest import BASE_MS, make_feature, make_trade
from tradepulse.bus.status import RunnerMetrics, publish_status
from tradepulse.config import Settings
from tradepulse.stores.dynamo_hot import DynamoHotStore

EVENTS_PER_S = 15_000
BATCHES_PER_S = 100  # batchMaxWaitMs = 10
# Provisional feature revisions per ticker and second, at the default interval (processing time).
REVISION_INTERVAL_MS = Settings.model_fields["feature_revision_interval_ms"].default
REVISIONS_PER_S = int(1000 // REVISION_INTERVAL_MS)
WRU_PRICE = 0.625 / 1_000_000  # on-demand, us-east-1, $ per write request unit


def item_size(item: dict[str, Any]) -> int:
    """DynamoDB's item size in bytes: attribute names plus values (strings by UTF-8 length, numbers by
    significant digits, ~1 byte per 2 digits + 1, maps and lists 3 bytes + 1 per element)."""

    def value(v: dict[str, Any]) -> int:
        (kind, x), = v.items()  # fmt: skip
        if kind == "S":
            return len(x.encode())
        if kind == "N":
            return len(x.strip("-").replace(".", "").lstrip("0") or "0") // 2 + 1
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "L":
            return 3 + sum(1 + value(e) for e in x)
        if kind == "M":
            return 3 + sum(len(k.encode()) + 1 + value(e) for k, e in x.items())
        raise AssertionError(kind)

    return sum(len(name.encode()) + value(v) for name, v in item.items())


class WriteUnits:
    """Counts the write request units of every item a client puts (1 per started KB). The store puts
    from its thread pool, so the count is taken under a lock (an unlocked `+=` lost updates: 998 of
    1,000 units once on a busy box)."""

    def __init__(self) -> None:
        self.units = 0
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "BatchWriteItem":
            items = [r["PutRequest"]["Item"] for rs in params["RequestItems"].values() for r in rs]
        elif model.name == "PutItem":
            items = [params["Item"]]
        else:
            items = []
        units = sum(math.ceil(item_size(i) / 1024) for i in items)
        with self._lock:
            self.calls.append(model.name)
            self.units += units


def test_the_write_unit_counter_counts_puts_from_many_threads() -> None:
    # The hot store puts from a thread pool; a tiny switch interval makes a lost update all but certain.
    counter, put = WriteUnits(), type("Model", (), {"name": "PutItem"})()
    item = {"Item": {"pk": {"S": "x"}}}

    def puts() -> None:
        for _ in range(5000):
            counter(item, put)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=puts) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert counter.units == 4 * 5000 and len(counter.calls) == 4 * 5000


@pytest.fixture
def ddb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_hot_table(client, "hot")
        yield client


def steady_second_write_units(ddb: Any, tickers: list[str], processors: int, status_file: Path) -> int:
    """Write units of one steady-state second at 15,000 events/s, over `processors` processors that own
    the tickers between them (Kafka keys by ticker), each with its own store, as in ECS."""
    counter = WriteUnits()
    ddb.meta.events.register("provide-client-params.dynamodb", counter)
    owned = [tickers[p::processors] for p in range(processors)]
    stores = [DynamoHotStore("hot", client=ddb, trades_mode="latest") for _ in range(processors)]
    status = RunnerMetrics()
    per_batch = EVENTS_PER_S // BATCHES_PER_S // processors  # trades and quotes; quotes skip DynamoDB
    for second in range(2):
        if second == 1:
            counter.units = 0  # the first second also writes the ticker set (then hourly)
        for store, mine in zip(stores, owned, strict=True):
            for batch in range(BATCHES_PER_S):
                ms = BASE_MS + second * 1000 + batch * 10
                trades = [
                    make_trade(mine[i % len(mine)], seq=ms + i, ts_ms=ms) for i in range(per_batch // 2)
                ]
                # The final revision of each ticker's previous second, then, once per revision
                # interval, a provisional revision of every ticker with a trade since the last one (all
                # of them: 75 trades a batch per processor).
                features = [make_feature(t, ts_ms=ms - 1) for t in mine] if batch == 0 else []
                if batch % (BATCHES_PER_S // REVISIONS_PER_S) == 0:
                    traded = sorted({t["ticker"] for t in trades})
                    features += [make_feature(t, ts_ms=ms, revision=batch + 1, final=False) for t in traded]
                store.write_batch(trades=trades, features=features)
            publish_status(status.snapshot(), status_file, store)
    for store in stores:
        store.close()
    assert "Query" not in counter.calls and "Scan" not in counter.calls
    return counter.units


def documented_write_cost() -> dict[str, float]:
    """The `DynamoDB writes` row of the 15,000 events/s table in docs/deployment.md: env → $/h."""
    text = (REPO_ROOT / "docs" / "deployment.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| DynamoDB writes |")]
    dev, prod = (float(x) for x in re.findall(r"\|\s*\**([0-9]+\.[0-9]+)\**\s*(?=\|)", row)[-2:])
    return {"dev": dev, "prod": prod}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_documented_dynamodb_write_cost_is_what_the_hot_store_writes(
    ddb: Any, env: str, tmp_path: Path
) -> None:
    from cdk.config import load_config

    config = load_config(cdk_context(env=env).get)
    assert (config.dynamodb_trades, config.batch_max_wait_ms) == ("latest", 10)
    units = steady_second_write_units(
        ddb, list(config.tickers), config.processor.min_tasks, tmp_path / "s.json"
    )
    per_hour = units * 3600 * WRU_PRICE
    # The trades dominate: one item per ticker per batch, so about 100 x tickers units a second, plus
    # the provisional features' LATEST puts (4 per ticker a second) and the final snapshots (1).
    floor = (BATCHES_PER_S + REVISIONS_PER_S) * len(config.tickers)
    assert floor <= units <= floor * 1.1
    assert documented_write_cost()[env] == pytest.approx(per_hour, rel=0.03), f"{units} WRU/s"
