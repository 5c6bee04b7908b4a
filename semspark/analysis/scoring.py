"""Scoring hierarchies against labels (Section 3.4 of the paper) and its two reference scenarios.

NMI is scikit-learn's normalized_mutual_info_score with arithmetic normalisation; it is computed
only on the labelled points, while the clusters are formed over all points. Along a hierarchy it is
computed for every number of clusters at once: the merges are applied in the order SciPy's
maxclust cut follows, and the mutual information is updated in O(classes) per merge (exact; a test
checks it against scikit-learn on the cut partitions). AMI, which needs the expected mutual
information and is costly at many clusters, is computed with scikit-learn on a grid of k.

Scenarios (the paper's references for Figure 6, computed on the same labels):
- good: start from the true categories; at each step split the biggest cluster evenly in two
  (ties: the first category in sorted order, sizes floor/ceil);
- uniform: k labels given uniformly at random: a random permutation of the labelled points dealt
  into k clusters of n/k (floor/ceil), so every cluster has the expected uniform size.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from semspark.analysis.hierarchy import monotone_heights


def _xlogx(v):
    v = np.asarray(v, dtype=np.float64)
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1)), 0.0)


def nmi_from_counts(contingency_sum: float, cluster_sum: float, class_entropy: float, n: int) -> float:
    """NMI (arithmetic) from sum n_ij log n_ij, sum a_i log a_i, H(classes) and n (labelled)."""
    # MI = (S1 - S2 - S3)/n + log n with S3 = sum_j b_j log b_j = n (log n - H(classes)),
    # so MI = (S1 - S2)/n + H(classes); H(clusters) = log n - S2/n.
    mi = (contingency_sum - cluster_sum) / n + class_entropy
    h_clusters = np.log(n) - cluster_sum / n
    denominator = (class_entropy + h_clusters) / 2
    if denominator <= 0:
        return 1.0
    return float(max(0.0, mi) / denominator)


@dataclass
class LevelScores:
    requested_k: np.ndarray     # the k asked for
    obtained_k: np.ndarray      # clusters the cut actually gives (fewer under inversions)
    nmi: np.ndarray


def encode_labels(labels) -> tuple[np.ndarray, np.ndarray]:
    """labels with None/'' for unlabelled -> (class index per point, -1 if unlabelled; class names)."""
    labels = np.asarray(labels, dtype=object)
    known = np.array([v is not None and v == v and v != "" for v in labels])
    names = np.array(sorted({str(v) for v in labels[known]}), dtype=object)
    codes = np.full(len(labels), -1, dtype=np.int64)
    if len(names):
        codes[known] = np.searchsorted(names, labels[known].astype(str))
    return codes, names


def nmi_along_hierarchy(z: np.ndarray, codes: np.ndarray, ks) -> LevelScores:
    """NMI against the labelled points (codes >= 0) at every requested k, SciPy maxclust semantics."""
    n = len(z) + 1
    labelled = codes >= 0
    n_lab = int(labelled.sum())
    classes = int(codes.max()) + 1
    class_counts = np.bincount(codes[labelled], minlength=classes)
    class_entropy = float(np.log(n_lab) - _xlogx(class_counts).sum() / n_lab)
    # Per cluster: counts of labelled points per class (only clusters holding labelled points).
    table: dict[int, np.ndarray] = {}
    for i in np.nonzero(labelled)[0]:
        row = np.zeros(classes, dtype=np.int64)
        row[codes[i]] = 1
        table[int(i)] = row
    s_contingency = 0.0       # sum n_ij log n_ij  (singletons: 1 log 1 = 0)
    s_clusters = 0.0          # sum a_i log a_i
    heights = monotone_heights(z)
    order = np.argsort(heights, kind="stable")
    # merges must be applied children first: a stable sort of monotone heights keeps that except
    # for equal heights, where the SciPy index order (children before parents) breaks the tie.
    ks = np.asarray(sorted(set(int(k) for k in ks)), dtype=np.int64)
    obtained = np.zeros(len(ks), dtype=np.int64)
    nmi = np.zeros(len(ks))
    # Walk from n clusters down; a cut at height t applies every merge with height <= t. For
    # requested k, maxclust picks the smallest t leaving <= k clusters, i.e. the end of a group of
    # equal heights.
    clusters = n
    remaining = {int(k): i for i, k in enumerate(ks)}
    pending_ks = sorted(remaining, reverse=True)   # largest k first: reached first when merging

    def record_levels(current: int) -> None:
        while pending_ks and pending_ks[0] >= current:
            k = pending_ks.pop(0)
            obtained[remaining[k]] = current
            nmi[remaining[k]] = nmi_from_counts(s_contingency, s_clusters, class_entropy, n_lab)

    record_levels(clusters)
    step = 0
    while step < len(order):
        h = heights[order[step]]
        while step < len(order) and heights[order[step]] == h:
            a, b = int(z[order[step], 0]), int(z[order[step], 1])
            new = n + int(order[step])
            ta, tb = table.pop(a, None), table.pop(b, None)
            if ta is not None or tb is not None:
                merged = (ta if ta is not None else 0) + (tb if tb is not None else 0)
                for old in (ta, tb):
                    if old is not None:
                        s_contingency -= float(_xlogx(old).sum())
                        s_clusters -= float(_xlogx(old.sum()))
                s_contingency += float(_xlogx(merged).sum())
                s_clusters += float(_xlogx(merged.sum()))
                table[new] = merged
            clusters -= 1
            step += 1
        record_levels(clusters)
    return LevelScores(requested_k=ks, obtained_k=obtained, nmi=nmi)


def good_scenario_sizes(class_counts: dict[str, int], k: int) -> list[tuple[str, int]]:
    """Clusters (class, size) after splitting the biggest cluster evenly until there are k."""
    heap = [(-size, name, size) for name, size in sorted(class_counts.items())]
    heapq.heapify(heap)
    if k < len(heap):
        raise ValueError(f"the good scenario starts at the {len(heap)} categories; k={k} is below")
    while len(heap) < k:
        _, name, size = heapq.heappop(heap)
        if size < 2:
            raise ValueError(f"k={k} is more than the number of labelled points")
        for part in (size - size // 2, size // 2):
            heapq.heappush(heap, (-part, name, part))
    return [(name, size) for _, name, size in heap]


def good_scenario_nmi(class_counts: dict[str, int], ks) -> dict[int, float]:
    """NMI of the good scenario at each k (from the number of categories up to the number of
    labelled points), in one pass of splits. Every cluster is pure, so MI = H(classes) and
    NMI = 2 H(classes) / (H(classes) + H(clusters))."""
    n = sum(class_counts.values())
    h_classes = float(np.log(n) - _xlogx(list(class_counts.values())).sum() / n)
    wanted = sorted(int(k) for k in ks)
    if wanted and wanted[0] < len(class_counts):
        raise ValueError(f"the good scenario starts at the {len(class_counts)} categories; k={wanted[0]} is below")
    heap = [(-size, name, size) for name, size in sorted(class_counts.items())]
    heapq.heapify(heap)
    s_clusters = float(_xlogx([size for _, _, size in heap]).sum())
    out: dict[int, float] = {}
    for k in wanted:
        while len(heap) < k:
            _, name, size = heapq.heappop(heap)
            if size < 2:
                raise ValueError(f"k={k} is more than the number of labelled points ({n})")
            s_clusters -= float(_xlogx(size))
            for part in (size - size // 2, size // 2):
                heapq.heappush(heap, (-part, name, part))
                s_clusters += float(_xlogx(part))
        h_clusters = float(np.log(n) - s_clusters / n)
        out[k] = 2 * h_classes / (h_classes + h_clusters) if h_classes + h_clusters > 0 else 1.0
    return out


def uniform_assignment(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k labels dealt uniformly at random over n points (sizes floor/ceil n/k)."""
    return np.arange(n)[rng.permutation(n)] % k


def uniform_scenario_nmi(codes: np.ndarray, ks, seed: int = 0, repetitions: int = 3) -> dict[int, float]:
    from sklearn.metrics import normalized_mutual_info_score

    truth = codes[codes >= 0]
    rng = np.random.default_rng(seed)
    return {int(k): float(np.mean([normalized_mutual_info_score(truth, uniform_assignment(len(truth), int(k), rng))
                                   for _ in range(repetitions)])) for k in ks}


def k_grid(n_labelled: int, dense_until: int = 20, points: int = 40) -> list[int]:
    """Every k from 2 to ``dense_until``, then about ``points`` log-spaced values up to n_labelled."""
    dense = list(range(2, min(dense_until, n_labelled) + 1))
    if n_labelled <= dense_until:
        return dense
    sparse = np.unique(np.round(np.geomspace(dense_until, n_labelled, points)).astype(int))
    return sorted(set(dense) | {int(v) for v in sparse})
