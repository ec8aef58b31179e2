"""Ship what you test, for the ECS images (defect 10): each service's Docker build context is taken from
the synthesized cloud assembly (what CDK stages), and the `pip install` commands of its Dockerfile run,
as written (no Docker): the locked dependencies, hash-checked, into a fresh venv (dependencies only, cached
by the lock and the commands, and shared with the wheel check: `tests.ship.venvs`), then the project
without dependencies into a venv of its own over it. Then, in that venv:
the entry point (`python main.py --help`), `pip check`, an import of every `tradepulse` module and of
every third-party module the package imports anywhere (also lazily, inside functions), and, for the
processor, an anomaly model fitted in its refit worker and scored, and Arrow's allocator as its entry
point sets it."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ship.venvs import (
    dockerfile_pip_commands,
    image_dependency_installs,
    locked_venv,
    pip,
    venv_over,
)

SERVICES = ("ingest", "news", "processor")
#: Imported (lazily) by `tradepulse bench` only, for its chart: the `dev` extra, not in the lock (the
#: images never run the bench).
NOT_SHIPPED = {"matplotlib"}


@pytest.fixture(scope="session")
def images(cloud_assembly: tuple[Path, str]) -> dict[str, tuple[Path, str]]:
    """service → (its staged build context, its Dockerfile's text)."""
    outdir, stack = cloud_assembly
    assets = json.loads((outdir / f"{stack}.assets.json").read_text())["dockerImages"].values()
    out = {}
    for asset in assets:
        context = outdir / asset["source"]["directory"]
        dockerfile = asset["source"]["dockerFile"]
        out[dockerfile.split("/")[1]] = (context, (context / dockerfile).read_text())
    return out


def python_of(dockerfile: str) -> str:
    match = re.search(r"^FROM \S*python:(\d+\.\d+)", dockerfile, re.M)
    assert match, "the image is not built FROM a python:<version> image"
    return match[1]


def image_venv(context: Path, dockerfile: str, workdir: Path) -> Path:
    """A venv holding what the image holds: the Dockerfile's dependency installs (in the dependencies-only
    venv shared with the wheel check, `tests.ship.venvs`, cached by the lock and the commands), then its
    project install from the staged context, into a venv of its own over those dependencies (every time:
    the code changes)."""
    commands = dockerfile_pip_commands(dockerfile)
    deps = image_dependency_installs(dockerfile)
    projects = [args for args, project in commands if project]
    assert deps and projects, f"expected locked dependencies then the project: {commands}"
    venv = venv_over(workdir / "venv", locked_venv(context / "requirements.txt", deps))
    build = workdir / "context"  # the build writes into the source tree: a copy of the staged context
    shutil.copytree(context, build, ignore=shutil.ignore_patterns("__pycache__"))
    for args in projects:
        pip(venv / "bin" / "python", args, build)
    return venv


@pytest.fixture(scope="session")
def venvs(images: dict[str, tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """service → its image's venv (services with the same install commands share one)."""
    out: dict[str, Path] = {}
    by_commands: dict[str, Path] = {}
    for service, (context, dockerfile) in sorted(images.items()):
        commands = repr(dockerfile_pip_commands(dockerfile))
        if commands not in by_commands:
            by_commands[commands] = image_venv(context, dockerfile, tmp_path_factory.mktemp(service))
        out[service] = by_commands[commands]
    return out


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"},
    )


def test_every_service_image_is_checked(images: dict[str, tuple[Path, str]]) -> None:
    assert sorted(images) == sorted(SERVICES)
    for _, dockerfile in images.values():
        assert python_of(dockerfile) == f"{sys.version_info.major}.{sys.version_info.minor}", (
            "the image's Python differs from this machine's: the venv would not be the image's"
        )


@pytest.mark.parametrize("service", SERVICES)
def test_entry_point_runs_in_the_locked_venv(
    service: str, images: dict[str, tuple[Path, str]], venvs: dict[str, Path]
) -> None:
    context, _ = images[service]
    entry = context / "services" / service / "main.py"
    result = run(venvs[service], str(entry), "--help", cwd=entry.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Usage:" in result.stdout
    installed = run(venvs[service], "-c", "import tradepulse; print(tradepulse.__file__)", cwd=entry.parent)
    assert str(venvs[service]) in installed.stdout, "tradepulse must come from the venv, as in the image"


@pytest.mark.parametrize("service", SERVICES)
def test_every_module_the_package_imports_is_in_the_image(
    service: str, images: dict[str, tuple[Path, str]], venvs: dict[str, Path]
) -> None:
    venv = venvs[service]
    check = run(venv, "-m", "pip", "check", cwd=venv)
    assert check.returncode == 0, f"the lock is inconsistent:\n{check.stdout}"
    context, _ = images[service]
    imported: set[str] = set()
    for path in (context / "tradepulse").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
    third_party = sorted(
        name
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names | NOT_SHIPPED | {"tradepulse", "__future__"}
    )
    script = (
        "import importlib, pkgutil, tradepulse\n"
        "names = [m.name for m in pkgutil.walk_packages(tradepulse.__path__, 'tradepulse.')]\n"
        f"names += {third_party!r}\n"
        "failed = {}\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = repr(exc)\n"
        "print(len(names), failed)\n"
    )
    result = run(venv, "-c", script, cwd=venv)
    assert result.returncode == 0, result.stderr[-3000:]
    count, failed = result.stdout.strip().split(" ", 1)
    assert failed == "{}", f"not importable in the {service} image: {failed}"
    assert int(count) > 50


def test_the_processor_image_fits_and_scores_anomaly_models(
    images: dict[str, tuple[Path, str]], venvs: dict[str, Path], tmp_path: Path
) -> None:
    """The processor's refit worker runs in the image's interpreter, whose lock holds no scikit-learn:
    a model fitted there (through `RefitPool`, from a script importing the entry point's command group)
    scores rows, and neither process has loaded scikit-learn or SciPy."""
    main = tmp_path / "main.py"
    main.write_text(
        "from tradepulse.cli.main import cli  # as services/processor/main.py\n"
        "if __name__ == '__main__':\n"
        "    import sys, numpy as np\n"
        "    from tradepulse.bus.refit_pool import RefitPool\n"
        "    from tradepulse.core.anomaly import AnomalyConfig\n"
        "    from tradepulse.core.anomaly_model import POOLED, timed_fit\n"
        "    pool = RefitPool()\n"
        "    rows = {'X': np.random.default_rng(0).standard_normal((400, 6))}\n"
        "    model, _ = pool.submit(timed_fit, AnomalyConfig().fit_params, 1, rows).result(timeout=120)\n"
        "    scores = model.forests[POOLED].score_samples(np.vstack([np.zeros((1, 6)), np.full((1, 6), 9.0)]))\n"
        "    names = \"sorted(m for m in __import__('sys').modules if m.split('.')[0] in ('sklearn', 'scipy'))\"\n"
        "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy'))\n"
        "    print(scores[1] < model.thresholds[POOLED] < scores[0], loaded, pool.submit(eval, names).result(60))\n"
        "    pool.shutdown()\n"
    )
    result = run(venvs["processor"], str(main), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "True [] []"


def test_the_processor_image_puts_arrows_allocations_in_jemalloc(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    """`tradepulse process` tunes its process with `tune_process`: with the image's Arrow, the cold store's
    tables are then allocated from jemalloc, which gives freed pages back to the system (a build of Arrow
    without jemalloc would silently keep its default)."""
    script = (
        "from tradepulse.bus.runner import tune_process\n"
        "tune_process()\n"
        "import pyarrow as pa\n"
        "print(pa.default_memory_pool().backend_name)\n"
    )
    result = run(venvs["processor"], "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "jemalloc"


def test_the_processor_image_runs_its_core_without_pandas(venvs: dict[str, Path], tmp_path: Path) -> None:
    """The runner's processing step, in the image's interpreter, with the image's settings: trades with
    condition codes over two minutes through the outlier flagger, the features, the bars (their NYSE
    sessions), the anomaly detector's row keys, and the news join. None of it loads pandas or the
    calendar library into the process (~60 MiB resident for its whole life, docs/benchmarks.md): the
    session table is computed in a child interpreter that exits."""
    script = (
        "import sys\n"
        "from tradepulse.bus.decode import DecodedBatch\n"
        "from tradepulse.bus.pipeline import CoreProcessor\n"
        "from tradepulse.config import Settings\n"
        "core = CoreProcessor(Settings(data_dir=sys.argv[1]))\n"
        "t0 = 1_764_772_200_000  # 2025-12-03 09:30 ET: the regular session\n"
        "rows = [\n"
        "    {'ticker': ('AAA', 'BBB', 'CCC')[i % 3], 'price': 100.0 + (i % 7) * 0.01, 'size': 100.0,\n"
        "     'exchange_ts_ms': t0 + i * 150, 'sequence': i, 'event_id': f'{i:016x}',\n"
        "     'conditions': [[], [12], [37]][i % 3]}\n"
        "    for i in range(1200)\n"
        "]\n"
        "bars, features = [], 0\n"
        "for start in range(0, len(rows), 100):\n"
        "    part = rows[start:start + 100]\n"
        "    batch = DecodedBatch(trades=part, trade_pos=[(0, start + j) for j in range(len(part))])\n"
        "    core.flag_outliers(batch)\n"
        "    out = core.process(batch, emit=True)\n"
        "    bars += out.bars\n"
        "    features += len(out.features)\n"
        "core.close()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'exchange_calendars'))\n"
        "print(sorted({b['session'] for b in bars}), features > 0, loaded)\n"
    )
    result = run(venvs["processor"], "-c", script, str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "['regular'] True []"
