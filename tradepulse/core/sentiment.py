"""VADER sentiment of news headlines, with a finance lexicon.

Plain VADER misreads finance headlines: "shares" is +1.2 in its lexicon, so "Apple shares plunge"
scores positive, and price-move words (plunge, soar, beat, upgrade, tumble, rally...) are missing. The
analyser here is VADER with `data/finance_lexicon.tsv` applied on top (provenance in `data/README.md`):

* single words are added to (or, with valence 0, removed from) VADER's lexicon;
* multi-word phrases ("cuts guidance", "price target raised", "falls short") are rewritten to one
  token before VADER tokenises, so they carry their own valence and VADER's negation and "but" rules
  still apply around them.

Scored text: the headline, plus the start of the summary (first `SUMMARY_CHARS` characters) when there
is one: the headline carries the signal, long summaries dilute it and cost time.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05
SUMMARY_CHARS = 280
LEXICON_FILE = "finance_lexicon.tsv"


def read_lexicon() -> list[tuple[str, float, str]]:
    """(term, valence, source) rows of the finance lexicon shipped in `tradepulse/core/data`."""
    text = resources.files("tradepulse.core").joinpath("data", LEXICON_FILE).read_text("utf-8")
    rows: list[tuple[str, float, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("term\t"):
            continue
        term, valence, source = line.split("\t")
        rows.append((term.strip().lower(), float(valence), source.strip()))
    return rows


class FinanceSentiment:
    """VADER with the finance lexicon; one instance is shared (see `analyzer()`)."""

    def __init__(self, lexicon: list[tuple[str, float, str]] | None = None) -> None:
        self._vader = SentimentIntensityAnalyzer()
        rows = read_lexicon() if lexicon is None else lexicon
        phrases: dict[str, str] = {}
        for term, valence, _source in rows:
            if " " in term:
                # A token VADER keeps whole (no spaces, letters only, never a real word).
                token = "finphrase" + "".join(ch for ch in term if ch.isalnum())
                phrases[term] = token
                if valence:
                    self._vader.lexicon[token] = valence
            elif valence:
                self._vader.lexicon[term] = valence
            else:
                self._vader.lexicon.pop(term, None)
        self._phrases = phrases
        self._phrase_re = (
            re.compile(
                r"(?<![\w-])("
                + "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
                + r")(?![\w-])",
                re.IGNORECASE,
            )
            if phrases
            else None
        )

    def rewrite(self, text: str) -> str:
        """The text with finance phrases replaced by their single-token stand-ins."""
        if self._phrase_re is None:
            return text
        return self._phrase_re.sub(lambda m: self._phrases[m.group(0).lower()], text)

    def polarity(self, text: str) -> dict[str, float]:
        """VADER's four scores (neg, neu, pos, compound) of `text` with the finance lexicon."""
        return self._vader.polarity_scores(self.rewrite(text))


@lru_cache(maxsize=1)
def analyzer() -> FinanceSentiment:
    """The process-wide finance analyser (building it parses two lexicons: ~30 ms, done once)."""
    return FinanceSentiment()


def label_of(compound: float) -> str:
    """positive ≥ 0.05, negative ≤ −0.05, else neutral (VADER's recommended cut-offs)."""
    if compound >= POSITIVE_AT:
        return "positive"
    if compound <= NEGATIVE_AT:
        return "negative"
    return "neutral"


def article_text(headline: str, summary: str = "") -> str:
    """The text scored for an article: headline, plus the summary's first `SUMMARY_CHARS` characters."""
    headline = (headline or "").strip()
    summary = (summary or "").strip()
    if not summary:
        return headline
    if len(summary) > SUMMARY_CHARS:
        cut = summary.rfind(" ", 0, SUMMARY_CHARS)
        summary = summary[: cut if cut > 0 else SUMMARY_CHARS]
    if headline and headline[-1] not in ".!?":
        headline += "."
    return f"{headline} {summary}"


def score_article(headline: str, summary: str = "") -> dict[str, Any]:
    """Sentiment of one article as a `tradepulse.models.Sentiment` dict."""
    scores = analyzer().polarity(article_text(headline, summary))
    compound = float(scores["compound"])
    return {
        "compound": compound,
        "label": label_of(compound),
        "pos": float(scores["pos"]),
        "neg": float(scores["neg"]),
        "neu": float(scores["neu"]),
    }
