"""Shared by the ship-what-you-test checks: the layer build script (as CDK loads it), the synthesized
app, a moto server, and the bundle-size report printed at the end of the session."""

from __future__ import annotations

import importlib.util
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.ship.lockfile import REPO_ROOT


def layer_build() -> ModuleType:
    """`layers/build.py`, the script CDK's local bundling runs."""
    spec = importlib.util.spec_from_file_location(
        "tradepulse_layer_build_tests", REPO_ROOT / "layers" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the synthesized app and a moto server, shared by the bundle and container checks -------------------

#: Per function: (unzipped bytes of code + layers, layers) — printed at the end of the session.
BUNDLE_SIZES: dict[str, tuple[int, list[str]]] = {}


@pytest.fixture(scope="session")
def cloud_assembly(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(cdk.out, stack name) of the dev stack, synthesized as `cdk synth` does (layers bundled by
    layers/build.py, the function code and image contexts staged)."""
    from cdk.app import build_app
    from tests.cdk.conftest import cdk_context

    outdir = tmp_path_factory.mktemp("ship-cdk.out")
    build_app(outdir=str(outdir), context=cdk_context()).synth()
    (template,) = outdir.glob("*.template.json")
    return outdir, template.name.removesuffix(".template.json")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free local port: the clean interpreters reach it via AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def closed_port() -> int:
    """A local port nothing listens on (a broker that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not BUNDLE_SIZES:
        return
    terminalreporter.section("Lambda bundles (unzipped code + layers, as synthesized)")
    for name, (size, layers) in sorted(BUNDLE_SIZES.items()):
        terminalreporter.write_line(
            f"{name:<24} {size / 1e6:7.1f} MB  ({size / 2**20:6.1f} MiB of 250)  {', '.join(layers)}"
        )
    terminalreporter.write_line(json.dumps({k: v[0] for k, v in BUNDLE_SIZES.items()}))
