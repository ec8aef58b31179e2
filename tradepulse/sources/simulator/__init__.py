"""Local market simulator: a synthetic (or replayed) market served over the Massive stocks WebSocket
protocol, Massive's REST trades endpoint (`/v3/trades/{ticker}`, for backfills) and a Finnhub-compatible
company-news endpoint, so the pipeline runs without API keys.

```python
from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread

sim = run_simulator_in_thread(SimulatorConfig(seed=7, api_key="test", ws_port=0, http_port=0))
sim.ws_url, sim.news_base_url
sim.stop()
```
"""

from tradepulse.sources.simulator.market import Block, MarketConfig, MarketModel, make_tickers
from tradepulse.sources.simulator.runner import (
    Simulator,
    SimulatorConfig,
    SimulatorHandle,
    run_simulator_in_thread,
)

__all__ = [
    "Block",
    "MarketConfig",
    "MarketModel",
    "Simulator",
    "SimulatorConfig",
    "SimulatorHandle",
    "make_tickers",
    "run_simulator_in_thread",
]
