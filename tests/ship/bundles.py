"""The Lambda functions as CDK packages them, read from a synthesized cloud assembly (`cdk.out`).

A function's bundle is its code asset plus its layers' assets, in the template's layer order (Lambda
extracts layers into /opt in that order). `local_opt` rebuilds the same layers for this machine's Python
when it differs from the Lambda runtime's: the non-wheel content (the `tradepulse` package) is taken from
the asset itself, the wheels are installed from the same lock by the same `layers/build.py` function,
only for the local interpreter. Sizes are always measured on the real assets.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ship.conftest import layer_build
from tests.ship.lockfile import LAYER_LOCKS, LOCK, pins_for

#: AWS Lambda's limit on a function's unzipped code + layers.
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
DRIVER = Path(__file__).with_name("lambda_driver.py")
#: What the Lambda Python runtime provides besides the standard library (boto3 and its dependencies).
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")
LOCAL_PYTHON = ".".join(map(str, sys.version_info[:3]))


def tree_bytes(path: Path) -> int:
    """Unzipped size of a folder: the sum of its files' sizes."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _link_tree(src: Path, dst: Path) -> None:
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=link)


@dataclass
class Bundle:
    """One Python function of the template: handler, runtime, code asset, layer assets, environment."""

    logical_id: str
    handler: str
    runtime: str
    code: Path
    layers: list[Path]
    environment: dict[str, Any] = field(default_factory=dict)
    tracing: str = "PassThrough"

    @property
    def module(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    def unzipped_bytes(self) -> int:
        return tree_bytes(self.code) + sum(tree_bytes(layer) for layer in self.layers)


def lambda_bundles(outdir: Path, stack: str) -> dict[str, Bundle]:
    """handler module name (e.g. `api.handler`) → its bundle, for every Python function of the stack."""
    template = json.loads((outdir / f"{stack}.template.json").read_text())
    assets = json.loads((outdir / f"{stack}.assets.json").read_text())["files"]
    by_key = {a["destinations"][next(iter(a["destinations"]))]["objectKey"]: a for a in assets.values()}
    resources = template["Resources"]

    def asset_dir(s3: dict[str, Any]) -> Path:
        source = by_key[s3["S3Key"]]["source"]
        assert source["packaging"] == "zip", source
        return outdir / source["path"]

    bundles: dict[str, Bundle] = {}
    for lid, resource in resources.items():
        props = resource["Properties"]
        if resource["Type"] != "AWS::Lambda::Function" or not str(props.get("Runtime", "")).startswith(
            "python"
        ):
            continue
        layers = [
            asset_dir(resources[ref["Ref"]]["Properties"]["Content"]) for ref in props.get("Layers", [])
        ]
        bundle = Bundle(
            lid,
            props["Handler"],
            props["Runtime"],
            asset_dir(props["Code"]),
            layers,
            props.get("Environment", {}).get("Variables", {}),
            props.get("TracingConfig", {}).get("Mode", "PassThrough"),
        )
        assert bundle.module not in bundles, f"two functions with handler {bundle.handler}"
        bundles[bundle.module] = bundle
    return bundles


def _layer_lock(layer: Path) -> Path:
    """The lock a layer asset was built from: the one whose Lambda-platform wheels it holds."""
    build = layer_build()
    names = {p.name for p in (layer / "python").iterdir()}
    found = [
        lock
        for lock in LAYER_LOCKS
        if (deps := build.deps_dir(lock)).is_dir()
        and {p.name for p in deps.iterdir()} - {".complete"} <= names
    ]
    assert len(found) == 1, f"{layer}: built from {found}?"
    return found[0]


def local_opt(layers: list[Path], dest: Path) -> Path:
    """/opt as Lambda extracts these layers, with the wheels built for the local Python from the same
    locks (`layers/build.py install_deps`, cached by lock hash). Returns `dest/python`."""
    build = layer_build()
    (dest / "python").mkdir(parents=True, exist_ok=True)
    for layer in layers:
        lock = _layer_lock(layer)
        lambda_deps = {p.name for p in build.deps_dir(lock).iterdir()}
        local_deps = (
            build.install_deps(lock)
            if LOCAL_PYTHON.startswith(build.PYTHON_VERSION + ".")
            else build.install_deps(lock, ".".join(LOCAL_PYTHON.split(".")[:2]))
        )
        for entry in (layer / "python").iterdir():  # the asset's own content, e.g. `tradepulse/`
            if entry.name not in lambda_deps:
                target = dest / "python" / entry.name
                if entry.is_dir():
                    _link_tree(entry, target)
                else:
                    shutil.copy2(entry, target)
        _link_tree(local_deps, dest / "python")
    (dest / "python" / ".complete").unlink(missing_ok=True)
    return dest / "python"


def runtime_packages(cache: Path) -> Path:
    """boto3 & co. at the lock's versions for the local Python (what the Lambda runtime provides),
    installed hash-checked into a folder cached by their pins."""
    pins = pins_for(LOCK, LOCAL_PYTHON)
    lines = [pins[name].requirement_text() for name in RUNTIME_PACKAGES]
    target = cache / f"runtime-{hashlib.sha256(''.join(lines).encode()).hexdigest()[:16]}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write("\n".join(lines) + "\n")
        requirements.flush()
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--require-hashes", "--no-compile", "--target", str(target), "-r", requirements.name],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    shutil.rmtree(target / "bin", ignore_errors=True)
    (target / ".complete").write_text("ok\n")
    return target


def invoke_clean(
    *,
    name: str,
    module: str,
    path: list[Path],
    event: dict[str, Any],
    env: dict[str, str],
    workdir: Path,
    also_import: tuple[str, ...] = (),
    timeout: float = 120,
) -> dict[str, Any]:
    """Import `module` and call its `handler(event, context)` in `python -I -S` seeing only `path`;
    returns the driver's output (`result` or `error` + `traceback`, and `modules` loaded)."""
    spec = workdir / f"{name}-spec.json"
    out = workdir / f"{name}-out.json"
    spec.write_text(
        json.dumps(
            {
                "name": name,
                "module": module,
                "path": [str(p) for p in path],
                "event": event,
                "also_import": list(also_import),
                "out": str(out),
            }
        )
    )
    run = subprocess.run(
        [sys.executable, "-I", "-S", str(DRIVER), str(spec)],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.exists(), (
        f"the driver did not finish ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    result = json.loads(out.read_text())
    result["stdout"], result["stderr"] = run.stdout, run.stderr
    return result
