"""Hierarchical clusterings of the paper's Section 3.4, as SciPy linkage matrices.

- single, centroid, Ward: fastcluster.linkage_vector, memory O(N D) (Müllner, J. Stat. Softw. 53(9),
  2013): no distance matrix is ever built.
- complete: there is no memory-lean algorithm for it; fastcluster.linkage on the condensed distance
  matrix (N(N-1)/2 doubles: 11.1 GB for the paper's 52,682 images). Above the configured memory
  budget it refuses with a clear error instead of running the machine out of memory.
- density peaks (Rodriguez and Laio, Science 344, 1492, 2014), hierarchical version built here:
  every point is linked to its nearest point of higher density; removing the links of the k - 1
  points with the largest gamma = rho * delta leaves k clusters, each grown from one of the k
  strongest peaks (the decision-graph rule of the paper, applied at every k). The links are
  merged in increasing gamma order into a linkage matrix, so every k is one cut of one tree.
  rho is a k-nearest-neighbour density (1 / distance to the n-th neighbour), which needs no cut-off
  distance dc.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("single", "complete", "centroid", "ward", "density_peaks")


class AnalysisMemoryError(MemoryError):
    """A computation would need more memory than the configured budget; the message says what to do."""


def condensed_bytes(n: int) -> int:
    return n * (n - 1) // 2 * 8


def linkage(x: np.ndarray, method: str, max_condensed_gb: float = 12.0, density_neighbours: int = 20) -> np.ndarray:
    """The (N - 1) x 4 linkage matrix of ``method`` over the rows of ``x``."""
    import fastcluster

    x = np.ascontiguousarray(x, dtype=np.float64)
    if method in ("single", "centroid", "ward"):
        return fastcluster.linkage_vector(x, method=method, metric="euclidean")
    if method == "complete":
        need = condensed_bytes(len(x))
        if need > max_condensed_gb * 1e9:
            raise AnalysisMemoryError(
                f"complete linkage of {len(x)} points needs their distance matrix: {need / 1e9:.1f} GB, over "
                f"analysis.max_condensed_gb = {max_condensed_gb}; raise it if the machine has the memory, "
                "or analyse fewer images (--scale-bins, --within-category)")
        from scipy.spatial.distance import pdist

        return fastcluster.linkage(pdist(x), method="complete", preserve_input=False)
    if method == "density_peaks":
        return density_peaks_linkage(x, density_neighbours)
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def density_and_parent(x: np.ndarray, neighbours: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rho (kNN density), delta (distance to the nearest denser point) and that point's index
    (-1 for the densest point, whose delta is its largest distance to any point, by convention)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    neighbours = max(2, min(neighbours, n - 1))
    index = NearestNeighbors(n_neighbors=neighbours + 1).fit(x)
    distances, ids = index.kneighbors(x)
    radius = distances[:, -1]
    rho = 1.0 / np.maximum(radius, np.finfo(float).tiny)
    # Ties in density are broken by index, so "denser" is a strict total order.
    order = np.lexsort((-np.arange(n), rho))          # ascending: the last is the densest
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    delta = np.full(n, np.inf)
    parent = np.full(n, -1, dtype=np.int64)
    # Most points have a denser point among their neighbours; the nearest such one is the nearest
    # denser point overall (every point closer than it is among the neighbours).
    denser = rank[ids[:, 1:]] > rank[:, None]
    has = denser.any(axis=1)
    first = np.argmax(denser, axis=1)
    rows = np.nonzero(has)[0]
    parent[rows] = ids[rows, 1 + first[rows]]
    delta[rows] = distances[rows, 1 + first[rows]]
    # The local peaks: search all denser points, in blocks to bound memory.
    peaks = np.nonzero(~has)[0]
    densest = order[-1]
    for start in range(0, len(peaks), 256):
        block = peaks[start:start + 256]
        d = _block_distances(x[block], x)
        d[rank[None, :] <= rank[block, None]] = np.inf
        parent[block] = np.argmin(d, axis=1)
        delta[block] = d[np.arange(len(block)), parent[block]]
    parent[densest] = -1
    far = _block_distances(x[[densest]], x)
    delta[densest] = float(far.max())
    return rho, delta, parent


def _block_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def density_peaks_linkage(x: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """The nearest-denser-point tree as a linkage matrix: links merged in increasing gamma."""
    rho, delta, parent = density_and_parent(x, neighbours)
    gamma = rho * delta
    n = len(x)
    links = [i for i in np.argsort(gamma, kind="stable") if parent[i] >= 0]
    # Heights: the rank of each link's gamma (monotonic, so cuts are clean); the gamma values
    # themselves span many orders of magnitude.
    return _merges_to_linkage(n, [(i, int(parent[i])) for i in links], heights=np.arange(1, len(links) + 1))


def _merges_to_linkage(n: int, pairs: list[tuple[int, int]], heights) -> np.ndarray:
    """Union-find over point pairs -> SciPy linkage matrix (cluster ids n, n+1, ... as merged)."""
    leader = np.arange(n)
    cluster_of_root = np.arange(n)      # SciPy id of the cluster whose union-find root this is
    size = np.ones(n, dtype=np.int64)

    def find(i: int) -> int:
        root = i
        while leader[root] != root:
            root = leader[root]
        while leader[i] != root:
            leader[i], i = root, leader[i]
        return root

    z = np.zeros((len(pairs), 4))
    for step, ((a, b), h) in enumerate(zip(pairs, heights)):
        ra, rb = find(a), find(b)
        if ra == rb:  # pragma: no cover - a tree has no cycles
            raise ValueError("the links do not form a tree")
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        z[step] = (min(cluster_of_root[ra], cluster_of_root[rb]), max(cluster_of_root[ra], cluster_of_root[rb]),
                   float(h), size[ra] + size[rb])
        leader[rb] = ra
        size[ra] += size[rb]
        cluster_of_root[ra] = n + step
    return z


def cut(z: np.ndarray, k: int) -> np.ndarray:
    """Flat clusters 1..m (m <= k) of one hierarchy, SciPy's maxclust rule: the smallest height at
    which at most k clusters remain. With inversions (centroid linkage) m can be below k."""
    from scipy.cluster.hierarchy import fcluster

    return fcluster(z, k, criterion="maxclust")


def monotone_heights(z: np.ndarray) -> np.ndarray:
    """Each merge's height raised to the highest height below it: SciPy's maxclust cuts on these,
    so a merge hidden under an inversion happens together with the merge above it."""
    n = len(z) + 1
    out = np.empty(len(z))
    for step, (a, b, h, _) in enumerate(z):
        below = [out[int(c) - n] for c in (a, b) if c >= n]
        out[step] = max([h, *below])
    return out
