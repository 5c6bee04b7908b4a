"""What a trained model is worth on its held-out images, and how far to trust each prediction.

- ``held_out_scores``: accuracy, macro-F1, per-category precision and recall and the confusion matrix,
  each with a bootstrap 95% interval (images resampled with replacement, percentiles of the
  resampled scores): a test split of a few hundred images leaves a few points of doubt, and a
  comparison of two models should show it;
- ``fit_temperature``: temperature scaling (Guo et al. 2017), the one parameter T that makes
  softmax(logits / T) the least surprised by the validation labels, with a weak prior that T is
  near 1 (it matters only when the validation images are few or all right); it keeps every
  prediction's category and only changes its confidence;
- ``expected_calibration_error``: the gap between confidence and accuracy, averaged over 15 bins
  of confidence weighted by their images;
- ``confidence_threshold``: the lowest confidence above which the validation images reach a target
  accuracy (default 99%): predictions below it are flagged ``uncertain`` for a person to review;
- ``OutOfDistribution``: how far an image's embedding lies from the training images' (mean cosine
  distance to its nearest ones), and the distance past which an image is unlike anything the model
  was trained on (beyond what the validation images ever reach).

Definitions follow scikit-learn's (a category never predicted has precision 0, F1 0), and the tests
check them against it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
BOOTSTRAP_ROUNDS = 1000

# The standard deviation of the prior on log T (normal, centred on T = 1, the model's own
# confidence) that fit_temperature adds to the validation images' likelihood. Without it the fit
# has no finite answer when every validation image is right (T runs to the search's bound, every
# later prediction is certain and nothing is ever flagged uncertain), and with a few dozen images a
# single confident error moves T by half. Its weight is that of a few images, so a validation split
# of hundreds decides T by itself. Measured on 24 trained models (bench/train_quality_bench.py
# --save-logits: compact_cnn and AlexNet, seeds 0-5, on 300 and 640 images, so 30 and 64
# validation images), the ECE on 1,000 held-out check images after calibration: see the README,
# "Training quality", "Calibration from few validation images".
TEMPERATURE_PRIOR_SCALE = 0.5

# A temperature interval whose high end is more than this times its low end is reported as weak
# (the training summary asks for more labelled images): on logits of a known temperature the 95%
# interval's high/low is about 1.5 from 64 validation images and 1.07 from 3,000
# (tests/test_evaluation.py; a scratch run found 1.8 from 30 and 1.2 from 300), and the README's
# study of validation sizes finds the ECE after calibration still falling past 64 images.
WIDE_TEMPERATURE_INTERVAL = 1.5


def confusion_matrices(truth: np.ndarray, predicted: np.ndarray, k: int, resamples: np.ndarray | None = None):
    """(k, k) counts (true row, predicted column), or (R, k, k) for each row of ``resamples``
    (indices into the images)."""
    cells = np.asarray(truth) * k + np.asarray(predicted)
    if resamples is None:
        return np.bincount(cells, minlength=k * k).reshape(k, k)
    rounds = resamples.shape[0]
    offsets = (np.arange(rounds) * k * k)[:, None]
    return np.bincount((cells[resamples] + offsets).ravel(), minlength=rounds * k * k).reshape(rounds, k, k)


def _scores_of(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of one (k, k) or many (R, k, k) confusion matrices."""
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    true_counts = confusion.sum(axis=-1).astype(np.float64)
    predicted_counts = confusion.sum(axis=-2).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted_counts > 0, diagonal / predicted_counts, 0.0)
        recall = np.where(true_counts > 0, diagonal / true_counts, np.nan)
        f1 = np.where(precision + np.nan_to_num(recall) > 0,
                      2 * precision * recall / (precision + recall), 0.0)
        present = true_counts > 0
        macro_f1 = np.where(present, f1, 0.0).sum(axis=-1) / np.maximum(
            (present | (predicted_counts > 0)).sum(axis=-1), 1)
        accuracy = diagonal.sum(axis=-1) / np.maximum(confusion.sum(axis=(-2, -1)), 1)
        rates = confusion / np.maximum(true_counts[..., None], 1)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "precision": precision, "recall": recall,
            "confusion_rates": rates}


def held_out_scores(truth, predicted, class_names: list[str], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict:
    """Scores on the test split with bootstrap 95% intervals, ready for the model's metadata."""
    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    k = len(class_names)
    confusion = confusion_matrices(truth, predicted, k)
    point = _scores_of(confusion)
    out: dict = {"images": int(len(truth)), "bootstrap_rounds": rounds, "confusion_matrix": confusion.tolist()}
    if len(truth) == 0:
        return out
    resamples = np.random.default_rng(seed).integers(0, len(truth), (rounds, len(truth)))
    spread = _scores_of(confusion_matrices(truth, predicted, k, resamples))

    def interval(values):
        import warnings

        with warnings.catch_warnings():   # a category with no test image has no recall: NaN, said as None
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanpercentile(values, [2.5, 97.5], axis=0)
        return low, high

    for key in ("accuracy", "macro_f1"):
        low, high = interval(spread[key])
        out[key] = {"value": float(point[key]), "low": float(low), "high": float(high)}
    for key in ("precision", "recall"):
        low, high = interval(spread[key])
        out[key] = {name: {"value": _number(point[key][i]), "low": _number(low[i]), "high": _number(high[i])}
                    for i, name in enumerate(class_names)}
    low, high = interval(spread["confusion_rates"])
    out["confusion_rates"] = {"value": np.round(point["confusion_rates"], 4).tolist(),
                              "low": np.round(low, 4).tolist(), "high": np.round(high, 4).tolist()}
    return out


def _number(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(truth)), truth].mean())


def fit_temperature(logits: np.ndarray, truth, prior_scale: float | None = TEMPERATURE_PRIOR_SCALE) -> float:
    """The T in [0.05, 20] of highest posterior: the summed negative log-likelihood of
    softmax(logits / T) over the images plus (log T)^2 / (2 prior_scale^2), a normal prior on log T
    centred on 0, i.e. T = 1 (TEMPERATURE_PRIOR_SCALE). ``prior_scale=None``: the likelihood alone (Guo et
    al.'s fit), which has no finite answer when every image is right."""
    from scipy.optimize import minimize_scalar

    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) == 0:
        return 1.0
    found = minimize_scalar(lambda log_t: _posterior_cost(logits, truth, log_t, prior_scale),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def _posterior_cost(logits: np.ndarray, truth: np.ndarray, log_t: float, prior_scale: float | None) -> float:
    """-log of the posterior of log T, up to a constant: the images' summed negative log-likelihood of
    softmax(logits / T) plus the normal prior's (log T)^2 / (2 prior_scale^2) (none: ``prior_scale`` None)."""
    cost = len(truth) * negative_log_likelihood(logits, truth, float(np.exp(log_t)))
    return cost if prior_scale is None else cost + log_t ** 2 / (2.0 * prior_scale ** 2)


def temperature_interval(logits: np.ndarray, truth, prior_scale: float | None = TEMPERATURE_PRIOR_SCALE,
                         level: float = 0.95, points: int = 601) -> tuple[float, float]:
    """The central ``level`` interval of T under the posterior ``fit_temperature`` maximises (the
    validation images' likelihood of softmax(logits / T) times the normal prior on log T), read off a
    grid of ``points`` values of log T over [0.05, 20]: how far the images pin T down. A few dozen
    validation images leave T uncertain by a third either way; thousands, by a few percent."""
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) == 0:
        return 0.05, 20.0
    grid = np.linspace(np.log(0.05), np.log(20.0), points)
    cost = np.array([_posterior_cost(logits, truth, log_t, prior_scale) for log_t in grid])
    weight = np.exp(-(cost - cost.min()))   # the grid is even in log T: the posterior of log T
    cumulative = np.cumsum(weight) / weight.sum()
    tail = (1.0 - level) / 2.0
    low, high = np.interp([tail, 1.0 - tail], cumulative, grid)
    return float(np.exp(low)), float(np.exp(high))


def expected_calibration_error(probabilities: np.ndarray, truth, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (images in bin / all) x |accuracy - mean confidence|."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    # bin b holds confidences in (b / bins, (b + 1) / bins]; a confidence of 0 goes to the first
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def confidence_threshold(confidence, correct, target: float = 0.99) -> tuple[float, float]:
    """(threshold, coverage): the lowest confidence t such that the validation images with
    confidence >= t are right at least ``target`` of the time, and the share of images at or
    above it. When no t reaches the target, t is just above the highest confidence: every
    prediction is uncertain."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(confidence) == 0:
        return 1.0, 0.0
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence, sorted_correct = confidence[order], correct[order]
    accuracy_above = np.cumsum(sorted_correct) / np.arange(1, len(order) + 1)
    # only cut between distinct confidences: images of equal confidence go together
    last_of_value = np.append(sorted_confidence[1:] != sorted_confidence[:-1], True)
    good = np.flatnonzero((accuracy_above >= target) & last_of_value)
    if good.size == 0:
        return float(np.nextafter(sorted_confidence[0], np.inf)), 0.0
    cut = good[-1]
    return float(sorted_confidence[cut]), float((cut + 1) / len(order))


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


@dataclass
class OutOfDistribution:
    """Distance of an embedding to the training images' embeddings (a sample of them)."""
    reference: np.ndarray          # (n, d) unit rows of training embeddings
    neighbours: int = 5
    threshold: float = float("inf")

    def distances(self, embeddings: np.ndarray, batch: int = 512) -> np.ndarray:
        """Mean cosine distance to the ``neighbours`` nearest reference embeddings."""
        rows = _unit_rows(embeddings)
        k = min(self.neighbours, len(self.reference))
        out = np.empty(len(rows), dtype=np.float64)
        for start in range(0, len(rows), batch):
            distance = 1.0 - rows[start:start + batch] @ self.reference.T
            nearest = np.partition(distance, k - 1, axis=1)[:, :k]
            out[start:start + batch] = nearest.mean(axis=1)
        return out

    @classmethod
    def fit(cls, train_embeddings: np.ndarray, validation_embeddings: np.ndarray, neighbours: int = 5,
            max_reference: int = 1000, seed: int = 0) -> "OutOfDistribution":
        """Reference: up to ``max_reference`` training embeddings; threshold: 1.5 times the largest
        distance of a validation image (images the model was never trained on, but of its kind)."""
        rows = _unit_rows(train_embeddings)
        if len(rows) > max_reference:
            rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), max_reference, replace=False))]
        found = cls(reference=rows, neighbours=neighbours)
        if len(validation_embeddings):
            found.threshold = float(1.5 * found.distances(validation_embeddings).max())
        return found


# A colour cast under 5% of full scale is what JPEG chroma noise and a slightly tinted grey
# conversion leave on a grey image: colour starts above it, whatever the training set.
MIN_CHROMA_LIMIT = 0.05


@dataclass
class AppearanceBounds:
    """What the training images looked like, independently of the model: the most colourful and
    the least contrasted of them (ingest's ``chroma`` and ``contrast`` of sem.images).

    A model's embedding places any input somewhere among its categories, and a small model
    trained on SEM images places a blank frame or a photograph close to them (measured: nearer
    than validation images). These two bounds catch what the embedding cannot: colour where the
    training images were grey, and no contrast where they all had some. An image beyond either is
    out of distribution whatever its embedding says, with the reason in words (the inference
    job's ``ood_reason``).
    """
    training_chroma_max: float | None = None
    training_contrast_min: float | None = None

    @property
    def chroma_limit(self) -> float | None:
        """Over this: colour the training images did not have (twice their most, at least 5%)."""
        if self.training_chroma_max is None:
            return None
        return max(MIN_CHROMA_LIMIT, 2.0 * self.training_chroma_max)

    @property
    def contrast_limit(self) -> float | None:
        """Under this: flatter than half the flattest training image."""
        return None if self.training_contrast_min is None else 0.5 * self.training_contrast_min

    @classmethod
    def fit(cls, chroma, contrast) -> "AppearanceBounds":
        """From the training images' values; images ingested before these were measured (NULL)
        do not count, and with none measured the bound is not applied."""
        chroma = np.asarray([c for c in chroma if c is not None and np.isfinite(c)], dtype=np.float64)
        contrast = np.asarray([c for c in contrast if c is not None and np.isfinite(c)], dtype=np.float64)
        return cls(training_chroma_max=float(chroma.max()) if chroma.size else None,
                   training_contrast_min=float(contrast.min()) if contrast.size else None)

    def as_dict(self) -> dict:
        return {"training_chroma_max": self.training_chroma_max, "training_contrast_min": self.training_contrast_min,
                "chroma_limit": self.chroma_limit, "contrast_limit": self.contrast_limit}

    @classmethod
    def from_dict(cls, values: dict | None) -> "AppearanceBounds":
        values = values or {}
        return cls(training_chroma_max=values.get("training_chroma_max"),
                   training_contrast_min=values.get("training_contrast_min"))
