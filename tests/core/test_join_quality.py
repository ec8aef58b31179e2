"""The news ↔ volume-spike join on the simulator's labelled news (tradepulse.bench.join_quality, the
measurement of scripts/join_quality.py, 20 minutes).

The stream is seeded, so the numbers are deterministic; the thresholds are the issue's goals (recall
≥ 0.9 on news followed by a reaction, no false strong on news without one). The full 240-minute
measurement with confidence intervals is in the script's output, not here.
"""

from __future__ import annotations

from tradepulse.bench import join_quality


def test_simulator_news_join_meets_the_quality_goals() -> None:
    m = join_quality.run("simulator", minutes=20, seed=7)
    assert m["missing_results"] == 0 and m["results"] == m["joiner_stats"]["emitted"]
    assert m["with_reaction"] >= 20 and m["no_reaction_clean"] >= 3  # not vacuous
    assert m["recall_strong_moderate"] >= 0.9
    assert m["false_strong_rate_clean"] == 0.0, m["clean_false_strong"]
