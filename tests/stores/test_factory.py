"""The factory builds the configured backends from Settings."""

from __future__ import annotations

from tests.stores.conftest import make_trade
from tradepulse.config import Settings
from tradepulse.stores.factory import open_hot_store
from tradepulse.stores.sqlite_hot import SqliteHotStore


def test_default_hot_store_is_sqlite_under_data_dir(store_settings: Settings) -> None:
    store = open_hot_store(store_settings)
    try:
        assert isinstance(store, SqliteHotStore)
        assert store.path == store_settings.sqlite_path
        store.write_batch(trades=[make_trade()])
    finally:
        store.close()
    reopened = open_hot_store(store_settings)  # the data is in the file, not the process
    assert reopened.latest_trade("AAPL") == make_trade()
    reopened.close()
