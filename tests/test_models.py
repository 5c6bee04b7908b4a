"""The paper's CNNs: every architecture in every mode trains a step; the modes freeze what they
should; initialisations really start from the weights they name."""
import numpy as np
import pytest
import tensorflow as tf

from semspark.train.models import (ARCHITECTURES, BACKBONE, MODES, ModelError, apply_mode, build_model,
                                   copy_backbone, load_backbone_weights, load_for_inference, parse_init)

SIZE = 75  # the smallest input all four accept


def batch(n=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 1)).astype("float32"), rng.integers(0, classes, n)


def weights_of(layer):
    return [w.numpy().copy() for w in layer.trainable_weights] or [w.numpy().copy() for w in layer.weights]


# Every architecture trains a step from scratch. The modes are one switch on the backbone whatever
# the architecture (apply_mode), so they are tested on one architecture written here and one from
# keras.applications; tracing the big Inceptions, ConvNeXt and EfficientNetV2 in every mode would
# cost the suite five minutes for the same switch. feature_extraction_then_fine_tuning starts as
# feature_extraction; its switch is the training job's (tests/test_train.py).
MODE_CASES = ([(arch, "scratch") for arch in ARCHITECTURES]
              + [(arch, mode) for arch in ("compact_cnn", "inception_v3")
                 for mode in ("feature_extraction", "fine_tuning")])


@pytest.mark.parametrize("arch, mode", MODE_CASES)
def test_every_architecture_trains_a_step_in_every_mode(arch, mode):
    tf.keras.utils.set_random_seed(0)
    model = build_model(arch, 3, SIZE)
    apply_mode(model, mode)
    # eagerly: one step needs no graph, and tracing the big backbones costs tens of seconds each
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy", run_eagerly=True)
    backbone = model.get_layer(BACKBONE)
    kernels = [w for w in backbone.weights if "kernel" in w.name]
    before_backbone = [w.numpy().copy() for w in kernels]
    before_head = model.get_layer("logits").kernel.numpy().copy()
    x, y = batch()
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(model.get_layer("logits").kernel.numpy(), before_head)  # the head always learns
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before_backbone, kernels)]
    if mode == "feature_extraction":
        assert not any(changed), "feature extraction must leave the backbone untouched"
        assert len(model.trainable_weights) == 2  # logits kernel and bias
    else:
        assert np.mean(changed) > 0.9, f"only {np.mean(changed):.0%} of the backbone's kernels moved"
    outputs = tf.keras.Model(model.input, [model.get_layer("embedding").output, model.get_layer("logits").output])(x)
    assert outputs[1].shape == (4, 3) and outputs[0].shape[0] == 4


def test_a_weights_file_initialises_the_backbone(tmp_path):
    tf.keras.utils.set_random_seed(1)
    source = build_model("inception_v3", 5, SIZE)
    path = str(tmp_path / "inception_v3_notop.h5")
    source.get_layer(BACKBONE).save_weights(path)  # the shape of keras.applications' ImageNet file
    tf.keras.utils.set_random_seed(2)
    target = build_model("inception_v3", 3, SIZE)
    assert load_backbone_weights(target, path) > 50
    for a, b in zip(source.get_layer(BACKBONE).weights, target.get_layer(BACKBONE).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_weights_file_of_another_architecture_is_refused(tmp_path):
    path = str(tmp_path / "alexnet.h5")
    build_model("alexnet", 3, SIZE).get_layer(BACKBONE).save_weights(path)
    with pytest.raises(ModelError):
        load_backbone_weights(build_model("inception_v3", 3, SIZE), path)
    with pytest.raises(ModelError, match="never downloads"):
        load_backbone_weights(build_model("alexnet", 3, SIZE), str(tmp_path / "missing.h5"))


def test_an_earlier_model_initialises_the_backbone():
    tf.keras.utils.set_random_seed(3)
    earlier = build_model("alexnet", 10, SIZE)
    later = build_model("alexnet", 4, SIZE)
    copy_backbone(earlier, later)
    for a, b in zip(earlier.get_layer(BACKBONE).weights, later.get_layer(BACKBONE).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert later.get_layer("logits").kernel.shape == (4096, 4)  # a new, reset classifier
    with pytest.raises(ModelError):
        copy_backbone(earlier, build_model("inception_v4", 4, SIZE))


def test_convnext_computes_what_keras_convnext_computes_with_the_same_weights(tmp_path):
    """semspark's ConvNeXt-Tiny runs Keras' 7x7 grouped convolutions as depthwise ones (four times
    faster on a CPU): a weights file of keras.applications' own ConvNeXtTiny (the layout of its
    ImageNet file) initialises it, and both give the same features; a model registered in Keras'
    layout (before the change) still loads for inference with the predictions it had."""
    size = 32
    tf.keras.utils.set_random_seed(4)
    keras_backbone = tf.keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(size, size, 3),
                                                        pooling="avg", include_preprocessing=False)
    for layer in keras_backbone.layers:
        if type(layer).__name__ == "LayerScale":   # Keras starts it at 1e-6: the blocks would not show
            layer.set_weights([np.random.default_rng(5).uniform(0.5, 1.5, layer.gamma.shape)])
    path = str(tmp_path / "convnext_tiny_notop.h5")
    keras_backbone.save_weights(path)
    model = build_model("convnext_tiny", 3, size)
    backbone = model.get_layer(BACKBONE)
    assert not [layer.name for layer in backbone.layers if isinstance(layer, tf.keras.layers.Conv2D)
                and not isinstance(layer, tf.keras.layers.DepthwiseConv2D) and layer.groups > 1]
    gammas = [layer.gamma.numpy() for layer in backbone.layers if type(layer).__name__ == "LayerScale"]
    assert len(gammas) == 18 and all(np.allclose(g, 0.1) for g in gammas)   # from random weights
    assert load_backbone_weights(model, path) > 50   # (its zero biases and unit norms were already so)
    x = np.random.default_rng(6).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    expected = keras_backbone(x, training=False).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(backbone(x, training=False).numpy(), expected, atol=1e-4, rtol=1e-4)

    registered = build_model("convnext_tiny", 3, size, keras_layout=True)
    copy_backbone(model, registered)   # (Keras' layout from semspark's: the same transposition back)
    registered.save(str(tmp_path / "model.keras"))
    images = np.random.default_rng(7).integers(0, 256, (3, size, size, 1)).astype("float32")
    loaded = load_for_inference(tmp_path / "model.keras", "convnext_tiny", 3, size)
    np.testing.assert_allclose(loaded(images, training=False).numpy(), registered(images, training=False).numpy(),
                               atol=1e-5)


def test_init_strings_and_bad_requests():
    assert str(parse_init("random")) == "random"
    assert parse_init("imagenet:/w/x.h5").value == "/w/x.h5"
    assert parse_init("model:sem/3").kind == "model"
    for bad in ("imagenet", "model:", "resnet:x", "random:x"):
        with pytest.raises(ModelError):
            parse_init(bad)
    with pytest.raises(ModelError, match="unknown architecture"):
        build_model("vgg16", 3, SIZE)
    with pytest.raises(ModelError, match="minimum"):
        build_model("alexnet", 3, 32)
    with pytest.raises(ModelError, match="unknown mode"):
        apply_mode(build_model("alexnet", 3, SIZE), "transfer")
    combined = build_model("alexnet", 3, SIZE)
    apply_mode(combined, MODES[-1])
    assert not combined.get_layer(BACKBONE).trainable  # its first phase is feature extraction


@pytest.mark.parametrize("arch", ["compact_cnn", "inception_v3"])
def test_batch_normalisation_settles_within_tens_of_steps_in_every_backbone(arch):
    """Momentum 0.9 everywhere, keras.applications' backbones included (Keras' default 0.99 needs
    hundreds of steps, more than a lab's labelled set gives in several epochs)."""
    model = build_model(arch, 3, 75)
    norms = [layer for layer in model.get_layer(BACKBONE).layers
             if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 for layer in norms)


def test_input_sizes_are_each_architectures_own():
    from semspark.train.spec import DEFAULT_INPUT_SIZE, MIN_INPUT_SIZES, input_size_for

    assert input_size_for("alexnet") == 227 and input_size_for("compact_cnn") == 64
    assert input_size_for("alexnet", 128) == 128
    assert set(DEFAULT_INPUT_SIZE) == set(MIN_INPUT_SIZES) == set(ARCHITECTURES)
    with pytest.raises(ModelError, match="minimum of 67 for alexnet"):
        build_model("alexnet", 3, 64)
    assert build_model("compact_cnn", 3, 32).output.shape[-1] == 3


def test_learning_rates_are_each_architectures_own():
    from semspark.train.spec import DEFAULT_LEARNING_RATE, learning_rate_for

    assert set(DEFAULT_LEARNING_RATE) == set(ARCHITECTURES)
    assert learning_rate_for("compact_cnn") == 2e-3
    assert learning_rate_for("alexnet") < learning_rate_for("compact_cnn")   # no batch normalisation
    assert learning_rate_for("inception_v3", "fine_tuning") == pytest.approx(learning_rate_for("inception_v3") / 10)
    assert learning_rate_for("inception_v3", "feature_extraction") == learning_rate_for("inception_v3")
    assert learning_rate_for("alexnet", "fine_tuning", 5e-4) == 5e-4                # asked for: as asked


def test_drop_path_drops_whole_images_and_keeps_the_expectation(monkeypatch):
    """Stochastic depth by hand: at rate 0.25 a quarter of the images' branches are zeroed whole, the
    rest scaled by 1 / 0.75; at inference the branch passes unchanged; ConvNeXt's blocks get rates
    rising linearly from 0 to the configured one (Huang et al. 2016; ConvNeXt's schedule)."""
    from semspark.train import models

    tf.keras.utils.set_random_seed(0)
    ones = tf.ones((4000, 2, 2, 3))
    dropped = models.DropPath(0.25)(ones, training=True).numpy().reshape(4000, -1)
    per_image = dropped[:, 0]
    assert np.all(dropped == per_image[:, None])                     # one draw per image
    assert np.allclose(np.unique(per_image), [0.0, 1 / 0.75])
    assert abs((per_image == 0).mean() - 0.25) < 0.03 and abs(dropped.mean() - 1.0) < 0.04
    assert np.array_equal(models.DropPath(0.25)(ones, training=False).numpy(), ones.numpy())

    monkeypatch.setattr(models, "CONVNEXT_DROP_PATH_RATE", 0.17)
    backbone = models.build_model("convnext_tiny", 3, 32).get_layer(models.BACKBONE)
    rates = [layer.rate for layer in backbone.layers if isinstance(layer, models.DropPath)]
    assert len(rates) == 17 and np.allclose(rates, [0.17 * i / 17 for i in range(1, 18)])   # block 0: rate 0


def test_efficientnet_stochastic_depth_follows_the_configured_rate(monkeypatch):
    """EfficientNetV2-S's block dropout at semspark's rate: Keras gives block b of its 40 (stages of
    2, 4, 4, 6, 9, 15 blocks; a stage's first block has none) the rate 0.2 x b / 40; semspark moves it
    to its own rate (0 by default: every block's rate is 0)."""
    import re

    from semspark.train import models

    def block_rates():
        backbone = models.build_model("efficientnetv2_s", 3, 32).get_layer(models.BACKBONE)
        return {layer.name: layer.rate for layer in backbone.layers
                if isinstance(layer, tf.keras.layers.Dropout) and layer.name.endswith("_drop")}

    repeats = [2, 4, 4, 6, 9, 15]
    def index(name):   # block{stage}{letter}_drop -> its position b among the 40
        stage, letter = re.fullmatch(r"block(\d)([a-z])_drop", name).groups()
        return sum(repeats[:int(stage) - 1]) + ord(letter) - ord("a")

    default = block_rates()
    assert len(default) == 40 - 6 and all(rate == 0 for rate in default.values())
    monkeypatch.setattr(models, "EFFICIENTNET_DROP_CONNECT_RATE", 0.1)
    configured = block_rates()
    assert configured.keys() == default.keys()
    assert all(abs(rate - 0.1 * index(name) / 40) < 1e-9 for name, rate in configured.items())
    assert abs(configured["block6o_drop"] - 0.1 * 39 / 40) < 1e-9
