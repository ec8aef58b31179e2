"""Trades backfill from the REST `/v3/trades` endpoint: the conversion to `Trade` (the same dict and event id
as the WebSocket path), paging through `next_url` against the simulator's REST server over real HTTP
(our client and the official `massive` client), the simulator's bounded history, and the window rule."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from massive import RESTClient

from tradepulse.models import Trade
from tradepulse.sources.backfill import BackfillError, TradesRestClient, backfill_window, redact
from tradepulse.sources.massive import MassiveClient, subscription_params
from tradepulse.sources.parse import InvalidEvent, rest_trade_record, trade_record
from tradepulse.sources.simulator import (
    MarketConfig,
    MarketModel,
    SimulatorConfig,
    SimulatorHandle,
    run_simulator_in_thread,
)
from tradepulse.sources.simulator.trades_api import TradesApi

KEY = "backfill-test-key"
TICKERS = ["AAPL", "MSFT", "NVDA"]


def generated_trades(sim: SimulatorHandle, end_ms: int | None = None) -> set[tuple[str, int]]:
    """(ticker, sequence) of every trade the simulator generated before `end_ms` (default: so far),
    recomputed independently: the market is deterministic, so the same config and start time regenerate
    the same blocks."""
    model = sim.sim.source
    assert isinstance(model, MarketModel)
    end_ms = sim.sim.sim_now_ms if end_ms is None else end_ms
    config = sim.config.market_config()
    config.start_ms = model.start_ms
    again = MarketModel(config)
    out: set[tuple[str, int]] = set()
    while again.now_ms < end_ms:
        block = again.next_block()
        assert block.trades is not None
        out.update(
            zip(
                [again.symbols[s] for s in block.trades["sym"].tolist()],
                block.trades["q"].tolist(),
                strict=True,
            )
        )
    return out


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = run_simulator_in_thread(
        SimulatorConfig(seed=11, tickers=TICKERS, api_key=KEY, ws_port=0, http_port=0, rate=3000)
    )
    yield handle
    handle.stop()


def fetch(
    base_url: str, ticker: str, start_ns: int, end_ns: int, **kwargs: Any
) -> tuple[list[list[Any]], int]:
    async def main() -> tuple[list[list[Any]], int]:
        async with TradesRestClient(base_url, KEY, **kwargs) as client:
            pages = [page async for page in client.pages(ticker, start_ns, end_ns)]
            return pages, client.requests

    return asyncio.run(main())


# --- conversion -------------------------------------------------------------------------------------

# One result as Massive documents it (an off-exchange print; nanosecond timestamps).
REST_TRADE = {
    "conditions": [12, 37],
    "exchange": 4,
    "id": "52983525029461",
    "participant_timestamp": 1_700_000_000_123_000_000,
    "price": 190.0125,
    "sequence_number": 1_063,
    "sip_timestamp": 1_700_000_000_123_456_789,
    "size": 40,
    "tape": 3,
    "trf_id": 201,
    "trf_timestamp": 1_700_000_000_122_999_999,
}
WS_TRADE = {
    "ev": "T",
    "sym": "AAPL",
    "x": 4,
    "i": "52983525029461",
    "z": 3,
    "p": 190.0125,
    "s": 40,
    "c": [12, 37],
    "t": 1_700_000_000_123,
    "q": 1_063,
    "trfi": 201,
    "trft": 1_700_000_000_122,
}


def test_rest_trade_becomes_the_same_trade_as_its_websocket_event() -> None:
    rest = rest_trade_record("AAPL", REST_TRADE, 5)
    ws = trade_record(WS_TRADE, 5)
    assert rest == ws  # event id included: a trade seen on both paths is deduplicated
    assert Trade.model_validate(rest).exchange_ts_ms == 1_700_000_000_123  # ns floored to the WS ms
    regular = {k: v for k, v in REST_TRADE.items() if k not in ("conditions", "trf_id", "trf_timestamp")}
    record = rest_trade_record("AAPL", regular, 5)
    assert (record["conditions"], record["trf_id"], record["trf_ts_ms"]) == ([], None, None)
    fractional = rest_trade_record("AAPL", {**regular, "size": 0, "decimal_size": "0.25"}, 5)
    assert fractional["size"] == 0.25


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"price": 0}, "must be > 0"),
        ({"sip_timestamp": "1700000000123456789"}, "'sip_timestamp' must be an integer"),
        ({"id": ""}, "'id' must be a non-empty string"),
        ({"conditions": ["12"]}, "list of integers"),
        ({"decimal_size": "abc"}, "'decimal_size' must be a decimal string"),
    ],
)
def test_invalid_rest_trades_are_refused(change: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidEvent, match=error):
        rest_trade_record("AAPL", {**REST_TRADE, **change}, 0)
    with pytest.raises(KeyError):
        rest_trade_record("AAPL", {k: v for k, v in REST_TRADE.items() if k != "sequence_number"}, 0)


# --- the window rule ----------------------------------------------------------------------------------


def test_backfill_window_starts_at_the_last_trade_and_is_capped() -> None:
    now = 1_000_000_000
    assert backfill_window(now - 5_000, None, now, 600) == (w := backfill_window(now - 5_000, 0, now, 600))
    assert w is not None and (w.start_ms, w.end_ms, w.clipped) == (now - 5_000, now, False)
    floor = backfill_window(None, now - 20_000, now, 600)  # no trade known: from the seed's floor
    assert floor is not None and floor.start_ms == now - 20_000
    old = backfill_window(now - 3_600_000, None, now, 600)
    assert old is not None and (old.start_ms, old.clipped) == (now - 600_000, True)
    assert backfill_window(None, None, now, 600) is None  # nothing published yet: no gap
    assert backfill_window(now - 5_000, None, now, 0) is None  # off


# --- paging against the simulator over HTTP ------------------------------------------------------------


def test_client_pages_through_next_url_and_gets_every_trade_once_in_order(sim: SimulatorHandle) -> None:
    deadline = time.monotonic() + 20
    while sim.stats()["rest_trades"] < 1500 and time.monotonic() < deadline:
        time.sleep(0.05)
    start_ms = sim.sim.source.start_ms  # type: ignore[union-attr]
    end_ms = sim.stats()["sim_now_ms"]  # every block up to here is on the REST tape
    end_ns = end_ms * 1_000_000
    pages, requests = fetch(sim.rest_base_url, "AAPL", start_ms * 1_000_000, end_ns, page_limit=100)
    rows = [r for page in pages for r in page]
    assert len(pages) >= 3 and requests == len(pages)  # several pages, no retries
    assert all(len(page) == 100 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 100
    keys = [(r["sip_timestamp"], r["sequence_number"]) for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # oldest first, each once
    assert [r["sequence_number"] for r in rows] == list(range(1, len(rows) + 1))  # none skipped
    assert {("AAPL", r["sequence_number"]) for r in rows} == {
        k for k in generated_trades(sim, end_ms) if k[0] == "AAPL"
    }

    # The same through the WebSocket port (what an ingest that knows only the feed URL uses) and through
    # the official client, which pages with its own `next_url` handling.
    ws_http = sim.ws_url.replace("ws://", "http://")
    again, _ = fetch(ws_http, "AAPL", start_ms * 1_000_000, keys[-1][0], page_limit=50_000)
    assert [r for page in again for r in page] == rows
    official = RESTClient(api_key=KEY, base=sim.rest_base_url, retries=0)
    listed = official.list_trades(
        "AAPL", timestamp_gte=start_ms * 1_000_000, timestamp_lte=keys[-1][0], order="asc", limit=37
    )
    assert [(t.sip_timestamp, t.sequence_number) for t in listed] == keys


def test_next_url_carries_no_key_and_the_key_goes_in_the_header(sim: SimulatorHandle) -> None:
    url = f"{sim.rest_base_url}/v3/trades/MSFT?order=asc&limit=5"
    first = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).json()
    assert first["status"] == "OK" and len(first["results"]) == 5
    assert KEY not in first["next_url"] and "cursor=" in first["next_url"]
    assert httpx.get(first["next_url"]).status_code == 401  # the key must come with every page
    page2 = httpx.get(first["next_url"] + f"&apiKey={KEY}").json()["results"]  # query-string auth works
    assert page2[0]["sequence_number"] == first["results"][-1]["sequence_number"] + 1
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.json()["error"] == "API Key was not provided"
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "Unknown API Key"
    # Our client follows only the path and query of next_url, against its own base, and drops a key.
    client = TradesRestClient("http://127.0.0.1:1", KEY)
    assert client._follow("https://elsewhere.example/v3/trades/MSFT?cursor=abc&apiKey=leaked") == (
        "/v3/trades/MSFT?cursor=abc"
    )
    asyncio.run(client.aclose())
    assert (
        redact("https://api.massive.com/v3/trades/A?apiKey=s3cret") == "https://api.massive.com/v3/trades/A"
    )


def test_bad_key_fails_at_once_and_an_unreachable_api_after_bounded_retries(sim: SimulatorHandle) -> None:
    async def first_page(base: str, key: str, **kwargs: Any) -> None:
        async with TradesRestClient(base, key, backoff_initial_s=0.01, backoff_max_s=0.02, **kwargs) as c:
            async for _ in c.pages("AAPL", 0, 10**19):
                return

    with pytest.raises(BackfillError, match="HTTP 401: Unknown API Key") as refused:
        asyncio.run(first_page(sim.rest_base_url, "wrong-key"))
    assert "wrong-key" not in str(refused.value)
    with pytest.raises(BackfillError, match=r"after 3 attempts"):
        asyncio.run(first_page("http://127.0.0.1:9", KEY, retries=2, timeout_s=1))


def test_rest_and_websocket_give_a_trade_the_same_record(sim: SimulatorHandle) -> None:
    """Trades received live and the same trades fetched by REST become identical `Trade` dicts."""
    live: list[dict[str, Any]] = []

    async def listen() -> None:
        client = MassiveClient(sim.ws_url, KEY, subscription_params(["AAPL", "NVDA"], ("T",)))

        async def stop_later() -> None:
            while len(live) < 300:
                await asyncio.sleep(0.05)
            await client.close()

        stopper = asyncio.create_task(stop_later())
        async with asyncio.timeout(30):
            async for frame in client.frames():
                live.extend(frame.trades)
        await stopper

    asyncio.run(listen())
    by_id = {r["event_id"]: r for r in live}
    for ticker in ("AAPL", "NVDA"):
        mine = [r for r in live if r["ticker"] == ticker]
        lo, hi = min(r["exchange_ts_ms"] for r in mine), max(r["exchange_ts_ms"] for r in mine)
        pages, _ = fetch(sim.rest_base_url, ticker, lo * 1_000_000, hi * 1_000_000 + 999_999)
        fetched = [rest_trade_record(ticker, r, 0) for page in pages for r in page]
        twins = [r for r in fetched if r["event_id"] in by_id]
        assert len(twins) == len(mine)  # every live trade has its REST twin under the same event id
        for r in twins:
            assert {**by_id[r["event_id"]], "received_ts_us": 0} == r


# --- the simulator's history ----------------------------------------------------------------------------


def test_history_is_bounded_by_time_and_by_count() -> None:
    model = MarketModel(MarketConfig(seed=3, tickers=TICKERS, rate=4000, start_ms=1_700_000_000_000))
    by_time = TradesApi(model.symbols, KEY, history_s=2.0)
    by_count = TradesApi(model.symbols, KEY, max_trades=500)
    for block in model.generate(10.0):
        by_time.add(block)
        by_count.add(block)
    newest = 1_700_000_010_000 * 1_000_000
    oldest_kept = min(int(c.ns.min()) for c in by_time._chunks)
    assert newest - 2_100_000_000 <= oldest_kept and by_time.trades < 0.3 * 16_000
    assert 450 <= by_count.trades <= 500
    rows, more = by_time.query("MSFT", 0, 2**62, "asc", 50_000)
    assert not more and rows and rows[0]["sip_timestamp"] >= oldest_kept


class FlakyApi:
    """An HTTP front for the simulator's REST API that answers 503 to the first `failures` requests: a
    vendor API having a bad minute, or, as in the busy chaos run, a server too starved to answer in time."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.failures, self.requests = failures, 0
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                flaky.requests += 1
                if flaky.requests <= flaky.failures:
                    status, body = 503, b'{"status":"ERROR","error":"busy"}'
                else:
                    upstream_response = httpx.get(upstream + self.path, headers=dict(self.headers))
                    status, body = upstream_response.status_code, upstream_response.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_retry_deadline_rides_out_more_transient_failures_than_the_retry_count(
    sim: SimulatorHandle,
) -> None:
    """Ingest backfills with a retry deadline rather than a count: a backfill that gives up loses its
    ticker's gap for good (busy chaos run: 5 tickers' backfills failed after 4 timed-out attempts)."""
    time.sleep(0.5)  # some history on the tape
    flaky = FlakyApi(sim.rest_base_url, failures=6)
    try:
        fast = {"backoff_initial_s": 0.01, "backoff_max_s": 0.02, "retries": 3}
        with pytest.raises(BackfillError, match="HTTP 503: busy"):
            fetch(flaky.url, "AAPL", 0, 10**19, **fast)
        flaky.requests = 0
        pages, requests = fetch(flaky.url, "AAPL", 0, 10**19, **fast, retry_deadline_s=30.0)
        assert requests == 7 and sum(map(len, pages)) > 0
    finally:
        flaky.close()
