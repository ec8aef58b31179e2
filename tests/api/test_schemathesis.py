"""Property-based tests of the whole OpenAPI schema with schemathesis: generated valid (positive) and
invalid (negative) requests to every operation must never produce a 5xx, and every response must match
its declared status codes, content type, headers and schema (schemathesis' default checks).

schemathesis' lazy `from_fixture` loader does not work with pytest 9 (it reads a removed private
attribute), so the operations are driven through its Python API with hypothesis directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.api.conftest import heartbeat
from tests.api.market import Market
from tradepulse.api.app import create_app
from tradepulse.config import Settings
from tradepulse.stores.sqlite_hot import SqliteHotStore

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def api_settings(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("state"), kafka_bootstrap=kafka_bootstrap)


@pytest.fixture(scope="module")
def api_schema(
    api_settings: Settings, market_store: tuple[SqliteHotStore, Market]
) -> Iterator[schemathesis.BaseSchema]:
    """The app over the test market and the real broker, with a live runner heartbeat, so /health is
    200 and a 5xx anywhere is a real server error."""
    heartbeat(api_settings)
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(api_settings, market_store[0]))


@pytest.mark.kafka
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema, api_settings: Settings, mode: GenerationMode
) -> None:
    statuses: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9

    for operation in operations:
        has_parameters = any(True for _ in operation.iter_parameters())
        if mode is GenerationMode.NEGATIVE and not has_parameters:
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples in every run: CI failures are reproducible
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            heartbeat(api_settings)  # keep the runner "alive" however long generation takes
            response = case.call_and_validate()
            statuses[(case.operation.label, response.status_code)] += 1

        try:
            check()
        except Exception as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.label}: {exc}")

    summary = ", ".join(f"{label} {code}×{n}" for (label, code), n in sorted(statuses.items()))
    print(f"schemathesis {mode}: {sum(statuses.values())} cases: {summary}")
    assert not failures, "\n\n".join(failures)
    assert not [key for key in statuses if key[1] >= 500]
    codes = {code for _, code in statuses}
    assert (codes >= {200, 404}) if mode is GenerationMode.POSITIVE else (422 in codes)
