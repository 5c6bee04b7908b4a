"""Benchmark of temperature fits on trained models' saved logits. Prints one JSON document.

    .venv/bin/python bench/calibration_bench.py DIR [DIR ...]

DIR: folders written by ``bench/train_quality_bench.py --save-logits DIR`` (one ARCH-sSEED.npz per
trained model, with its validation and check logits and labels; the runs need ``--check-images``).
For every model, T is fitted on its validation images by each method and judged by the ECE on its
check images: no calibration (T = 1); the likelihood alone (the baseline, Guo et al.'s fit); the
product's fit with the prior on log T at the standard deviations compared (``--prior-scales``);
the likelihood averaged over bootstrap resamplings of the validation images; the validation
images' Brier score instead of their likelihood (``brier``; ``brier_prior_0.5`` with the product's
prior on log T: a bounded loss, which two confident errors among a few dozen images cannot pull as
far as they pull the likelihood); the median of the product's posterior of T rather than its mode
(``posterior_median``); and the T the check
images choose for themselves (the best one temperature can do); where the runs saved them, the
product's fit on the validation images' eight quarter-turn and flip views; for the product's fit
(``fit_temperature``'s default prior) also a bootstrap 95% interval of the check ECE, and how many
validation images are wrong with a confidence over 0.95 at the check images' own T, and the 95%
interval of T the product records (``temperature_interval``) with whether it holds the check
images' own T. The README's table "Calibration from few validation images" is this benchmark's summary.

``--validation-sizes 64,128,256,512``: how many validation images the product's fit needs. Each
model's check images are split once into a judging set (``--judged-on``, 600) and a pool; a
validation set of each size is drawn from the pool (``--draws`` times), T is fitted on it with the
product's prior and judged by the ECE on the judging set. Printed per size: the mean ECE and the
share of (model, draw) pairs over 0.03, and the mean ECE above the judging set's own T's (what one
temperature can do on those images: their ECE and share over 0.03 are printed as the floor); the
same for every other fit of ``FITS_COMPARED_BY_SIZE`` on the same draws, with its mean ECE minus the
product's and the share of draws on which it did better.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semspark.train.evaluation import (expected_calibration_error, fit_temperature, softmax,  # noqa: E402
                                       temperature_interval)


def bootstrap_temperature(logits, truth, rounds: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n = len(truth)
    picks = (rng.integers(0, n, n) for _ in range(rounds))
    return float(np.exp(np.mean([np.log(fit_temperature(logits[i], truth[i], prior_scale=None)) for i in picks])))


def fit_temperature_brier(logits, truth, prior_scale: float | None = None) -> float:
    """The T in [0.05, 20] that minimises the validation images' summed Brier score (plus, with
    ``prior_scale``, the product's normal prior on log T): a bounded loss, so that one image wrong at a
    confidence near 1 weighs at most 2, where its negative log-likelihood grows without bound. Not the
    product's fit; compared with it here."""
    from scipy.optimize import minimize_scalar

    truth = np.asarray(truth, dtype=np.int64)
    onehot = np.eye(logits.shape[1])[truth]

    def cost(log_t: float) -> float:
        summed = float(np.sum((softmax(logits, float(np.exp(log_t))) - onehot) ** 2))
        return summed if prior_scale is None else summed + log_t ** 2 / (2.0 * prior_scale ** 2)

    found = minimize_scalar(cost, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


ALTERNATIVE_FITS = {   # compared with the product's fit, on each model's own validation images and on draws
    "brier": fit_temperature_brier,
    "brier_prior_0.5": lambda v, t: fit_temperature_brier(v, t, prior_scale=0.5),
    # the median of the posterior the product maximises, rather than its mode
    "posterior_median": lambda v, t: temperature_interval(v, t, level=0.0)[0],
}
FITS_COMPARED_BY_SIZE = {   # the product's fit and the alternatives the validation-size study draws for
    "product": lambda v, t: fit_temperature(v, t),
    **ALTERNATIVE_FITS,
    # Guo et al.'s fit averaged (in log T) over 50 bootstrap resamplings (200 per model: too slow per draw)
    "likelihood_bootstrap_mean": lambda v, t: bootstrap_temperature(v, t, rounds=50),
}


def ece_interval(probabilities, truth, rounds: int = 200, seed: int = 0) -> list[float]:
    """The 2.5th and 97.5th percentiles of the ECE over bootstrap resamplings of the images."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    values = [expected_calibration_error(probabilities[i], truth[i]) for i in (rng.integers(0, n, n) for _ in range(rounds))]
    return [round(float(v), 4) for v in np.quantile(values, [0.025, 0.975])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--prior-scales", default="0.5,0.75,1.0")
    parser.add_argument("--validation-sizes", default="", help="e.g. 64,128,256,512: see the module's text")
    parser.add_argument("--judged-on", type=int, default=600)
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args()
    scales = [float(s) for s in args.prior_scales.split(",")]
    methods = {"uncalibrated": lambda v, t: 1.0,
               "likelihood_only": lambda v, t: fit_temperature(v, t, prior_scale=None),
               **{f"prior_{s}": (lambda v, t, s=s: fit_temperature(v, t, prior_scale=s)) for s in scales},
               "likelihood_bootstrap_mean": bootstrap_temperature, **ALTERNATIVE_FITS}
    models, checks = [], []   # checks: each model's check logits and labels, for --validation-sizes
    for folder in args.folders:
        for path in sorted(folder.glob("*.npz")):
            saved = np.load(path)
            if "check" not in saved:
                raise SystemExit(f"{path} has no check logits: rerun train_quality_bench.py with --check-images")
            v, vt, c, ct = saved["validation"], saved["validation_truth"], saved["check"], saved["check_truth"]
            checks.append((path, c, ct))
            row = {"model": f"{folder.name}/{path.stem}", "validation_images": int(len(vt)),
                   "validation_accuracy": round(float(np.mean(v.argmax(1) == vt)), 4),
                   "test_accuracy": round(float(np.mean(saved["test"].argmax(1) == saved["test_truth"])), 4),
                   "check_accuracy": round(float(np.mean(c.argmax(1) == ct)), 4), "temperature": {}, "check_ece": {}}
            fits = {**methods, "check_own": lambda v_, t_: fit_temperature(c, ct, prior_scale=None)}
            if "validation_views" in saved:
                # the product's fit on the validation images' eight quarter-turn and flip views
                views = saved["validation_views"]
                fits["prior_0.5_on_views"] = lambda v_, t_: fit_temperature(views.reshape(-1, views.shape[-1]),
                                                                            np.tile(t_, len(views)))
            for name, fit in fits.items():
                t = fit(v, vt)
                row["temperature"][name] = round(t, 3)
                row["check_ece"][name] = round(expected_calibration_error(softmax(c, t), ct), 4)
            # validation images wrong with a confidence over 0.95 at the check images' own T (what a
            # calibrated model would say): each one pulls a fit on a few dozen images towards a higher T
            calibrated = softmax(v, row["temperature"]["check_own"])
            row["validation_errors_over_0.95"] = int(np.sum((calibrated.argmax(1) != vt) & (calibrated.max(1) > 0.95)))
            # how far the validation images pin T down (the posterior interval the product records), and
            # whether the T the check images choose for themselves lies in it
            low, high = temperature_interval(v, vt)
            row["temperature_interval_95"] = [round(low, 3), round(high, 3)]
            row["interval_covers_check_temperature"] = bool(low <= row["temperature"]["check_own"] <= high)
            # how far the product's figure could move on another 1,000 check images
            row["check_ece_product_95"] = ece_interval(softmax(c, fit_temperature(v, vt)), ct)
            models.append(row)
    if not models:
        raise SystemExit("no ARCH-sSEED.npz in the folders given")
    summary = {}
    for name in dict.fromkeys(k for m in models for k in m["check_ece"]):
        values = [m["check_ece"][name] for m in models if name in m["check_ece"]]
        summary[name] = {"models": len(values), "mean_check_ece": round(float(np.mean(values)), 4), "largest": max(values),
                         "models_over_0.03": sum(v > 0.03 for v in values)}
    summary["temperature_interval_95"] = {
        "models_whose_interval_covers_the_check_temperature": sum(m["interval_covers_check_temperature"] for m in models),
        "models": len(models),
        "median_high_over_low": round(float(np.median([m["temperature_interval_95"][1] / m["temperature_interval_95"][0]
                                                       for m in models])), 3)}
    sizes = [int(v) for v in args.validation_sizes.split(",") if v]
    by_size = validation_size_study(checks, sizes, args.judged_on, args.draws) if sizes else {}
    print(json.dumps({"benchmark": "calibration", "models": len(models), "summary": summary,
                      **({"by_validation_size": by_size} if by_size else {}), "per_model": models}, indent=2))


def validation_size_study(checks, sizes: list[int], judged_on: int, draws: int) -> dict:
    """Temperatures fitted on validation sets of each size drawn from the check images, judged on
    a fixed other part of them (see the module's text). ``checks``: (path, logits, labels) a model."""
    fits = FITS_COMPARED_BY_SIZE
    ece = {(fit, size): [] for fit in fits for size in sizes}
    excess = {(fit, size): [] for fit in fits for size in sizes}   # over the judging set's own temperature's ECE
    floor = []
    for index, (path, logits, truth) in enumerate(checks):
        if len(truth) < judged_on + max(sizes):
            raise SystemExit(f"{path}: {len(truth)} check images, fewer than --judged-on {judged_on} plus the "
                             f"largest validation size {max(sizes)}")
        rng = np.random.default_rng(index)
        order = rng.permutation(len(truth))
        judged, pool = order[:judged_on], order[judged_on:]
        judged_logits, judged_truth = logits[judged], truth[judged]
        own = fit_temperature(judged_logits, judged_truth, prior_scale=None)
        floor.append(expected_calibration_error(softmax(judged_logits, own), judged_truth))
        for size in sizes:
            for _ in range(draws):
                drawn = rng.choice(pool, size, replace=False)
                for fit_name, fit in fits.items():   # every fit on the same draw: a paired comparison
                    t = fit(logits[drawn], truth[drawn])
                    ece[fit_name, size].append(expected_calibration_error(softmax(judged_logits, t), judged_truth))
                    excess[fit_name, size].append(ece[fit_name, size][-1] - floor[-1])
    out = {"judged_on": judged_on, "draws_per_model": draws,
           "judging_sets_own_temperature": {"mean_ece": round(float(np.mean(floor)), 4),
                                            "share_over_0.03": round(float(np.mean(np.array(floor) > 0.03)), 3)}}
    for size in sizes:
        out[str(size)] = {}
        for fit_name in fits:
            values = np.array(ece[fit_name, size])
            figures = {"mean_ece": round(float(values.mean()), 4),
                       "mean_ece_over_own_temperature": round(float(np.mean(excess[fit_name, size])), 4),
                       "ece_90th_percentile": round(float(np.quantile(values, 0.9)), 4),
                       "share_over_0.03": round(float(np.mean(values > 0.03)), 3)}
            if fit_name != "product":   # paired with the product's fit on the same draws
                difference = values - np.array(ece["product", size])
                figures["mean_ece_minus_product"] = round(float(difference.mean()), 4)
                figures["share_of_draws_better_than_product"] = round(float(np.mean(difference < 0)), 3)
            out[str(size)][fit_name] = figures
    return out


if __name__ == "__main__":
    main()
