"""The autoencoder of Section 3.3: a non-linear reduction of the features to a coding space.

Inputs are standardised (zero mean, unit variance per feature, so no feature dominates by its
scale); a dense encoder (input -> 256 -> 64 -> coding, ReLU, a linear code) and its mirror decoder
are trained with Adam on the mean squared reconstruction error, 10% of the rows held out for
early stopping. Seeded: the same features and seed give the same codes on the same machine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class AutoencoderResult:
    codes: np.ndarray                 # (N, coding_dim) float32
    coding_dim: int
    reconstruction_mse: float         # on standardised features, all rows
    validation_mse: float             # on the held-out rows
    baseline_mse: float               # predicting the mean (= 1 per standardised feature)
    epochs: int
    history: list[dict]


def standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


def fit_autoencoder(x: np.ndarray, coding_dim: int, seed: int = 0, epochs: int = 60, batch_size: int = 256,
                    hidden: tuple[int, ...] = (256, 64), patience: int = 5, learning_rate: float = 1e-3,
                    validation: float = 0.1) -> AutoencoderResult:
    import tensorflow as tf

    if coding_dim < 1:
        raise ValueError("the coding dimension must be at least 1")
    tf.keras.utils.set_random_seed(seed)
    data = standardise(x)
    n, d = data.shape
    hidden = tuple(min(h, max(d, coding_dim)) for h in hidden)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    held = order[: max(1, int(n * validation))] if n >= 20 else order[:0]
    train = np.setdiff1d(order, held) if len(held) else order

    inputs = tf.keras.Input((d,))
    h = inputs
    for width in hidden:
        h = tf.keras.layers.Dense(width, activation="relu")(h)
    code = tf.keras.layers.Dense(coding_dim, name="code")(h)
    h = code
    for width in reversed(hidden):
        h = tf.keras.layers.Dense(width, activation="relu")(h)
    outputs = tf.keras.layers.Dense(d)(h)
    model = tf.keras.Model(inputs, outputs)
    encoder = tf.keras.Model(inputs, code)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss="mse")
    callbacks = []
    fit_args = {}
    if len(held):
        callbacks.append(tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                          restore_best_weights=True))
        fit_args["validation_data"] = (data[held], data[held])
    fitted = model.fit(data[train], data[train], epochs=epochs, batch_size=batch_size, shuffle=True,
                       callbacks=callbacks, verbose=0, **fit_args)
    history = [{"epoch": i + 1, **{k: float(v[i]) for k, v in fitted.history.items()}}
               for i in range(len(fitted.history["loss"]))]
    reconstruction = model.predict(data, batch_size=4096, verbose=0)
    errors = ((reconstruction - data) ** 2).mean(axis=1)
    codes = encoder.predict(data, batch_size=4096, verbose=0).astype(np.float32)
    result = AutoencoderResult(
        codes=codes, coding_dim=coding_dim, reconstruction_mse=float(errors.mean()),
        validation_mse=float(errors[held].mean()) if len(held) else float(errors.mean()),
        baseline_mse=float((data ** 2).mean()), epochs=len(history), history=history)
    log.info("autoencoder %d -> %d: reconstruction MSE %.4f (mean-only baseline %.4f) after %d epochs",
             d, coding_dim, result.reconstruction_mse, result.baseline_mse, result.epochs)
    return result
