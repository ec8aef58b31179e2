"""Build the TradePulse Lambda layer without Docker.

Third-party wheels are installed for the Lambda platform (manylinux x86_64, CPython of the Lambda
runtime) with `pip install --platform ... --only-binary=:all: --target`, so the result is right even when
built on another OS. The wheels are cached under `layers/build/deps-<hash>` keyed by the requirements
and target, so only the first build needs PyPI; later builds (and `cdk synth`) are offline. The
`tradepulse` package is copied from the source tree on every build.

    python layers/build.py                                   # base layer → layers/build/layer/python
    python layers/build.py --requirements layers/requirements-arrow.txt --no-package --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

LAYERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LAYERS_DIR.parent
REQUIREMENTS = LAYERS_DIR / "requirements.txt"
ARROW_REQUIREMENTS = LAYERS_DIR / "requirements-arrow.txt"
BUILD_DIR = LAYERS_DIR / "build"
# Lambda's Python 3.14 runtime is Amazon Linux 2023 (glibc 2.34): manylinux 2014 and 2_28 wheels both fit
# (confluent-kafka publishes 2_28 only).
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
PYTHON_VERSION = "3.14"  # must match the Lambda runtime in cdk/lambdas.py
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


class LayerBuildError(RuntimeError):
    """pip could not install the layer's wheels (first build needs PyPI)."""


def deps_dir(requirements: Path = REQUIREMENTS) -> Path:
    """Cache directory of the third-party wheels for these requirements and this target."""
    key = hashlib.sha256(requirements.read_bytes() + f"{PLATFORMS}/{PYTHON_VERSION}".encode()).hexdigest()
    return BUILD_DIR / f"deps-{key[:16]}"


def install_deps(requirements: Path = REQUIREMENTS) -> Path:
    """Install the requirements for the Lambda platform (cached); returns the directory holding them."""
    target = deps_dir(requirements)
    if (target / ".complete").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "--implementation", "cp", "--python-version", PYTHON_VERSION,
        "--only-binary=:all:", "--target", str(partial), "-r", str(requirements),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LayerBuildError(
            "pip could not install the Lambda layer wheels (the first build needs PyPI; later builds "
            f"reuse {BUILD_DIR}):\n{result.stderr[-2000:]}"
        )
    # Console scripts, C headers, test suites and the runtime's own boto3 are dead weight in a layer.
    for pattern in ("bin", "boto3*", "botocore*", "s3transfer*", "*/include", "*/tests", "pyarrow/src"):
        for path in partial.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
    (partial / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def build_layer(out_dir: Path, requirements: Path = REQUIREMENTS, *, with_package: bool = True) -> Path:
    """Write a layer into `out_dir/python`: the requirements' wheels (+ the `tradepulse` package)."""
    deps = install_deps(requirements)
    python_dir = out_dir / "python"
    shutil.rmtree(python_dir, ignore_errors=True)
    # Hard links where possible: the wheels are immutable once cached, and a synth then stages the
    # ~200 MB of layers without copying them.
    shutil.copytree(
        deps,
        python_dir,
        ignore=shutil.ignore_patterns(".complete", "__pycache__"),
        copy_function=_link_or_copy,
    )
    if with_package:
        shutil.copytree(REPO_ROOT / "tradepulse", python_dir / "tradepulse", ignore=_IGNORE)
    return python_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILD_DIR / "layer")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    parser.add_argument("--no-package", action="store_true", help="Wheels only, without `tradepulse`.")
    args = parser.parse_args()
    try:
        python_dir = build_layer(args.out, args.requirements.resolve(), with_package=not args.no_package)
    except LayerBuildError as exc:
        sys.exit(f"error: {exc}")
    size_mb = sum(p.stat().st_size for p in python_dir.rglob("*") if p.is_file()) / 1e6
    print(f"layer ready: {python_dir} ({size_mb:.1f} MB unzipped)")


if __name__ == "__main__":
    main()
