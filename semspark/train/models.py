"""The paper's CNNs (Section 2), their training modes and initialisations, in tf.keras (Keras 2).

Architectures:
- ``compact_cnn``: semspark's fast recipe, four blocks of 3x3 convolution, batch normalisation,
  ReLU and max pooling (32, 64, 128, 256 filters) and a global average pool: made for CPU-sized
  inputs (64 px) and small labelled sets, where it learns the categories in minutes;
- ``alexnet``: Krizhevsky, Sutskever and Hinton 2012, written here (batch normalisation in place
  of local response normalisation, as modern re-implementations do; the last convolution's map is
  averaged over its positions before the two 4096-wide dense layers, see _alexnet);
- ``inception_v3``: Szegedy et al. 2016 (CVPR), from tf.keras.applications;
- ``inception_v4``: Szegedy, Ioffe, Vanhoucke and Alemi 2017 (AAAI), "Inception-v4,
  Inception-ResNet and the Impact of Residual Connections on Learning", Figures 3 to 9, written here;
- ``inception_resnet_v2``: the same paper, from tf.keras.applications;
- ``convnext_tiny`` (Liu et al. 2022) and ``efficientnetv2_s`` (Tan and Le 2021), from
  tf.keras.applications: the modern backbones (the best published figure on the SEM data set is a
  ConvNeXt-Tiny's).

Every model takes one grayscale channel (0..255), augments it while training (flips, 90-degree
rotations, shifts, brightness and contrast: an SEM image has no up or down and no centre; nothing
that changes its scale)
*in that 0..255 range*,
then scales it to [-1, 1] (Inception's convention), replicates it to three channels, and ends with
a named ``embedding``
(the penultimate layer, e.g. Inception-v3's 2048-d average pool) and ``logits`` (one per class)
before the softmax: the inference stage reads both.

Modes (Section 2): ``scratch`` trains everything from the initialisation; ``feature_extraction``
resets the last layer and trains only it; ``fine_tuning`` resets the last layer and trains all.
Initialisations: ``random``, ``imagenet:PATH`` (a local Keras weights file: nothing is
downloaded), ``model:NAME/VERSION`` (an earlier semspark model, as the paper fine-tunes its own
from-scratch SEM checkpoint).
"""
from __future__ import annotations

import tensorflow as tf

from semspark.train.spec import (ARCHITECTURES, DEFAULT_INPUT_SIZE, MIN_INPUT_SIZE, MIN_INPUT_SIZES,  # noqa: F401
                                  MODES, ModelError, parse_init)

layers = tf.keras.layers

BACKBONE = "backbone"
BATCH_NORM_MOMENTUM = 0.9
# ConvNeXt's layer scale starts at 1e-6 in Keras (Liu et al. 2022, for ImageNet's 1.2 million
# images, where thousands of steps grow it): on a lab's few hundred labelled images a training of
# a few hundred steps leaves the residual blocks nearly switched off and the network little more
# than its stem and downsampling layers. From random weights it starts at this value instead
# (ImageNet or semspark weights bring their own). Measured (bench/train_quality_bench.py, 64 px,
# 12 epochs, seed 0, test accuracy at 1e-6 against 0.1): 0.30 against 0.41 at a peak rate of 1e-4,
# 0.34 against 0.46 at 5e-4; at 2e-3 both diverge (0.37 against 0.21; 1.0: 0.18).
CONVNEXT_LAYER_SCALE_INIT = 0.1
# Stochastic depth (Huang et al. 2016): in training, each residual block of ConvNeXt is skipped
# for a whole image with a probability rising linearly from 0 at the first block to this rate at
# the last (ConvNeXt's own schedule; 0.1 for Tiny on ImageNet-1k). Keras builds ConvNeXtTiny
# without it.
CONVNEXT_DROP_PATH_RATE = 0.0
# EfficientNetV2's stochastic depth (Keras' drop_connect_rate: a block's residual branch dropped
# for a whole image with a probability rising from 0 at the first block towards this rate at the
# last). Keras' 0.2 is its ImageNet recipe; from random weights on a lab's few hundred images the
# model could not fit them with it beside the shifts (bench/train_quality_bench.py, 64 px, 60
# epochs, seed 0: test accuracy 0.805 with 0.2, training accuracy 0.75 at the end; 0.906 with 0,
# 0.87). A start from ImageNet weights was not measured.
EFFICIENTNET_DROP_CONNECT_RATE = 0.0
_KERAS_DROP_CONNECT_RATE = 0.2
ALEXNET_HEAD = "average"   # see _alexnet
# While training, a random shift of up to this share of the side in each direction, the uncovered
# border filled by reflection and the shift rounded to whole pixels: things move in the frame, their
# size in pixels does not. Without it the large backbones from random weights memorise a few
# hundred training images. Measured (bench/train_quality_bench.py, 64 px, 60 epochs, seed 0, test
# accuracy without -> with 0.125): ConvNeXt-Tiny 0.609 -> 0.781 (its training accuracy 0.998 ->
# 0.83); compact_cnn (25 epochs, seeds 0-2, 1,000 check images) 0.975, 0.973, 0.984 -> 0.971,
# 0.969, 0.984, no change. 0: off.
TRANSLATION = 0.125
# While training, a random rotation by any angle up to this share of a full turn either way (the
# corners filled by reflection, bilinear, no resizing): in an SEM the sample's orientation under the
# beam is arbitrary, and quarter turns and flips give only eight of them. 0: off, the default:
# measured (bench/train_quality_bench.py --rotation 0.5, ConvNeXt-Tiny, 64 px, 120 epochs, seed 0)
# it lowered test accuracy 0.883 -> 0.859 and check accuracy 0.895 -> 0.878.
ROTATION = 0.0
AUGMENTATION_LAYERS = ("flip", "rot90", "translation", "brightness", "contrast")


@tf.keras.utils.register_keras_serializable(package="semspark")
class GrayToRGB(layers.Layer):
    """One grayscale channel to the three channels the ImageNet architectures expect."""

    def call(self, inputs):
        return tf.repeat(inputs, 3, axis=-1)


@tf.keras.utils.register_keras_serializable(package="semspark")
class RandomRot90(layers.Layer):
    """A random multiple of 90 degrees per image while training (square inputs)."""

    def call(self, inputs, training=None):
        if not training:
            return inputs
        turns = tf.random.uniform([tf.shape(inputs)[0]], 0, 4, dtype=tf.int32)
        rotations = tf.stack([tf.image.rot90(inputs, k) for k in range(4)], axis=1)  # (B, 4, H, W, C)
        return tf.gather(rotations, turns, axis=1, batch_dims=1)


@tf.keras.utils.register_keras_serializable(package="semspark")
class DropPath(layers.Layer):
    """Stochastic depth on a residual branch: while training, the branch of each image is zeroed
    with probability ``rate`` and the others scaled by 1 / (1 - rate), so its expected value is
    unchanged; at inference it passes through."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)

    def call(self, inputs, training=None):
        if not training or self.rate <= 0.0:
            return inputs
        keep = 1.0 - self.rate
        kept = tf.cast(tf.random.uniform([tf.shape(inputs)[0]] + [1] * (inputs.shape.rank - 1)) < keep,
                       inputs.dtype)
        return inputs * kept / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


def _conv(x, filters, kernel, strides=1, padding="same", name=None):
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)
    # momentum 0.9: moving statistics settle within tens of steps, not hundreds (Keras' 0.99), so
    # evaluation is meaningful early in a run and on small data sets.
    x = layers.BatchNormalization(scale=False, momentum=BATCH_NORM_MOMENTUM, name=None if name is None else name + "_bn")(x)
    return layers.Activation("relu", name=None if name is None else name + "_relu")(x)


def _compact_cnn(inputs):
    x = inputs
    for filters in (32, 64, 128, 256):
        x = _conv(x, filters, 3)
        x = layers.MaxPooling2D(2)(x)
    return layers.GlobalAveragePooling2D()(x)


def _alexnet(inputs, fc_width: int = 4096):
    x = _conv(inputs, 96, 11, strides=4, padding="valid")
    x = layers.MaxPooling2D(3, 2)(x)
    x = _conv(x, 256, 5)
    x = layers.MaxPooling2D(3, 2)(x)
    x = _conv(x, 384, 3)
    x = _conv(x, 384, 3)
    x = _conv(x, 256, 3)
    # Averaged over positions, not flattened (the original flattens a 6x6 map at 227 px, 2x2 at
    # 128 px): an SEM texture means the same wherever it lies in the frame, the dense layers keep
    # one shape at every input size (a model:NAME/VERSION start at another size fits), and they
    # learn from a small labelled set. Measured (bench/train_quality_bench.py's in-process case:
    # 300 images, 128 px, 12 epochs, batch 16): flattened, 0.73, 0.67, 0.72 test accuracy (seeds
    # 0-2) at 3e-4 and 0.70, 0.70 at 1.5e-4; averaged, 0.77, 0.78, 0.85, 0.87, 0.82, 0.72 (seeds
    # 0-5) at 1.5e-4, 0.75, 0.77, 0.75 at 3e-4, 0.67, 0.72, 0.68 at 1e-3.
    # ALEXNET_HEAD "flatten" builds the original, for comparison (bench/train_quality_bench.py --alexnet-head).
    x = layers.Flatten()(x) if ALEXNET_HEAD == "flatten" else layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(fc_width, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return layers.Dense(fc_width, activation="relu")(x)


def _inception_v4(inputs):
    # Stem (Figure 3): 299x299x3 -> 35x35x384
    x = _conv(inputs, 32, 3, strides=2, padding="valid")
    x = _conv(x, 32, 3, padding="valid")
    x = _conv(x, 64, 3)
    x = layers.Concatenate()([layers.MaxPooling2D(3, 2)(x), _conv(x, 96, 3, strides=2, padding="valid")])
    a = _conv(_conv(x, 64, 1), 96, 3, padding="valid")
    b = _conv(x, 64, 1)
    b = _conv(_conv(_conv(b, 64, (7, 1)), 64, (1, 7)), 96, 3, padding="valid")
    x = layers.Concatenate()([a, b])
    x = layers.Concatenate()([_conv(x, 192, 3, strides=2, padding="valid"), layers.MaxPooling2D(3, 2)(x)])
    for _ in range(4):  # Inception-A (Figure 4)
        x = layers.Concatenate()([
            _conv(layers.AveragePooling2D(3, 1, padding="same")(x), 96, 1),
            _conv(x, 96, 1),
            _conv(_conv(x, 64, 1), 96, 3),
            _conv(_conv(_conv(x, 64, 1), 96, 3), 96, 3),
        ])
    # Reduction-A (Figure 7; k, l, m, n = 192, 224, 256, 384): -> 17x17x1024
    x = layers.Concatenate()([
        layers.MaxPooling2D(3, 2)(x),
        _conv(x, 384, 3, strides=2, padding="valid"),
        _conv(_conv(_conv(x, 192, 1), 224, 3), 256, 3, strides=2, padding="valid"),
    ])
    for _ in range(7):  # Inception-B (Figure 5)
        x = layers.Concatenate()([
            _conv(layers.AveragePooling2D(3, 1, padding="same")(x), 128, 1),
            _conv(x, 384, 1),
            _conv(_conv(_conv(x, 192, 1), 224, (1, 7)), 256, (7, 1)),
            _conv(_conv(_conv(_conv(_conv(x, 192, 1), 192, (1, 7)), 224, (7, 1)), 224, (1, 7)), 256, (7, 1)),
        ])
    # Reduction-B (Figure 8): -> 8x8x1536
    x = layers.Concatenate()([
        layers.MaxPooling2D(3, 2)(x),
        _conv(_conv(x, 192, 1), 192, 3, strides=2, padding="valid"),
        _conv(_conv(_conv(_conv(x, 256, 1), 256, (1, 7)), 320, (7, 1)), 320, 3, strides=2, padding="valid"),
    ])
    for _ in range(3):  # Inception-C (Figure 6)
        b3 = _conv(x, 384, 1)
        b4 = _conv(_conv(_conv(x, 384, 1), 448, (1, 3)), 512, (3, 1))
        x = layers.Concatenate()([
            _conv(layers.AveragePooling2D(3, 1, padding="same")(x), 256, 1),
            _conv(x, 256, 1),
            _conv(b3, 256, (1, 3)), _conv(b3, 256, (3, 1)),
            _conv(b4, 256, (1, 3)), _conv(b4, 256, (3, 1)),
        ])
    return layers.GlobalAveragePooling2D()(x)


def _convnext_tiny(shape, keras_layout: bool = False) -> tf.keras.Model:
    """Keras' ConvNeXt-Tiny with each 7x7 grouped convolution (groups = channels) as the
    DepthwiseConv2D it is: the same function and weights (the kernel's last two axes swapped, see
    depthwise_weights), but TensorFlow runs grouped convolutions on a CPU through a slow generic
    path: 29.5 against 7.0 training images/s at 64 px, batch 16, this machine. Its layer scale
    starts at CONVNEXT_LAYER_SCALE_INIT. ``keras_layout``: Keras' own layers, to read weight
    files written in that layout (ImageNet's, and semspark's ConvNeXt models before the change).
    Each residual block ends in stochastic depth (DropPath) where Keras has an identity, at rates
    rising to CONVNEXT_DROP_PATH_RATE: layers without weights, so weight files fit either way."""
    model = tf.keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=shape,
                                               pooling="avg", include_preprocessing=False)
    if keras_layout:
        return model
    # Keras names each block's last layer ..._stage_S_block_B_identity, in order
    identities = [layer.name for layer in model.layers if layer.name.endswith("_identity")]
    drop_rates = {name: CONVNEXT_DROP_PATH_RATE * i / max(1, len(identities) - 1)
                  for i, name in enumerate(identities)}

    def rebuilt(layer):
        config = layer.get_config()
        if _is_grouped_depthwise(layer):
            return layers.DepthwiseConv2D(kernel_size=config["kernel_size"], strides=config["strides"],
                                          padding=config["padding"], use_bias=config["use_bias"],
                                          name=config["name"])
        if type(layer).__name__ == "LayerScale":
            config["init_values"] = CONVNEXT_LAYER_SCALE_INIT
        if drop_rates.get(layer.name):
            return DropPath(drop_rates[layer.name], name=layer.name)
        return type(layer).from_config(config)

    return tf.keras.models.clone_model(model, clone_function=rebuilt)


def _architecture(model: tf.keras.Model) -> str:
    return model.name.removeprefix("semspark_")


def _is_grouped_depthwise(layer) -> bool:
    return (type(layer) is layers.Conv2D and layer.groups > 1
            and layer.groups == layer.filters == layer.input_shape[-1])


def depthwise_weights(source: tf.keras.Model, target: tf.keras.Model) -> None:
    """Copy the weights of a backbone between Keras' layout (grouped convolutions) and the same
    architecture built with depthwise ones (either way), layer by layer: a grouped kernel
    (kh, kw, 1, C) is the depthwise kernel (kh, kw, C, 1)."""
    if len(source.layers) != len(target.layers):
        raise ModelError(f"{source.name} and {target.name} differ in their layers")
    for old, new in zip(source.layers, target.layers):
        weights = old.get_weights()
        if type(old) is not type(new) and layers.DepthwiseConv2D in (type(old), type(new)):   # the swapped pair
            weights = [weights[0].transpose(0, 1, 3, 2), *weights[1:]]
        new.set_weights(weights)


def build_backbone(arch: str, input_size: int, keras_layout: bool = False) -> tf.keras.Model:
    """The architecture without its classifier: (S, S, 3) in [-1, 1] -> a feature vector.
    ``keras_layout``: keras.applications' layers exactly (see _convnext_tiny)."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if input_size < MIN_INPUT_SIZES[arch]:
        raise ModelError(f"input size {input_size} is below the minimum of {MIN_INPUT_SIZES[arch]} for {arch}")
    shape = (input_size, input_size, 3)
    applications = {
        "inception_v3": lambda: tf.keras.applications.InceptionV3(
            include_top=False, weights=None, input_shape=shape, pooling="avg"),
        "inception_resnet_v2": lambda: tf.keras.applications.InceptionResNetV2(
            include_top=False, weights=None, input_shape=shape, pooling="avg"),
        # Keras' ConvNeXt and EfficientNetV2 normalise their own input from 0..255: semspark gives
        # every backbone [-1, 1], so their own preprocessing is switched off.
        "convnext_tiny": lambda: _convnext_tiny(shape, keras_layout),
        "efficientnetv2_s": lambda: tf.keras.applications.EfficientNetV2S(
            include_top=False, weights=None, input_shape=shape, pooling="avg", include_preprocessing=False),
    }
    if arch in applications:
        model = applications[arch]()
        # Keras' 0.99 moving-average momentum needs hundreds of steps before evaluation means
        # anything; a lab's labelled set gives tens per epoch (see _conv).
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = BATCH_NORM_MOMENTUM
            # its blocks' stochastic depth, moved to semspark's rate (read at call time)
            if arch == "efficientnetv2_s" and isinstance(layer, layers.Dropout) and layer.name.endswith("_drop"):
                layer.rate = layer.rate * EFFICIENTNET_DROP_CONNECT_RATE / _KERAS_DROP_CONNECT_RATE
    else:
        inputs = layers.Input(shape)
        build = {"compact_cnn": _compact_cnn, "alexnet": _alexnet, "inception_v4": _inception_v4}[arch]
        model = tf.keras.Model(inputs, build(inputs))
    # One name for every architecture, so weights move between models of the same architecture.
    model._name = BACKBONE
    return model


def build_model(arch: str, num_classes: int, input_size: int, dropout: float = 0.2,
                augment: bool = True, keras_layout: bool = False) -> tf.keras.Model:
    """Grayscale image (S, S, 1), values 0..255 -> class probabilities; named embedding and logits."""
    if num_classes < 2:
        raise ModelError(f"need at least two classes to train, got {num_classes}")
    inputs = layers.Input((input_size, input_size, 1), name="image")
    x = inputs
    if augment:
        # On the stored 0..255 values, before rescaling: Keras' RandomContrast clips its output to
        # [0, 255] whatever it is given, so after a rescale to [-1, 1] it would black out the
        # darker half of every training image while evaluation and inference see all of it.
        # Nothing changes the image's scale (no zoom, no random crop resized back; the shift
        # keeps the pixels' size): in an SEM
        # image the size of things in pixels is physical and tells categories apart (a fibre from a
        # nanowire, a powder grain from a particle); the dataset is binned by scale for that reason.
        # Measured (bench/train_quality_bench.py, compact_cnn, 20 epochs, seeds 0-2): a zoom-in of
        # up to 15% gave 0.930, 0.914, 0.984 test accuracy; without it 0.953, 0.961, 0.992.
        x = layers.RandomFlip("horizontal_and_vertical", name="flip")(x)
        x = RandomRot90(name="rot90")(x)
        if ROTATION > 0:
            x = layers.RandomRotation(ROTATION, fill_mode="reflect", interpolation="bilinear", name="rotation")(x)
        x = layers.RandomTranslation(TRANSLATION, TRANSLATION, fill_mode="reflect", interpolation="nearest",
                                     name="translation")(x)
        x = layers.RandomBrightness(0.1, value_range=(0.0, 255.0), name="brightness")(x)
        x = layers.RandomContrast(0.15, name="contrast")(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(x)
    x = GrayToRGB(name="gray_to_rgb")(x)
    features = build_backbone(arch, input_size, keras_layout)(x)
    embedding = layers.Activation("linear", name="embedding")(features)
    logits = layers.Dense(num_classes, name="logits")(layers.Dropout(dropout, name="head_dropout")(embedding))
    probabilities = layers.Softmax(name="probabilities")(logits)
    return tf.keras.Model(inputs, probabilities, name=f"semspark_{arch}")


def apply_mode(model: tf.keras.Model, mode: str) -> None:
    """Freeze what the mode does not train. The classifier is new in every mode.

    ``feature_extraction_then_fine_tuning`` starts as feature extraction; the training job
    switches to fine tuning for its second phase (Section 4 of the paper)."""
    if mode not in MODES:
        raise ModelError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "feature_extraction_then_fine_tuning":
        mode = "feature_extraction"
    # Frozen batch normalisation also runs in inference mode (Keras 2 semantics), as it should
    # for feature extraction.
    model.get_layer(BACKBONE).trainable = mode != "feature_extraction"


def load_backbone_weights(model: tf.keras.Model, path: str) -> int:
    """Load a Keras weights file (e.g. keras.applications' ``..._notop.h5``) into the backbone.

    Loaded by topology, layer after layer, as Keras loads its own ImageNet files (layer names are
    generated per process and do not match). Returns how many weight tensors changed."""
    from pathlib import Path

    if not Path(path).is_file():
        raise ModelError(f"weights file {path} does not exist; download it where the network is allowed "
                         "and give its local path (semspark never downloads weights)")
    backbone = model.get_layer(BACKBONE)
    before = [w.numpy().copy() for w in backbone.weights]
    try:
        if _architecture(model) == "convnext_tiny":   # the file is in Keras' layout (grouped convolutions)
            keras_backbone = build_backbone("convnext_tiny", backbone.input_shape[1], keras_layout=True)
            keras_backbone.load_weights(path)
            depthwise_weights(keras_backbone, backbone)
        else:
            backbone.load_weights(path)
    except Exception as exc:
        raise ModelError(f"weights file {path} does not fit this architecture: {exc}") from exc
    changed = sum(not (b == a.numpy()).all() for b, a in zip(before, backbone.weights))
    if changed == 0:
        raise ModelError(f"no layer of weights file {path} matches the {model.name} backbone")
    return changed


def load_saved_model(path) -> tf.keras.Model:
    """A semspark model from disk, for prediction or as an initialisation.

    Importing this module registers semspark's own layers (GrayToRGB, RandomRot90), which Keras
    needs to rebuild the model; safe mode refuses arbitrary code in the file, and the optimizer
    (Horovod's wrapper) is not restored."""
    return tf.keras.models.load_model(str(path), compile=False, safe_mode=True)


def load_for_inference(path, architecture: str | None, num_classes: int, input_size: int) -> tf.keras.Model:
    """A registered model rebuilt from semspark's own architecture code, then given its weights.

    Four times faster than load_saved_model for Inception-v3 (measured: 5 s against 19 s; Keras
    spends the difference deserialising the layer configs), and nothing from the file is turned
    into code: only weight tensors are read, and a file that does not fit the architecture fails.
    Without a recorded architecture, the file's own config is used (safe mode)."""
    if architecture is None:
        return load_saved_model(path)
    model = build_model(architecture, num_classes, input_size)
    try:
        try:
            model.load_weights(str(path))
        except ValueError:
            if architecture != "convnext_tiny":
                raise
            # a ConvNeXt registered before its grouped convolutions became depthwise ones: read in
            # Keras' layout, then moved into this one (inference rebuilds this layout from the weights)
            registered = build_model(architecture, num_classes, input_size, keras_layout=True)
            registered.load_weights(str(path))
            copy_backbone(registered, model)
            model.get_layer("logits").set_weights(registered.get_layer("logits").get_weights())
    except Exception as exc:
        raise ModelError(f"{path} does not hold weights of a {architecture} with {num_classes} classes at "
                         f"{input_size} px: {exc}") from exc
    return model


def tflite_model(model: tf.keras.Model) -> bytes:
    """The model's inference as a TensorFlow Lite flat buffer: one signature, ``image`` (N, S, S, 1)
    float 0..255 at the model's input size -> ``embedding`` and ``logits`` (the augmentation layers
    are identities at inference and leave nothing behind)."""
    heads = tf.keras.Model(model.inputs, [model.get_layer("embedding").output, model.get_layer("logits").output])
    return tf.lite.TFLiteConverter.from_keras_model(heads).convert()


def copy_backbone(source: tf.keras.Model, target: tf.keras.Model) -> None:
    """Start ``target`` from the backbone of an earlier model of the same architecture."""
    try:
        try:
            target.get_layer(BACKBONE).set_weights(source.get_layer(BACKBONE).get_weights())
        except ValueError:
            if _architecture(target) != "convnext_tiny":
                raise
            # an earlier ConvNeXt in Keras' layout (see _convnext_tiny)
            depthwise_weights(source.get_layer(BACKBONE), target.get_layer(BACKBONE))
    except (ValueError, KeyError, ModelError) as exc:
        raise ModelError(f"cannot start a {target.name} from {source.name}: {exc}") from exc
