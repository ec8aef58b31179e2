"""`tradepulse bench`: the full-path market-open load test, side by side with the faust/Quix peers.

The harness lives in the source checkout (`scripts/bench/`, peers in `benchmarks/peers/`), not in the
installed package: benchmarking is a developer task, and the peers need their own venv.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import ModuleType

import click

REPO_ROOT = Path(__file__).resolve().parents[2]


def _harness() -> tuple[ModuleType, ModuleType]:
    if not (REPO_ROOT / "scripts" / "bench" / "harness.py").exists():
        raise click.ClickException("tradepulse bench runs from a source checkout (scripts/bench/ not found)")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from scripts.bench import harness, report

    return harness, report


@click.command()
@click.option(
    "--rate", type=float, default=5000.0, show_default=True, help="Base events/s (trades + quotes)."
)
@click.option("--tickers", type=int, default=200, show_default=True, help="Number of tickers.")
@click.option("--duration", type=float, default=180.0, show_default=True, help="Workload seconds.")
@click.option(
    "--profile", type=click.Choice(["flat", "market_open"]), default="market_open", show_default=True
)
@click.option("--peers/--no-peers", default=True, show_default=True, help="Also drain with faust and Quix.")
@click.option(
    "--drain-events",
    type=int,
    default=200_000,
    show_default=True,
    help="Trades of the drain phase (0 = skip).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Results folder [results/<timestamp>]."
)
@click.option("--bootstrap", default=None, help="Use this Kafka broker instead of starting a fresh one.")
@click.option(
    "--py-spy", is_flag=True, help="Record a py-spy flame graph of the runner (runner-profile.svg)."
)
@click.option("--docs", type=click.Path(path_type=Path), default=None, help="Also write docs/benchmarks.md.")
@click.option("--keep-state", is_flag=True, help="Keep the broker and store files of the run.")
def bench(
    rate: float,
    tickers: int,
    duration: float,
    profile: str,
    peers: bool,
    drain_events: int,
    out: Path | None,
    bootstrap: str | None,
    py_spy: bool,
    docs: Path | None,
    keep_state: bool,
) -> None:
    """Load-test the whole local path (simulator → ingest → Kafka → runner → hot store) and compare the
    runner with faust-streaming and Quix Streams on the same broker; writes results.json, summary.md
    and bench.png."""
    harness, report = _harness()
    out = out or Path("results") / time.strftime("%Y%m%d-%H%M%S")
    config = harness.BenchConfig(
        out=out,
        rate=rate,
        tickers=tickers,
        duration_s=duration,
        profile=profile,
        peers=peers,
        drain_events=drain_events,
        bootstrap=bootstrap,
        py_spy=py_spy,
        keep_state=keep_state,
        log=lambda line: click.echo(f"[bench] {line}", err=True),
    )
    results = harness.run_bench(config)
    click.echo((out / "summary.md").read_text())
    if docs is not None:
        command = " ".join(["tradepulse bench", *sys.argv[2:]]) if len(sys.argv) > 2 else "tradepulse bench"
        report.write_docs(results, docs, command)
        click.echo(f"wrote {docs}", err=True)
    lost = results["full_path"]["reconcile"]["events_lost"]
    if lost:
        raise click.ClickException(f"{lost} events lost")
