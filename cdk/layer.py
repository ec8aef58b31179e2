"""The shared Lambda layer (third-party wheels + the `tradepulse` package), bundled locally: no Docker."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jsii
from aws_cdk import AssetHashType, BundlingOptions, ILocalBundling
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parents[1]
LAYERS_DIR = REPO_ROOT / "layers"
RUNTIME = lambda_.Runtime.PYTHON_3_14  # layers/build.py PYTHON_VERSION must match
ARCHITECTURE = lambda_.Architecture.X86_64


def _build_module():  # type: ignore[no-untyped-def]
    """`layers/build.py` (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("tradepulse_layer_build", LAYERS_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


build = _build_module()
if RUNTIME.name != f"python{build.PYTHON_VERSION}":
    raise RuntimeError(
        f"layers/build.py targets Python {build.PYTHON_VERSION}, the functions run {RUNTIME.name}"
    )


@jsii.implements(ILocalBundling)
class LocalLayerBundling:
    """Runs `layers/build.py` into the asset output directory (pip --platform; cached wheels)."""

    def __init__(self, requirements: Path, *, with_package: bool) -> None:
        self.args = ["--requirements", str(requirements)] + ([] if with_package else ["--no-package"])

    def try_bundle(self, output_dir: str, *, image: object = None, **_options: object) -> bool:
        result = subprocess.run(
            [sys.executable, str(LAYERS_DIR / "build.py"), "--out", output_dir, *self.args],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"Lambda layer build failed:\n{result.stdout}{result.stderr}")
        return True


def _layer(
    scope: Construct, id: str, description: str, requirements: Path, *, with_package: bool
) -> lambda_.LayerVersion:
    return lambda_.LayerVersion(
        scope,
        id,
        description=description,
        compatible_runtimes=[RUNTIME],
        compatible_architectures=[ARCHITECTURE],
        code=lambda_.Code.from_asset(
            str(LAYERS_DIR),
            exclude=["build", "build/**", "__pycache__"],
            # With the package, the output holds the copied `tradepulse` source, so hash it (a code
            # change = new version). Wheels only: the requirements and target decide the content, and
            # an unchanged hash lets synth skip re-staging ~160 MB.
            asset_hash_type=AssetHashType.OUTPUT if with_package else AssetHashType.CUSTOM,
            asset_hash=None if with_package else build.deps_dir(requirements).name,
            bundling=BundlingOptions(
                image=RUNTIME.bundling_image,  # never pulled: local bundling always succeeds or raises
                local=LocalLayerBundling(requirements, with_package=with_package),
            ),
        ),
    )


class TradePulseLayers(Construct):
    """`base`: the `tradepulse` package and its Lambda dependencies (every function).
    `arrow`: pyarrow, for the functions that write Parquet."""

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        self.base = _layer(
            self,
            "Base",
            "TradePulse: tradepulse package, Powertools, Mangum, FastAPI, confluent-kafka, MSK IAM signer",
            LAYERS_DIR / "requirements.txt",
            with_package=True,
        )
        self.arrow = _layer(
            self,
            "Arrow",
            "pyarrow (Parquet writes)",
            LAYERS_DIR / "requirements-arrow.txt",
            with_package=False,
        )
