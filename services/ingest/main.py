"""ECS entry point of the ingest service (Massive WebSocket trades/quotes → Kafka): `tradepulse ingest`."""

from tradepulse.cli.main import cli

if __name__ == "__main__":
    cli(["ingest"])
