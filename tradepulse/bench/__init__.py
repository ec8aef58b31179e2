"""`tradepulse bench`: full-path load test harness (simulator → ingest → Kafka → runner → hot store) and
the drain comparison with the faust-streaming / Quix Streams peers. Entry point: `harness.run_bench`.

Light on purpose (the CLI imports it to build its options): the harness modules are imported when the
bench runs.
"""

from __future__ import annotations

from pathlib import Path

#: Where the peer scripts are (relative to the working directory: `tradepulse bench` runs from the
#: repository root). They are not package data: they import faust/quixstreams, which pin their own
#: dependencies and so live in a venv of their own, never in the product's.
PEERS_DIR = Path("benchmarks") / "peers"
PEERS_VENV = Path(".venv-peers")
