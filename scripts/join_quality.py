"""Precision / recall of the news ↔ volume-spike join on labelled news scenarios (the measurement is
`tradepulse.bench.join_quality`; its docstring says what is reported).

    .venv/bin/python scripts/join_quality.py [--minutes 60] [--seed 7] [--source auto|simulator|synthetic]
                                             [--raw-zscore] [--tickers 5]
"""

from __future__ import annotations

import click

from tradepulse.bench.join_quality import run


@click.command(help=__doc__)
@click.option(
    "--source", type=click.Choice(["auto", "simulator", "synthetic"]), default="auto", show_default=True
)
@click.option("--minutes", type=float, default=60.0, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--raw-zscore", is_flag=True, help="plain raw-volume z-score, for comparison")
@click.option(
    "--tickers", type=int, default=5, show_default=True, help="simulator tickers (news spread over them)"
)
def main(source: str, minutes: float, seed: int, raw_zscore: bool, tickers: int) -> None:
    if source == "auto":
        try:
            import tradepulse.core.features
            import tradepulse.sources.simulator.market  # noqa: F401

            source = "simulator"
        except ImportError:
            source = "synthetic"
    m = run(source, minutes, seed, raw_zscore=raw_zscore, tickers=tickers)
    for k, v in m.items():
        click.echo(f"{k:36} {v:.3f}" if isinstance(v, float) else f"{k:36} {v}")


if __name__ == "__main__":
    main()
