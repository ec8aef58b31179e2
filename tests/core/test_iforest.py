"""The numpy Isolation Forest (`tradepulse.core.iforest`) against the algorithm's definition.

The fit is checked tree by tree from outside: the subsamples are drawn again from the seed (the
generator's first draws), routed through each tree row by row in Python, and every node must be what
the definition says (a split within its rows' range with both sides non-empty, leaves only where
the growth must stop, each leaf's value its depth + c(rows it holds)). The scores are checked against
a row-by-row walk of the trees. scikit-learn (installed for this cross-check only) fits other random
trees, so its scores are compared in distribution, not value by value.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.processes import modules_loaded_by
from tradepulse.core.iforest import IsolationForest, average_path_length
from tradepulse.errors import InvalidArgument


def c(m: int) -> float:
    """Average path length of an unsuccessful BST search among m points (Liu et al. 2008, eq. 1)."""
    if m <= 1:
        return 0.0
    if m == 2:
        return 1.0
    return 2 * (math.log(m - 1) + np.euler_gamma) - 2 * (m - 1) / m


def is_leaf(forest: IsolationForest, node: int) -> bool:
    return forest.children[2 * node] == node and forest.children[2 * node + 1] == node


def walk(forest: IsolationForest, root: int, row: np.ndarray) -> tuple[int, int]:
    """(leaf, depth) that `row` (float32 values) reaches from `root`."""
    node, depth = root, 0
    while not is_leaf(forest, node):
        node = forest.children[2 * node + int(row[forest.feature[node]] > forest.threshold[node])]
        depth += 1
    return node, depth


def reference_scores(forest: IsolationForest, x: np.ndarray) -> np.ndarray:
    """s(x) = −2^(−E[h(x)] / c(ψ)), h = depth of the leaf reached + c(rows the leaf held), walking each
    tree row by row."""
    x32 = x.astype(np.float32)
    out = []
    for row in x32:
        total = sum(forest.leaf_value[walk(forest, int(root), row)[0]] for root in forest.roots)
        out.append(-(2.0 ** (-total / forest.denominator)))
    return np.array(out)


def check_subtree(
    forest: IsolationForest,
    node: int,
    rows: np.ndarray,
    depth: int,
    rows_at: dict[int, list[np.ndarray]],
    depth_of: dict[int, int],
) -> None:
    """`node` holds `rows` (float32) at `depth`: it is a leaf only where growth must stop, with the value
    depth + c(rows), or a split inside its rows' range with both sides non-empty (then its children
    are checked with their rows). Records each node's rows and depth."""
    rows_at[node], depth_of[node] = list(rows), depth
    if is_leaf(forest, node):
        equal = bool((rows == rows[0]).all())
        assert depth == forest.depth or len(rows) == 1 or equal
        assert forest.leaf_value[node] == pytest.approx(depth + c(len(rows)), rel=1e-12)
        return
    f, cut = forest.feature[node], forest.threshold[node]
    column = rows[:, f].astype(np.float64)
    assert column.min() <= cut < column.max()
    left, right = rows[column <= cut], rows[column > cut]
    assert len(left) and len(right)
    check_subtree(forest, int(forest.children[2 * node]), left, depth + 1, rows_at, depth_of)
    check_subtree(forest, int(forest.children[2 * node + 1]), right, depth + 1, rows_at, depth_of)


@pytest.mark.parametrize(("n", "n_trees", "max_samples"), [(500, 20, 256), (40, 10, 256), (3000, 5, 64)])
def test_every_tree_is_what_the_definition_grows(n: int, n_trees: int, max_samples: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 4))
    x[:, 3] = np.round(x[:, 3])  # ties: splits must still leave both sides non-empty
    seed = 11
    forest = IsolationForest.fit(x, n_trees=n_trees, seed=seed, max_samples=max_samples)
    psi = min(max_samples, n)
    max_depth = math.ceil(math.log2(psi))
    assert forest.depth == max_depth
    draws = np.random.default_rng(seed)
    values = x.astype(np.float32)
    for root in forest.roots:
        sample = values[draws.choice(n, psi, replace=False)]
        rows_at: dict[int, list[np.ndarray]] = {}
        depth_of: dict[int, int] = {}
        check_subtree(forest, int(root), sample, 0, rows_at, depth_of)
        # Routing each subsample row alone reaches the leaf that holds it.
        for row in sample:
            leaf, depth = walk(forest, int(root), row)
            assert depth == depth_of[leaf]
            assert any((held == row).all() for held in rows_at[leaf])


@pytest.mark.parametrize("rows", [1, 7, IsolationForest.CHUNK_ROWS, IsolationForest.CHUNK_ROWS + 1, 1500])
def test_scores_are_the_definition(rows: int) -> None:
    """Every chunking of the vectorised walk gives the row-by-row definition's scores."""
    rng = np.random.default_rng(rows)
    forest = IsolationForest.fit(rng.standard_normal((800, 6)), n_trees=15, seed=3)
    x = rng.standard_normal((rows, 6)) * 3
    np.testing.assert_allclose(forest.score_samples(x), reference_scores(forest, x), rtol=1e-12, atol=0)


def test_the_same_rows_and_seed_give_the_same_forest_in_another_process() -> None:
    """A refit from a checkpoint (in a restarted runner's worker) must rebuild the same model."""
    x = np.random.default_rng(0).standard_normal((700, 6))
    forest = IsolationForest.fit(x, n_trees=30, seed=7)
    code = (
        "import pickle, sys, numpy as np\n"
        "from tradepulse.core.iforest import IsolationForest\n"
        "x = np.random.default_rng(0).standard_normal((700, 6))\n"
        "sys.stdout.buffer.write(pickle.dumps(IsolationForest.fit(x, n_trees=30, seed=7)))\n"
    )
    other = pickle.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    for name in ("children", "feature", "threshold", "leaf_value", "roots"):
        assert np.array_equal(getattr(forest, name), getattr(other, name))
    reseeded = IsolationForest.fit(x, n_trees=30, seed=8)
    assert not np.array_equal(forest.threshold, reseeded.threshold[: len(forest.threshold)])


def test_isolated_rows_score_lower_and_the_offset_is_the_contamination_quantile() -> None:
    rng = np.random.default_rng(5)
    train = rng.standard_normal((2000, 6))
    forest = IsolationForest.fit(train, n_trees=100, seed=1)
    scores = forest.score_samples(train)
    assert ((scores > -1) & (scores < 0)).all()
    far = forest.score_samples(np.full((1, 6), 8.0))[0]
    assert far < scores.min()
    offset = forest.offset(train, 0.01)
    assert offset == np.percentile(scores, 1.0)
    assert 19 <= (scores < offset).sum() <= 21
    with pytest.raises(InvalidArgument):
        forest.offset(train, 0.0)


def test_scores_are_on_scikit_learns_scale() -> None:
    """Other random trees, the same algorithm: scikit-learn's IsolationForest on the same rows gives
    scores that agree closely in level, spread and rank, and a threshold at the same quantile."""
    from sklearn.ensemble import IsolationForest as SklearnForest

    rng = np.random.default_rng(2)
    train = rng.standard_normal((5000, 6)) * [1, 2, 0.5, 1, 3, 1]
    test = np.vstack([rng.standard_normal((2000, 6)), rng.standard_normal((50, 6)) * 6])
    ours = IsolationForest.fit(train, n_trees=100, seed=4)
    theirs = SklearnForest(n_estimators=100, contamination=0.01, random_state=4).fit(train)
    a, b = ours.score_samples(test), theirs.score_samples(test)
    assert abs(a.mean() - b.mean()) < 0.01
    assert abs(a.std() - b.std()) < 0.1 * b.std()
    assert np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1] > 0.9
    assert abs(ours.offset(train, 0.01) - theirs.offset_) < 0.02


def test_constant_and_tiny_training_sets() -> None:
    same = np.ones((50, 3))
    forest = IsolationForest.fit(same, n_trees=4, seed=0)
    assert all(is_leaf(forest, int(r)) for r in forest.roots)  # nothing to split on
    assert forest.score_samples(same) == pytest.approx([-0.5] * 50, rel=1e-12)  # every h = c(ψ)
    two = IsolationForest.fit(np.array([[0.0], [1.0]]), n_trees=3, seed=0)
    assert two.depth == 1 and two.score_samples(np.array([[0.0]]))[0] == pytest.approx(-0.5)
    for bad in (np.zeros((1, 2)), np.zeros((0, 2)), np.zeros(5)):
        with pytest.raises(InvalidArgument):
            IsolationForest.fit(bad)
    with pytest.raises(InvalidArgument):
        forest.score_samples(np.zeros((2, 4)))


def test_average_path_length() -> None:
    assert average_path_length(np.array([0, 1, 2, 3, 256])).tolist() == pytest.approx(
        [0.0, 0.0, 1.0, c(3), c(256)], rel=1e-15
    )


def test_the_runner_never_imports_scikit_learn() -> None:
    """The runner process holds the models as numpy arrays: importing it (and unpickling a model, as it
    does the refit worker's) loads neither scikit-learn nor SciPy (~90 MiB of it, docs/benchmarks.md)."""
    code = (
        "import pickle, numpy as np\n"
        "import tradepulse.bus.runner, tradepulse.bus.pipeline, tradepulse.cli.main\n"
        "from tradepulse.core.anomaly import AnomalyConfig, timed_fit\n"
        "rng = np.random.default_rng(0)\n"
        "model, _ = timed_fit(AnomalyConfig().fit_params, 1, {'X': rng.standard_normal((400, 6))})\n"
        "pickle.loads(pickle.dumps(model))\n"
    )
    assert modules_loaded_by(code, ("sklearn", "scipy")) == []
