"""In-memory feature store: the latest vector per ticker and a bounded ring of 1-second snapshots.

Pure (no I/O): the runner feeds it each batch's `FeatureOutput`; the API and charts read from the hot
store, which the sinks fill from the same outputs. Snapshots arrive in event-time order per ticker
(a ticker's seconds close in order), so each ring is sorted by `ts_ms`.
"""

from __future__ import annotations

from collections import deque

from tradepulse.core.features import FeatureOutput


class FeatureStore:
    """Latest FeatureVector dict per ticker plus up to `max_snapshots` 1-second snapshots per ticker."""

    def __init__(self, max_snapshots: int = 3600) -> None:
        self.max_snapshots = max_snapshots
        self._latest: dict[str, dict] = {}
        self._snapshots: dict[str, deque[dict]] = {}

    def update(self, output: FeatureOutput) -> None:
        """Fold one batch in. The latest vector only moves forward in event time: a batch holding
        only a folded-in late trade does not replace a newer vector."""
        for ticker, vector in output.latest.items():
            current = self._latest.get(ticker)
            if current is None or vector["ts_ms"] >= current["ts_ms"]:
                self._latest[ticker] = vector
        for snap in output.snapshots:
            ring = self._snapshots.get(snap["ticker"])
            if ring is None:
                ring = self._snapshots[snap["ticker"]] = deque(maxlen=self.max_snapshots)
            ring.append(snap)

    def latest(self, ticker: str) -> dict | None:
        """The most recent vector of `ticker`, or None if it has not traded."""
        return self._latest.get(ticker)

    def snapshots(self, ticker: str, since_ms: int | None = None) -> list[dict]:
        """Snapshots of `ticker` with `ts_ms >= since_ms` (all retained ones if None), oldest first."""
        ring = self._snapshots.get(ticker)
        if not ring:
            return []
        if since_ms is None:
            return list(ring)
        out: list[dict] = []
        for snap in reversed(ring):  # recent queries touch only the tail
            if snap["ts_ms"] < since_ms:
                break
            out.append(snap)
        out.reverse()
        return out

    def tickers(self) -> list[str]:
        """Tickers with a latest vector, sorted."""
        return sorted(self._latest)
