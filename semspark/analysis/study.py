"""The paper's unsupervised study (Section 3) on a feature matrix, with no Spark: what the analyze
job runs on the driver, and what bench/analyze_bench.py times.

features (N x D) -> 2-NN intrinsic dimension with the scale analysis (Figure 3) -> autoencoder
(coding dimension given or 'auto') -> 2-NN again on the codes -> distance heatmaps on a labelled
sample (Figures 4 and 5) -> five hierarchies on the codes -> NMI at every k and AMI on a grid
against the labelled images, with the good and uniform scenarios (Figure 6).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from semspark.analysis.hierarchy import METHODS, AnalysisMemoryError, cut, linkage
from semspark.analysis.intrinsic import ScalePoint, scale_analysis, two_nn
from semspark.analysis.scoring import (encode_labels, good_scenario_nmi, k_grid, nmi_along_hierarchy,
                                       uniform_scenario_nmi)
from semspark.config import AnalysisConfig

log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    method: str
    ks: np.ndarray = None                 # every k from 2 to the labelled images
    obtained: np.ndarray = None
    nmi: np.ndarray = None
    ami: dict[int, float] = field(default_factory=dict)
    cuts: dict[int, np.ndarray] = field(default_factory=dict)   # k -> cluster per image
    linkage: np.ndarray | None = None     # (N - 1) x 4: kept in the report, cut at any k by the web app
    seconds: float = 0.0
    skipped: str | None = None


@dataclass
class StudyResult:
    images: int
    labelled: int
    classes: list[str]
    input_dim: int
    coding_dim: int
    id_before: float
    id_after: float
    scale_before: list[ScalePoint]
    scale_after: list[ScalePoint]
    reconstruction_mse: float
    baseline_mse: float
    autoencoder_epochs: int
    codes: np.ndarray
    heatmap_order: np.ndarray             # indices of the sampled labelled images, sorted by label
    heatmap_labels: list[str]
    correlation_before: float
    correlation_after: float
    methods: dict[str, MethodResult]
    good: dict[int, float]
    uniform: dict[int, float]
    grid: list[int]
    seconds: dict[str, float]

    def best(self) -> dict[str, dict]:
        """Per method: the k with the highest NMI and its value."""
        out = {}
        for name, m in self.methods.items():
            if m.skipped is None and m.nmi is not None and len(m.nmi):
                i = int(np.argmax(m.nmi))
                out[name] = {"k": int(m.ks[i]), "nmi": float(m.nmi[i])}
        return out


def pairwise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    squared = (x * x).sum(1)
    return np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0))


def upper_correlation(a: np.ndarray, b: np.ndarray) -> float:
    i, j = np.triu_indices(len(a), k=1)
    return float(np.corrcoef(a[i, j], b[i, j])[0, 1])


def run_study(features: np.ndarray, labels, settings: AnalysisConfig, coding_dim: int | str | None = None,
              cluster_ks=None, progress=log.info) -> StudyResult:
    from semspark.analysis.autoencoder import fit_autoencoder

    seconds: dict[str, float] = {}
    features = np.asarray(features, dtype=np.float32)
    n, d = features.shape
    codes_of_labels, class_names = encode_labels(labels)
    labelled = np.nonzero(codes_of_labels >= 0)[0]
    if n < 10:
        raise ValueError(f"{n} images are too few to analyse (at least 10)")
    if len(class_names) < 2 or len(labelled) < 4:
        raise ValueError(f"scoring needs labelled images of at least two categories; found {len(labelled)} "
                         f"labelled images of {len(class_names)} categories")
    coding_dim = coding_dim if coding_dim is not None else settings.coding_dim

    t = time.perf_counter()
    progress(f"2-NN intrinsic dimension of {n} x {d} features")
    id_before = two_nn(features)
    scale_before = scale_analysis(features, repetitions=settings.id_repetitions, seed=settings.seed,
                                  max_points=settings.id_max_points, full=id_before)
    seconds["intrinsic_dimension_before"] = time.perf_counter() - t

    dim = max(1, int(round(id_before))) if str(coding_dim) == "auto" else int(coding_dim)
    t = time.perf_counter()
    progress(f"autoencoder {d} -> {dim}")
    ae = fit_autoencoder(features, dim, seed=settings.seed, epochs=settings.autoencoder_epochs)
    seconds["autoencoder"] = time.perf_counter() - t
    codes = ae.codes

    t = time.perf_counter()
    id_after = two_nn(codes)
    scale_after = scale_analysis(codes, repetitions=settings.id_repetitions, seed=settings.seed,
                                 max_points=settings.id_max_points, full=id_after)
    seconds["intrinsic_dimension_after"] = time.perf_counter() - t

    # Figures 4 and 5: a random labelled sample sorted by category.
    rng = np.random.default_rng(settings.seed)
    sample = rng.choice(labelled, size=min(settings.heatmap_images, len(labelled)), replace=False)
    sample = sample[np.lexsort((sample, codes_of_labels[sample]))]
    discrete = (codes_of_labels[sample][:, None] != codes_of_labels[sample][None, :]).astype(np.float64)
    correlation_before = upper_correlation(discrete, pairwise(features[sample]))
    correlation_after = upper_correlation(discrete, pairwise(codes[sample]))

    n_lab = len(labelled)
    every_k = np.arange(2, n_lab + 1)
    grid = [k for k in k_grid(n_lab) if k <= n]
    wanted_cuts = sorted(set(int(k) for k in (cluster_ks or settings.cluster_ks) if k <= n) | {settings.gallery_k})
    methods: dict[str, MethodResult] = {}
    truth = codes_of_labels[labelled]
    from sklearn.metrics import adjusted_mutual_info_score

    for method in METHODS:
        t = time.perf_counter()
        result = MethodResult(method)
        progress(f"{method} linkage of {n} points")
        try:
            z = linkage(codes, method, max_condensed_gb=settings.max_condensed_gb,
                        density_neighbours=settings.density_neighbours)
        except AnalysisMemoryError as exc:
            result.skipped = str(exc)
            log.warning("%s skipped: %s", method, exc)
            methods[method] = result
            continue
        scores = nmi_along_hierarchy(z, codes_of_labels, every_k)
        result.ks, result.obtained, result.nmi = scores.requested_k, scores.obtained_k, scores.nmi
        for k in grid:
            result.ami[k] = float(adjusted_mutual_info_score(truth, cut(z, k)[labelled]))
        result.cuts = {k: cut(z, k) for k in wanted_cuts}
        result.linkage = z.astype(np.float64)
        result.seconds = time.perf_counter() - t
        seconds[method] = result.seconds
        methods[method] = result

    t = time.perf_counter()
    class_counts = {str(class_names[c]): int(v) for c, v in enumerate(np.bincount(truth, minlength=len(class_names)))}
    good = good_scenario_nmi(class_counts, range(len(class_names), n_lab + 1))
    uniform = uniform_scenario_nmi(codes_of_labels, [k for k in grid if k > len(class_names)] or grid,
                                   seed=settings.seed, repetitions=settings.uniform_repetitions)
    seconds["scenarios"] = time.perf_counter() - t
    return StudyResult(
        images=n, labelled=n_lab, classes=[str(c) for c in class_names], input_dim=d, coding_dim=dim,
        id_before=id_before, id_after=id_after, scale_before=scale_before, scale_after=scale_after,
        reconstruction_mse=ae.reconstruction_mse, baseline_mse=ae.baseline_mse, autoencoder_epochs=ae.epochs,
        codes=codes, heatmap_order=sample, heatmap_labels=[str(class_names[c]) for c in codes_of_labels[sample]],
        correlation_before=correlation_before, correlation_after=correlation_after, methods=methods,
        good=good, uniform=uniform, grid=grid, seconds=seconds)
