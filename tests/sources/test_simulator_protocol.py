"""The simulator's Massive stocks WebSocket protocol, driven by a raw `websockets` client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tradepulse.sources.simulator import SimulatorConfig, SimulatorHandle, run_simulator_in_thread
from tradepulse.sources.simulator.market import MarketConfig, MarketModel
from tradepulse.sources.simulator.ws_server import MassiveWsServer, Session

KEY = "test-key"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = run_simulator_in_thread(
        SimulatorConfig(
            seed=7,
            api_key=KEY,
            ws_port=0,
            http_port=0,
            rate=4000,
            max_connections=3,
            news_interval_s=0,
            spike_interval_s=0,
            jump_interval_s=0,
        )
    )
    yield handle
    handle.stop()


async def recv(ws: ClientConnection) -> list[dict[str, Any]]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))


async def login(
    url: str, key: str = KEY
) -> tuple[ClientConnection, list[dict[str, Any]], list[dict[str, Any]]]:
    ws = await connect(url)
    connected = await recv(ws)
    await ws.send(orjson.dumps({"action": "auth", "params": key}).decode())
    return ws, connected, await recv(ws)


async def subscribe(ws: ClientConnection, params: str, action: str = "subscribe") -> list[dict[str, Any]]:
    await ws.send(orjson.dumps({"action": action, "params": params}).decode())
    return [(await recv(ws))[0] for _ in params.split(",")]


async def data_events(ws: ClientConnection, want: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Receive data frames until `want` events arrived; returns the events and each frame's size."""
    events: list[dict[str, Any]] = []
    sizes: list[int] = []
    while len(events) < want:
        frame = await recv(ws)
        assert isinstance(frame, list)
        if all(e["ev"] == "status" for e in frame):
            continue
        sizes.append(len(frame))
        events.extend(frame)
    return events, sizes


def test_connect_auth_and_subscribe_acks(sim: SimulatorHandle) -> None:
    async def main() -> None:
        ws, connected, auth = await login(sim.ws_url + "/stocks")
        assert connected == [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
        assert auth == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
        acks = await subscribe(ws, "T.AAPL,Q.AAPL")
        assert acks == [
            {"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"},
            {"ev": "status", "status": "success", "message": "subscribed to: Q.AAPL"},
        ]
        events, sizes = await data_events(ws, 200)
        assert {e["sym"] for e in events} == {"AAPL"}
        assert {e["ev"] for e in events} == {"T", "Q"}
        assert max(sizes) > 1, "frames must batch several events"
        await ws.close()

    asyncio.run(main())


def test_wrong_key_is_rejected_and_closed(sim: SimulatorHandle) -> None:
    async def main() -> None:
        ws, _, auth = await login(sim.ws_url, key="wrong")
        assert auth == [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)

    asyncio.run(main())


def test_subscribe_before_auth_is_refused(sim: SimulatorHandle) -> None:
    async def main() -> None:
        async with connect(sim.ws_url) as ws:
            await recv(ws)
            [ack] = await subscribe(ws, "T.*")
            assert ack["status"] == "error"

    asyncio.run(main())


def test_wildcards_trades_and_quotes_fields(sim: SimulatorHandle) -> None:
    async def main() -> None:
        ws, _, _ = await login(sim.ws_url)
        await subscribe(ws, "T.*")
        events, _ = await data_events(ws, 300)
        assert {e["ev"] for e in events} == {"T"}
        assert len({e["sym"] for e in events}) == 5
        for e in events:
            assert set(e) >= {"ev", "sym", "x", "i", "z", "p", "s", "t", "q"}
            assert isinstance(e["i"], str) and e["p"] > 0 and e["s"] > 0 and e["t"] > 1e12
            assert set(e) <= {"ev", "sym", "x", "i", "z", "p", "s", "c", "t", "q", "trfi", "trft"}
        # Sequence numbers increase per ticker.
        last: dict[str, int] = {}
        for e in events:
            assert e["q"] > last.get(e["sym"], 0)
            last[e["sym"]] = e["q"]
        # Swap trades for quotes.
        await subscribe(ws, "Q.*")
        [ack] = await subscribe(ws, "T.*", action="unsubscribe")
        assert ack == {"ev": "status", "status": "success", "message": "unsubscribed to: T.*"}
        # Frames already queued before the unsubscribe may still hold trades; later ones must not.
        events, _ = await data_events(ws, 2000)
        tail = events[-500:]
        assert {e["ev"] for e in tail} == {"Q"}
        for e in tail:
            assert set(e) >= {"ev", "sym", "bx", "bp", "bs", "ax", "ap", "as", "c", "t", "q", "z"}
            assert e["ap"] > e["bp"] > 0
        await ws.close()

    asyncio.run(main())


def test_unknown_path_is_404(sim: SimulatorHandle) -> None:
    async def main() -> None:
        with pytest.raises(InvalidStatus):
            await connect(sim.ws_url + "/crypto")

    asyncio.run(main())


def test_max_connections_status() -> None:
    with run_simulator_in_thread(
        SimulatorConfig(api_key=KEY, ws_port=0, http_port=0, rate=100, max_connections=1, news_interval_s=0)
    ) as one:

        async def main() -> None:
            first, _, auth = await login(one.ws_url)
            assert auth[0]["status"] == "auth_success"
            second, _, refused = await login(one.ws_url)
            assert refused[0]["status"] == "max_connections"
            assert refused[0]["message"].startswith("Maximum number of websocket connections exceeded.")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(second.recv(), 5)
            await first.close()

        asyncio.run(main())


def test_drop_connections_and_sent_accounting() -> None:
    """Every event the server counts as sent reaches the client, across an abrupt drop."""
    with run_simulator_in_thread(
        SimulatorConfig(
            seed=3,
            api_key=KEY,
            ws_port=0,
            http_port=0,
            rate=3000,
            record_sent=True,
            news_interval_s=0,
            duration_s=2.0,
        )
    ) as s:
        received: set[tuple[str, int]] = set()

        async def session(drop: bool) -> None:
            ws, _, _ = await login(s.ws_url + "/stocks")
            await subscribe(ws, "T.*")
            if drop:
                events, _ = await data_events(ws, 50)
                received.update((e["sym"], e["q"]) for e in events)
                asyncio.get_running_loop().run_in_executor(None, s.drop_connections)
            try:
                while True:
                    try:
                        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except TimeoutError:
                        # After the market closed (duration_s) and the queue drained, all has arrived.
                        if s.sim.finished.is_set():
                            break
                        continue
                    received.update((e["sym"], e["q"]) for e in frame if e["ev"] == "T")
                assert not drop, "the dropped session must end with a closed connection"
                await ws.close()
            except ConnectionClosed as exc:
                assert drop and exc.rcvd is None, "a drop sends no close frame"

        asyncio.run(session(drop=True))
        asyncio.run(session(drop=False))
        assert s.wait_finished(30)
        sent = s.sent_trade_keys()
        assert len(sent) == s.sent_trades() > 0
        assert received == sent


def test_a_session_whose_send_fails_with_any_error_is_closed_and_never_stalls_the_market() -> None:
    """websockets' send() can fail with other errors than ConnectionClosed on a connection that died
    mid-write (seen in the throttled chaos run: `AttributeError: 'NoneType' object has no attribute
    'call_soon'` from aborting an already closed transport). The session must then be closed, so that
    neither the market's dispatch nor a replay waits forever on its full queue (the whole market stalled
    and every later client received nothing)."""

    class DeadSocket:
        async def send(self, *args: object, **kwargs: object) -> None:
            raise AttributeError("'NoneType' object has no attribute 'call_soon'")

    async def scenario() -> Session:
        server = MassiveWsServer(["AAPL", "MSFT"], KEY, queue_frames=2, resend_blocks=5)
        session = Session(DeadSocket(), len(server.symbols), server.queue_frames)  # type: ignore[arg-type]
        session.authed, session.subs = True, {"T.AAPL", "Q.AAPL"}
        session.update_masks(server._index)
        server.sessions.add(session)
        session.sender = asyncio.create_task(server._sender(session))
        market = MarketModel(MarketConfig(seed=3, tickers=["AAPL", "MSFT"], rate=4000))
        for _ in range(20):  # many more frames than the session's queue holds
            await asyncio.wait_for(server.dispatch(market.next_block()), 5)
        return session

    session = asyncio.run(scenario())
    assert session.closed


def test_am_aggregates_go_to_am_subscribers_only_and_equal_the_bars_of_the_trades_sent() -> None:
    """`AM.*` / `AM.<ticker>` get the per-minute aggregates of the minutes that ended, after their
    trades; `T.*` alone gets none. Each equals our bar engine's bar over the trades the feed sent."""
    from tradepulse.core.bars import BarEngine
    from tradepulse.core.columns import TradeColumns
    from tradepulse.core.conditions import ConditionRules
    from tradepulse.core.reconcile import compare
    from tradepulse.sources.parse import parse_frame

    boundary = 1_764_685_800_000  # the first minute ends 3 s after the start
    config = SimulatorConfig(
        seed=5,
        api_key=KEY,
        ws_port=0,
        http_port=0,
        rate=2000,
        news_interval_s=0,
        spike_interval_s=0,
        jump_interval_s=0,
        start_ms=boundary - 3000,
        duration_s=6.0,
        resend_blocks=100_000,  # a subscription gets every block again: no race with the start
    )
    with run_simulator_in_thread(config) as s:
        assert s.wait_finished(60)

        async def session(params: str) -> list[bytes]:
            ws, _, _ = await login(s.ws_url + "/stocks")
            await subscribe(ws, params)
            frames = []
            while True:
                try:
                    frames.append(await asyncio.wait_for(ws.recv(), 2))
                except TimeoutError:
                    break
            await ws.close()
            return [f.encode() if isinstance(f, str) else f for f in frames]

        every = asyncio.run(session("T.*,AM.*"))
        one = asyncio.run(session("T.AAPL,AM.AAPL"))
        trades_only = asyncio.run(session("T.*"))
    parsed = [parse_frame(f, 0) for f in every]
    vendor = [a for p in parsed for a in p.aggregates]
    trades = [t for p in parsed for t in p.trades if t["exchange_ts_ms"] < boundary]
    assert {a["ticker"] for a in vendor} == {t["ticker"] for t in trades} and len(vendor) == len(
        {t["ticker"] for t in trades}
    )
    assert all(a["start_ms"] == boundary - 60_000 and a["end_ms"] == boundary for a in vendor)
    columns = TradeColumns.from_records(trades)
    assert columns.conditions is not None
    masks = ConditionRules.bundled().masks(columns.conditions)
    engine = BarEngine(2000)
    bars = engine.process(
        columns,
        volume_eligible=masks.volume,
        high_low_eligible=masks.high_low,
        open_close_eligible=masks.open_close,
    )
    bars += engine.flush()
    assert [r["status"] for r in compare(bars, vendor)] == ["match"] * len(vendor)
    assert [a["ticker"] for f in one for a in parse_frame(f, 0).aggregates] == ["AAPL"]
    assert not [a for f in trades_only for a in parse_frame(f, 0).aggregates]


def test_a_held_market_starts_its_clock_at_the_first_data_subscription() -> None:
    """`hold_until_subscribed`: nothing is generated while only a status-only client is connected;
    the first data subscription starts the market, and its first events reach that subscriber."""
    config = SimulatorConfig(
        seed=4,
        api_key=KEY,
        ws_port=0,
        http_port=0,
        rate=2000,
        news_interval_s=0,
        duration_s=1.0,
        hold_until_subscribed=True,
    )
    with run_simulator_in_thread(config) as s:

        async def session() -> list[dict[str, Any]]:
            ws, _, _ = await login(s.ws_url + "/stocks")
            await asyncio.sleep(1.5)  # longer than the whole market: it would be over if it ran
            assert s.sim.generated == 0 and not s.sim.finished.is_set()
            await subscribe(ws, "T.*")
            events, _ = await data_events(ws, 100)
            await ws.close()
            return events

        events = asyncio.run(session())
        assert s.wait_finished(30)
    assert min(e["q"] for e in events if e["sym"] == events[0]["sym"]) <= 2  # from the market's start
