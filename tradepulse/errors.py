"""The errors TradePulse raises for its own conditions, under one root (as Quix Streams does with
`QuixException`): `except TradePulseError` catches every one of them and nothing else, and each package
has its own branch, so a caller can catch "anything the stores raised" without string matching.

    TradePulseError
    ├── InvalidArgument (also a ValueError)   a bad argument or configuration value, any package
    ├── BusError                              Kafka: broker, topics, ACLs, the runner
    ├── StoreError                            hot/cold stores and the dead-letter queue
    ├── SourceError                           feeds, the simulator, backfill
    ├── BenchError                            the full-path benchmark (`tradepulse bench`)
    └── CliError                              the command line and the process supervisor

The concrete classes live next to the code that raises them (`tradepulse.bus.clients.NoBrokerError`,
`tradepulse.stores.sqlite_hot.SchemaMismatch`, ...). A class that callers or pydantic catch as a
`ValueError` (validation of untrusted input, argument checks) also derives from `ValueError`, so
`except ValueError` and pydantic validators behave as before.

This module imports nothing: every package, including the pure core, may import it.
"""

from __future__ import annotations


class TradePulseError(Exception):
    """Root of every error raised by TradePulse for its own conditions."""


class InvalidArgument(TradePulseError, ValueError):
    """An argument or configuration value outside what the code accepts (a `ValueError` too)."""


class BusError(TradePulseError):
    """Kafka side: the broker, topics, ACLs, the exactly-once runner."""


class StoreError(TradePulseError):
    """The hot store, the cold store, the dead-letter queue."""


class SourceError(TradePulseError):
    """Market-data and news feeds, the simulator, backfill."""


class BenchError(TradePulseError):
    """The full-path benchmark: a process of the run died or the workload did not finish."""


class CliError(TradePulseError):
    """The command line and the process supervisor."""
