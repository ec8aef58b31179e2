"""A real single-node Apache Kafka (KRaft) that the project fetches from Maven Central and runs itself.

No Docker: `data/pom.xml` (package data of `tradepulse.bus`, so an installed package works outside a
checkout) names the broker jars, Maven copies them into the jar cache (`kafka_libs_dir`, by default
`<data_dir>/kafka-libs`), and the broker runs as a child `java` process with its data under
`<data_dir>/kafka/`. The storage is formatted on first start; ports are the configured ones or free
ones, remembered in `broker.json` so `tradepulse kafka status` in another shell finds the running broker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from tradepulse.errors import BusError

#: The Maven project naming the broker jars: package data (tradepulse/bus/data/pom.xml).
POM_RESOURCE = resources.files("tradepulse.bus").joinpath("data", "pom.xml")
MIN_JAVA = 17


#: The standard authorizer of KRaft brokers (ACLs stored in the metadata log).
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
#: SASL mechanism of the secured listener; credentials are created at runtime (AlterUserScramCredentials).
SCRAM_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SecureListener:
    """Run the broker like an authorizing cluster: clients connect over SASL_PLAINTEXT (SCRAM) as named
    principals, the StandardAuthorizer checks every request against ACLs and nothing is allowed without
    one. `admin` is a super user whose SCRAM credential is written when the storage is formatted, so it
    can create the other principals' credentials and ACLs. The broker's own inter-broker and controller
    listeners stay PLAINTEXT on loopback (their principal, ANONYMOUS, must be a super user for the
    controller and transaction-marker requests)."""

    admin_user: str = "admin"
    admin_password: str = "admin-secret"


class KafkaSetupError(BusError):
    """A prerequisite is missing or the broker could not start; the message says what to do."""


@dataclass
class BrokerInfo:
    """What `broker.json` records about a running local broker."""

    pid: int
    bootstrap: str
    controller_port: int
    kafka_version: str
    started_at: float


def kafka_version() -> str:
    """The broker version pinned in the packaged pom.xml."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM_RESOURCE.read_text("utf-8"))
    if not match:
        raise KafkaSetupError(f"no <kafka.version> in {POM_RESOURCE}")
    return match.group(1)


@contextlib.contextmanager
def pom_file() -> Iterator[Path]:
    """The packaged pom.xml as a file Maven can read (a real path for a normal install)."""
    with resources.as_file(POM_RESOURCE) as path:
        yield path


def check_java() -> str:
    """Return the java executable, or raise one clear line saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise KafkaSetupError(
            f"Java {MIN_JAVA}+ is required for the local Kafka broker: install it (e.g. `apt-get install openjdk-17-jre-headless`)."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise KafkaSetupError(
            f"Java {MIN_JAVA}+ is required for the local Kafka broker, found {major}: install openjdk-17 or newer."
        )
    return java


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalKafka:
    """Fetch, format, start, probe and stop the local broker under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        controller_port: int = 0,
        heap: str = "1g",
        libs_root: Path | None = None,
        secure: SecureListener | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        # The jar cache can be shared (tests run brokers in temp dirs but reuse one download). Absolute:
        # Maven resolves a relative output directory against the pom's folder (inside the package).
        root = Path(libs_root).expanduser().resolve() if libs_root else self.data_dir / "kafka-libs"
        self.libs_dir = root / kafka_version()
        self.home = self.data_dir / "kafka"
        self.log_dir = self.home / "data"
        self.info_path = self.home / "broker.json"
        self.log_path = self.home / "broker.log"
        self.requested_port = port
        self.requested_controller_port = controller_port
        self.heap = heap
        self.secure = secure
        self.process: subprocess.Popen[bytes] | None = None

    # --- fetch ------------------------------------------------------------------------------
    def fetch(self, *, quiet: bool = False) -> float:
        """Resolve the broker jars from Maven Central (once); returns seconds spent."""
        marker = self.libs_dir / ".complete"
        if marker.exists():
            return 0.0
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaSetupError(
                "Maven is required to fetch Kafka from Maven Central: install it (e.g. `apt-get install maven`)."
            )
        check_java()
        started = time.monotonic()
        if not quiet:
            print(
                f"fetching Apache Kafka {kafka_version()} jars from Maven Central ...",
                file=sys.stderr,
                flush=True,
            )
        self.libs_dir.mkdir(parents=True, exist_ok=True)
        with pom_file() as pom:
            result = subprocess.run(
                [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={self.libs_dir}"],
                capture_output=True, text=True,
            )  # fmt: skip
        if result.returncode != 0:
            raise KafkaSetupError(
                f"mvn could not fetch Kafka jars:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        marker.write_text(kafka_version())
        return time.monotonic() - started

    # --- lifecycle --------------------------------------------------------------------------
    def running_info(self) -> BrokerInfo | None:
        """Info of a broker started from this data dir that is still alive, else None."""
        if not self.info_path.exists():
            return None
        info = BrokerInfo(**json.loads(self.info_path.read_text()))
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return None
        return info

    def start(self, *, timeout_s: float = 90.0, quiet: bool = False) -> BrokerInfo:
        """Start the broker (formatting storage on first run) and wait until a metadata request succeeds."""
        existing = self.running_info()
        if existing is not None:
            return existing
        java = check_java()
        self.fetch(quiet=quiet)
        started = time.monotonic()
        port = self.requested_port or free_port()
        controller_port = self.requested_controller_port or free_port()
        internal_port = free_port() if self.secure else 0
        self.home.mkdir(parents=True, exist_ok=True)
        properties = self._write_config(port, controller_port, internal_port)
        classpath = str(self.libs_dir / "*")
        java_opts = [f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                     "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}"]  # fmt: skip
        if not (self.log_dir / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            scram = []
            if self.secure:
                user, password = self.secure.admin_user, self.secure.admin_password
                scram = ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
            # `--cluster-id=` form: a base64 id may start with "-", which the parser took for an option.
            fmt = subprocess.run(
                [java, "-cp", classpath, *java_opts, "kafka.tools.StorageTool", "format",
                 f"--cluster-id={cluster_id}", "-c", str(properties), "--ignore-formatted", *scram],
                capture_output=True, text=True,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise KafkaSetupError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        # A new session makes Ctrl-C in the parent's terminal go to the supervisor only, which
        # then stops the broker in order instead of having it killed mid-write.
        self.process = subprocess.Popen(
            [java, "-cp", classpath, *java_opts, "kafka.Kafka", str(properties)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        bootstrap = f"127.0.0.1:{port}"
        info = BrokerInfo(self.process.pid, bootstrap, controller_port, kafka_version(), time.time())
        try:
            self._wait_ready(bootstrap, timeout_s, self.admin_config(bootstrap) if self.secure else {})
        except KafkaSetupError:
            self.stop()
            raise
        self.info_path.write_text(json.dumps(asdict(info)))
        if not quiet:
            print(
                f"kafka {kafka_version()} ready on {bootstrap} in {time.monotonic() - started:.1f}s",
                file=sys.stderr,
                flush=True,
            )
        return info

    def admin_config(self, bootstrap: str) -> dict[str, str]:
        """Client settings of the super user on the secured listener (empty without one)."""
        if self.secure is None:
            return {}
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": SCRAM_MECHANISM,
            "sasl.username": self.secure.admin_user,
            "sasl.password": self.secure.admin_password,
        }

    def _wait_ready(self, bootstrap: str, timeout_s: float, security: dict[str, str]) -> None:
        # Any: confluent-kafka's stubs omit the `logger` entry (a logging.Logger) that the client accepts.
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _quiet_logger} | security
        admin = AdminClient(config)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise KafkaSetupError(
                    f"Kafka exited with code {self.process.returncode}; see {self.log_path}:\n{self._log_tail()}"
                )
            try:
                metadata = admin.list_topics(timeout=1.0)
                if metadata.brokers:
                    return
            except Exception:  # not listening yet
                time.sleep(0.2)
        raise KafkaSetupError(
            f"Kafka did not answer a metadata request within {timeout_s:.0f}s; see {self.log_path}"
        )

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after timeout). Returns True if one was running."""
        pid = self.process.pid if self.process is not None else None
        if pid is None:
            info = self.running_info()
            pid = info.pid if info else None
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=0.2)
            else:
                time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            if self.process is not None:
                self.process.wait()
        self.info_path.unlink(missing_ok=True)
        self.process = None
        return True

    def _listener_lines(self, port: int, controller_port: int, internal_port: int) -> list[str]:
        if self.secure is None:
            return [
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ]
        scram = SCRAM_MECHANISM.lower()
        return [
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=INTERNAL",
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"listener.name.sasl_plaintext.{scram}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"authorizer.class.name={STANDARD_AUTHORIZER}",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:ANONYMOUS;User:{self.secure.admin_user}",
        ]

    def _write_config(self, port: int, controller_port: int, internal_port: int = 0) -> Path:
        properties = self.home / "server.properties"
        properties.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                    *self._listener_lines(port, controller_port, internal_port),
                    f"log.dirs={self.log_dir}",
                    # One broker: internal topics cannot be replicated.
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=10",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "num.partitions=6",
                    "log.retention.hours=168",
                    "log.segment.bytes=268435456",
                    "num.network.threads=2",
                    "num.io.threads=4",
                ]
            )
            + "\n"
        )
        (self.home / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.server.BrokerServer=INFO\n"
            + (self._security_log_config() if self.secure else "")
        )
        return properties

    def _security_log_config(self) -> str:
        """Authorization denials and failed authentications go to `security.log` (tests read it)."""
        return (
            "log4j.appender.security=org.apache.log4j.FileAppender\n"
            f"log4j.appender.security.File={self.home / 'security.log'}\n"
            "log4j.appender.security.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.security.layout.ConversionPattern=[%d] %m%n\n"
            "log4j.logger.kafka.authorizer.logger=INFO, security\n"
            "log4j.additivity.kafka.authorizer.logger=false\n"
            "log4j.logger.org.apache.kafka.common.network.Selector=INFO, security\n"
            "log4j.additivity.org.apache.kafka.common.network.Selector=false\n"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


# Connection-refused noise while the broker boots is expected; keep it out of the user's terminal.
_quiet_logger = logging.getLogger("tradepulse.kafka.probe")
_quiet_logger.addHandler(logging.NullHandler())
_quiet_logger.propagate = False
