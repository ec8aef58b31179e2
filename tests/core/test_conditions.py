"""Trade-condition update rules: the shipped snapshot, the masks, unknown codes."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tradepulse.core.conditions import MALFORMED, REGULAR, ConditionRules, UpdateRule, read_snapshot
from tradepulse.errors import InvalidArgument


def test_snapshot_has_provenance_for_every_row() -> None:
    snap = read_snapshot()
    meta = snap["snapshot"]
    assert meta["retrieved"] and meta["endpoint"].startswith("GET /v3/reference/conditions")
    ids = {row["id"] for row in snap["results"]}
    assert snap["count"] == len(snap["results"])
    assert {int(k) for k in meta["row_sources"]} == ids
    assert set(meta["row_sources"].values()) <= {"massive-kb", "polygon-glossary", "cta-utp-spec", "api"}


@pytest.mark.parametrize(
    ("codes", "volume", "last_price"),
    [
        ((), True, True),  # regular sale: the feed omits `c`
        ((14, 41), True, True),  # intermarket sweep, trade-through exempt
        ((37,), True, False),  # odd lot
        ((2,), True, False),  # average price
        ((12,), True, False),  # Form T
        ((13,), True, False),  # extended hours, sold out of sequence
        ((15,), False, False),  # official close: its volume is already counted
        ((16,), False, False),  # official open
        ((38,), False, True),  # corrected consolidated close: sets the close, not volume
        ((22,), True, False),  # prior reference price: high/low yes, last no
        ((14, 37, 41), True, False),  # AND over the codes
    ],
)
def test_consolidated_rules_of_the_issue_codes(
    codes: tuple[int, ...], volume: bool, last_price: bool
) -> None:
    rules = ConditionRules.bundled()
    masks = rules.masks([list(codes)])
    assert bool(masks.volume[0]) is volume
    assert bool(masks.last_price[0]) is last_price
    assert rules.unknown_counts == {}


def test_22_updates_high_low_but_not_the_last_price() -> None:
    masks = ConditionRules.bundled().masks([[22]])
    assert masks.high_low[0] and not masks.open_close[0] and not masks.last_price[0]


def test_unknown_codes_default_to_regular_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    rules = ConditionRules.bundled()
    with caplog.at_level(logging.WARNING, logger="tradepulse.core.conditions"):
        first = rules.masks([[999], [999, 37], [], [998], None, "x", [[1]]])
        rules.masks([[999]])
    assert first.volume.tolist() == [True] * 7
    assert first.last_price.tolist() == [True, False, True, True, True, True, True]
    assert rules.unknown_counts == {999: 3, 998: 1, MALFORMED: 2}
    assert rules.unknown_trades == 6
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3  # 999, 998 and the malformed values, once each
    assert sum("999" in m for m in logged) == 1


def test_masks_match_rule_for_row_by_row() -> None:
    rules = ConditionRules.bundled()
    rng = np.random.default_rng(3)
    pool = [0, 2, 7, 12, 13, 14, 15, 16, 22, 37, 38, 41, 52, 53, 500]
    conds = [list(rng.choice(pool, rng.integers(0, 4), replace=False)) for _ in range(500)]
    conds = [[int(c) for c in row] for row in conds]
    masks = rules.masks(conds)
    for i, row in enumerate(conds):
        rule = rules.rule_for(row)
        assert (masks.volume[i], masks.high_low[i], masks.open_close[i]) == (
            rule.volume,
            rule.high_low,
            rule.open_close,
        )


def test_from_response_reads_the_api_shape_and_rejects_junk() -> None:
    payload = {
        "results": [
            {
                "id": 7,
                "asset_class": "stocks",
                "data_types": ["trade"],
                "update_rules": {
                    "consolidated": {
                        "updates_high_low": False,
                        "updates_open_close": False,
                        "updates_volume": True,
                    }
                },
            },
            {
                "id": 8,
                "asset_class": "options",
                "data_types": ["trade"],
                "update_rules": {"consolidated": {}},
            },
            {"id": 9, "asset_class": "stocks", "data_types": ["quote"]},
        ]
    }
    rules = ConditionRules.from_response(payload)
    assert rules.rules == {7: UpdateRule(volume=True, high_low=False, open_close=False)}
    with pytest.raises(InvalidArgument):
        ConditionRules.from_response({"results": "nope"})
    with pytest.raises(InvalidArgument):
        ConditionRules.from_response({"results": [payload["results"][1]]})


def test_permissive_rules_make_every_trade_eligible() -> None:
    rules = ConditionRules.permissive()
    masks = rules.masks([[15], [37], [999]])
    assert masks.volume.all() and masks.last_price.all()
    assert rules.unknown_counts == {} and rules.rule_for([15]) == REGULAR
