"""The live dashboard in real headless Debian chromium (driven by Playwright; no browser download):
charts render with the API's data, the panels show the stored values, and the page refreshes by itself.
A screenshot is saved to test-artifacts/dashboard.png."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from tests.api.conftest import filled_store, heartbeat, live_heartbeat
from tests.api.market import Market, trade
from tests.paths import REPO_ROOT
from tradepulse.api.app import create_app
from tradepulse.bus.status import RunnerMetrics, status_path, write_json_atomic
from tradepulse.config import Settings
from tradepulse.stores.sqlite_hot import SqliteHotStore

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, SqliteHotStore, Market, Settings]]:
    """uvicorn serving the app over the test market, the real broker and a live runner heartbeat."""
    data_dir = tmp_path_factory.mktemp("state")
    settings = Settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap)
    store, market = filled_store(data_dir / "hot.sqlite3")
    heartbeat(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    # uvicorn sets .started once the socket is listening; poll it without sleeping blindly.
    while not server.started and thread.is_alive():
        started.wait(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", store, market, settings
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


# Counts canvas pixels close to an RGB colour: proof that a series was actually drawn.
COUNT_PIXELS = """([selector, rgb]) => {
  const canvas = document.querySelector(selector + ' canvas');
  if (!canvas) return -1;
  const { width, height } = canvas;
  const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - rgb[0]) < 40 && Math.abs(data[i + 1] - rgb[1]) < 40 &&
        Math.abs(data[i + 2] - rgb[2]) < 40 && data[i + 3] > 128) n++;
  }
  return n;
}"""


@pytest.mark.kafka
@pytest.mark.browser
def test_dashboard_renders_live_data_in_chromium(
    served: tuple[str, SqliteHotStore, Market, Settings],
) -> None:
    executable = chromium_path()
    if executable is None:
        pytest.skip("Debian chromium not found (install it with `make browser` / scripts/install_browser.sh)")
    from playwright.sync_api import sync_playwright

    base_url, store, market, settings = served
    aapl = market.features["AAPL"]
    errors: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    # The health pill is checked half a minute in when the box is loaded: the runner stays live till then.
    with live_heartbeat(settings), sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(Path(settings.data_dir) / "chromium-profile"),  # fresh per test session
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 1000},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base_url}/#AAPL")
            page.wait_for_function(
                "() => document.body.dataset.loaded === 'true' && window.tradepulse.charts.price.data[0].length > 0",
                timeout=15_000,
            )

            # Charts hold exactly the API's history and actually drew it.
            lengths = page.evaluate("() => window.tradepulse.charts.price.data.map(s => s.length)")
            assert lengths == [len(aapl)] * 5
            assert page.evaluate("() => window.tradepulse.charts.price.data[1].at(-1)") == aapl[-1]["price"]
            assert page.evaluate("() => window.tradepulse.charts.z.data[1].length") == len(aapl)
            anomaly_marks = page.evaluate(
                "() => window.tradepulse.charts.price.data[4].filter(v => v !== null).length"
            )
            assert anomaly_marks == 2  # the two anomalies of the last 24 h that fall inside the chart
            assert page.evaluate(COUNT_PIXELS, ["#price-chart", [76, 194, 255]]) > 300  # price line
            assert page.evaluate(COUNT_PIXELS, ["#price-chart", [255, 181, 71]]) > 150  # VWAP 1 min
            assert page.evaluate(COUNT_PIXELS, ["#z-chart", [88, 166, 255]]) > 300  # z-score bars

            # The candlestick and volume charts hold exactly the API's one-minute bars and drew them.
            bars = market.bars["AAPL"]
            assert len(bars) >= 9
            candles = page.evaluate("() => window.tradepulse.charts.candles.data")
            assert candles[0] == [b["start_ms"] / 1000 + 30 for b in bars]  # minute centres
            assert candles[1:5] == [[b[k] for b in bars] for k in ("open", "high", "low", "close")]
            volume = page.evaluate("() => window.tradepulse.charts.volume.data[1]")
            assert volume == [b["volume"] for b in bars]
            up = sum(b["close"] >= b["open"] for b in bars)
            green = page.evaluate(COUNT_PIXELS, ["#candle-chart", [63, 185, 80]])
            red = page.evaluate(COUNT_PIXELS, ["#candle-chart", [248, 81, 73]])
            # Candle bodies and wicks, in each direction's colour.
            assert green >= 20 * up and red >= 20 * (len(bars) - up) and green + red > 300, (green, red, up)
            assert page.evaluate(COUNT_PIXELS, ["#volume-chart", [88, 166, 255]]) > 200  # volume bars
            assert page.inner_text("#bars-caption").startswith(f"· last 60 min, {len(bars)} bars")

            # Panels show the stored values.
            assert page.inner_text("#kpi-price") == f"{market.trades['AAPL'][-1]['price']:,.2f}"
            assert page.inner_text("#kpi-vwap5") == f"{aapl[-1]['vwap_5min']:,.2f}"
            assert page.locator("#tickers button").all_inner_texts()[0].startswith("AAPL")
            assert page.locator("#tickers button.active").inner_text().startswith("AAPL")
            assert page.locator("#anomalies tbody tr").count() == 2
            news = page.locator("#news tbody tr")
            assert news.count() == 3
            assert "Apple beats earnings" in news.nth(0).inner_text() and "strong" in news.nth(0).inner_text()
            assert page.inner_text("#health-pill").lower() == "healthy"
            assert page.inner_text("#h-throughput") == "4,181 ev/s"
            assert page.inner_text("#h-broker") == "reachable"

            # Auto-refresh: a new trade in the store shows up without reloading the page.
            last = market.trades["AAPL"][-1]
            new_price = round(last["price"] + 0.37, 2)
            shown = f"{new_price:,.2f}"
            store.write_batch(trades=[trade("AAPL", last["exchange_ts_ms"] + 700, new_price, 300, 99_999)])
            page.wait_for_function(
                f"() => document.getElementById('kpi-price').textContent === '{shown}'", timeout=10_000
            )

            # Switching ticker re-renders from that ticker's data.
            page.click("#tickers button[data-ticker='MSFT']")
            page.wait_for_function(
                f"() => window.tradepulse.charts.price.data[1].at(-1) === {market.features['MSFT'][-1]['price']}",
                timeout=10_000,
            )
            assert page.locator("#anomalies-empty").is_visible()
            page.click("#tickers button[data-ticker='AAPL']")
            page.wait_for_function(
                f"() => document.getElementById('kpi-price').textContent === '{shown}'"
                " && document.querySelectorAll('#news tbody tr').length === 3",
                timeout=10_000,
            )
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            context.close()
    assert not errors, errors


@pytest.mark.kafka
@pytest.mark.browser
def test_dashboard_shows_the_runners_own_e2e_latency(
    served: tuple[str, SqliteHotStore, Market, Settings],
) -> None:
    """The "End-to-end p99" tile from the heartbeat the runner itself writes (`RunnerMetrics`), not a
    hand-made one: before issue 19 it showed "–" in every normal run."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("Debian chromium not found (install it with `make browser` / scripts/install_browser.sh)")
    from playwright.sync_api import sync_playwright

    base_url, _, _, settings = served
    metrics = RunnerMetrics()
    now_us = time.time_ns() // 1000
    metrics.record_e2e([{"received_ts_us": now_us - ms * 1000} for ms in range(1, 101)], now_us=now_us)
    metrics.committed(events=100, batch_ms=2.5)
    write_json_atomic(status_path(settings.data_dir), metrics.snapshot())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{base_url}/#AAPL")
            page.wait_for_function(
                "() => document.getElementById('h-e2e').textContent !== '–'", timeout=15_000
            )
            assert re.fullmatch(r"99\.\d ms \(p50 50\.\d\)", page.inner_text("#h-e2e"))
        finally:
            browser.close()
