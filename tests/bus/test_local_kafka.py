"""The local broker's jar cache: `kafka fetch` runs Maven on the packaged pom.xml, and a relative cache
folder (`TRADEPULSE_KAFKA_LIBS_DIR=rel`, or the default `.tradepulse/kafka-libs`) is the working
directory's, not the pom's (Maven resolves relative paths against the pom's folder, inside the package)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tradepulse.bus
from tradepulse.bus.local_kafka import LocalKafka, kafka_version

pytestmark = pytest.mark.kafka


def test_relative_jar_cache_is_the_working_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = LocalKafka(Path("state"), libs_root=Path("jars"))
    assert broker.libs_dir == tmp_path / "jars" / kafka_version()
    package = Path(tradepulse.bus.__file__).parent
    before = {p for p in package.rglob("*") if "__pycache__" not in p.parts}
    broker.fetch(quiet=True)
    assert (tmp_path / "jars" / kafka_version() / f"kafka_2.13-{kafka_version()}.jar").exists()
    assert {p for p in package.rglob("*") if "__pycache__" not in p.parts} == before
