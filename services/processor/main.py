"""ECS entry point of the processor service (micro-batch runner: features, anomalies, correlations → stores): `tradepulse process`.
The task's hostname is unique per Fargate task, so it names this runner's transactional producer."""

import socket
import sys

from tradepulse.cli.main import cli

if __name__ == "__main__":
    cli(["process", "--instance", socket.gethostname(), *sys.argv[1:]])  # extra arguments pass through
