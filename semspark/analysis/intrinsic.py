"""Intrinsic dimension by 2-NN (Facco, d'Errico, Rodriguez and Laio, Sci. Rep. 7, 12140, 2017).

For each point, mu = r2 / r1 (distances to its second and first nearest neighbours) follows a
Pareto law with exponent d, the intrinsic dimension: -log(1 - F(mu)) = d log(mu). The estimate is
the slope of that line through the origin, fitted on the empirical F after discarding the largest
10% of mu (the tail that the paper shows is most affected by noise and density changes).

The scale analysis of the paper's Figure 3 repeats the estimate on nested random subsets of N, N/2,
N/4, ... points: a plateau over several scales is the dimension; a drift means the estimate
depends on the scale it looks at.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def two_nn_ratios(x: np.ndarray) -> np.ndarray:
    """mu = r2/r1 for every point with r1 > 0 (exact duplicates have no ratio and are left out)."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float32 if x.shape[1] > 32 else np.float64)
    algorithm = "brute" if x.shape[1] > 32 else "auto"  # trees do not help in many dimensions
    distances, _ = NearestNeighbors(n_neighbors=3, algorithm=algorithm).fit(x).kneighbors(x)
    r1, r2 = distances[:, 1].astype(np.float64), distances[:, 2].astype(np.float64)
    keep = r1 > 0
    return r2[keep] / r1[keep]


def two_nn(x: np.ndarray, discard_fraction: float = 0.1) -> float:
    """The 2-NN intrinsic dimension of the rows of ``x``."""
    if len(x) < 3:
        raise ValueError("2-NN needs at least 3 points")
    mu = np.sort(two_nn_ratios(x))
    if len(mu) < 3:
        raise ValueError("2-NN needs at least 3 distinct points")
    n = len(mu)
    empirical = np.arange(1, n + 1) / n
    kept = slice(0, max(2, int(np.floor(n * (1 - discard_fraction)))))
    log_mu = np.log(mu[kept])
    y = -np.log1p(-empirical[kept])
    return float(np.dot(log_mu, y) / np.dot(log_mu, log_mu))


@dataclass(frozen=True)
class ScalePoint:
    points: int
    dimensions: list[float]          # one estimate per repetition

    @property
    def mean(self) -> float:
        return float(np.mean(self.dimensions))

    @property
    def std(self) -> float:
        return float(np.std(self.dimensions))


def scale_analysis(x: np.ndarray, repetitions: int = 5, min_points: int = 20, seed: int = 0,
                   max_levels: int = 12, max_points: int | None = None,
                   full: float | None = None) -> list[ScalePoint]:
    """2-NN on nested random subsets of N, N/2, N/4, ... points (Figure 3 of the paper).

    The full set has one estimate (it has no other subset of its size; ``full`` passes one already
    computed); each smaller size is drawn ``repetitions`` times. ``max_points`` caps the first
    subset size: the cost is quadratic in the points, and the plateau shows at smaller scales."""
    rng = np.random.default_rng(seed)
    n = len(x)
    out = [ScalePoint(points=n, dimensions=[full if full is not None else two_nn(x)])]
    size = n // 2 if max_points is None else min(n // 2, max_points)
    while size >= min_points and len(out) < max_levels:
        estimates = [two_nn(x[rng.choice(n, size, replace=False)]) for _ in range(repetitions)]
        out.append(ScalePoint(points=size, dimensions=estimates))
        size //= 2
    return out
