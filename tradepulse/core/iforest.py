"""Isolation Forest (Liu, Ting & Zhou, ICDM 2008), fitted and scored with numpy alone.

Why not scikit-learn's: the runner scores every warm trade and a worker process fits the models. With
scikit-learn (and SciPy, which it loads) the runner's process held 89 MiB of imports it used for
nothing but unpickling the worker's forests, and the worker ~230 MiB (docs/benchmarks.md, session 15).
This module is the algorithm and nothing else; both processes now carry numpy only for it.

The algorithm, as the paper and scikit-learn's `IsolationForest` (`max_features=1.0`,
`bootstrap=False`) define it:

* Each of `n_trees` trees is grown on its own subsample of ψ = min(`max_samples`, n) training rows,
  drawn without replacement. A node holding more than one row is split on a feature picked at random
  among those whose values in the node are not all equal, at a threshold drawn uniformly in
  [min, max) of that feature's values in the node; a row goes left if its value is ≤ the threshold
  (so neither side is empty). A node is a leaf at depth ⌈log2 ψ⌉, or when it holds one row, or rows
  that are equal in every feature.
* A row's path length in a tree is the depth of the leaf it reaches plus c(m), m the number of
  training rows that leaf held: c(m) = 2·H(m − 1) − 2·(m − 1)/m is the average path length of an
  unsuccessful binary-search-tree search (H the harmonic number, ≈ ln + Euler's constant), the
  expected depth the unbuilt subtree would have added.
* score(x) = −2^(−E[h(x)] / c(ψ)), E over the trees: in [−1, 0), lower = more anomalous (scikit-learn's
  `score_samples` sign). `offset(contamination)` is that quantile of the training rows' scores
  (`np.percentile`, as scikit-learn's `offset_`): a row scoring below it is flagged.

Values are compared as float32 (the training rows are rounded to float32 before the fit, and scored
rows likewise), as scikit-learn's trees do; thresholds are float64.

Deterministic: the forest is a function of the training rows and the seed alone (one
`numpy.random.Generator` draws the subsamples, then the splits level by level), so a refit from a
checkpoint's rows gives the same forest in any process.

The trees are grown all at once, level by level: each level's nodes are contiguous segments of one
array of (tree, row) memberships, so a level costs a few vectorised passes over trees × ψ entries
rather than a Python call per node. Scoring walks every tree at once over flattened nodes, in chunks
of `CHUNK_ROWS` rows (the working set of n × trees node indices stays in the CPU cache).
"""

from __future__ import annotations

import math

import numpy as np

from tradepulse.errors import InvalidArgument

_EULER_GAMMA = 0.5772156649015329


def average_path_length(m: np.ndarray) -> np.ndarray:
    """c(m) per element: 0 for m ≤ 1, 1 for m = 2, else 2·(ln(m − 1) + γ) − 2·(m − 1)/m."""
    m = np.asarray(m, dtype=np.float64)
    out = np.zeros(m.shape)
    out[m == 2] = 1.0
    big = m > 2
    out[big] = 2.0 * (np.log(m[big] - 1.0) + _EULER_GAMMA) - 2.0 * (m[big] - 1.0) / m[big]
    return out


class IsolationForest:
    """A fitted forest as flat node arrays (see the module docstring); picklable, numpy only.

    Node i: `feature[i]`, `threshold[i]`; its children are `children[2i]` (value ≤ threshold) and
    `children[2i + 1]`. A leaf is its own child on both sides with an infinite threshold, so every row
    can take the same number of steps; `leaf_value[i]` is the leaf's depth + c(rows it held)."""

    CHUNK_ROWS = 512

    def __init__(
        self,
        children: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        leaf_value: np.ndarray,
        roots: np.ndarray,
        depth: int,
        subsample: int,
        n_features: int,
    ) -> None:
        self.children = children
        self.feature = feature
        self.threshold = threshold
        self.leaf_value = leaf_value
        self.roots = roots
        self.depth = depth
        self.n_features = n_features
        self.denominator = len(roots) * float(average_path_length(np.array([subsample]))[0])

    @classmethod
    def fit(
        cls, x: np.ndarray, *, n_trees: int = 100, seed: int = 0, max_samples: int = 256
    ) -> IsolationForest:
        """The forest of `n_trees` trees over the rows of `x` (n × features, finite), drawn from `seed`."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2 or n_trees < 1 or max_samples < 2:
            raise InvalidArgument("need a 2-D training matrix of ≥ 2 rows, n_trees ≥ 1 and max_samples ≥ 2")
        values = x.astype(np.float32).astype(np.float64)  # compared as float32, like the scored rows
        n, n_features = values.shape
        psi = min(max_samples, n)
        max_depth = math.ceil(math.log2(psi))
        rng = np.random.default_rng(seed)
        # Which training row each (tree, slot) holds, grouped by node: tree t's root is node t.
        rows = np.concatenate([rng.choice(n, psi, replace=False) for _ in range(n_trees)])
        capacity = n_trees * (2 * psi - 1)
        children = np.repeat(np.arange(capacity, dtype=np.int64), 2)  # every node a leaf until it is split
        feature = np.zeros(capacity, dtype=np.int64)
        threshold = np.full(capacity, np.inf)
        leaf_value = np.zeros(capacity)
        segment_node = np.arange(n_trees, dtype=np.int64)  # the node of each segment of `rows`
        counts = np.full(n_trees, psi, dtype=np.int64)
        next_node = n_trees
        for level in range(max_depth + 1):
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            node_values = values[rows]
            low = np.minimum.reduceat(node_values, starts, axis=0)
            high = np.maximum.reduceat(node_values, starts, axis=0)
            varying = high > low
            n_varying = varying.sum(axis=1)
            split = (counts > 1) & (n_varying > 0) & (level < max_depth)
            leaves = ~split
            leaf_value[segment_node[leaves]] = level + average_path_length(counts[leaves])
            if not split.any():
                break
            s = np.flatnonzero(split)
            # The k-th varying feature of each split node, k uniform in [0, n_varying).
            k = (rng.random(len(s)) * n_varying[s]).astype(np.int64)
            chosen = np.argmax(np.cumsum(varying[s], axis=1) > k[:, None], axis=1)
            lo, hi = low[s, chosen], high[s, chosen]
            cut = lo + (hi - lo) * rng.random(len(s))
            cut = np.where(cut < hi, cut, lo)  # rounding can reach `hi`: `lo` still splits the node
            nodes = segment_node[s]
            feature[nodes], threshold[nodes] = chosen, cut
            first_child = next_node + 2 * np.arange(len(s), dtype=np.int64)
            children[2 * nodes], children[2 * nodes + 1] = first_child, first_child + 1
            next_node += 2 * len(s)
            # The memberships of the split nodes, each moved to its child, grouped by child.
            slot_of_split = np.full(len(counts), -1, dtype=np.int64)
            slot_of_split[s] = np.arange(len(s))
            slot = np.repeat(slot_of_split, counts)  # per membership: its node's index among the split
            keep = slot >= 0
            slot, kept_rows = slot[keep], rows[keep]
            right = values[kept_rows, chosen[slot]] > cut[slot]
            child = first_child[slot] + right
            order = np.argsort(child, kind="stable")
            rows = kept_rows[order]
            segment_node, counts = np.unique(child[order], return_counts=True)
        return cls(
            children=children[: 2 * next_node].astype(np.int32),
            feature=feature[:next_node].astype(np.int32),
            threshold=threshold[:next_node],
            leaf_value=leaf_value[:next_node],
            roots=np.arange(n_trees, dtype=np.int32),
            depth=max_depth,
            subsample=psi,
            n_features=n_features,
        )

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """−2^(−mean path length / c(ψ)) per row of `x` (n × features): lower = more anomalous."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if x32.ndim != 2 or x32.shape[1] != self.n_features:
            raise InvalidArgument(f"expected rows of {self.n_features} features, got shape {x32.shape}")
        out = np.empty(len(x32))
        trees = len(self.roots)
        for start in range(0, len(x32), self.CHUNK_ROWS):
            chunk = x32[start : start + self.CHUNK_ROWS]
            n = len(chunk)
            node = np.tile(self.roots, n)
            row_base = np.repeat(np.arange(n, dtype=np.int32) * np.int32(self.n_features), trees)
            flat = chunk.ravel()
            for _ in range(self.depth):
                right = flat[row_base + self.feature[node]] > self.threshold[node]
                node = self.children[2 * node + right]
            path = self.leaf_value[node].reshape(n, trees).sum(axis=1)
            out[start : start + n] = -(2.0 ** (-path / self.denominator))
        return out

    def offset(self, x: np.ndarray, contamination: float) -> float:
        """The score below which a row is flagged: the `contamination` quantile of the scores of `x`
        (the training rows)."""
        if not 0 < contamination <= 0.5:
            raise InvalidArgument("contamination must be in (0, 0.5]")
        return float(np.percentile(self.score_samples(x), 100.0 * contamination))
