"""The TradePulse feature set on Quix Streams: a StreamingDataFrame over market.trades with a stateful
`apply` (RocksDB state per ticker, changelog topic), snapshots filtered and produced to a features topic.

Runs in `.venv-peers`: `python benchmarks/peers/quix_peer.py --bootstrap HOST:PORT --expect N ...`
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from quixstreams import Application, State

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drain import Meter, parse_args
from features import new_state, update


def main() -> None:
    args = parse_args(__doc__ or "")
    meter = Meter(args.expect, args.result, "at-least-once (Quix default), RocksDB state + changelog")
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel=logging.WARNING,
    )
    trades = app.topic("market.trades", value_deserializer="json", key_deserializer="str")
    features = app.topic("bench.quix.features", value_serializer="json", key_serializer="str")

    def on_trade(trade: dict, state: State) -> dict | None:
        st = state.get("w") or new_state()
        snapshot = update(st, trade)
        state.set("w", st)
        if meter.tick(1 if snapshot else 0):
            app.stop()
        return snapshot

    sdf = app.dataframe(trades)
    sdf = sdf.apply(on_trade, stateful=True).filter(lambda snapshot: snapshot is not None)
    sdf.to_topic(features)
    app.run()


if __name__ == "__main__":
    main()
