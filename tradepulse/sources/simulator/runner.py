"""The simulator process: market (or replay) source → Massive WebSocket server + Finnhub news server, and
Massive's REST trades endpoint (`/v3/trades/{ticker}`, over the recent history) on both ports.

`Simulator` is asyncio-native (used by `tradepulse simulate`); `run_simulator_in_thread()` runs one
in a background thread and returns a `SimulatorHandle` for tests and benchmark scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import SecretStr

from tradepulse.bus.stages import LatencyHistogram
from tradepulse.config import DEFAULT_TICKERS
from tradepulse.sources.simulator.conditions_api import CONDITIONS_PATH, ConditionsApi
from tradepulse.sources.simulator.market import Block, MarketConfig, MarketModel
from tradepulse.sources.simulator.news_server import NewsServer
from tradepulse.sources.simulator.trades_api import TRADES_PREFIX, TradesApi
from tradepulse.sources.simulator.ws_server import MassiveWsServer

T = TypeVar("T")


@dataclass
class SimulatorConfig:
    """Everything the simulator needs. Ports 0 pick free ports (read them back from the handle)."""

    seed: int = 42
    tickers: list[str] = field(default_factory=lambda: list(DEFAULT_TICKERS))
    rate: float = 2000.0
    """Events/s (trades + quotes) across all tickers at profile multiplier 1."""
    trade_fraction: float = 0.4
    api_key: str | SecretStr = "tradepulse-local"
    host: str = "127.0.0.1"
    ws_port: int = 8765
    http_port: int = 8766
    ground_truth_path: str | Path | None = None
    profile: Literal["flat", "market_open"] = "flat"
    max_connections: int | None = None
    duration_s: float | None = None
    """Stop generating after this much simulated time (servers stay up); None = forever."""
    news_interval_s: float = 30.0
    news_reaction_fraction: float = 0.6
    spike_interval_s: float = 90.0
    jump_interval_s: float = 150.0
    backfill_news: int = 0
    news_calls_per_minute: int = 60
    tick_ms: int = 50
    max_events_per_frame: int = 1000
    client_queue_frames: int = 1000
    record_sent: bool = False
    """Keep the set of (sym, q) sent, for zero-loss reconciliation in tests (memory grows with events)."""
    resend_blocks: int = 0
    """On every subscription, first resend the last N blocks (ticks) dispatched: a feed with replay,
    so that a client restarted after a crash (kill -9) gets again what it had received but not yet
    published. Clients drop the duplicates by event id. 0 = the real Massive behaviour (no replay)."""
    rest_history_s: float = 900.0
    """How far back the REST trades endpoint reaches (simulated seconds)."""
    rest_history_max_trades: int = 1_000_000
    """...and at most this many trades (bounds memory at high rates)."""
    start_ms: int | None = None
    """Simulated time of the first event; None = now, so event times track the wall clock."""
    hold_until_subscribed: bool = False
    """Start the market's clock only once a client has subscribed to data. For tests that start their
    services after the simulator: on a busy machine a service can take seconds to start, and a market
    that ran out before anyone listened tests nothing. False = the market runs from the start."""
    replay_root: str | Path | None = None
    """Serve recorded trades from this cold-store root instead of the synthetic market."""
    replay_speed: float = 1.0
    bad_tick_rate: float = 0.0
    """Fraction of trades replaced by labelled bad ticks (`MarketConfig.bad_tick_rate`); 0 = none."""
    bad_tick_impossible_share: float = 0.5

    @property
    def key(self) -> str:
        return self.api_key.get_secret_value() if isinstance(self.api_key, SecretStr) else self.api_key

    def market_config(self) -> MarketConfig:
        return MarketConfig(
            seed=self.seed,
            tickers=list(self.tickers),
            rate=self.rate,
            trade_fraction=self.trade_fraction,
            profile=self.profile,
            tick_ms=self.tick_ms,
            start_ms=self.start_ms,
            spike_interval_s=self.spike_interval_s,
            jump_interval_s=self.jump_interval_s,
            news_interval_s=self.news_interval_s,
            news_reaction_fraction=self.news_reaction_fraction,
            backfill_news=self.backfill_news,
            ground_truth_path=Path(self.ground_truth_path) if self.ground_truth_path else None,
            bad_tick_rate=self.bad_tick_rate,
            bad_tick_impossible_share=self.bad_tick_impossible_share,
        )


class EventSource(Protocol):
    """What the simulator serves: blocks of events on a simulated clock."""

    symbols: list[str]
    start_ms: int
    speed: float

    def next_block(self) -> Block | None: ...


class Simulator:
    """Market source + both servers on the running event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.source: EventSource | None = None
        self.ws: MassiveWsServer | None = None
        self.news: NewsServer | None = None
        self.trades_api: TradesApi | None = None
        self.articles: list[dict[str, Any]] = []
        self.generated = 0
        self.publish_delay = LatencyHistogram()
        self.sim_now_ms = 0
        self.generation_done = asyncio.Event()
        self.finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started_wall = 0.0

    def _make_source(self) -> EventSource:
        cfg = self.config
        if cfg.replay_root is not None:
            from tradepulse.sources.simulator.replay import ReplaySource

            return ReplaySource(cfg.replay_root, speed=cfg.replay_speed, tick_ms=cfg.tick_ms)
        model = MarketModel(cfg.market_config())
        self.articles.extend(model.backfill)
        return model

    async def start(self) -> None:
        """Bind both servers and start producing events."""
        cfg = self.config
        self.source = self._make_source()
        self.sim_now_ms = self.source.start_ms
        self.trades_api = TradesApi(
            self.source.symbols,
            cfg.key,
            history_s=cfg.rest_history_s,
            max_trades=cfg.rest_history_max_trades,
        )
        self.conditions_api = ConditionsApi(cfg.key)
        self.ws = MassiveWsServer(
            self.source.symbols,
            cfg.key,
            max_connections=cfg.max_connections,
            max_events_per_frame=cfg.max_events_per_frame,
            queue_frames=cfg.client_queue_frames,
            record_sent=cfg.record_sent,
            resend_blocks=cfg.resend_blocks,
            rest=self.trades_api,
            conditions=self.conditions_api,
        )
        await self.ws.start(cfg.host, cfg.ws_port)
        self.news = NewsServer(
            lambda: self.articles,
            cfg.key,
            cfg.news_calls_per_minute,
            routes={TRADES_PREFIX: self.trades_api.handle, CONDITIONS_PATH: self.conditions_api.handle},
        )
        try:
            await self.news.start(cfg.host, cfg.http_port)
        except BaseException:
            await self.ws.close()
            raise
        self._task = asyncio.create_task(self._produce())

    @property
    def ws_url(self) -> str:
        assert self.ws is not None
        return f"ws://{self.config.host}:{self.ws.port}"

    @property
    def news_base_url(self) -> str:
        assert self.news is not None
        return f"http://{self.config.host}:{self.news.port}/api/v1"

    @property
    def rest_base_url(self) -> str:
        """Massive REST base (`{base}/v3/trades/{ticker}`); the WebSocket port answers it too."""
        assert self.news is not None
        return f"http://{self.config.host}:{self.news.port}"

    async def _produce(self) -> None:
        assert self.source is not None and self.ws is not None and self.trades_api is not None
        loop = asyncio.get_running_loop()
        src, ws, rest = self.source, self.ws, self.trades_api
        if self.config.hold_until_subscribed:
            await ws.data_subscribed.wait()
        t0 = self._started_wall = loop.time()
        sim0 = src.start_ms
        end_ms = sim0 + self.config.duration_s * 1000 if self.config.duration_s is not None else None
        try:
            while True:
                block = src.next_block()
                if block is None:
                    break
                # A block covers [start, end) of simulated time; send it once that time has passed.
                due = t0 + (block.end_ms - sim0) / 1000.0 / src.speed
                await asyncio.sleep(max(due - loop.time(), 0.0))
                # How far sending fell behind the schedule (OpenMessaging's "publish delay"): the bench
                # reports it, so a slow simulator is not mistaken for pipeline latency.
                self.publish_delay.record((loop.time() - due) * 1e6)
                self.articles.extend(block.news)
                # On the tape (REST) before it is sent: a client that subscribed too late for this block
                # finds it by REST once it sees its subscription confirmed.
                rest.add(block)
                await ws.dispatch(block)
                self.generated += len(block)
                self.sim_now_ms = block.end_ms
                if end_ms is not None and block.end_ms >= end_ms:
                    break
            self.generation_done.set()
            await ws.flush(timeout=60.0)
        finally:
            close = getattr(src, "close", None)
            if close:
                close()
            self.generation_done.set()
            self.finished.set()

    async def stop(self) -> None:
        """Stop producing and close both servers."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ws is not None:
            await self.ws.close()
        if self.news is not None:
            await self.news.close()

    def stats(self) -> dict[str, Any]:
        """Counters for the progress line and for tests."""
        out: dict[str, Any] = {
            "generated": self.generated,
            "sim_now_ms": self.sim_now_ms,
            "articles": len(self.articles),
            "publish_delay_ms": self.publish_delay.summary_ms(),
        }
        if self.ws is not None:
            out.update(self.ws.stats())
        if self.news is not None:
            out.update(news_requests=self.news.requests, news_rejected_429=self.news.rejected_rate)
        if self.trades_api is not None:
            out.update(rest_trades=self.trades_api.trades, rest_requests=self.trades_api.requests)
        return out


class SimulatorHandle:
    """A simulator running on its own event loop in a daemon thread."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.sim = Simulator(config)
        self._thread = threading.Thread(target=self._main, name="simulator", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._amain())
        finally:
            self._loop.close()

    async def _amain(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.sim.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.sim.stop()

    def _start(self, timeout: float = 30.0) -> SimulatorHandle:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator did not start")
        if self._error is not None:
            raise self._error
        return self

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def ws_url(self) -> str:
        """`ws://host:port`; clients may connect to it or to `ws_url + "/stocks"`."""
        return self.sim.ws_url

    @property
    def news_base_url(self) -> str:
        """Finnhub-style base URL, e.g. `http://127.0.0.1:PORT/api/v1`."""
        return self.sim.news_base_url

    @property
    def rest_base_url(self) -> str:
        """Massive REST base URL, e.g. `http://127.0.0.1:PORT` (serves `/v3/trades/{ticker}`)."""
        return self.sim.rest_base_url

    @property
    def ground_truth(self) -> list[dict[str, Any]]:
        """Ground-truth records so far (also written to `ground_truth_path` when set)."""
        src = self.sim.source
        return list(getattr(src, "ground_truth", []))

    def drop_connections(self) -> int:
        """Abort every client socket (no close frame); returns how many were dropped."""
        assert self.sim.ws is not None
        return self._call(self.sim.ws.drop_connections())

    def sent_trades(self) -> int:
        """Trades sent so far, summed over all connections."""
        return self.sim.ws.sent_trades if self.sim.ws else 0

    def sent_quotes(self) -> int:
        return self.sim.ws.sent_quotes if self.sim.ws else 0

    def sent_trade_keys(self) -> set[tuple[str, int]]:
        """(sym, q) of every trade sent (needs `record_sent=True`)."""
        return self._call(_copy(self.sim.ws.sent_trade_keys if self.sim.ws else set()))

    def sent_quote_keys(self) -> set[tuple[str, int]]:
        return self._call(_copy(self.sim.ws.sent_quote_keys if self.sim.ws else set()))

    def clients(self) -> int:
        """Authenticated connections right now."""
        return self.sim.ws.authenticated if self.sim.ws else 0

    def stats(self) -> dict[str, Any]:
        return self._call(_value(self.sim.stats))

    def wait_clients(self, n: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least n clients are authenticated (and subscribed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws = self.sim.ws
            if ws is not None and sum(1 for s in list(ws.sessions) if s.wants_data) >= n:
                return True
            time.sleep(0.01)
        return False

    def wait_finished(self, timeout: float = 60.0) -> bool:
        """Wait until `duration_s` of events is generated and every client's queue is sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sim.finished.is_set():
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Stop the servers and the thread (idempotent)."""
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _copy(s: set[tuple[str, int]]) -> set[tuple[str, int]]:
    return set(s)


async def _value(fn: Any) -> Any:
    return fn()


def run_simulator_in_thread(config: SimulatorConfig | None = None) -> SimulatorHandle:
    """Start a simulator in a background thread; returns once both servers listen."""
    return SimulatorHandle(config or SimulatorConfig())._start()
