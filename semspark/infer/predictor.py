"""What runs inside a Spark task at inference: one model per Python worker, numpy batches in.

``make_predict_fn`` is handed to ``pyspark.ml.functions.predict_batch_udf``, which calls it once per
Python worker (Spark reuses workers, and the UDF caches the function), so the model is loaded once
and then fed batches of stored images (PNG bytes from the ingest dataset). The model's bytes travel
as a Spark broadcast of an .npz of weight arrays (made once per version from the verified
model.keras, see registry.inference_weights), so executors need no shared file system; workers
check its SHA-256, rebuild the architecture from semspark's own code and set the arrays: no model
config or code from a file is ever deserialised.
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


def weights_from_bytes(data: bytes, sha256: str) -> list[np.ndarray]:
    """The model's weight arrays from the broadcast .npz, after checking its checksum."""
    import io

    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"model weights have SHA-256 {actual}, not the registered {sha256}")
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def build_predictor(model, payload: ModelPayload, reference_embeddings: np.ndarray | None = None):
    """numpy batch of PNG bytes -> dict of columns (the PREDICTION struct)."""
    import tensorflow as tf

    from semspark.train.evaluation import OutOfDistribution

    reference = None
    if reference_embeddings is not None and payload.ood_threshold is not None:
        reference = OutOfDistribution(reference=reference_embeddings, neighbours=payload.ood_neighbours,
                                      threshold=payload.ood_threshold)

    heads = tf.keras.Model(model.inputs, [model.get_layer("embedding").output,
                                          model.get_layer("logits").output, model.output])
    size = payload.input_size
    classes = np.array(payload.class_names, dtype=object)

    graphs = {}

    def forward(stack: np.ndarray):
        # One graph per stored image size (a dataset has one), any batch size: cast, the same
        # resize as training (train.data.tf_dataset), the model; traced once per worker.
        side = stack.shape[1:]
        if side not in graphs:
            @tf.function(input_signature=[tf.TensorSpec((None, *side), tf.uint8)])
            def graph(images):
                x = tf.cast(images, tf.float32)[..., None]
                if side != (size, size):
                    x = tf.image.resize(x, (size, size), antialias=True)
                return heads(x, training=False)
            graphs[side] = graph
        return [t.numpy() for t in graphs[side](stack)]

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        from semspark.train.evaluation import softmax

        stack, errors = decode_png_batch(images)
        embedding, logits, _ = forward(stack)
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
        out_of_distribution = np.full(len(stack), np.nan)
        if reference is not None:
            ood_distance = reference.distances(embedding)
            out_of_distribution = (ood_distance > reference.threshold).astype(np.float64)
        uncertain[failed] = np.nan
        out_of_distribution[failed] = np.nan
        ood_distance[failed] = np.nan
        return {"category": category, "confidence": confidence,
                "probabilities": probabilities.astype(np.float32), "logits": logits.astype(np.float32),
                "embedding": embedding.astype(np.float32), "error": np.array(errors, dtype=object),
                "uncertain": uncertain, "out_of_distribution": out_of_distribution, "ood_distance": ood_distance}

    return predict


def make_predict_fn(payload: ModelPayload, weights_bytes, reference_bytes=None):
    """For predict_batch_udf: ``weights_bytes`` is a Spark broadcast of the weights (.npz),
    ``reference_bytes`` one of the reference embeddings (.npy) or None."""

    def make():
        import tensorflow as tf

        _configure_tensorflow(tf, payload.threads)
        from semspark.train.models import build_model

        model = build_model(payload.architecture, len(payload.class_names), payload.input_size)
        weights = weights_from_bytes(weights_bytes.value, payload.sha256)
        if [w.shape for w in weights] != [tuple(v.shape) for v in model.weights]:
            raise ValueError(f"the weights of {payload.model_version} do not fit a {payload.architecture}")
        model.set_weights(weights)
        reference = None
        if reference_bytes is not None:
            import io

            data = reference_bytes.value
            if hashlib.sha256(data).hexdigest() != payload.reference_sha256:
                raise ValueError(f"reference embeddings of {payload.model_version} do not match their SHA-256")
            reference = np.load(io.BytesIO(data), allow_pickle=False)
        log.info("loaded %s in worker %d", payload.model_version, os.getpid())
        return build_predictor(model, payload, reference)

    return make
