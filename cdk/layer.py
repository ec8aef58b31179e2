"""The shared Lambda layer (third-party wheels + the `tradepulse` package), bundled locally: no Docker."""

from __future__ import annotations

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


@jsii.implements(ILocalBundling)
class LocalLayerBundling:
    """Runs `layers/build.py` into the asset output directory (pip --platform; cached wheels)."""

    def try_bundle(self, output_dir: str, *, image: object = None, **_options: object) -> bool:
        result = subprocess.run(
            [sys.executable, str(LAYERS_DIR / "build.py"), "--out", output_dir],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"Lambda layer build failed:\n{result.stdout}{result.stderr}")
        return True


class TradePulseLayer(Construct):
    """`layer`: the LayerVersion every TradePulse function uses."""

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            description="TradePulse: tradepulse package, Powertools, Mangum, FastAPI, confluent-kafka, MSK IAM signer",
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            code=lambda_.Code.from_asset(
                str(LAYERS_DIR),
                exclude=["build", "build/**"],
                # The output holds the copied `tradepulse` source, so hash it (a code change = new version).
                asset_hash_type=AssetHashType.OUTPUT,
                bundling=BundlingOptions(
                    image=RUNTIME.bundling_image,  # never pulled: local bundling always succeeds or raises
                    local=LocalLayerBundling(),
                ),
            ),
        )
