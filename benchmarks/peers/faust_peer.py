"""The TradePulse feature set on faust-streaming: an agent over market.trades with the per-ticker window
state in a Table (changelog-backed, reassigned on every update as faust requires for recovery), and
snapshots sent to a features topic.

Runs in `.venv-peers`: `python benchmarks/peers/faust_peer.py --bootstrap HOST:PORT --expect N ...`
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drain import Meter, parse_args
from features import new_state, update

args = parse_args(__doc__ or "")
meter = Meter(args.expect, args.result, "at-least-once (faust default), in-memory Table + changelog")
app = faust.App(
    args.group,
    broker=f"kafka://{args.bootstrap}",
    store="memory://",
    datadir=str(args.state_dir),
    topic_partitions=args.partitions,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
)
trades = app.topic("market.trades", key_type=str, value_serializer="json")
features = app.topic("bench.faust.features", key_type=str, value_serializer="json")
windows = app.Table("ticker-windows", default=new_state, partitions=args.partitions)


@app.agent(trades)
async def compute(stream: faust.Stream) -> None:
    async for ticker, trade in stream.items():
        st = windows[ticker]
        snapshot = update(st, trade)
        windows[ticker] = st  # reassign: faust only writes the changelog on assignment
        if snapshot is not None:
            await features.send(key=ticker, value=snapshot)
        if meter.tick(1 if snapshot else 0):
            logging.getLogger(__name__).warning("drained %d trades", meter.events)
            os._exit(0)  # the result is written; a graceful faust shutdown adds nothing to measure


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
