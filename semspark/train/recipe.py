"""How a model is optimised: the one recipe every architecture trains with, on one rank or many.

- learning rate: linear warm-up, then cosine decay to zero over the phase (a Keras schedule on the
  optimizer's own step counter, so a resumed run continues the same curve). Decaying to zero also
  lets batch normalisation's moving statistics settle on the final weights: with a constant rate
  they lag the weights, and inference (which uses them) sees another model than training did;
- label smoothing (the loss spreads ``label_smoothing`` of each label's mass over all classes);
- class weights: ``balanced`` weighs each class by n / (k * n_class), so a category 32 times rarer
  than the largest (as in the published SEM data set) counts as much in the loss;
- decoupled weight decay (AdamW's, Loshchilov and Hutter 2019): after each step every kernel
  shrinks by ``learning rate * weight_decay``; batch normalisation and biases are left alone;
- mixup (Zhang et al. 2018), off unless ``mixup`` > 0: each training batch is mixed with a shuffled
  copy of itself, images and losses in the same proportion (``mix_batches_in_training``);
- the optimizer's state (step counter, moments) is saved beside each checkpoint and restored on
  resume (``save_optimizer_state`` / ``restore_optimizer_state``).
- ``WeightAverage``, a moving average of the weights, is measured by bench/train_quality_bench.py
  (``--ema``) and not part of ``semspark train``: under a cosine schedule ending at zero it lands
  where the last epoch does (ConvNeXt-Tiny, README "Training quality").

Optimizers are Keras' legacy ones: Horovod 0.28's DistributedOptimizer wraps those in TF >= 2.11.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adam"             # adam | sgd (momentum 0.9)
    learning_rate: float = 2e-3         # peak rate of one rank (scaled by the number of ranks)
    schedule: str = "cosine"            # cosine (after warm-up) | constant
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4          # decoupled, per unit of learning rate
    class_weighting: str = "balanced"   # balanced | none
    mixup: float = 0.0                  # alpha of the Beta(alpha, alpha) mixing share; 0: off


def learning_rate_schedule(peak: float, schedule: str, warmup_steps: int, total_steps: int):
    """Warm-up from zero to ``peak`` over ``warmup_steps``, then cosine decay to zero at
    ``total_steps`` (or constant). Steps are the optimizer's own iterations."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    if schedule == "constant":
        if not warmup_steps:
            return peak
        return tf.keras.optimizers.schedules.CosineDecay(0.0, 1, alpha=1.0, warmup_target=peak,
                                                         warmup_steps=warmup_steps)
    decay_steps = max(1, total_steps - warmup_steps)
    if not warmup_steps:
        return tf.keras.optimizers.schedules.CosineDecay(peak, decay_steps, alpha=0.0)
    return tf.keras.optimizers.schedules.CosineDecay(0.0, decay_steps, alpha=0.0, warmup_target=peak,
                                                     warmup_steps=warmup_steps)


def make_optimizer(recipe: Recipe, learning_rate):
    if recipe.optimizer == "adam":
        return tf.keras.optimizers.legacy.Adam(learning_rate)
    return tf.keras.optimizers.legacy.SGD(learning_rate, momentum=0.9)


@tf.keras.utils.register_keras_serializable(package="semspark")
class SmoothedSparseCrossentropy(tf.keras.losses.Loss):
    """Cross-entropy against integer labels smoothed over ``classes`` (Keras 2's sparse loss has
    no label smoothing)."""

    def __init__(self, classes: int, smoothing: float = 0.1, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes, self.smoothing = int(classes), float(smoothing)

    def call(self, y_true, y_pred):
        labels = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.classes, dtype=y_pred.dtype)
        labels = labels * (1.0 - self.smoothing) + self.smoothing / self.classes
        return tf.keras.losses.categorical_crossentropy(labels, y_pred)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "smoothing": self.smoothing}


def class_weights(train_counts: dict[int, int] | None, recipe: Recipe) -> dict[int, float] | None:
    """n / (k * n_class) per class index: each class weighs the same in the loss. Keras wants a
    weight for every class index; one with no training image never occurs, its weight is 1."""
    if recipe.class_weighting != "balanced" or not train_counts:
        return None
    present = {c: n for c, n in train_counts.items() if n > 0}
    total, k = sum(present.values()), len(present)
    return {int(c): total / (k * n) if n > 0 else 1.0 for c, n in train_counts.items()}


def mix_batches_in_training(model: tf.keras.Model, loss: tf.keras.losses.Loss, alpha: float, seed: int = 0) -> None:
    """Mixup for ``model``'s fit: each training batch becomes ``share * batch + (1 - share) *
    shuffled batch`` with ``share`` drawn from Beta(alpha, alpha) and folded to at least 0.5, and
    the loss is the same mix of ``loss`` against both images' labels (class weights included), so
    integer labels, class weights and label smoothing work unchanged. The reported accuracy is
    against the larger share's label. Evaluation and inference are untouched (only ``train_step``
    is replaced, on this model object: saved models carry nothing of it).
    Why: a large network on a few hundred images memorises them; mixed images cannot be
    memorised, and the model learns to be less sure between categories."""
    if alpha <= 0:
        return
    generator = tf.random.Generator.from_seed(seed)

    def beta_share(size):
        # Beta(a, a) from two Gamma(a) draws (TensorFlow has no beta sampler)
        seeds = generator.make_seeds(2)
        g1, g2 = (tf.random.stateless_gamma([size], seeds[:, i], alpha) for i in range(2))
        share = g1 / (g1 + g2)
        return tf.maximum(share, 1.0 - share)

    def train_step(data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        share = beta_share(1)[0]
        order = tf.argsort(generator.uniform([tf.shape(x)[0]]))   # a random permutation of the batch
        mixed = share * x + (1.0 - share) * tf.gather(x, order)
        other_weight = None if sample_weight is None else tf.gather(sample_weight, order)
        with tf.GradientTape() as tape:
            y_pred = model(mixed, training=True)
            total = (share * loss(y, y_pred, sample_weight)
                     + (1.0 - share) * loss(tf.gather(y, order), y_pred, other_weight))
            if model.losses:
                total += tf.add_n(model.losses)
        model.optimizer.minimize(total, model.trainable_variables, tape=tape)
        for tracker in model.compiled_loss.metrics:   # the logged loss is the mixed one
            tracker.update_state(total)
        return model.compute_metrics(mixed, y, y_pred, sample_weight)

    model.train_step = train_step
    model.train_function = None   # made again with this step on the next fit


def decayed_kernels(model: tf.keras.Model) -> list[tf.Variable]:
    """The trainable kernels weight decay applies to: convolutions and dense layers, not batch
    normalisation, layer normalisation or biases."""
    return [v for v in model.trainable_variables
            if v.shape.rank is not None and v.shape.rank >= 2 and "kernel" in v.name]


class DecoupledWeightDecay(tf.keras.callbacks.Callback):
    """After each step, every kernel shrinks by (current learning rate) x ``decay``."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self._kernels: list[tf.Variable] = []
        self._step = None

    def on_train_begin(self, logs=None):
        self._kernels = decayed_kernels(self.model)
        optimizer = self.model.optimizer
        kernels, decay = self._kernels, self.decay

        @tf.function
        def step():
            rate = optimizer._decayed_lr(tf.float32)  # the schedule's value at the current step
            for kernel in kernels:
                kernel.assign_sub(tf.cast(rate * decay, kernel.dtype) * kernel)
        self._step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.decay > 0 and self._kernels:
            self._step()


class WeightAverage(tf.keras.callbacks.Callback):
    """An exponential moving average of the model's weights (every variable, batch-norm statistics
    too), updated after each step: shadow <- d * shadow + (1 - d) * weights, with the decay ramped
    as d_t = min(d, (1 + t) / (10 + t)) so that the first steps' random weights fade at once.
    ``swap()`` exchanges the model's weights and the average (twice restores them): evaluate and
    save the average, train the live weights."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.shadow: list[tf.Variable] = []
        self.updates = None
        self._step = None
        self._swap = None

    def on_train_begin(self, logs=None):
        if self.shadow:
            return   # a second fit of the same model (a second phase) keeps averaging
        weights = self.model.weights
        self.shadow = [tf.Variable(w, trainable=False) for w in weights]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)
        shadow, updates, decay = self.shadow, self.updates, self.decay

        @tf.function
        def step():
            updates.assign_add(1)
            t = tf.cast(updates, tf.float32)
            d = tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (10.0 + t))
            for average, weight in zip(shadow, weights):
                average.assign(tf.cast(d, average.dtype) * average + tf.cast(1.0 - d, average.dtype) * weight)

        @tf.function
        def swap():
            for average, weight in zip(shadow, weights):
                live = tf.identity(weight)
                weight.assign(average)
                average.assign(live)
        self._step, self._swap = step, swap

    def on_train_batch_end(self, batch, logs=None):
        self._step()

    def swap(self) -> None:
        self._swap()


def optimizer_variables(optimizer) -> list[tf.Variable]:
    return list(optimizer.variables())


def save_optimizer_state(optimizer, path: Path) -> None:
    """The optimizer's variables (step counter first, then its slots) as an .npz, written beside
    the checkpoint and renamed into place."""
    buffer = io.BytesIO()
    np.savez(buffer, *[v.numpy() for v in optimizer_variables(optimizer)])
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(path)


def restore_optimizer_state(model: tf.keras.Model, path: Path) -> bool:
    """Give the compiled model's optimizer the saved state. Its slots are made first (Keras makes
    them lazily, on the first step). False when there is no file or it belongs to another set of
    trainable variables (a new phase): the optimizer then starts afresh."""
    if not path.exists():
        return False
    optimizer = model.optimizer
    with tf.name_scope(optimizer._name):
        with tf.init_scope():
            optimizer._create_all_weights(model.trainable_variables)
    variables = optimizer_variables(optimizer)
    with np.load(path, allow_pickle=False) as saved:
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if [a.shape for a in arrays] != [tuple(v.shape) for v in variables]:
        return False
    for variable, array in zip(variables, arrays):
        variable.assign(array)
    return True
