"""`tradepulse verify-bars`: our one-minute bars against the vendor's per-minute aggregates, per ticker.

Computed from the cold store (DuckDB over the local Parquet files), where every row of market.bars and
market.vendor_bars is exactly once, so the summary depends only on what the topics hold, whatever
restarts or replays the runner went through: the same comparison the runner makes live
(`tradepulse.core.reconcile`; the runner counts it on /metrics and logs each mismatch), over the stored
minutes. A minute that differs and holds prints flagged `outlier` is `outlier` if recomputing its bar
over every stored print of the minute, the flagged ones included, gives the vendor's bar (recomputed
from that minute's prints alone: a straggler the live tape took for late, behind a later minute's
print, counts here, so the outlier/mismatch split can differ from the runner's in that rare case). A bar whose
counterpart may still come (the other side has not moved past its minute) is `pending`. The cold store
lags the runner by its flush interval (`TRADEPULSE_COLD_FLUSH_INTERVAL_S`).
"""

from __future__ import annotations

import re
from typing import Any

import click
import numpy as np
import orjson

from tradepulse.config import Settings, get_settings
from tradepulse.errors import CliError

TICKER = re.compile(r"[A-Za-z0-9.\-]{1,16}")

BAR_COLUMNS = "ticker, start_ms, open, high, low, close, volume, vwap, trade_count"
VENDOR_COLUMNS = "ticker, start_ms, open, high, low, close, volume, vwap, avg_trade_size, received_ts_us"


def verify(settings: Settings, minutes: int | None = None, ticker: str | None = None) -> dict[str, Any]:
    """{"tickers": {ticker: counts}, "total": counts, "mismatches": [...]} over the stored bars."""
    from tradepulse.core.reconcile import BAR_MS, FIELDS, STATUSES, BarReconciler, summarize
    from tradepulse.stores.sql import run_query

    where = []
    if ticker is not None:
        if not TICKER.fullmatch(ticker):
            raise CliError(f"not a ticker: {ticker!r}")
        where.append(f"ticker = '{ticker}'")
    if minutes is not None:
        newest = run_query("SELECT MAX(start_ms) AS m FROM vendor_bars", settings)["m"].iloc[0]
        if newest is not None and not np.isnan(newest):
            where.append(f"start_ms >= {int(newest) - minutes * BAR_MS}")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    ours = run_query(f"SELECT {BAR_COLUMNS} FROM bars{clause} ORDER BY start_ms, ticker", settings)
    vendor = run_query(
        f"SELECT {VENDOR_COLUMNS} FROM vendor_bars{clause} ORDER BY start_ms, ticker, received_ts_us",
        settings,
    )
    our_rows = ours.to_dict("records")
    vendor_rows = vendor.to_dict("records")  # a resent aggregate (same minute) replaces the first
    # Our bars are final up to the end of the newest one per ticker (the runner emits closed bars only).
    final = {t: int(s) + BAR_MS for t, s in ours.groupby("ticker")["start_ms"].max().items()}
    tape = _tape_bars(settings, clause)
    reconciler = BarReconciler(wait_ms=np.iinfo(np.int64).max // 4)
    results = reconciler.update(our_rows, vendor_rows, final, tape)
    tickers: dict[str, dict[str, Any]] = {name: {**e, "pending": 0} for name, e in summarize(results).items()}
    for name, _ in reconciler.pending_keys():
        tickers.setdefault(name, _counts())["pending"] += 1
    total = _counts()
    for entry in tickers.values():
        for status in (*STATUSES, "pending"):
            total[status] += entry[status]
        for name in FIELDS:
            total["fields"][name] += entry["fields"][name]
    return {
        "tickers": dict(sorted(tickers.items())),
        "total": total,
        "mismatches": [r for r in results if r["status"] == "mismatch"],
    }


def _counts() -> dict[str, Any]:
    """Zero counts per status (and "pending") and per mismatching field, as `summarize` counts them."""
    from tradepulse.core.reconcile import FIELDS, STATUSES

    return {**{s: 0 for s in (*STATUSES, "pending")}, "fields": {f: 0 for f in FIELDS}}


def _tape_bars(settings: Settings, clause: str) -> list[dict]:
    """Bars over every stored print (flagged ones included) of the minutes holding a flagged print."""
    from tradepulse.core.bars import BarEngine
    from tradepulse.core.columns import TradeColumns, object_array
    from tradepulse.core.conditions import ConditionRules
    from tradepulse.stores.sql import run_query

    where = clause.replace("start_ms", "exchange_ts_ms")
    flagged = f"{where} {'AND' if where else 'WHERE'} outlier"
    minutes = (
        "SELECT DISTINCT ticker, CAST(FLOOR(exchange_ts_ms / 60000.0) AS BIGINT) AS m FROM trades" + flagged
    )
    trades = run_query(
        "SELECT t.ticker, t.exchange_ts_ms, t.price, t.size, t.conditions, t.event_id, t.sequence "
        f"FROM trades t JOIN ({minutes}) f ON f.ticker = t.ticker "
        "AND f.m = CAST(FLOOR(t.exchange_ts_ms / 60000.0) AS BIGINT) "
        "ORDER BY t.kafka_partition, t.kafka_offset",
        settings,
    )
    if trades.empty:
        return []
    cols = TradeColumns(
        trades["ticker"].to_numpy(dtype=object),
        trades["price"].to_numpy(dtype=float),
        trades["size"].to_numpy(dtype=float),
        trades["exchange_ts_ms"].to_numpy(dtype=np.int64),
        trades["sequence"].to_numpy(dtype=np.int64),
        trades["event_id"].to_numpy(dtype=object),
        # Python ints, as on the topic: DuckDB returns the lists as numpy arrays of int64, which the
        # rules would take for unknown codes.
        object_array([[] if c is None else [int(x) for x in c] for c in trades["conditions"]]),
    )
    assert cols.conditions is not None
    mask = ConditionRules.bundled().masks(cols.conditions, count_unknown=False)
    bars = BarEngine(settings.late_grace_ms)
    out: list[dict] = bars.process(
        cols,
        volume_eligible=mask.volume,
        high_low_eligible=mask.high_low,
        open_close_eligible=mask.open_close,
    )
    return out + bars.flush()


@click.command("verify-bars")
@click.option(
    "--minutes", type=int, default=None, help="Only the last N minutes (of the vendor's newest bar)."
)
@click.option("--ticker", default=None, help="Only this ticker.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def verify_bars(minutes: int | None, ticker: str | None, fmt: str) -> None:
    """Reconcile our one-minute bars with the vendor's `AM` aggregates (both from the cold store): per
    ticker, minutes matched, explained by flagged outliers, mismatched (per field), vendor-only,
    ours-only, pending."""
    import duckdb

    try:
        report = verify(get_settings(), minutes, ticker)
    except duckdb.Error as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        click.echo(orjson.dumps(report).decode())
        return
    head = f"{'ticker':<8} {'compared':>8} {'match':>6} {'outlier':>7} {'mismatch':>8} {'vendor_only':>11} {'ours_only':>9} {'pending':>7}  mismatched fields"
    click.echo(head)
    rows = [*report["tickers"].items(), ("TOTAL", report["total"])]
    for name, c in rows:
        compared = c["match"] + c["outlier"] + c["mismatch"]
        fields = ", ".join(f"{f} {n}" for f, n in c["fields"].items() if n) or "-"
        click.echo(
            f"{name:<8} {compared:>8} {c['match']:>6} {c['outlier']:>7} {c['mismatch']:>8} "
            f"{c['vendor_only']:>11} {c['ours_only']:>9} {c['pending']:>7}  {fields}"
        )
    for r in report["mismatches"][:20]:
        diff = ", ".join(f"{f} {a} → {b}" for f, (a, b) in r["diff"].items())
        click.echo(f"mismatch {r['ticker']} start_ms={r['start_ms']}: {diff} (ours → vendor's)")
