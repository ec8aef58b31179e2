"""Ship what you test, for the Python package: the wheel, installed into a clean venv in a temp dir, runs
`tradepulse kafka fetch` and `tradepulse up` from a temp working directory, outside the checkout, and the
API serves trades and the dashboard.

What the wheel must carry is what the product reads at run time: the broker's pom.xml (package data of
`tradepulse.bus`), the finance lexicon and the trade-condition rules (`tradepulse.core`: the processor
reads both at start), the dashboard (`tradepulse.api`). Nothing may
come from the checkout: the wheel is built from a copy of what it is built from (pyproject.toml,
README.md, tradepulse/), every command runs with the temp dir as its working directory, an environment
without PYTHONPATH, and `tradepulse.__file__` must be inside the temp venv.

The temp venv gets the locked dependencies (requirements.txt, hash-checked, exactly as the Makefile and
the images install them) from a dependencies-only venv cached by the lock under build/ship/ (it holds no
`tradepulse`; the image checks use the same one, `tests.ship.venvs`): the temp venv is created without
pip and one `.pth` line makes that site-packages visible, so a run installs only the wheel (with that
pip) and `pip check` checks the wheel's requirements against the locked versions. The broker jars are
fetched by the installed `tradepulse kafka fetch` into a temp jar cache (TRADEPULSE_KAFKA_LIBS_DIR) with
the packaged pom.xml; Maven resolves them from its local repository, which `make kafka-jars` filled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.ship.lockfile import LOCK, REPO_ROOT
from tests.ship.venvs import image_dependency_installs, locked_venv, venv_over
from tradepulse.bus.local_kafka import free_port

pytestmark = pytest.mark.kafka

#: What the wheel is built from (the rest of the checkout is not in it).
SOURCES = ("pyproject.toml", "README.md", "tradepulse")


def run_checked(
    args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def locked_dependencies() -> Path:
    """A venv holding exactly the lock (no tradepulse), installed by the images' dependency install."""
    dockerfile = (REPO_ROOT / "services" / "ingest" / "Dockerfile").read_text()
    return locked_venv(LOCK, image_dependency_installs(dockerfile))


def build_wheel(workdir: Path) -> Path:
    """The project's wheel, built from a copy of its sources (the build writes into the source tree)."""
    source = workdir / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    dist = workdir / "dist"
    run_checked(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
         str(source)],
        cwd=workdir, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("tradepulse-*.whl")
    return wheel


def test_installed_wheel_runs_the_pipeline_outside_the_checkout(tmp_path: Path) -> None:
    deps = locked_dependencies()
    wheel = build_wheel(tmp_path)
    # Without its own pip/setuptools: every package but the wheel comes from the lock (pip included,
    # through the .pth), so nothing of the venv's bundled versions shadows a locked one.
    venv = venv_over(tmp_path / "venv", deps)
    python = str(venv / "bin" / "python")
    run_checked([python, "-m", "pip", "install", "-q", "--no-compile", "--no-deps", str(wheel)], timeout=300)

    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    # Java and Maven from wherever this machine has them; nothing else of this environment.
    tools = [str(Path(found).parent) for tool in ("java", "mvn") if (found := shutil.which(tool))]
    env = {
        "PATH": os.pathsep.join([str(venv / "bin"), *tools, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # Maven's local repository (filled by `make kafka-jars`): the jars are not downloaded again.
        "MAVEN_OPTS": f"-Dmaven.repo.local={Path.home() / '.m2' / 'repository'}",
        "TRADEPULSE_KAFKA_LIBS_DIR": str(tmp_path / "kafka-libs"),
        "TRADEPULSE_API_PORT": str(free_port()),
        "TRADEPULSE_SIMULATOR_WS_PORT": str(free_port()),
        "TRADEPULSE_SIMULATOR_HTTP_PORT": str(free_port()),
        "TRADEPULSE_KAFKA_HEAP": "512m",
        "TRADEPULSE_SIMULATOR_RATE": "200",
    }
    if "JAVA_HOME" in os.environ:
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]

    where = run_checked(
        [python, "-I", "-c", "import tradepulse; print(tradepulse.__file__)"], cwd=cwd, env=env
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    run_checked([python, "-I", "-m", "pip", "check"], cwd=cwd, env=env)

    tradepulse = str(venv / "bin" / "tradepulse")
    fetch = run_checked([tradepulse, "kafka", "fetch"], cwd=cwd, env=env, timeout=600)
    assert "kafka 3.9.1 jars ready" in fetch.stdout
    assert any((tmp_path / "kafka-libs" / "3.9.1").glob("kafka_2.13-3.9.1.jar"))

    up = subprocess.Popen(
        [tradepulse, "up"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line.rstrip())
            if "pipeline up in" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    api = f"http://127.0.0.1:{env['TRADEPULSE_API_PORT']}"
    try:
        assert ready.wait(180), "pipeline did not come up:\n" + "\n".join(lines[-40:])
        # The default data dir is relative to the working directory: the state is in the temp cwd.
        assert (cwd / ".tradepulse" / "kafka" / "broker.json").exists()
        deadline = time.monotonic() + 90
        quote = None
        while time.monotonic() < deadline:
            response = httpx.get(f"{api}/quotes/AAPL", timeout=5)
            if response.status_code == 200:
                quote = response.json()
                break
            time.sleep(1)
        assert quote is not None, "no trade on the API:\n" + "\n".join(lines[-40:])
        assert quote["ticker"] == "AAPL" and quote["price"] > 0
        dashboard = httpx.get(f"{api}/", timeout=5)
        assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
    finally:
        up.send_signal(signal.SIGINT)
        exit_code = up.wait(120)
    assert exit_code == 0, "\n".join(lines[-40:])
