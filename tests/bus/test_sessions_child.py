"""The runner's NYSE session table comes from a child interpreter (`nyse_sessions`), so the calendar
library's pandas never loads into the runner (the image-level check: tests/ship/test_containers.py)."""

from __future__ import annotations

import numpy as np
import pytest

import tradepulse.bus.pipeline as pipeline
from tradepulse.core.sessions import SessionTable
from tradepulse.errors import BusError


def test_the_childs_table_is_the_calendars_table() -> None:
    child, here = pipeline.nyse_sessions.__wrapped__(), SessionTable.nyse()
    for name in ("pre_ms", "open_ms", "close_ms", "post_ms"):
        assert getattr(child, name).dtype == np.int64
        np.testing.assert_array_equal(getattr(child, name), getattr(here, name))
    assert (child.start_ms, child.end_ms) == (here.start_ms, here.end_ms)
    assert len(child.open_ms) > 5_000  # 20 years of trading days and one ahead
    ts = np.array([1_764_772_200_000, 1_764_772_199_999, 1_764_795_600_000])  # 2025-12-03 09:30, 16:00 ET
    assert child.session_of(ts).tolist() == ["regular", "pre_market", "after_hours"]


def test_a_child_that_fails_is_an_error_that_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "SESSIONS_CHILD", "raise SystemExit('no calendar here')")
    with pytest.raises(BusError, match=r"(?s)failed \(exit 1\).*no calendar here"):
        pipeline.nyse_sessions.__wrapped__()
