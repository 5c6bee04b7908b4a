"""The training recipe (train/recipe.py) and the augmentation, against hand-computed values.

The augmentation test is the one that would have caught the train/inference mismatch of the
first release: Keras' RandomContrast clipped to [0, 255] after the images had been rescaled to
[-1, 1], so training saw the darker half of every image as black."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from semspark.train.models import AUGMENTATION_LAYERS, build_model
from semspark.train.recipe import (DecoupledWeightDecay, Recipe, SmoothedSparseCrossentropy, class_weights,
                                   mix_batches_in_training,
                                   decayed_kernels, learning_rate_schedule, restore_optimizer_state,
                                   save_optimizer_state)


def augment(model, images):
    x = tf.constant(images, tf.float32)
    for name in AUGMENTATION_LAYERS:
        x = model.get_layer(name)(x, training=True)
    return x.numpy()


def test_augmentation_keeps_the_values_it_is_given():
    """Constant frames at every grey level come out at that level, give or take the brightness
    jitter (10% of 255): no layer may clip or shift the stored 0..255 range."""
    tf.keras.utils.set_random_seed(0)
    model = build_model("compact_cnn", 3, 32)
    levels = np.array([0, 20, 64, 100, 128, 160, 200, 235, 255], np.float32)
    frames = np.repeat(levels[:, None, None, None], 32, axis=1).repeat(32, axis=2)
    for _ in range(5):
        out = augment(model, frames)
        assert out.min() >= 0 and out.max() <= 255
        means = out.reshape(len(levels), -1).mean(axis=1)
        assert np.all(np.abs(means - levels) <= 0.1 * 255 + 1e-3), (levels, means)


def test_augmentation_keeps_the_spread_of_a_real_looking_image():
    """A ramp image's mean and spread survive augmentation (within the brightness and contrast
    jitter): what training sees is the image inference sees, moved a little."""
    tf.keras.utils.set_random_seed(1)
    model = build_model("compact_cnn", 3, 64)
    ramp = np.tile(np.linspace(10, 245, 64, dtype=np.float32), (64, 1))[None, ..., None].repeat(16, axis=0)
    out = augment(model, ramp)
    assert abs(out.mean() - ramp.mean()) <= 0.1 * 255 + 0.15 * ramp.std()
    spread = out.reshape(16, -1).std(axis=1)
    assert np.all(spread >= 0.8 * ramp.std()) and np.all(spread <= 1.2 * ramp.std()), spread


def test_augmentation_keeps_the_scale():
    """Stripes of an 8-pixel period keep that period through everything training does to an image
    before the network (the whole path from the input to the rescaling, whatever its layers): the
    size of things in pixels is physical in an SEM image. A zoom or a resized random crop (15%)
    moves the spectrum's peak off 64 / 8 = 8 cycles."""
    tf.keras.utils.set_random_seed(3)
    model = build_model("compact_cnn", 3, 64)
    before_network = tf.keras.Model(model.input, model.get_layer("to_unit_range").input)
    x = np.arange(64, dtype=np.float32)
    stripes = np.tile(128 + 100 * np.sin(2 * np.pi * x / 8), (64, 1))[None, ..., None].repeat(32, axis=0)
    out = before_network(tf.constant(stripes), training=True).numpy()[..., 0]
    for image in out:
        power = np.abs(np.fft.fft2(image - image.mean()))
        fy, fx = np.unravel_index(np.argmax(power), power.shape)
        cycles = math.hypot(min(fy, 64 - fy), min(fx, 64 - fx))
        assert cycles == pytest.approx(8.0), cycles


def test_the_shift_moves_whole_pixels_within_its_range():
    """The translation layer alone, on frames whose every pixel is distinct: each output is its
    input moved by whole pixels, at most an eighth of the side (4 of 32) each way, the pixels kept
    exactly (no interpolation), the border filled from the frame itself; at inference, nothing moves."""
    from semspark.train.models import TRANSLATION

    assert TRANSLATION == 0.125
    tf.keras.utils.set_random_seed(4)
    layer = build_model("compact_cnn", 3, 32).get_layer("translation")
    frame = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    out = layer(tf.constant(np.repeat(frame[None, ..., None], 64, axis=0)), training=True).numpy()[..., 0]
    shifts = set()
    for image in out:
        centre = image[16, 16]                      # where the pixel now at the centre came from
        dy, dx = 16 - int(centre) // 32, 16 - int(centre) % 32
        assert abs(dy) <= 4 and abs(dx) <= 4, (dy, dx)
        np.testing.assert_array_equal(image[4:28, 4:28], frame[4 - dy:28 - dy, 4 - dx:28 - dx])
        assert set(np.unique(image)) <= set(frame.ravel())
        shifts.add((dy, dx))
    assert len(shifts) > 10                          # it does move them, in many ways
    np.testing.assert_array_equal(layer(tf.constant(frame[None, ..., None]), training=False).numpy()[0, ..., 0], frame)


def test_inference_is_not_augmented():
    model = build_model("compact_cnn", 3, 32)
    image = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    a, b = model(image, training=False).numpy(), model(image, training=False).numpy()
    np.testing.assert_array_equal(a, b)


def test_batch_and_rate_for_a_small_training_set_by_hand():
    """210 training images on 2 ranks: 210 // (2 x 16) = 6 images a rank would keep 16 steps an
    epoch; at least 8 (batch normalisation): 8, and the default rate times sqrt(8 / 32) = 1/2. A
    large set keeps 32; a batch or a rate the user gives is theirs."""
    from semspark.train.spec import batch_size_for, rate_for_batch

    assert batch_size_for(0, 210, 2) == 8
    assert batch_size_for(0, 448, 1) == 28            # 448 // 16
    assert batch_size_for(0, 100_000, 4) == 32
    assert batch_size_for(12, 210, 2) == 12
    assert rate_for_batch(3e-4, 8, rate_requested=False) == pytest.approx(1.5e-4)
    assert rate_for_batch(3e-4, 32, rate_requested=False) == pytest.approx(3e-4)
    assert rate_for_batch(3e-4, 8, rate_requested=True) == pytest.approx(3e-4)


def test_learning_rate_warms_up_then_decays_to_zero():
    """Peak 1e-3, 10 warm-up steps, 110 in all: by hand, 0 -> 5e-4 -> 1e-3 linearly, then
    1e-3 * (1 + cos(pi * (s - 10) / 100)) / 2."""
    schedule = learning_rate_schedule(1e-3, "cosine", 10, 110)
    for step, expected in [(0, 0.0), (5, 5e-4), (10, 1e-3), (35, 1e-3 * (1 + math.cos(math.pi / 4)) / 2),
                           (60, 5e-4), (110, 0.0)]:
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-9), step
    constant = learning_rate_schedule(1e-3, "constant", 10, 110)
    assert float(constant(5)) == pytest.approx(5e-4) and float(constant(100)) == pytest.approx(1e-3)


def test_smoothed_loss_by_hand():
    """3 classes, smoothing 0.3: target (0.1, 0.8, 0.1) for label 1; prediction (0.2, 0.5, 0.3)."""
    loss = SmoothedSparseCrossentropy(3, 0.3)
    value = float(loss(tf.constant([1]), tf.constant([[0.2, 0.5, 0.3]])))
    expected = -(0.1 * math.log(0.2) + 0.8 * math.log(0.5) + 0.1 * math.log(0.3))
    assert value == pytest.approx(expected, rel=1e-5)


def test_balanced_class_weights_by_hand():
    """96, 32 and 3 images: n / (k * n_c) = 131 / (3 * n_c)."""
    weights = class_weights({0: 96, 1: 32, 2: 3}, Recipe())
    assert weights == pytest.approx({0: 131 / 288, 1: 131 / 96, 2: 131 / 9})
    assert class_weights({0: 96, 1: 32}, Recipe(class_weighting="none")) is None
    # a category without training images still gets a key (Keras wants one per class index)
    assert class_weights({0: 4, 1: 0, 2: 2}, Recipe()) == pytest.approx({0: 6 / 8, 1: 1.0, 2: 6 / 4})


def test_weight_decay_shrinks_kernels_only():
    """Constant rate 0.1, decay 0.5: a kernel of ones becomes 1 - 0.05 = 0.95 after one step;
    batch normalisation and biases are left alone."""
    inputs = tf.keras.layers.Input((4,))
    x = tf.keras.layers.Dense(3, kernel_initializer="ones", bias_initializer="ones")(inputs)
    x = tf.keras.layers.BatchNormalization(gamma_initializer="ones")(x)
    model = tf.keras.Model(inputs, x)
    model.compile(tf.keras.optimizers.legacy.SGD(0.1), "mse")
    assert [v.name.split("/")[-1] for v in decayed_kernels(model)] == ["kernel:0"]
    decay = DecoupledWeightDecay(0.5)
    decay.set_model(model)
    decay.on_train_begin()
    decay.on_train_batch_end(0)
    np.testing.assert_allclose(model.layers[1].kernel.numpy(), 0.95)
    np.testing.assert_allclose(model.layers[1].bias.numpy(), 1.0)
    np.testing.assert_allclose(model.layers[2].gamma.numpy(), 1.0)


def _compiled(seed):
    tf.keras.utils.set_random_seed(seed)
    model = build_model("compact_cnn", 3, 32, dropout=0.0, augment=False)   # deterministic steps
    model.compile(tf.keras.optimizers.legacy.Adam(learning_rate_schedule(1e-3, "cosine", 2, 20)),
                  SmoothedSparseCrossentropy(3))
    return model


def test_a_resumed_run_continues_the_same_optimisation(tmp_path):
    """Train 3 steps, checkpoint weights and optimizer; a new process (a new model) restored from
    them holds the same optimizer state, and its next step gives the same weights as the original's."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (8, 32, 32, 1)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    original = _compiled(0)
    original.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    original.save_weights(str(tmp_path / "last.weights.h5"))
    save_optimizer_state(original.optimizer, tmp_path / "optimizer.npz")

    resumed = _compiled(1)   # other initial weights: everything must come from the checkpoint
    resumed.load_weights(str(tmp_path / "last.weights.h5"))
    assert restore_optimizer_state(resumed, tmp_path / "optimizer.npz")
    before = [v.numpy() for v in original.optimizer.variables()]
    after = [v.numpy() for v in resumed.optimizer.variables()]
    assert int(after[0]) == 3 and len(before) == len(after) > 1
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)

    original.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    resumed.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(original.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_optimizer_state_of_another_phase_is_not_restored(tmp_path):
    model = _compiled(0)
    model.fit(np.zeros((2, 32, 32, 1), np.float32), np.array([0, 1]), verbose=0)
    save_optimizer_state(model.optimizer, tmp_path / "optimizer.npz")
    other = build_model("compact_cnn", 3, 32)
    other.get_layer("backbone").trainable = False      # feature extraction: other variables
    other.compile(tf.keras.optimizers.legacy.Adam(1e-3), SmoothedSparseCrossentropy(3))
    assert not restore_optimizer_state(other, tmp_path / "optimizer.npz")
    assert not restore_optimizer_state(other, tmp_path / "missing.npz")


def test_the_best_epoch_is_the_most_accurate_then_the_least_surprised():
    from semspark.train.rank import better_than_best

    assert better_than_best(0.5, 2.0, None)
    best = {"epoch": 5, "val_accuracy": 0.9, "val_loss": 0.8}
    assert better_than_best(0.95, 1.5, best)        # more accurate wins, whatever its loss
    assert not better_than_best(0.85, 0.1, best)    # less accurate loses, whatever its loss
    assert better_than_best(0.9, 0.6, best)         # a tie goes to the lower loss ...
    assert not better_than_best(0.9, 0.8, best)     # ... and stays with the earlier epoch when equal
    assert better_than_best(0.9, 5.0, {"epoch": 2, "val_accuracy": 0.9})  # recorded before the loss was


def test_the_registered_epoch_is_the_last_under_cosine_and_the_best_under_a_constant_rate():
    from semspark.train.job import TrainRequest

    assert TrainRequest().resolved_keep == "last"                       # default: cosine
    assert TrainRequest(schedule="constant").resolved_keep == "best"
    assert TrainRequest(keep="best").resolved_keep == "best"
    assert TrainRequest(schedule="constant", keep="last").resolved_keep == "last"
    assert TrainRequest().patience == 0                                  # no early stopping unless asked
    # so the default refits on training + validation; validation that stops or chooses leaves no refit
    assert TrainRequest().resolved_refit and TrainRequest(refit_with_validation=True).resolved_refit
    assert not any(TrainRequest(**asked).resolved_refit for asked in (
        dict(patience=5), dict(keep="best"), dict(schedule="constant"), dict(refit_with_validation=False)))
    # for the architectures measured to meet the targets refitted (README, "Refitted on training +
    # validation"); the others (EfficientNetV2-S and Inception-v4 missed it refitted) only when asked
    assert all(TrainRequest(arch=arch).resolved_refit for arch in ("compact_cnn", "alexnet", "inception_v3"))
    assert not any(TrainRequest(arch=arch).resolved_refit
                   for arch in ("efficientnetv2_s", "inception_v4", "convnext_tiny", "inception_resnet_v2"))
    assert TrainRequest(arch="efficientnetv2_s", refit_with_validation=True).resolved_refit
    # what run_training logs: said for an architecture left out by default, not when anything was asked
    note = TrainRequest(arch="inception_v4").refit_off_for_architecture
    assert "inception_v4 is not refitted" in note and "alexnet, compact_cnn, inception_v3" in note
    assert "--refit-with-validation" in note
    assert TrainRequest(arch="inception_v4", refit_with_validation=False).refit_off_for_architecture is None
    assert TrainRequest(arch="alexnet").refit_off_for_architecture is None
    # off for another reason (early stopping) is not the architecture's
    assert TrainRequest(patience=5).refit_off_for_architecture is None


def _intensity_classifier():
    """Logistic regression on an image's mean intensity: p(class 1) = sigmoid(w * mean + b)."""
    inputs = tf.keras.Input((4, 4, 1))
    logits = tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling2D()(inputs))
    return tf.keras.Model(inputs, tf.keras.layers.Softmax()(logits))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_mixup_teaches_the_share_of_each_category(alpha):
    """Two categories of flat images, intensity 0 and 1, half of each batch. Mixed with a shuffled
    copy of the batch, an image meets one of the other category half the time (then its intensity
    s, the share of category 1, is uniform on [0, 1] for alpha 1, and the loss's target for
    category 1 is s) and one of its own the other half (a pure image, a pure target). The
    logistic curve sigmoid(w (s - 0.5)) with the least expected cross-entropy over that mixture,
    found by scipy's scalar minimiser below, is the probability the model should learn at s = 0.25
    (0.145) and, by symmetry, 0.75. Without mixup the same model, trained as long, is sure of the
    nearer category there (p under 0.1 / over 0.9)."""
    from scipy.optimize import minimize_scalar

    share = np.linspace(0.0, 1.0, 20001)

    def expected_loss(w):
        p = 1.0 / (1.0 + np.exp(-w * (share - 0.5)))
        mixed = -(share * np.log(p) + (1 - share) * np.log(1 - p)).mean()
        pure = np.log1p(np.exp(-w * 0.5))
        return 0.5 * mixed + 0.5 * pure

    w = minimize_scalar(expected_loss, bounds=(0.1, 50.0), method="bounded").x
    expected_quarter = 1.0 / (1.0 + np.exp(w * 0.25))
    tf.keras.utils.set_random_seed(3)
    y = np.tile([0, 1], 64).astype("int32")
    x = np.broadcast_to(y[:, None, None, None], (128, 4, 4, 1)).astype("float32")
    model = _intensity_classifier()
    loss = SmoothedSparseCrossentropy(2, smoothing=0.0)
    model.compile(tf.keras.optimizers.legacy.Adam(0.05), loss, metrics=["accuracy"])
    mix_batches_in_training(model, loss, alpha, seed=3)
    history = model.fit(x, y, batch_size=32, epochs=150, verbose=0)
    quarter, three_quarters = model.predict(np.full((2, 4, 4, 1), [[[[0.25]]], [[[0.75]]]], "float32"), verbose=0)[:, 1]
    if alpha:
        assert abs(quarter - expected_quarter) < 0.04 and abs(three_quarters - (1 - expected_quarter)) < 0.04, \
            (quarter, three_quarters, expected_quarter)
    else:
        assert quarter < 0.1 and three_quarters > 0.9, (quarter, three_quarters)
    # the accuracy logged is against the larger share's category: every mixed image is closer to it
    assert history.history["accuracy"][-1] == 1.0
    # inference is untouched: the unmixed images are classified as they are
    assert (model.predict(x, verbose=0).argmax(1) == y).all()


def test_the_weight_average_follows_its_ramped_decay_and_swaps_back():
    """One weight, 0 when training begins, then 1 after every step; decay 0.9, ramped as
    min(0.9, (1 + t) / (10 + t)). By hand: t=1, d=2/11: 9/11 = 0.818182; t=2, d=1/4:
    0.25 * 9/11 + 0.75 = 0.954545; t=3, d=4/13: 0.986014. A swap puts the average into the model
    and the live weight into the average; a second swap restores both."""
    from semspark.train.recipe import WeightAverage

    model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    average = WeightAverage(0.9)
    average.set_model(model)
    average.on_train_begin()
    kernel = model.weights[0]
    for expected in (0.818182, 0.954545, 0.986014):
        kernel.assign([[1.0]])
        average.on_train_batch_end(0)
        assert float(average.shadow[0].numpy()[0, 0]) == pytest.approx(expected, abs=1e-6)
    average.swap()
    assert float(kernel.numpy()[0, 0]) == pytest.approx(0.986014, abs=1e-6)
    assert float(average.shadow[0].numpy()[0, 0]) == 1.0
    average.swap()
    assert float(kernel.numpy()[0, 0]) == 1.0 and float(average.shadow[0].numpy()[0, 0]) == pytest.approx(0.986014, abs=1e-6)


def test_the_optional_rotation_keeps_values_and_scale(monkeypatch):
    """models.ROTATION (off by default, a bench option): when on, a rotation layer sits among the
    augmentations; constant frames keep their grey level exactly (reflection fills the corners), no
    value leaves 0..255, stripes of an 8-pixel period keep it (the spectrum's peak 8 cycles from
    the centre, within a bin: a turned pattern falls between bins), and inference is untouched."""
    from semspark.train import models

    assert models.ROTATION == 0.0 and "rotation" not in [l.name for l in build_model("compact_cnn", 3, 32).layers]
    monkeypatch.setattr(models, "ROTATION", 0.5)
    tf.keras.utils.set_random_seed(5)
    layer = build_model("compact_cnn", 3, 64).get_layer("rotation")
    levels = np.array([0, 64, 128, 255], np.float32)
    frames = np.repeat(levels[:, None, None, None], 64, axis=1).repeat(64, axis=2)
    out = layer(tf.constant(frames), training=True).numpy()
    np.testing.assert_allclose(out.reshape(len(levels), -1).min(axis=1), levels, atol=1e-3)
    np.testing.assert_allclose(out.reshape(len(levels), -1).max(axis=1), levels, atol=1e-3)
    x = np.arange(64, dtype=np.float32)
    stripes = np.tile(128 + 100 * np.sin(2 * np.pi * x / 8), (64, 1))[None, ..., None].repeat(16, axis=0)
    turned = layer(tf.constant(stripes), training=True).numpy()[..., 0]
    assert turned.min() >= 0 and turned.max() <= 255
    angles = set()
    for image in turned:
        power = np.abs(np.fft.fft2(image - image.mean()))
        fy, fx = np.unravel_index(np.argmax(power), power.shape)
        fy, fx = min(fy, 64 - fy), min(fx, 64 - fx)
        assert math.hypot(fy, fx) == pytest.approx(8.0, abs=1.0), (fy, fx)
        angles.add((fy, fx))
    assert len(angles) > 2                            # it does turn them
    np.testing.assert_array_equal(layer(tf.constant(stripes), training=False).numpy(), stripes)
