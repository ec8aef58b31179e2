"""The processor's pacing of provisional feature revisions (`feature_revision_interval_ms`) around a
rebuild: the replay has no clock, so it leaves no trade waiting. A trade that waited at the committed
offsets may be in a revision already on market.features (the idle flush, or its ticker's next batch,
wrote it before the restart); emitting it again after the rebuild would put the same (ticker, second,
revision) on the topic twice. The runner-level behaviour (the idle flush) is in test_runner_latency."""

from __future__ import annotations

from pathlib import Path

from tests.bus.test_runner import make_recording
from tradepulse.bus.decode import DecodedBatch
from tradepulse.bus.pipeline import CoreProcessor
from tradepulse.config import Settings
from tradepulse.topics import TRADES


def test_a_rebuild_leaves_no_trade_waiting_for_a_revision(tmp_path: Path) -> None:
    core = CoreProcessor(Settings(data_dir=tmp_path, feature_revision_interval_ms=1900))
    rows = [row for topic, _, row in make_recording(duration_s=20, rate=20, seed=9).events if topic == TRADES]
    ticker = rows[0]["ticker"]
    first, second = [row for row in rows if row["ticker"] == ticker][:2]

    def batches() -> list[DecodedBatch]:
        return [
            DecodedBatch(trades=[dict(first)], trade_pos=[(0, 0)]),
            DecodedBatch(trades=[dict(second)], trade_pos=[(0, 1)]),
        ]

    live = [core.process(batch, emit=True) for batch in batches()]
    assert [f["ticker"] for f in live[0].features] == [ticker] and live[1].features == []
    assert core.revisions_waiting()  # the second trade waits for the interval
    assert not core.revisions_due()  # 1.9 s have not passed
    core.reset()
    for batch in batches():
        core.process(batch, emit=False)
    assert not core.revisions_waiting()
    core.close()
