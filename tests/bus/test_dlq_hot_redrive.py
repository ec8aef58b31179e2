"""`sink:hot` dead letters are redrivable: the runner (real broker, real SQLite stores) dead-letters the
rows of a batch the hot store refused, the store recovers, and `tradepulse dlq redrive` writes them."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from tests.bus.test_runner import FailingHotStore, make_recording, own_group, produce, running, wait_for
from tradepulse.bus.pipeline import build_runner
from tradepulse.cli import storage
from tradepulse.config import Settings
from tradepulse.models import DeadLetter
from tradepulse.stores.dlq import TRANSIENT
from tradepulse.stores.factory import open_dlq, open_hot_store

pytestmark = pytest.mark.kafka


def test_sink_hot_letters_are_redriven_once_the_hot_store_recovers(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = own_group(kafka_settings)
    events = make_recording(duration_s=60, rate=20).events[:600]
    failing = FailingHotStore(open_hot_store(settings), failures=settings.dlq_inline_attempts)
    runner = build_runner(settings, instance="hotredrive", hot=failing)
    produce(settings, events)
    with running(runner):
        wait_for(lambda: runner.metrics.events_processed >= len(events), 60, "every message")
    assert failing.failures == 0  # the outage is over

    dlq = open_dlq(settings)
    letters = dlq.pending(limit=10_000)
    dlq.close()
    assert letters and {x["stage"] for x in letters} == {"sink:hot"}
    assert {x["failure_class"] for x in letters} == {TRANSIENT}
    rows = {x["dead_letter_id"]: orjson.loads(x["payload"]) for x in letters}
    dead_trades = {body["row"]["event_id"] for body in rows.values() if body["kind"] == "trade"}
    hot = open_hot_store(settings)
    assert dead_trades and not (dead_trades & hot.trade_ids())
    hot.close()

    monkeypatch.setattr(storage, "get_settings", lambda: settings)
    result = CliRunner().invoke(storage.dlq, ["redrive", "--force"])
    assert result.exit_code == 0, result.output
    assert f"redriven {len(letters)}, failed 0, archived 0" in result.output

    hot = open_hot_store(settings)
    assert dead_trades <= hot.trade_ids()  # the refused trades are in the hot store now
    for body in rows.values():
        if body["kind"] == "features":
            row = body["row"]
            # Its second holds this revision or a later one (the hot store never goes back a revision).
            start = row["snapshot_start_ms"]
            stored = {f["snapshot_start_ms"]: f for f in hot.feature_history(row["ticker"], start)}
            assert stored[start]["revision"] >= row["revision"]
    hot.close()
    dlq = open_dlq(settings)
    redriven = dlq.letters("redriven", limit=10_000)
    assert dlq.depth() == 0 and len(redriven) == len(letters)
    for letter in redriven:
        DeadLetter.model_validate(letter)
        # The outage that dead-lettered it is still on the letter; the redrive is in its history.
        assert (letter["error_type"], letter["reason"]) == ("OperationalError", "database is locked")
        assert [h["outcome"] for h in letter["history"]] == ["redriven"] and letter["retry_count"] == 1
    dlq.close()
