"""The Massive WebSocket client against the market simulator (real sockets, real protocol)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from tradepulse.models import Quote, Trade
from tradepulse.sources.massive import (
    MassiveAuthError,
    MassiveClient,
    MassiveMaxConnectionsError,
    subscription_params,
)
from tradepulse.sources.parse import ParsedFrame
from tradepulse.sources.simulator import SimulatorConfig, SimulatorHandle, run_simulator_in_thread

KEY = "sim-secret-key-123"
TICKERS = ["AAPL", "MSFT", "AMZN", "TSLA", "NVDA"]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = run_simulator_in_thread(
        SimulatorConfig(seed=7, tickers=TICKERS, rate=5000, api_key=KEY, ws_port=0, http_port=0)
    )
    try:
        yield handle
    finally:
        handle.stop()


def client(url: str, key: str = KEY, tickers: list[str] | None = None, **kwargs: object) -> MassiveClient:
    kwargs = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **kwargs}
    return MassiveClient(url + "/stocks", key, subscription_params(tickers or TICKERS), **kwargs)  # type: ignore[arg-type]


def client_log(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged on the client side (the simulator's own server logs are not ours to judge)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))


async def collect(c: MassiveClient, events: int) -> list[ParsedFrame]:
    frames: list[ParsedFrame] = []
    total = 0
    async with asyncio.timeout(20):
        async for frame in c.frames():
            frames.append(frame)
            total += frame.events
            if total >= events:
                break
    await c.close()
    return frames


def test_auth_ok_subscribes_and_streams_multi_event_frames(
    sim: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    c = client(sim.ws_url, tickers=["AAPL", "TSLA"])
    with caplog.at_level(logging.DEBUG):
        frames = asyncio.run(collect(c, 500))

    trades = [t for f in frames for t in f.trades]
    quotes = [q for f in frames for q in f.quotes]
    assert trades and quotes
    assert {r["ticker"] for r in trades + quotes} == {"AAPL", "TSLA"}  # only what we subscribed to
    assert max(f.events for f in frames) > 1  # frames carry several events
    assert all(not f.rejects for f in frames)
    for record in trades[:50]:
        assert Trade.model_validate(record).model_dump() == record
    for record in quotes[:50]:
        assert Quote.model_validate(record).model_dump() == record
    acks = {s["message"] for f in frames for s in f.statuses}
    assert {"subscribed to: T.AAPL", "subscribed to: Q.TSLA"} <= acks
    # Sequence numbers increase per ticker and kind, and receive stamps never go backwards.
    for kind in (trades, quotes):
        for ticker in ("AAPL", "TSLA"):
            seqs = [r["sequence"] for r in kind if r["ticker"] == ticker]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    stamps = [f.received_ts_us for f in frames]
    assert stamps == sorted(stamps)
    assert c.stats.connection_attempts == 1 and c.stats.reconnects == 0
    assert KEY not in client_log(caplog)


def test_rejected_key_is_one_fatal_error_without_retries(
    sim: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    before = sim.stats()["connections_total"]
    c = client(sim.ws_url, key="wrong-key-456")

    async def run() -> None:
        async for _ in c.frames():
            pass

    with caplog.at_level(logging.DEBUG), pytest.raises(MassiveAuthError, match="authentication failed"):
        asyncio.run(run())
    assert c.stats.connection_attempts == 1
    assert sim.stats()["connections_total"] == before + 1  # the server saw exactly one attempt
    assert "wrong-key-456" not in client_log(caplog)


def test_reconnects_and_resubscribes_after_the_server_drops_the_connection(sim: SimulatorHandle) -> None:
    c = client(sim.ws_url, tickers=["NVDA"])

    async def run() -> tuple[int, int]:
        before = after = 0
        async with asyncio.timeout(20):
            async for frame in c.frames():
                if c.stats.connections == 1:
                    before += len(frame.trades) + len(frame.quotes)
                    if before >= 100 and not c.stats.reconnects:
                        await asyncio.to_thread(sim.drop_connections)
                else:
                    after += len(frame.trades) + len(frame.quotes)
                    if after >= 100:
                        break
        await c.close()
        return before, after

    before, after = asyncio.run(run())
    assert before >= 100 and after >= 100  # data flows again: the new session is subscribed
    assert c.stats.reconnects == 1 and c.stats.connections == 2


def test_connection_limit_is_reported_and_fatal_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    with run_simulator_in_thread(
        SimulatorConfig(
            seed=1, tickers=["AAPL"], rate=100, api_key=KEY, ws_port=0, http_port=0, max_connections=1
        )
    ) as limited:
        holder = client(limited.ws_url)
        second = client(limited.ws_url, max_connections_retries=2)

        async def run() -> None:
            frames = holder.frames()
            await anext(frames)  # the holder is authenticated and owns the one connection
            try:
                async for _ in second.frames():
                    pass
            finally:
                await holder.close()
                await frames.aclose()

        with caplog.at_level(logging.ERROR), pytest.raises(MassiveMaxConnectionsError):
            asyncio.run(run())
    assert second.stats.connection_attempts == 3  # first try + 2 retries, then it gives up
    assert second.stats.connections == 0
    assert "Maximum number of websocket connections exceeded" in caplog.text
