"""`tradepulse bench`: the full-path market-open load test, side by side with the faust/Quix peers.

The harness is part of the package (`tradepulse.bench`). The peers are not: they import faust-streaming
and Quix Streams, which pin their own dependencies, so they run from the checkout's `benchmarks/peers/`
in a venv of their own (`--peers-dir`, `--no-peers` without a checkout). The chart (bench.png) needs
matplotlib (the `dev` extra).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from tradepulse.bench import PEERS_DIR
from tradepulse.config import get_settings


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
    "--peers-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=PEERS_DIR,
    show_default=True,
    help="The peer scripts (the checkout's benchmarks/peers/).",
)
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
    "--py-spy",
    is_flag=True,
    help="Sample the runner with py-spy (runner-profile.txt, collapsed stacks); the report lists its top "
    "functions, or says why py-spy recorded nothing (its output: py-spy.log).",
)
@click.option(
    "--processors",
    type=click.IntRange(1, 64),
    default=None,
    help="Runner processes of the main consumer group, sharing its partitions, as `tradepulse up` starts "
    "them [TRADEPULSE_PROCESSORS, 1].",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME:KEY=VALUE[,KEY=VALUE]",
    help="Also run a runner with these settings under the same load (own consumer group and data dir), "
    "e.g. linger10:TRADEPULSE_BATCH_LINGER_MS=10; repeatable. The report compares them.",
)
@click.option("--docs", type=click.Path(path_type=Path), default=None, help="Also write docs/benchmarks.md.")
@click.option("--keep-state", is_flag=True, help="Keep the broker and store files of the run.")
def bench(
    rate: float,
    tickers: int,
    duration: float,
    profile: str,
    peers: bool,
    peers_dir: Path,
    drain_events: int,
    out: Path | None,
    bootstrap: str | None,
    py_spy: bool,
    processors: int | None,
    variants: tuple[str, ...],
    docs: Path | None,
    keep_state: bool,
) -> None:
    """Load-test the whole local path (simulator → ingest → Kafka → runner → hot store) and compare the
    runner with faust-streaming and Quix Streams on the same broker; writes results.json, summary.md
    and bench.png."""
    from tradepulse.bench import harness, report

    if peers and drain_events > 0 and not (peers_dir / "requirements.txt").exists():
        raise click.ClickException(
            f"benchmark peers not found in {peers_dir}/: run from the repository root, pass --peers-dir, "
            "or --no-peers"
        )
    out = out or Path("results") / time.strftime("%Y%m%d-%H%M%S")
    config = harness.BenchConfig(
        out=out,
        rate=rate,
        tickers=tickers,
        duration_s=duration,
        profile=profile,
        peers=peers,
        peers_dir=peers_dir,
        drain_events=drain_events,
        bootstrap=bootstrap,
        py_spy=py_spy,
        processors=processors or get_settings().processors,
        variants=dict(parse_variant(v) for v in variants),
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


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`NAME:KEY=VALUE[,KEY=VALUE]` → (name, {key: value})."""
    name, sep, assignments = text.partition(":")
    pairs = [a.partition("=") for a in assignments.split(",") if a]
    if not sep or not name.isidentifier() or not pairs or any(not k or not eq for k, eq, _ in pairs):
        raise click.BadParameter(f"expected NAME:KEY=VALUE[,KEY=VALUE], got {text!r}", param_hint="--variant")
    return name, {key: value for key, _, value in pairs}
