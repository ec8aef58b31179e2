"""The official `massive` and `finnhub-python` clients work against the simulator unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import finnhub
import pytest
from massive import WebSocketClient
from massive.exceptions import AuthError
from massive.websocket.models import EquityQuote, EquityTrade, Market

from tradepulse.sources.simulator import SimulatorConfig, SimulatorHandle, run_simulator_in_thread

KEY = "official-key"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = run_simulator_in_thread(
        SimulatorConfig(seed=21, api_key=KEY, ws_port=0, http_port=0, rate=3000, backfill_news=30)
    )
    yield handle
    handle.stop()


def massive_client(sim: SimulatorHandle, key: str = KEY, **kwargs: object) -> WebSocketClient:
    # feed is the host the client builds ws://<feed>/stocks from; secure=False selects ws://.
    return WebSocketClient(
        api_key=key,
        feed=sim.ws_url.removeprefix("ws://"),
        market=Market.Stocks,
        secure=False,
        max_reconnects=0,
        **kwargs,
    )


def test_massive_client_receives_parsed_trades_and_quotes(sim: SimulatorHandle) -> None:
    client = massive_client(sim, subscriptions=["T.AAPL", "Q.AAPL", "T.MSFT"])
    received: list[object] = []

    async def main() -> None:
        done = asyncio.Event()

        async def handle(msgs: list[object]) -> None:
            received.extend(msgs)
            if sum(isinstance(m, EquityTrade) for m in received) >= 50 and any(
                isinstance(m, EquityQuote) for m in received
            ):
                done.set()

        task = asyncio.create_task(client.connect(handle))
        await asyncio.wait_for(done.wait(), 15)
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    trades = [m for m in received if isinstance(m, EquityTrade)]
    quotes = [m for m in received if isinstance(m, EquityQuote)]
    assert {t.symbol for t in trades} == {"AAPL", "MSFT"}
    assert {q.symbol for q in quotes} == {"AAPL"}
    for t in trades:
        assert t.price > 0 and t.size > 0 and isinstance(t.id, str) and t.sequence_number > 0
        assert t.timestamp > 1_600_000_000_000 and t.tape == 3 and t.exchange > 0
    for q in quotes:
        assert q.ask_price > q.bid_price > 0 and q.bid_size > 0 and q.sequence_number > 0


def test_massive_client_rejected_key_raises_auth_error(sim: SimulatorHandle) -> None:
    client = massive_client(sim, key="wrong", subscriptions=["T.*"])

    async def noop(msgs: list[object]) -> None:
        return None

    with pytest.raises(AuthError):
        asyncio.run(asyncio.wait_for(client.connect(noop), 10))


def test_finnhub_client_reads_company_news(sim: SimulatorHandle) -> None:
    client = finnhub.Client(api_key=KEY)
    client.API_URL = sim.news_base_url  # the documented class attribute that holds the base URL
    today = datetime.now(UTC).date()
    expected = {r["article_id"] for r in sim.ground_truth if r["type"] == "news" and r["ticker"] == "NVDA"}
    news = client.company_news("NVDA", _from=(today - timedelta(days=1)).isoformat(), to=today.isoformat())
    assert expected and {a["id"] for a in news} == expected
    assert all(a["related"] == "NVDA" and a["headline"] for a in news)
    client.api_key = "wrong"
    with pytest.raises(finnhub.FinnhubAPIException) as err:
        client.company_news("NVDA", _from=today.isoformat(), to=today.isoformat())
    assert err.value.status_code == 401
