"""The runner heartbeat's transport: where each runner instance publishes its status, and how readers
(`/health`, `/metrics`, `tradepulse up`) find every instance. Standard library + orjson only: the API
Lambda imports this, and must not load the runner's numeric stack (numpy).

Each runner instance publishes to `<data_dir>/runner-status.json` (instance "0") or
`<data_dir>/runner-status-<instance>.json`, and to the hot store when it holds heartbeats (DynamoDB item
`STATUS` / `runner#<instance>`). On ECS the instance is the task's hostname, so readers never assume
instance names: they list them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # types only: this module stays standard library + orjson at run time
    from tradepulse.metrics_emf import EmfEmitter
    from tradepulse.stores.base import HotStore

STATUS_FILE = "runner-status.json"
_PREFIX, _SUFFIX = "runner-status-", ".json"

log = logging.getLogger(__name__)


def status_path(data_dir: Path, instance: str = "0") -> Path:
    """Status file of one runner instance; instance "0" (the default, single runner) uses the plain name,
    others get a suffix so that two runners sharing a data dir do not overwrite each other."""
    return data_dir / (STATUS_FILE if instance == "0" else f"{_PREFIX}{instance}{_SUFFIX}")


def stages_path(data_dir: Path, instance: str = "0") -> Path:
    """Where a runner instance leaves its whole run's stage histograms, with every status it publishes
    and when it stops (`StageTimes.run_histograms`; `runner-stages.json` or
    `runner-stages-<instance>.json`): what a benchmark of several instances merges its percentiles from,
    and where it reads what the runner had recorded by a moment of the run (the file's mtime)."""
    return data_dir / ("runner-stages.json" if instance == "0" else f"runner-stages-{instance}.json")


def status_files(data_dir: Path) -> dict[str, Path]:
    """instance → status file, for every runner instance that published one in `data_dir`."""
    found = {"0": data_dir / STATUS_FILE} if (data_dir / STATUS_FILE).exists() else {}
    if data_dir.is_dir():
        for path in data_dir.glob(f"{_PREFIX}*{_SUFFIX}"):
            found[path.name[len(_PREFIX) : -len(_SUFFIX)]] = path
    return found


def write_json_atomic(path: Path, payload: dict[str, Any], *, indent: bool = True) -> None:
    """Write JSON to `path` via a temporary sibling and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 if indent else None))
    os.replace(tmp, path)


def publish_status(
    status: dict[str, Any],
    path: Path,
    hot_store: HotStore | None = None,
    instance: str = "0",
    emf: EmfEmitter | None = None,
) -> None:
    """Publish one runner heartbeat: the file at `path` (local readers: the API, `tradepulse up`, the
    bench harness), the CloudWatch metrics when `emf` is given (at its own cadence), and the hot store's
    `put_runner_status` (DynamoDB keeps it for the Lambda API; SQLite's readers read the file)."""
    write_json_atomic(path, status)
    if emf is not None:
        try:
            emf.emit_runner(status, hot_store)
        except Exception as exc:  # metrics are best effort; never stop the runner
            log.warning("runner metrics not emitted: %s", exc)
    if hot_store is None:
        return
    try:
        hot_store.put_runner_status(status, instance)
    except Exception as exc:  # a missed heartbeat is replaced by the next one; never stop the runner
        log.warning("runner status not published to the hot store: %s", exc)
