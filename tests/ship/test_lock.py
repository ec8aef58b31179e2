"""The one lock (defect 10): `requirements.txt` pins every runtime dependency of pyproject (+ [aws]) with
hashes, for every Python the project ships on; the layer locks are subsets of it for the Lambda Python;
the images, the layers and the test venv install from it. A lock cannot be re-resolved offline, so this
checks what can be: coverage, specifiers, identical pins and hashes, and that every consumer uses it."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.ship.conftest import layer_build
from tests.ship.lockfile import LAYER_LOCKS, LOCK, REPO_ROOT, pins_for, read_lock

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
RUNTIME_REQUIREMENTS = [
    Requirement(r)
    for r in PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["aws"]
]
LAMBDA_PYTHON = f"{layer_build().PYTHON_VERSION}.0"
LOCAL_PYTHON = ".".join(map(str, sys.version_info[:3]))
#: Provided by the Lambda runtime: never in a layer.
LAMBDA_RUNTIME = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
DOCKERFILES = sorted((REPO_ROOT / "services").glob("*/Dockerfile"))


@pytest.mark.parametrize("python", ["3.11.0", LOCAL_PYTHON, "3.12.0", LAMBDA_PYTHON])
def test_lock_pins_every_runtime_dependency_within_its_specifier(python: str) -> None:
    pins = pins_for(LOCK, python)
    for requirement in RUNTIME_REQUIREMENTS:
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, (
            f"{requirement.name} is not in requirements.txt for Python {python}: make lock"
        )
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{requirement.name}=={pin.version} does not satisfy pyproject's {requirement}: make lock"
        )
        assert len(pin.hashes) >= 1, f"{pin.name} has no hashes"


def test_confluent_kafka_fires_oauth_cb_without_poll() -> None:
    """< 2.13 only calls oauth_cb from poll(): an AdminClient on MSK IAM never authenticates."""
    spec = next(r for r in RUNTIME_REQUIREMENTS if r.name == "confluent-kafka")
    assert not spec.specifier.contains("2.12.9"), "pyproject must require confluent-kafka >= 2.13"
    for python in (LOCAL_PYTHON, LAMBDA_PYTHON):
        assert Version(pins_for(LOCK, python)["confluent-kafka"].version) >= Version("2.13")


@pytest.mark.parametrize("layer_lock", LAYER_LOCKS, ids=lambda p: p.name)
def test_layer_locks_are_subsets_of_the_lock_for_the_lambda_python(layer_lock: Path) -> None:
    main = pins_for(LOCK, LAMBDA_PYTHON)
    layer = read_lock(layer_lock)
    assert layer, f"{layer_lock} is empty"
    for pin in layer:
        assert pin.marker is None, f"{layer_lock}: {pin.name} has a marker; the layer lock is for one Python"
        assert pin.name not in LAMBDA_RUNTIME, f"{layer_lock}: {pin.name} is provided by the Lambda runtime"
        assert pin.name in main, f"{layer_lock}: {pin.name} is not in requirements.txt: make lock"
        assert (pin.version, set(pin.hashes)) == (main[pin.name].version, set(main[pin.name].hashes)), (
            f"{layer_lock}: {pin.name}=={pin.version} differs from requirements.txt: make lock"
        )
    source = layer_lock.with_suffix(".in")
    top_level = {
        canonicalize_name(Requirement(line).name)
        for line in source.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert top_level <= {p.name for p in layer}, f"{source} lists packages its lock lacks: make lock"


def test_cdk_layers_are_built_from_the_layer_locks() -> None:
    build = layer_build()
    assert {build.REQUIREMENTS, build.ARROW_REQUIREMENTS} == set(LAYER_LOCKS)
    layer_py = (REPO_ROOT / "cdk" / "layer.py").read_text()
    assert 'LAYERS_DIR / "requirements.txt"' in layer_py
    assert 'LAYERS_DIR / "requirements-arrow.txt"' in layer_py
    # The build installs exactly the lock: hash-checked, nothing resolved beyond it.
    source = (REPO_ROOT / "layers" / "build.py").read_text()
    assert '"--no-deps", "--require-hashes"' in source


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_install_the_lock(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert re.search(r"^COPY .*requirements\.txt", text, re.M), f"{dockerfile}: the lock is not copied"
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert any("--require-hashes" in line and "-r requirements.txt" in line for line in installs), installs
    # The project itself adds no dependency the lock does not pin.
    assert any("--no-deps" in line and re.search(r"\s\.(\s|$)", line) for line in installs), installs


def test_test_venv_runs_the_locked_versions() -> None:
    """CI (`make test`) installs the lock; the dev/CDK tools are constrained by it."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements.txt" in makefile
    assert "-c $(VENV)/constraints.txt" in makefile
    for name, pin in pins_for(LOCK, LOCAL_PYTHON).items():
        assert importlib.metadata.version(name) == pin.version, f"{name}: the venv differs from the lock"
