"""Scores, intervals and calibration (train/evaluation.py) against scikit-learn, scipy and cases
computed by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from semspark.train.evaluation import (OutOfDistribution, confidence_threshold, expected_calibration_error,
                                       fit_temperature, negative_log_likelihood, softmax, held_out_scores,
                                       temperature_interval, WIDE_TEMPERATURE_INTERVAL)

CLASSES = ["a", "b", "c", "d"]


def labelled(seed, n=200, k=4, right=0.7):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k - 1, n)                   # class d is never true ...
    predicted = np.where(rng.random(n) < right, truth, rng.integers(0, k, n))
    predicted[predicted == 2] = 1 if seed % 2 else 2   # ... and on odd seeds c is never predicted
    return truth, predicted


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_point_scores_are_scikit_learns(seed):
    truth, predicted = labelled(seed)
    scores = held_out_scores(truth, predicted, CLASSES, rounds=50)
    labels = list(range(4))
    assert scores["accuracy"]["value"] == pytest.approx(accuracy_score(truth, predicted))
    assert scores["macro_f1"]["value"] == pytest.approx(
        f1_score(truth, predicted, average="macro", labels=sorted(set(truth) | set(predicted)), zero_division=0))
    precision = precision_score(truth, predicted, labels=labels, average=None, zero_division=0)
    recall = recall_score(truth, predicted, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(CLASSES):
        assert scores["precision"][name]["value"] == pytest.approx(precision[i])
        if i in truth:
            assert scores["recall"][name]["value"] == pytest.approx(recall[i])
        else:
            assert scores["recall"][name]["value"] is None      # no test image of it: unknown
    assert scores["confusion_matrix"] == confusion_matrix(truth, predicted, labels=labels).tolist()


def test_bootstrap_intervals_hold_the_value_and_shrink_with_more_images():
    truth, predicted = labelled(0, n=100)
    small = held_out_scores(truth, predicted, CLASSES, rounds=500)
    big = held_out_scores(np.tile(truth, 16), np.tile(predicted, 16), CLASSES, rounds=500)
    for scores in (small, big):
        for key in ("accuracy", "macro_f1"):
            assert scores[key]["low"] <= scores[key]["value"] <= scores[key]["high"]
    width = lambda s: s["accuracy"]["high"] - s["accuracy"]["low"]  # noqa: E731
    # the binomial standard error shrinks with the square root of the images: 4 times narrower
    assert width(big) == pytest.approx(width(small) / 4, rel=0.35)
    p = small["accuracy"]["value"]
    assert width(small) == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / 100), rel=0.2)


def test_ece_by_hand():
    """Four predictions of confidence 0.9 (3 right) and two of 0.6 (both right): bins hold
    4/6 x |0.75 - 0.9| + 2/6 x |1.0 - 0.6| = 0.1 + 0.1333."""
    probabilities = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    truth = np.array([0, 0, 0, 1, 0, 0])
    assert expected_calibration_error(probabilities, truth) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)


def test_temperature_scaling_calibrates_an_over_confident_model():
    """Logits of a model right 70% of the time but sure of itself (logit gap 6): the fitted T
    lowers the validation NLL, matches scipy's own search, and brings the ECE on fresh images of the
    same kind under 0.03 from over 0.2."""
    from scipy.optimize import minimize_scalar

    def over_confident(seed, n=3000, k=5):
        rng = np.random.default_rng(seed)
        truth = rng.integers(0, k, n)
        top = np.where(rng.random(n) < 0.7, truth, (truth + rng.integers(1, k, n)) % k)
        logits = rng.normal(0, 0.5, (n, k))
        logits[np.arange(n), top] += 6.0
        return logits, truth

    logits, truth = over_confident(0)
    temperature = fit_temperature(logits, truth)
    reference = minimize_scalar(lambda t: negative_log_likelihood(logits, truth, t), bounds=(0.05, 20),
                                method="bounded").x
    assert fit_temperature(logits, truth, prior_scale=None) == pytest.approx(reference, rel=1e-3)
    # 3,000 images outweigh the prior on T: the product's fit is the likelihood's within 1%
    assert temperature == pytest.approx(reference, rel=1e-2) and temperature > 2
    fresh, fresh_truth = over_confident(1)
    before = expected_calibration_error(softmax(fresh), fresh_truth)
    after = expected_calibration_error(softmax(fresh, temperature), fresh_truth)
    assert before > 0.2 and after <= 0.03, (before, after)
    assert (softmax(fresh, temperature).argmax(1) == softmax(fresh).argmax(1)).all()   # categories kept


def _with_known_temperature(seed, n, temperature, k=10, gap=5.0):
    """Labels drawn from softmax(u) and logits temperature x u: softmax(logits / temperature) is
    exactly calibrated, so the right T is ``temperature`` (about 0.87 of the labels are the top logit)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 1, (n, k))
    u[np.arange(n), rng.integers(0, k, n)] += gap
    truth = (rng.random((n, 1)) > np.cumsum(softmax(u), axis=1)).sum(axis=1).clip(0, k - 1)
    return temperature * u, truth


def test_temperature_prior_by_hand():
    """Every validation image right: the likelihood alone falls as T falls, so its fit runs to the
    search's bound (0.05: every later prediction certain, nothing ever flagged uncertain); with the
    prior on log T (normal, centred on 0, scale 0.5) T is finite, at the minimum of n x NLL(T) +
    (log T)^2 / (2 x 0.25), here found on a grid of log T with scipy's logsumexp (not our NLL)."""
    from scipy.special import logsumexp

    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 1.0], [3.0, 1.0, 0.0]])
    truth = np.array([0, 1, 2, 0])
    assert fit_temperature(logits, truth, prior_scale=None) == pytest.approx(0.05, rel=1e-2)
    grid = np.linspace(np.log(0.05), np.log(20), 200001)
    cost = [-(logits[np.arange(4), truth] / np.exp(g) - logsumexp(logits / np.exp(g), axis=1)).sum()
            + g ** 2 / (2 * 0.5 ** 2) for g in grid[::100]]
    coarse = grid[::100][int(np.argmin(cost))]
    fine = grid[(grid > coarse - 0.01) & (grid < coarse + 0.01)]
    cost = [-(logits[np.arange(4), truth] / np.exp(g) - logsumexp(logits / np.exp(g), axis=1)).sum()
            + g ** 2 / (2 * 0.5 ** 2) for g in fine]
    expected = float(np.exp(fine[int(np.argmin(cost))]))
    found = fit_temperature(logits, truth, prior_scale=0.5)
    assert found == pytest.approx(expected, rel=1e-3) and 0.2 < found < 1.0
    assert fit_temperature(logits, truth) == found                     # 0.5 is the product's default
    assert softmax(logits, found).max(axis=1).min() < 0.99              # not everything certain


@pytest.mark.parametrize("true_temperature", [0.6, 1.5])
def test_temperature_fit_finds_a_known_temperature(true_temperature):
    """From 3,000 validation images of a model whose right temperature is known, both fits find it
    within 5%. From 30 (a small lab's validation split), over 100 draws: the likelihood alone
    scatters T more widely (log T's standard deviation) than with the prior, and the prior's fits
    stay centred near the truth (their median within 25%)."""
    logits, truth = _with_known_temperature(0, 3000, true_temperature)
    assert fit_temperature(logits, truth) == pytest.approx(true_temperature, rel=0.05)
    assert fit_temperature(logits, truth, prior_scale=None) == pytest.approx(true_temperature, rel=0.05)
    with_prior, alone = [], []
    for draw in range(100):
        logits, truth = _with_known_temperature(100 + draw, 30, true_temperature)
        with_prior.append(np.log(fit_temperature(logits, truth)))
        alone.append(np.log(fit_temperature(logits, truth, prior_scale=None)))
    assert np.std(with_prior) < 0.9 * np.std(alone), (np.std(with_prior), np.std(alone))
    assert np.exp(np.median(with_prior)) == pytest.approx(true_temperature, rel=0.25)


def test_temperature_interval_by_hand():
    """The interval is the posterior's central 95%: here integrated independently, with scipy's
    logsumexp for the cost and the trapezoid rule on a grid 40 times finer, for four images of a
    hand-made case and for a prior of scale 0.5; the fitted T lies inside it."""
    from scipy.special import logsumexp

    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 1.0], [3.0, 1.0, 0.0], [0.5, 2.0, 0.0]])
    truth = np.array([0, 1, 2, 0, 0])
    grid = np.linspace(np.log(0.05), np.log(20), 24001)
    cost = np.array([-(logits[np.arange(5), truth] / np.exp(g) - logsumexp(logits / np.exp(g), axis=1)).sum()
                     + g ** 2 / (2 * 0.5 ** 2) for g in grid])
    density = np.exp(-(cost - cost.min()))
    cumulative = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    cumulative /= cumulative[-1]
    expected = np.exp(np.interp([0.025, 0.975], cumulative, grid))
    low, high = temperature_interval(logits, truth)
    assert (low, high) == pytest.approx(tuple(expected), rel=0.02)
    assert low < fit_temperature(logits, truth) < high


@pytest.mark.parametrize("true_temperature", [0.6, 1.5])
def test_temperature_interval_holds_a_known_temperature(true_temperature):
    """Over 100 validation splits of 64 images of a model whose right T is known, the 95% interval
    holds it about 95 times (measured 95 and 95; at least 88 asked, the binomial's 3 standard
    deviations below); 3,000 images pin T down four times more tightly than 64 (high / low about
    1.07 against 1.5)."""
    held, ratios = 0, []
    for draw in range(100):
        logits, truth = _with_known_temperature(100 + draw, 64, true_temperature)
        low, high = temperature_interval(logits, truth)
        held += low <= true_temperature <= high
        ratios.append(high / low)
    assert held >= 88, held
    logits, truth = _with_known_temperature(0, 3000, true_temperature)
    low, high = temperature_interval(logits, truth)
    # (one draw need not hold the truth, 5 in 100 do not: this one's interval is 0.2% off it)
    assert low == pytest.approx(true_temperature, rel=0.05) and np.log(high / low) < np.log(np.median(ratios)) / 4
    assert np.median(ratios) > WIDE_TEMPERATURE_INTERVAL > high / low   # 64 images: reported as weak; 3,000: not


def test_confidence_threshold_by_hand():
    """Confidences 0.99 0.95 0.9 0.8 0.7 with 0.8 wrong: from 0.9 up all three are right (100%),
    from 0.8 up 3 of 4 (75%), from 0.7 up 4 of 5 (80%). A 99% target cuts at 0.9 and keeps 3 of 5
    images; a 75% target is met from 0.7 up, by all five."""
    confidence = [0.7, 0.99, 0.9, 0.8, 0.95]
    correct = [True, True, True, False, True]
    assert confidence_threshold(confidence, correct, 0.99) == (0.9, 0.6)
    assert confidence_threshold(confidence, correct, 0.75) == (0.7, 1.0)
    threshold, coverage = confidence_threshold([0.9, 0.8], [False, True], 0.99)
    assert threshold > 0.9 and coverage == 0.0     # nothing reaches 99%: everything is uncertain


def test_out_of_distribution_distance_by_hand():
    """Reference rows along x and y; an image along x is 0 away from its nearest, one along z is
    1 away (cosine distance) from everything."""
    found = OutOfDistribution(reference=np.array([[1.0, 0, 0], [0, 1.0, 0]], np.float32), neighbours=1)
    np.testing.assert_allclose(found.distances(np.array([[2.0, 0, 0], [0, 0, 3.0]])), [0.0, 1.0], atol=1e-6)
    fitted = OutOfDistribution.fit(np.eye(3)[[0, 1, 0, 1]], np.array([[1.0, 0.1, 0]]), neighbours=1)
    assert fitted.threshold == pytest.approx(1.5 * (1 - 1 / np.sqrt(1.01)), rel=1e-4)


def test_content_appearance_by_hand():
    from semspark.ingest.process import content_appearance

    stripes = np.zeros((8, 8), np.uint8)
    stripes[2:4] = stripes[6:8] = 255              # every second pair of rows white: half 0, half 255
    assert content_appearance(stripes, None) == {"chroma": 0.0, "contrast": 0.5}
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255                                # channels 255, 0, 0: the largest spread there is
    assert content_appearance(np.full((4, 4), 76, np.uint8), red) == {"chroma": 1.0, "contrast": 0.0}
    tinted = np.stack([np.full((4, 4), v, np.uint8) for v in (100, 110, 151)], axis=2)
    assert content_appearance(tinted[..., 1], tinted)["chroma"] == pytest.approx(51 / 255, abs=1e-6)


def test_real_sem_files_are_grey_and_contrasted(real_manifest):
    """Every real SEM sample, colour files and palette TIFFs included, has a grey content area
    (under the chroma limit whatever the training set) and some contrast: the appearance check
    flags none of them."""
    from semspark.config import IngestConfig
    from semspark.ingest.process import RawFile, process_files
    from semspark.train.evaluation import MIN_CHROMA_LIMIT

    from .conftest import REAL_SAMPLES

    files = [REAL_SAMPLES / row["file"] for row in real_manifest]
    outcomes = process_files([RawFile(str(p), p.read_bytes()) for p in files], IngestConfig(), store=False)
    assert all(o.ok for o in outcomes)
    assert {Path(o.path).name: o.chroma for o in outcomes if o.chroma >= MIN_CHROMA_LIMIT / 5} == {}
    assert min(o.contrast for o in outcomes) > 0.02


def test_appearance_bounds_by_hand():
    from semspark.train.evaluation import AppearanceBounds

    bounds = AppearanceBounds.fit([0.0, 0.004, None, float("nan")], [0.2, 0.06, None])
    assert bounds.training_chroma_max == 0.004 and bounds.chroma_limit == 0.05   # grey training: the floor
    assert bounds.training_contrast_min == 0.06 and bounds.contrast_limit == pytest.approx(0.03)
    colourful = AppearanceBounds.fit([0.1, 0.3], [0.1])
    assert colourful.chroma_limit == pytest.approx(0.6)                          # colour is no surprise there
    assert AppearanceBounds.from_dict(colourful.as_dict()) == colourful
    unmeasured = AppearanceBounds.fit([None], [None])                             # ingested before the columns
    assert unmeasured.chroma_limit is None and unmeasured.contrast_limit is None
