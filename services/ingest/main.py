"""ECS entry point of the ingest service (Massive WebSocket trades/quotes → Kafka): `tradepulse ingest`."""

import sys

from tradepulse.cli.main import cli

if __name__ == "__main__":
    cli(["ingest", *sys.argv[1:]])  # extra arguments (e.g. --help) pass through
