// TradePulse live dashboard: everything shown comes from this API, refreshed every 2 s.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const TICKERS_EVERY = 5; // refresh the ticker list every 5th tick
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();

  const state = { ticker: null, tickers: [], tick: 0, lastOk: null, errors: 0 };
  const charts = { price: null, z: null, candles: null, volume: null };
  const BAR_MINUTES = 60;
  // Exposed for the browser test and for debugging in the console.
  window.tradepulse = { state, charts };

  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits = 2) =>
    v === null || v === undefined || Number.isNaN(v)
      ? "–"
      : Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const signed = (v, digits = 2) => (v > 0 ? "+" : "") + fmt(v, digits);
  const timeOf = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
  const dateTimeOf = (ms) => {
    const d = new Date(ms);
    return d.toLocaleDateString("en-GB", { day: "2-digit", month: "short" }) + " " + timeOf(ms);
  };

  async function getJSON(path) {
    const res = await fetch(path, { cache: "no-store" });
    // /health answers 503 with a full body when unhealthy; 404 means "no data yet".
    if (res.status === 404) return null;
    if (!res.ok && res.status !== 503) throw new Error(`${path}: HTTP ${res.status}`);
    return res.json();
  }

  // --- charts ----------------------------------------------------------------------------------

  function axis() {
    return {
      stroke: color("--muted"),
      grid: { stroke: color("--border"), width: 1 },
      ticks: { stroke: color("--border"), width: 1 },
      font: "12px system-ui, sans-serif",
    };
  }

  function timeAxis() {
    // 24-hour clock labels (uPlot's default is 12-hour with a date line); seconds when ticks are < 1 min apart.
    return Object.assign(axis(), {
      values: (u, splits, axisIdx, space, incr) =>
        splits.map((v) =>
          new Date(v * 1000).toLocaleTimeString("en-GB", {
            hour: "2-digit",
            minute: "2-digit",
            second: incr < 60 ? "2-digit" : undefined,
          }),
        ),
    });
  }

  function chartWidth(el) {
    return Math.max(320, el.clientWidth);
  }

  function makePriceChart(el) {
    const opts = {
      width: chartWidth(el),
      height: 300,
      scales: { x: { time: true } },
      series: [
        { value: (u, v) => (v === null || v === undefined ? "–" : timeOf(v * 1000)) },
        { label: "Price", stroke: color("--accent"), width: 2, value: (u, v) => fmt(v) },
        { label: "VWAP 1m", stroke: color("--vwap1"), width: 1.5, value: (u, v) => fmt(v) },
        { label: "VWAP 5m", stroke: color("--vwap5"), width: 1.5, dash: [6, 4], value: (u, v) => fmt(v) },
        {
          label: "Anomaly",
          stroke: color("--bad"),
          width: 0,
          paths: () => null,
          points: { show: true, size: 10, width: 2, stroke: color("--bad"), fill: "rgba(248,81,73,0.35)" },
          value: (u, v) => (v === null || v === undefined ? "–" : fmt(v)),
        },
      ],
      axes: [timeAxis(), Object.assign(axis(), { size: 70, values: (u, vals) => vals.map((v) => fmt(v)) })],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    return new uPlot(opts, [[], [], [], [], []], el);
  }

  function makeZChart(el) {
    const opts = {
      width: chartWidth(el),
      height: 170,
      scales: { x: { time: true } },
      series: [
        { value: (u, v) => (v === null || v === undefined ? "–" : timeOf(v * 1000)) },
        {
          label: "Volume z-score",
          stroke: color("--z"),
          fill: "rgba(88,166,255,0.45)",
          width: 1,
          paths: uPlot.paths.bars({ size: [0.7, 6] }),
          points: { show: false },
          value: (u, v) => fmt(v),
        },
      ],
      axes: [timeAxis(), Object.assign(axis(), { size: 70 })],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    return new uPlot(opts, [[], []], el);
  }

  // Candlesticks: uPlot has no candlestick series, so the open/high/low/close series carry the data
  // (legend, scales, cursor) without paths and a draw hook paints a wick and a body per bar.
  function drawCandles(u) {
    const [xs, open, high, low, close] = u.data;
    if (!xs || xs.length === 0) return;
    const ctx = u.ctx;
    const step = xs.length > 1 ? (xs[xs.length - 1] - xs[0]) / (xs.length - 1) : 60;
    const px = Math.abs(u.valToPos(xs[0] + step, "x", true) - u.valToPos(xs[0], "x", true));
    const bodyWidth = Math.max(1, Math.min(14, px * 0.6));
    ctx.save();
    for (let i = 0; i < xs.length; i++) {
      if (open[i] === null || close[i] === null) continue; // no open/close-eligible trade that minute
      const x = Math.round(u.valToPos(xs[i], "x", true)); // xs are the minutes' centres
      const up = close[i] >= open[i];
      ctx.strokeStyle = ctx.fillStyle = up ? color("--good") : color("--bad");
      if (high[i] !== null && low[i] !== null) {
        ctx.beginPath();
        ctx.lineWidth = 1;
        ctx.moveTo(x, u.valToPos(high[i], "y", true));
        ctx.lineTo(x, u.valToPos(low[i], "y", true));
        ctx.stroke();
      }
      const top = u.valToPos(Math.max(open[i], close[i]), "y", true);
      const bottom = u.valToPos(Math.min(open[i], close[i]), "y", true);
      ctx.fillRect(x - bodyWidth / 2, top, bodyWidth, Math.max(1, bottom - top));
    }
    ctx.restore();
  }

  // Both bar charts span whole minutes: from the first bar's start to the last one's end.
  const minuteRange = (u, min, max) => (min === null ? [min, max] : [min - 30, max + 30]);

  function makeCandleChart(el) {
    const hidden = (label) => ({ label, paths: () => null, points: { show: false }, value: (u, v) => fmt(v) });
    const opts = {
      width: chartWidth(el),
      height: 260,
      scales: { x: { time: true, range: minuteRange } },
      series: [
        { value: (u, v) => (v === null || v === undefined ? "–" : timeOf(v * 1000)) },
        hidden("Open"),
        hidden("High"),
        hidden("Low"),
        hidden("Close"),
        { label: "VWAP", stroke: color("--vwap1"), width: 1, points: { show: false }, value: (u, v) => fmt(v) },
      ],
      axes: [timeAxis(), Object.assign(axis(), { size: 70, values: (u, vals) => vals.map((v) => fmt(v)) })],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      hooks: { draw: [drawCandles] },
    };
    return new uPlot(opts, [[], [], [], [], [], []], el);
  }

  function makeVolumeChart(el) {
    const opts = {
      width: chartWidth(el),
      height: 120,
      scales: { x: { time: true, range: minuteRange }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      series: [
        { value: (u, v) => (v === null || v === undefined ? "–" : timeOf(v * 1000)) },
        {
          label: "Volume",
          stroke: color("--z"),
          fill: "rgba(88,166,255,0.45)",
          width: 1,
          paths: uPlot.paths.bars({ size: [0.6, 14] }),
          points: { show: false },
          value: (u, v) => fmt(v, 0),
        },
      ],
      axes: [timeAxis(), Object.assign(axis(), { size: 70, values: (u, vals) => vals.map((v) => fmt(v, 0)) })],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    return new uPlot(opts, [[], []], el);
  }

  function renderBars(bars) {
    const empty = !bars || bars.start_ms.length === 0;
    $("bars-empty").hidden = !empty;
    if (empty) {
      charts.candles.setData([[], [], [], [], [], []]);
      charts.volume.setData([[], []]);
      $("bars-caption").textContent = "";
      return;
    }
    const xs = bars.start_ms.map((ms) => ms / 1000 + 30); // each bar at the centre of its minute
    charts.candles.setData([xs, bars.open, bars.high, bars.low, bars.close, bars.vwap]);
    charts.volume.setData([xs, bars.volume]);
    for (const chart of [charts.candles, charts.volume]) {
      if (chart.cursor.idx === null || chart.cursor.idx === undefined) chart.setLegend({ idx: xs.length - 1 });
    }
    const last = bars.start_ms.length - 1;
    $("bars-caption").textContent =
      `· last ${bars.minutes} min, ${bars.start_ms.length} bars · latest ${timeOf(bars.start_ms[last])} ` +
      `(${bars.session[last].replace("_", "-")})`;
  }

  function nearestIndex(xs, x) {
    // xs is sorted ascending (oldest first): binary search for the closest sample.
    let lo = 0;
    let hi = xs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && Math.abs(xs[lo - 1] - x) < Math.abs(xs[lo] - x)) lo -= 1;
    return lo;
  }

  function renderHistory(history, anomalies) {
    const empty = !history || history.ts_ms.length === 0;
    $("price-empty").hidden = !empty;
    if (empty) {
      charts.price.setData([[], [], [], [], []]);
      charts.z.setData([[], []]);
      $("price-caption").textContent = "";
      return;
    }
    const xs = history.ts_ms.map((ms) => ms / 1000);
    const marks = new Array(xs.length).fill(null);
    const first = history.ts_ms[0];
    for (const a of anomalies ? anomalies.anomalies : []) {
      if (a.ts_ms < first) continue;
      const i = nearestIndex(history.ts_ms, a.ts_ms);
      marks[i] = history.price[i];
    }
    charts.price.setData([xs, history.price, history.vwap_1min, history.vwap_5min, marks]);
    charts.z.setData([xs, history.volume_zscore]);
    // Without a hover, the legends show the latest values instead of dashes.
    for (const chart of [charts.price, charts.z]) {
      if (chart.cursor.idx === null || chart.cursor.idx === undefined) chart.setLegend({ idx: xs.length - 1 });
    }
    $("price-caption").textContent = `· last ${history.minutes} min, ${history.ts_ms.length} snapshots`;
  }

  // --- panels ----------------------------------------------------------------------------------

  function setKpi(id, value, foot, cls) {
    const el = $(id);
    el.textContent = value;
    el.className = "value" + (cls ? " " + cls : "");
    $(id + "-foot").textContent = foot || "\u00a0";
  }

  function renderKpis(quote, agg, features) {
    if (!quote && !agg) {
      for (const id of ["kpi-price", "kpi-vwap1", "kpi-vwap5", "kpi-z", "kpi-mom"]) setKpi(id, "–", "");
      return;
    }
    if (quote) setKpi("kpi-price", fmt(quote.price), `${fmt(quote.volume, 0)} sh @ ${timeOf(quote.timestamp_ms)}`);
    if (agg) {
      const px = quote ? quote.price : null;
      const dev = (v) => (px ? `${signed(((px - v) / v) * 10000, 1)} bps vs price` : "");
      setKpi("kpi-vwap1", fmt(agg.vwap_1min), dev(agg.vwap_1min));
      setKpi("kpi-vwap5", fmt(agg.vwap_5min), dev(agg.vwap_5min));
      const z = agg.volume_zscore;
      setKpi("kpi-z", fmt(z), features ? `${features.trade_frequency} trades / 60 s` : "", Math.abs(z) >= 3 ? "hot" : "");
      const m = agg.price_momentum;
      setKpi("kpi-mom", signed(m, 3) + " %", `5 min avg ${fmt(agg.rolling_avg_5min)}`, m > 0 ? "up" : m < 0 ? "down" : "");
    }
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (text instanceof Node) td.appendChild(text);
    else td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function badge(text, cls) {
    const span = document.createElement("span");
    span.className = "badge " + cls;
    span.textContent = text;
    return span;
  }

  function renderAnomalies(data) {
    const body = $("anomalies").querySelector("tbody");
    body.replaceChildren();
    const items = data ? data.anomalies.slice(0, 8) : [];
    $("anomalies-empty").hidden = items.length > 0;
    $("anomaly-count").textContent = data ? `· ${data.count} in ${data.hours} h` : "";
    for (const a of items) {
      const tr = document.createElement("tr");
      cell(tr, dateTimeOf(a.ts_ms));
      cell(tr, fmt(a.anomaly_score, 3), "num down");
      cell(tr, fmt(a.threshold, 3), "num");
      cell(tr, fmt(a.feature_vector.price), "num");
      cell(tr, fmt(a.feature_vector.volume_zscore), "num");
      body.appendChild(tr);
    }
  }

  function renderNews(data) {
    const body = $("news").querySelector("tbody");
    body.replaceChildren();
    const items = data ? data.articles.slice(0, 10) : [];
    $("news-empty").hidden = items.length > 0;
    if (data) {
      const s = data.summary;
      $("news-summary").textContent =
        `· ${s.articles} articles: ${s.by_label.positive} positive, ${s.by_label.negative} negative, ` +
        `${s.by_label.neutral} neutral · ${s.strong_correlations.length} strong volume correlations`;
    } else {
      $("news-summary").textContent = "";
    }
    for (const a of items) {
      const tr = document.createElement("tr");
      cell(tr, dateTimeOf(a.published_ts_ms));
      const link = document.createElement("a");
      link.href = a.url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = a.headline;
      cell(tr, a.url ? link : a.headline, "headline");
      cell(tr, a.source);
      cell(tr, badge(`${a.sentiment.label} ${signed(a.sentiment.compound, 2)}`, a.sentiment.label));
      cell(tr, fmt(a.volume_zscore_at_publish), "num");
      cell(tr, badge(a.correlation_strength, a.correlation_strength));
      cell(tr, a.lag_seconds === null ? "–" : `${signed(a.lag_seconds, 0)} s`, "num");
      body.appendChild(tr);
    }
  }

  function renderHealth(h) {
    const pill = $("health-pill");
    if (!h) {
      pill.className = "pill unknown";
      pill.textContent = "health: unknown";
      return;
    }
    pill.className = "pill " + h.status;
    pill.textContent = h.status;
    const runner = (h.components.runner || {}).metrics || {};
    const broker = h.components.broker || {};
    const statusEl = $("h-status");
    statusEl.textContent = h.status;
    statusEl.className = h.status === "healthy" ? "up" : h.status === "degraded" ? "hot" : "down";
    $("h-throughput").textContent = runner.events_per_s === undefined ? "–" : `${fmt(runner.events_per_s, 0)} ev/s`;
    $("h-lag").textContent = h.consumer_lag === null ? "–" : `${fmt(h.consumer_lag, 0)} msgs`;
    $("h-p99").textContent = h.dynamo_latency_p99 === null ? "–" : `${fmt(h.dynamo_latency_p99, 1)} ms`;
    // The runner's last minute of trades (null when none arrived in it).
    $("h-e2e").textContent =
      runner.e2e_latency_p99_ms === undefined || runner.e2e_latency_p99_ms === null
        ? "–"
        : `${fmt(runner.e2e_latency_p99_ms, 1)} ms` +
          (runner.e2e_latency_p50_ms == null ? "" : ` (p50 ${fmt(runner.e2e_latency_p50_ms, 1)})`);
    $("h-commit").textContent = runner.last_commit_age_s === undefined ? "–" : `${fmt(runner.last_commit_age_s, 1)} s ago`;
    const dlq = ((h.components.dlq || {}).metrics || {}).dlq_depth;
    $("h-dlq").textContent = dlq === undefined || dlq === null ? "–" : fmt(dlq, 0);
    $("h-bp").textContent =
      runner.backpressure_activations === undefined ? "–" : `${fmt(runner.backpressure_activations, 0)} pauses`;
    $("h-broker").textContent = broker.status === "ok" ? "reachable" : "unreachable";
    $("h-broker").className = broker.status === "ok" ? "up" : "down";
    $("h-broker").title = broker.detail || "";
  }

  function renderTickers() {
    const nav = $("tickers");
    nav.replaceChildren();
    for (const t of state.tickers) {
      const b = document.createElement("button");
      b.dataset.ticker = t.ticker;
      b.className = t.ticker === state.ticker ? "active" : "";
      b.textContent = t.ticker;
      const px = document.createElement("span");
      px.className = "px";
      px.textContent = t.price === null ? "" : fmt(t.price);
      b.appendChild(px);
      b.addEventListener("click", () => selectTicker(t.ticker));
      nav.appendChild(b);
    }
  }

  function selectTicker(ticker) {
    state.ticker = ticker;
    window.history.replaceState(null, "", "#" + ticker);
    renderTickers();
    refresh();
  }

  // --- loop ------------------------------------------------------------------------------------

  async function refreshTickers() {
    const data = await getJSON("/tickers");
    state.tickers = data ? data.tickers : [];
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (!state.ticker || !state.tickers.some((t) => t.ticker === state.ticker)) {
      const fromHash = state.tickers.find((t) => t.ticker === wanted);
      state.ticker = fromHash ? fromHash.ticker : state.tickers.length ? state.tickers[0].ticker : null;
    }
    renderTickers();
  }

  let running = false;
  async function refresh() {
    if (running) return;
    running = true;
    try {
      if (state.tick % TICKERS_EVERY === 0 || !state.ticker) await refreshTickers();
      state.tick += 1;
      const t = state.ticker ? encodeURIComponent(state.ticker) : null;
      const [health, quote, agg, features, hist, anomalies, sentiment, bars] = await Promise.all([
        getJSON("/health"),
        t ? getJSON(`/quotes/${t}`) : null,
        t ? getJSON(`/aggregations/${t}`) : null,
        t ? getJSON(`/features/${t}`) : null,
        t ? getJSON(`/history/${t}?minutes=15`) : null,
        t ? getJSON(`/anomalies/${t}?hours=24`) : null,
        t ? getJSON(`/sentiment/${t}?hours=24`) : null,
        t ? getJSON(`/bars/${t}?minutes=${BAR_MINUTES}`) : null,
      ]);
      renderHealth(health);
      renderKpis(quote, agg, features);
      const tab = state.tickers.find((x) => x.ticker === state.ticker);
      if (quote && tab && tab.price !== quote.price) {
        tab.price = quote.price; // keep the active tab's price as fresh as the KPI
        renderTickers();
      }
      renderHistory(hist, anomalies);
      renderBars(bars);
      renderAnomalies(anomalies);
      renderNews(sentiment);
      state.lastOk = Date.now();
      state.errors = 0;
      $("updated").textContent = `updated ${timeOf(state.lastOk)}`;
      document.body.dataset.loaded = "true";
    } catch (err) {
      state.errors += 1;
      $("updated").textContent = `refresh failed (${err.message}); retrying`;
    } finally {
      running = false;
    }
  }

  function resize() {
    for (const [chart, id] of [
      [charts.price, "price-chart"],
      [charts.z, "z-chart"],
      [charts.candles, "candle-chart"],
      [charts.volume, "volume-chart"],
    ]) {
      if (chart) chart.setSize({ width: chartWidth($(id)), height: chart.height });
    }
  }

  charts.price = makePriceChart($("price-chart"));
  charts.z = makeZChart($("z-chart"));
  charts.candles = makeCandleChart($("candle-chart"));
  charts.volume = makeVolumeChart($("volume-chart"));
  window.addEventListener("resize", resize);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
