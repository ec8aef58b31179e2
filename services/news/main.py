"""ECS entry point of the news service (Finnhub company news → Kafka): `tradepulse news`."""

import sys

from tradepulse.cli.main import cli

if __name__ == "__main__":
    cli(["news", *sys.argv[1:]])  # extra arguments (e.g. --help) pass through
