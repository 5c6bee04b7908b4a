"""What runs inside a Spark task at inference: one model per Python worker, numpy batches in.

``make_predict_fn`` is handed to ``pyspark.ml.functions.predict_batch_udf``, which calls it once per
Python worker (Spark reuses workers, and the UDF caches the function), so the model is loaded once
and then fed batches of stored images (PNG bytes from the ingest dataset). The model's bytes travel
as a Spark broadcast, so executors need no shared file system, and workers check their SHA-256.
Two engines run the same model:

- ``tflite`` (small CPU tasks of a promoted model, see infer.job.scoring_model): the model's
  embedding and logits as a TensorFlow Lite flat buffer (made once per version,
  registry.inference_tflite), run by the TFLite runtime,
  which imports in 0.06 s where TensorFlow takes 2.2 s: most of a small night's scoring was
  TensorFlow's import. The resize to the model's input is TensorFlow's antialiased bilinear one,
  as two matrices (``resize_matrix``); the flat buffer holds operators and weights, no code;
- ``tensorflow`` (large tasks, GPU tasks, models never promoted): an .npz of weight arrays (made once
  per version from the verified model.keras, registry.inference_weights); workers rebuild the
  architecture from semspark's own code and set the arrays: no model config or code from a file
  is ever deserialised.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

NO_PIXELS = "no stored pixels in the dataset"   # the image is in sem.images but not in the dataset


@dataclass(frozen=True)
class ModelPayload:
    """What a worker needs to rebuild the model, besides the broadcast weights."""
    model_version: str
    sha256: str                   # of the broadcast weights (.npz)
    class_names: tuple[str, ...]
    input_size: int
    architecture: str             # rebuilt from semspark's own code, then given the weights
    threads: int                  # TensorFlow intra-op threads on CPU (chosen by the job)
    temperature: float = 1.0      # calibration: probabilities are softmax(logits / temperature)
    uncertain_below: float | None = None   # confidence under which a prediction is flagged uncertain
    ood_threshold: float | None = None     # embedding distance over which an image is out of distribution
    ood_neighbours: int = 5
    reference_sha256: str | None = None    # of the broadcast reference embeddings (.npy)
    engine: str = "tensorflow"             # what the broadcast model is: tensorflow (.npz) or tflite
    appearance: object = None              # train.evaluation.AppearanceBounds of the training images, or None


def decode_png_batch(images) -> tuple[np.ndarray, list[str | None]]:
    """PNG bytes -> (N, S, S) uint8 stack; an undecodable or odd-sized image gives zeros and an error."""
    import cv2

    decoded: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for data in images:
        image = None
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        decoded.append(image)
        if image is not None:
            errors.append(None)
        elif data is None or (isinstance(data, float) and np.isnan(data)):  # pandas gives NULL as None
            errors.append(NO_PIXELS)
        else:
            errors.append("stored image could not be decoded")
    shapes = {d.shape for d in decoded if d is not None}
    if len(shapes) > 1:  # one dataset has one image size; anything else is damage
        common = max(shapes, key=lambda s: sum(d is not None and d.shape == s for d in decoded))
        for i, d in enumerate(decoded):
            if d is not None and d.shape != common:
                decoded[i], errors[i] = None, f"stored image is {d.shape}, not {common} like the others"
        shapes = {common}
    shape = shapes.pop() if shapes else (1, 1)
    stack = np.zeros((len(decoded), *shape), np.uint8)
    for i, d in enumerate(decoded):
        if d is not None:
            stack[i] = d
    return stack, errors


def _configure_tensorflow(tf, threads: int) -> None:
    """Use the GPU Spark assigned to this task if there is one; on CPU, use the threads the job
    chose (two tasks each using every core would slow both down)."""
    from pyspark import TaskContext

    try:
        gpus = tf.config.list_physical_devices("GPU")
        context = TaskContext.get()
        assigned = context.resources().get("gpu") if context is not None else None
        if gpus:
            index = int(assigned.addresses[0]) if assigned is not None and assigned.addresses else 0
            tf.config.experimental.set_memory_growth(gpus[index], True)
            tf.config.set_visible_devices(gpus[index], "GPU")
        else:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:  # TensorFlow already initialised in this worker: keep its settings
        log.debug("TensorFlow was already initialised; device and thread settings kept")


def verified(data: bytes, sha256: str, what: str) -> bytes:
    """``data`` if its SHA-256 is the registered one, else an error naming ``what`` it is."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"{what} have SHA-256 {actual}, not the registered {sha256}")
    return data


def weights_from_bytes(data: bytes, sha256: str) -> list[np.ndarray]:
    """The model's weight arrays from the broadcast .npz, after checking its checksum."""
    import io

    verified(data, sha256, "model weights")
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def keras_forward(model, input_size: int):
    """(N, H, W) uint8 stored images -> (embedding, logits) with TensorFlow: cast, the same resize
    as training (train.data.tf_dataset), the model in inference mode."""
    import tensorflow as tf

    heads = tf.keras.Model(model.inputs, [model.get_layer("embedding").output, model.get_layer("logits").output])
    graphs = {}

    def forward(stack: np.ndarray):
        # One graph per stored image size (a dataset has one), any batch size; traced once per worker.
        side = stack.shape[1:]
        if side not in graphs:
            @tf.function(input_signature=[tf.TensorSpec((None, *side), tf.uint8)])
            def graph(images):
                x = tf.cast(images, tf.float32)[..., None]
                if side != (input_size, input_size):
                    x = tf.image.resize(x, (input_size, input_size), antialias=True)
                return heads(x, training=False)
            graphs[side] = graph
        return [t.numpy() for t in graphs[side](stack)]

    return forward


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """TensorFlow's ``resize(antialias=True)`` (bilinear) along one axis as an (n_out, n_in) matrix:
    output pixel i samples the input at (i + 0.5) * n_in / n_out - 0.5 with a triangle kernel
    stretched by the downscale factor (not below 1), its weights normalised over the input pixels
    it covers (TensorFlow's ScaleAndTranslate, kernel 'triangle')."""
    step = n_in / n_out
    width = max(step, 1.0)                       # the kernel's half-width, in input pixels
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = (i + 0.5) * step
        first = max(0, int(np.ceil(centre - width - 0.5)))
        last = min(n_in, int(np.floor(centre + width - 0.5)) + 1)
        pixels = np.arange(first, last)
        weights = np.maximum(0.0, 1.0 - np.abs((pixels + 0.5 - centre) / width))
        matrix[i, first:last] = weights / weights.sum()
    return matrix.astype(np.float32)


def tflite_forward(model_bytes: bytes, input_size: int, threads: int):
    """(N, H, W) uint8 stored images -> (embedding, logits) with the TFLite runtime: the resize as
    matrices (resize_matrix), then the flat buffer's signature (image -> embedding, logits)."""
    from tflite_runtime.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
    signature = interpreter.get_signature_runner()
    image = signature.get_input_details()["image"]["index"]
    outputs = {name: detail["index"] for name, detail in signature.get_output_details().items()}
    # Through the interpreter with the batch's shape set and the tensors allocated for it, not the
    # signature runner's call: that runs a dynamic batch without the XNNPACK delegate's kernels
    # (Inception-v3 at 299 px, batch 32, 2 threads: 7.9 against 32 images/s; TensorFlow 38).
    allocated = [None]
    matrices = {}

    def forward(stack: np.ndarray):
        x = stack.astype(np.float32)
        side = stack.shape[1:]
        if side != (input_size, input_size):
            if side not in matrices:
                matrices[side] = (resize_matrix(side[0], input_size), resize_matrix(side[1], input_size))
            rows, columns = matrices[side]
            x = np.matmul(np.matmul(rows, x), columns.T)
        batch = np.ascontiguousarray(x[..., None], dtype=np.float32)
        if allocated[0] != batch.shape:
            interpreter.resize_tensor_input(image, batch.shape)
            interpreter.allocate_tensors()
            allocated[0] = batch.shape
        interpreter.set_tensor(image, batch)
        interpreter.invoke()
        return interpreter.get_tensor(outputs["embedding"]), interpreter.get_tensor(outputs["logits"])

    return forward


def build_predictor(forward, payload: ModelPayload, reference_embeddings: np.ndarray | None = None):
    """numpy batch of PNG bytes -> dict of columns (the PREDICTION struct); ``forward`` is one
    engine's (keras_forward, tflite_forward)."""
    from semspark.train.evaluation import OutOfDistribution

    reference = None
    if reference_embeddings is not None and payload.ood_threshold is not None:
        reference = OutOfDistribution(reference=reference_embeddings, neighbours=payload.ood_neighbours,
                                      threshold=payload.ood_threshold)
    classes = np.array(payload.class_names, dtype=object)

    def predict(images: np.ndarray, chroma: np.ndarray | None = None,
                contrast: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """PNG bytes, and sem.images' chroma and contrast of the same images (NaN or None: not
        measured), to the PREDICTION columns."""
        from semspark.train.evaluation import softmax

        from semspark.storage import pause_point

        stack, errors = decode_png_batch(images)
        embedding, logits = forward(stack)
        pause_point("scoring-batch")   # tests kill a run here: the model running (a Spark task, or the driver)
        embedding = embedding.reshape(len(stack), -1)
        probabilities = softmax(logits, payload.temperature)    # calibrated (temperature from validation)
        best = probabilities.argmax(axis=1)
        failed = np.array([e is not None for e in errors])
        category = classes[best].copy()
        category[failed] = None
        confidence = probabilities.max(axis=1).astype(np.float64)
        confidence[failed] = np.nan
        # flags as 1.0 / 0.0, NaN when unknown (predict_batch_udf has no booleans; the job casts)
        uncertain = np.full(len(stack), np.nan)
        if payload.uncertain_below is not None:
            uncertain = (confidence < payload.uncertain_below).astype(np.float64)
        ood_distance = np.full(len(stack), np.nan)
        far = np.full(len(stack), np.nan)   # the embedding's verdict
        if reference is not None:
            ood_distance = reference.distances(embedding)
            far = (ood_distance > reference.threshold).astype(np.float64)
        uncertain[failed] = np.nan
        ood_distance[failed] = np.nan
        unknown = np.full(len(stack), np.nan)
        out_of_distribution, ood_reason = verdicts(
            far, ood_distance, unknown if chroma is None else chroma, unknown if contrast is None else contrast,
            failed, reference.threshold if reference is not None else None, payload.appearance)
        return {"category": category, "confidence": confidence,
                "probabilities": probabilities.astype(np.float32), "logits": logits.astype(np.float32),
                "embedding": embedding.astype(np.float32), "error": np.array(errors, dtype=object),
                "uncertain": uncertain, "out_of_distribution": out_of_distribution, "ood_distance": ood_distance,
                "ood_reason": ood_reason}

    return predict


def _known(value) -> float | None:
    """A measured value, or None for NULL (None from Spark, NaN from pandas)."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def verdicts(embedding_flags, distances, chroma, contrast, failed, embedding_threshold: float | None,
             appearance) -> tuple[np.ndarray, np.ndarray]:
    """Each image's out-of-distribution flag (1.0 / 0.0, NaN unknown) and reason (words with the
    figures; None when in distribution): from the embedding's distance (``embedding_flags``,
    decided against ``embedding_threshold``) and from the appearance bounds of the training images
    (``appearance``: sem.images' chroma over its limit, contrast under it). The flag is unknown
    only when nothing could be checked, and for a failed image (its reason too)."""
    flags = np.full(len(failed), np.nan)
    reasons = np.full(len(failed), None, dtype=object)
    chroma_limit = appearance.chroma_limit if appearance is not None else None
    contrast_limit = appearance.contrast_limit if appearance is not None else None
    for i in range(len(failed)):
        if failed[i]:
            continue
        flag, shade, flatness = _known(embedding_flags[i]), _known(chroma[i]), _known(contrast[i])
        found = []
        if embedding_threshold is not None and flag is not None and flag > 0.5:
            found.append(f"unlike the training images to the model (embedding distance {distances[i]:.3f}, "
                         f"over {embedding_threshold:.3f})")
        if chroma_limit is not None and shade is not None and shade > chroma_limit:
            found.append(f"colour image (chroma {shade:.3f}, the training images at most "
                         f"{appearance.training_chroma_max:.3f})")
        if contrast_limit is not None and flatness is not None and flatness < contrast_limit:
            found.append(f"almost no contrast (contrast {flatness:.3f}, the training images at least "
                         f"{appearance.training_contrast_min:.3f})")
        checked = (flag is not None or (chroma_limit is not None and shade is not None)
                   or (contrast_limit is not None and flatness is not None))
        if found:
            flags[i], reasons[i] = 1.0, "; ".join(found)
        elif checked:
            flags[i] = 0.0
    return flags, reasons


def make_predict_fn(payload: ModelPayload, model_bytes, reference_bytes=None):
    """For predict_batch_udf: ``model_bytes`` is a Spark broadcast of the model as
    ``payload.engine`` runs it (the weights' .npz, or the TFLite flat buffer), ``reference_bytes``
    one of the reference embeddings (.npy) or None."""

    def make():
        if payload.engine == "tflite":
            data = verified(model_bytes.value, payload.sha256, f"the TFLite model of {payload.model_version}")
            forward = tflite_forward(data, payload.input_size, payload.threads)
        else:
            import tensorflow as tf

            _configure_tensorflow(tf, payload.threads)
            from semspark.train.models import build_model

            model = build_model(payload.architecture, len(payload.class_names), payload.input_size)
            weights = weights_from_bytes(model_bytes.value, payload.sha256)
            if [w.shape for w in weights] != [tuple(v.shape) for v in model.weights]:
                raise ValueError(f"the weights of {payload.model_version} do not fit a {payload.architecture}")
            model.set_weights(weights)
            forward = keras_forward(model, payload.input_size)
        reference = None
        if reference_bytes is not None:
            import io

            data = reference_bytes.value
            if hashlib.sha256(data).hexdigest() != payload.reference_sha256:
                raise ValueError(f"reference embeddings of {payload.model_version} do not match their SHA-256")
            reference = np.load(io.BytesIO(data), allow_pickle=False)
        log.info("loaded %s (%s) in worker %d", payload.model_version, payload.engine, os.getpid())
        return build_predictor(forward, payload, reference)

    return make
