"""ECS entry point of the news service (Finnhub company news → Kafka): `tradepulse news`."""

from tradepulse.cli.main import cli

if __name__ == "__main__":
    cli(["news"])
