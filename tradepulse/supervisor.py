"""A small process supervisor for `tradepulse up` (and `tradepulse bench`): starts services in readiness
order, prefixes their logs, and stops everything (in reverse order) on Ctrl-C, SIGTERM or when any
service dies. Outside `tradepulse.cli` so the bench harness can use it without importing the CLI back.

Children run in their own sessions so a terminal Ctrl-C reaches only the supervisor, which then stops
them in order; each child also gets PR_SET_PDEATHSIG so that even a SIGKILLed supervisor leaves no
orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click

from tradepulse.errors import CliError

ReadinessProbe = Callable[[], bool]
COLORS = ["cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green"]


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM this child when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def port_open(host: str, port: int) -> ReadinessProbe:
    """A probe that succeeds once something accepts TCP connections on host:port."""

    def probe() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((host, port)) == 0

    return probe


@dataclass
class Service:
    """One supervised child process."""

    name: str
    argv: list[str]
    ready: ReadinessProbe | None = None
    ready_timeout_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


class Supervisor:
    """Starts services in order and tears them all down together."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self.stopping = threading.Event()
        self._width = 10

    def start(self, service: Service) -> None:
        """Start a service, stream its output with a prefix, and wait for its readiness probe."""
        self._width = max(self._width, len(service.name))
        color = COLORS[len(self.services) % len(COLORS)]
        started = time.monotonic()
        service.process = subprocess.Popen(
            service.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=os.environ | service.env | {"PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.services.append(service)
        threading.Thread(target=self._pump, args=(service, color), daemon=True).start()
        if service.ready is None:
            self.log("up", f"{service.name} started (pid {service.process.pid})")
            return
        deadline = time.monotonic() + service.ready_timeout_s
        while not service.ready():
            if service.process.poll() is not None:
                raise CliError(
                    f"{service.name} exited with code {service.process.returncode} before it was ready"
                )
            if time.monotonic() > deadline or self.stopping.is_set():
                raise CliError(f"{service.name} not ready after {service.ready_timeout_s:.0f}s")
            time.sleep(0.2)
        self.log(
            "up", f"{service.name} ready in {time.monotonic() - started:.1f}s (pid {service.process.pid})"
        )

    def _pump(self, service: Service, color: str) -> None:
        assert service.process is not None and service.process.stdout is not None
        prefix = click.style(f"{service.name:<{self._width}} |", fg=color)
        for raw in iter(service.process.stdout.readline, b""):
            click.echo(f"{prefix} {raw.decode(errors='replace').rstrip()}")

    def log(self, name: str, message: str) -> None:
        click.echo(f"{click.style(f'{name:<{self._width}} |', bold=True)} {message}")

    def wait(self) -> str:
        """Block until a signal arrives or a service dies; returns why."""
        while not self.stopping.wait(0.5):
            for service in self.services:
                if service.process is not None and service.process.poll() is not None:
                    return f"{service.name} exited with code {service.process.returncode}"
        return "stop requested"

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """SIGTERM services in reverse start order, SIGKILL any that outlive the timeout."""
        for service in reversed(self.services):
            process = service.process
            if process is None or process.poll() is not None:
                continue
            self.log("up", f"stopping {service.name}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.log("up", f"{service.name} did not stop in {timeout_s:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.stopping.set())


def python_command(*args: str) -> list[str]:
    """argv to run a `tradepulse` subcommand with this interpreter."""
    return [sys.executable, "-m", "tradepulse.cli.main", *args]


def processor_services(count: int, *extra_args: str) -> list[Service]:
    """`count` processor instances of one consumer group ("processor", "processor-1", …), each started
    with its own stable `--instance` (0, 1, …: its transactional id and status file)."""
    return [
        Service(
            "processor" if i == 0 else f"processor-{i}",
            python_command("process", "--instance", str(i), *extra_args),
        )
        for i in range(count)
    ]
