"""Where the source checkout and its shared caches are, for tests (the product never knows: it runs from
an installed wheel as well as from a checkout)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The broker jars `make kafka-jars` fetched (the default `<data_dir>/kafka-libs` of a checkout): shared
#: by every test broker so the suite never downloads Kafka again.
JAR_CACHE = REPO_ROOT / ".tradepulse" / "kafka-libs"
