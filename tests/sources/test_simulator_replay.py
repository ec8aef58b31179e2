"""Replay of recorded trades (cold-store Parquet layout) through the simulator's WebSocket server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tradepulse.ids import trade_event_id
from tradepulse.models import Trade
from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread
from tradepulse.sources.simulator.replay import ReplaySource

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def write_trades(root: Path, n: int = 400) -> list[dict]:
    """n trades 10 ms apart over two tickers, split across two hour partitions, one duplicated row."""
    rows = []
    for k in range(n):
        ticker = ("AAPL", "MSFT")[k % 2]
        t = T0 + 3_600_000 - 2_000 + k * 10  # crosses into hour 01
        trf = k % 5 == 0
        rows.append(
            Trade(
                event_id=trade_event_id(ticker, 4 if trf else 12, str(9000 + k), t, k // 2 + 1),
                ticker=ticker,
                price=100.0 + k / 100,
                size=100 if k % 3 else 37,
                exchange=4 if trf else 12,
                trade_id=str(9000 + k),
                tape=3,
                conditions=[] if k % 3 else [37],
                sequence=k // 2 + 1,
                exchange_ts_ms=t,
                received_ts_us=t * 1000,
                trf_id=202 if trf else None,
                trf_ts_ms=t - 1 if trf else None,
            ).model_dump()
        )
    for hour in (0, 1):
        part = [r for r in rows if (r["exchange_ts_ms"] - T0) // 3_600_000 == hour]
        if hour == 1:
            part.append(part[0])  # an at-least-once duplicate
        folder = root / "trades" / "dt=2026-01-01" / f"hour={hour:02d}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(part), folder / "market.trades-p0-0-999.parquet")
    return rows


def test_replay_source_restores_the_wire_format(tmp_path: Path) -> None:
    rows = write_trades(tmp_path)
    src = ReplaySource(tmp_path, speed=100, tick_ms=50)
    assert len(src) == len(rows) and src.symbols == ["AAPL", "MSFT"]
    records = []
    while (block := src.next_block()) is not None:
        assert block.end_ms - block.start_ms == 50 * 100  # a 50 ms tick carries 100× recorded time
        assert all(block.start_ms <= r["t"] < block.end_ms for r in block.records())
        records.extend(block.records())
    first = records[0]
    assert first == {
        "ev": "T",
        "sym": "AAPL",
        "x": 4,
        "i": "9000",
        "z": 3,
        "p": 100.0,
        "s": 37,
        "c": [37],
        "t": T0 + 3_598_000,
        "q": 1,
        "trfi": 202,
        "trft": T0 + 3_597_999,
    }
    assert [(r["sym"], r["q"]) for r in records] == [(r["ticker"], r["sequence"]) for r in rows]


def test_replay_is_served_at_n_times_speed(tmp_path: Path) -> None:
    rows = write_trades(tmp_path)  # 4 s of recorded trades
    with run_simulator_in_thread(
        SimulatorConfig(
            api_key="k", ws_port=0, http_port=0, replay_root=tmp_path, replay_speed=20, record_sent=True
        )
    ) as sim:

        async def main() -> list[dict]:
            got: list[dict] = []
            async with connect(sim.ws_url + "/stocks") as ws:
                await ws.recv()
                await ws.send('{"action":"auth","params":"k"}')
                await ws.recv()
                await ws.send('{"action":"subscribe","params":"T.*"}')
                loop = asyncio.get_running_loop()
                started = loop.time()
                try:
                    while len(got) < len(rows):
                        got.extend(
                            e for e in orjson.loads(await asyncio.wait_for(ws.recv(), 5)) if e["ev"] == "T"
                        )
                except (TimeoutError, ConnectionClosed):
                    pass
                # 4 s recorded at 20× ≈ 0.2 s; at 1× it would be 4 s.
                assert loop.time() - started < 2.0
            return got

        got = asyncio.run(main())
        assert [(e["sym"], e["q"]) for e in got] == [(r["ticker"], r["sequence"]) for r in rows]
        assert sim.wait_finished(10) and sim.sent_trades() == len(rows)
