"""Benchmark of temperature fits on trained models' saved logits. Prints one JSON document.

    .venv/bin/python bench/calibration_bench.py DIR [DIR ...]

DIR: folders written by ``bench/train_quality_bench.py --save-logits DIR`` (one ARCH-sSEED.npz per
trained model, with its validation and check logits and labels; the runs need ``--check-images``).
For every model, T is fitted on its validation images by each method and judged by the ECE on its
check images: no calibration (T = 1); the likelihood alone (the baseline, Guo et al.'s fit); the
product's fit with the prior on log T at the standard deviations compared (``--prior-scales``);
the likelihood averaged over bootstrap resamplings of the validation images; and the T the check
images choose for themselves (the best one temperature can do). The README's table "Calibration
from few validation images" is this benchmark's summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semspark.train.evaluation import expected_calibration_error, fit_temperature, softmax  # noqa: E402


def bootstrap_temperature(logits, truth, rounds: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n = len(truth)
    picks = (rng.integers(0, n, n) for _ in range(rounds))
    return float(np.exp(np.mean([np.log(fit_temperature(logits[i], truth[i], prior_scale=None)) for i in picks])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--prior-scales", default="0.5,0.75,1.0")
    args = parser.parse_args()
    scales = [float(s) for s in args.prior_scales.split(",")]
    methods = {"uncalibrated": lambda v, t: 1.0,
               "likelihood_only": lambda v, t: fit_temperature(v, t, prior_scale=None),
               **{f"prior_{s}": (lambda v, t, s=s: fit_temperature(v, t, prior_scale=s)) for s in scales},
               "likelihood_bootstrap_mean": bootstrap_temperature}
    models = []
    for folder in args.folders:
        for path in sorted(folder.glob("*.npz")):
            saved = np.load(path)
            if "check" not in saved:
                raise SystemExit(f"{path} has no check logits: rerun train_quality_bench.py with --check-images")
            v, vt, c, ct = saved["validation"], saved["validation_truth"], saved["check"], saved["check_truth"]
            row = {"model": f"{folder.name}/{path.stem}", "validation_images": int(len(vt)),
                   "validation_accuracy": round(float(np.mean(v.argmax(1) == vt)), 4),
                   "test_accuracy": round(float(np.mean(saved["test"].argmax(1) == saved["test_truth"])), 4),
                   "check_accuracy": round(float(np.mean(c.argmax(1) == ct)), 4), "temperature": {}, "check_ece": {}}
            for name, fit in {**methods, "check_own": lambda v_, t_: fit_temperature(c, ct, prior_scale=None)}.items():
                t = fit(v, vt)
                row["temperature"][name] = round(t, 3)
                row["check_ece"][name] = round(expected_calibration_error(softmax(c, t), ct), 4)
            models.append(row)
    if not models:
        raise SystemExit("no ARCH-sSEED.npz in the folders given")
    summary = {}
    for name in models[0]["check_ece"]:
        values = [m["check_ece"][name] for m in models]
        summary[name] = {"mean_check_ece": round(float(np.mean(values)), 4), "largest": max(values),
                         "models_over_0.03": sum(v > 0.03 for v in values)}
    print(json.dumps({"benchmark": "calibration", "models": len(models), "summary": summary, "per_model": models},
                     indent=2))


if __name__ == "__main__":
    main()
