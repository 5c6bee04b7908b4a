"""Benchmark of the analysis stage's numerical work at the paper's size. Prints one JSON document.

    .venv/bin/python bench/analyze_bench.py [--images 52682 --labelled 7557 --features 1001]

Synthetic features shaped like the paper's 1um-2um_1001 set: ten classes, each made of planted
sub-clusters, in a 10-dimensional latent space mapped non-linearly into 1,001 features with noise;
7,557 images labelled. Runs semspark.analysis.study.run_study (2-NN with the scale analysis, the
autoencoder, Figures 4-5 statistics, single, complete, centroid, Ward and density-peaks hierarchies,
NMI at every k, AMI on a grid, both scenarios) and reports wall time, time per step and method,
peak memory of the process (ru_maxrss), and the NMI each method reaches. Targets: at most 10
minutes and 16 GB on a 2-core, 24 GB machine. The baseline for the memory figure is the
naive alternative computed, not run: a full square float64 distance matrix (N^2 x 8 bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def synthetic_features(images: int, labelled: int, features: int, classes: int = 10, sub: int = 8, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    latent_dim = 10
    class_centres = rng.normal(scale=6.0, size=(classes, latent_dim))
    sub_centres = class_centres[:, None, :] + rng.normal(scale=2.0, size=(classes, sub, latent_dim))
    weights = rng.dirichlet(np.full(classes, 5.0))
    cls = rng.choice(classes, size=images, p=weights)
    sc = rng.integers(0, sub, size=images)
    latent = sub_centres[cls, sc] + rng.normal(scale=0.7, size=(images, latent_dim))
    mixing = rng.normal(size=(latent_dim, features)) / np.sqrt(latent_dim)
    x = np.tanh(latent @ mixing / 3.0) * 4.0 + rng.normal(scale=0.3, size=(images, features))
    labels = np.array([f"class_{c}" for c in cls], dtype=object)
    unlabelled = rng.permutation(images)[labelled:]
    labels[unlabelled] = None
    return x.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=52682)
    parser.add_argument("--labelled", type=int, default=7557)
    parser.add_argument("--features", type=int, default=1001)
    parser.add_argument("--coding-dim", default="10")
    args = parser.parse_args()

    from semspark.analysis.study import run_study
    from semspark.config import AnalysisConfig

    start = time.perf_counter()
    x, labels = synthetic_features(args.images, args.labelled, args.features)
    generated = time.perf_counter() - start
    steps = []

    def progress(message: str) -> None:
        steps.append((round(time.perf_counter() - start, 1), message))
        print(f"[{steps[-1][0]:7.1f} s] {message}", file=sys.stderr, flush=True)

    study_start = time.perf_counter()
    result = run_study(x, labels, AnalysisConfig(), coding_dim=args.coding_dim, progress=progress)
    wall = time.perf_counter() - study_start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(json.dumps({
        "benchmark": "analyze", "images": args.images, "labelled": args.labelled, "features": args.features,
        "coding_dim": result.coding_dim, "wall_seconds": round(wall, 1), "target_seconds": 600,
        "peak_memory_gb": round(peak_gb, 2), "target_memory_gb": 16,
        "naive_square_distance_matrix_gb": round(args.images ** 2 * 8 / 1e9, 1),
        "generate_features_seconds": round(generated, 1),
        "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "intrinsic_dimension": {"before": round(result.id_before, 2), "after": round(result.id_after, 2)},
        "autoencoder": {"reconstruction_mse": round(result.reconstruction_mse, 4),
                        "baseline_mse": round(result.baseline_mse, 4), "epochs": result.autoencoder_epochs},
        "correlation_with_discrete_distance": {"before": round(result.correlation_before, 3),
                                               "after": round(result.correlation_after, 3)},
        "best_nmi": result.best(),
        "nmi_at_10": {m: round(float(r.nmi[list(r.ks).index(10)]), 3) for m, r in result.methods.items()
                      if r.skipped is None},
        "good_scenario_nmi_at_50": round(result.good.get(50, float("nan")), 3),
        "skipped": {m: r.skipped for m, r in result.methods.items() if r.skipped},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }, indent=2))


if __name__ == "__main__":
    main()
