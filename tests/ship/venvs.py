"""The locked dependencies in a venv, installed once for the ship checks.

The images install the lock with their Dockerfiles' first `pip install` (hash-checked, no deps); the wheel
check needs the same dependencies without `tradepulse`. One dependencies-only venv, built by those very
commands and cached under build/ship/ by the requirements file, the commands and the Python, serves both:
each check makes its own throw-away venv (without pip) whose one `.pth` line makes that site-packages
visible, and installs only the project into it. On a clean checkout the lock is installed once instead of
once per check (it is the largest part of their time)."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.ship.lockfile import REPO_ROOT

CACHE = REPO_ROOT / "build" / "ship"


def dockerfile_pip_commands(dockerfile: str) -> list[tuple[list[str], bool]]:
    """(pip arguments, installs the project) of each `pip install` in the Dockerfile's RUN lines."""
    commands = []
    for line in dockerfile.splitlines():
        if not line.startswith("RUN "):
            continue
        for part in line.removeprefix("RUN ").split("&&"):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"]:
                commands.append((words[1:], "." in words))
    return commands


def image_dependency_installs(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's dependency installs (the `pip install`s that do not install the project)."""
    return [args for args, project in dockerfile_pip_commands(dockerfile) if not project]


def site_packages(venv: Path) -> Path:
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    return Path(purelib)


def pip(python: Path, args: list[str], cwd: Path) -> None:
    """Run pip arguments with this interpreter's pip (installs without byte-compiling: only faster)."""
    if args[0] == "install":
        args = ["install", "--no-compile", *args[1:]]
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert result.returncode == 0, (
        f"pip {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    )


def locked_venv(requirements: Path, installs: list[list[str]]) -> Path:
    """A venv holding what `installs` (pip arguments, run next to `requirements`) put into a fresh venv,
    cached by the requirements file's content, the arguments and this Python."""
    key = hashlib.sha256(
        requirements.read_bytes() + repr(installs).encode() + sys.version.encode()
    ).hexdigest()[:16]
    venv = CACHE / f"locked-{key}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        for args in installs:
            pip(venv / "bin" / "python", args, requirements.parent)
        (venv / ".complete").write_text("ok\n")
    return venv


def venv_over(venv: Path, dependencies: Path) -> Path:
    """A new venv at `venv`, without pip of its own, that sees the packages of the venv `dependencies`
    (pip included) after its own: what is installed into it is its own, the rest is the lock's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    (site_packages(venv) / "_tradepulse_locked_deps.pth").write_text(f"{site_packages(dependencies)}\n")
    return venv
