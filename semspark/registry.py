"""Where models and training runs live under SEMSPARK_HOME.

    models/NAME/VERSION/   model.keras, metadata.json, history.csv, accuracy.png, confusion.png,
                           reference_embeddings.npy (what out-of-distribution is measured against)
    runs/RUN_ID/           request.json, split.json, state.json, last.keras, best.keras

A run holds what an interrupted training needs to resume (same --run-id); a model version is what a
finished run leaves behind. Every training run makes a new version NAME/N.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from semspark.storage import home_path

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RegistryError(ValueError):
    """A model or run that does not exist or cannot be named so; the message says what to do."""


def check_name(name: str, what: str = "model name") -> str:
    if not NAME_PATTERN.fullmatch(name):  # fullmatch: `$` would let a trailing newline through
        raise RegistryError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (at most 64), "
                            "starting with a letter or digit")
    return name


def models_root() -> Path:
    return home_path("models")


def run_dir(run_id: str) -> Path:
    return home_path(f"runs/{check_name(run_id, 'run id')}")


def versions(name: str) -> list[int]:
    folder = models_root() / check_name(name)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "metadata.json").exists())


def resolve(spec: str) -> tuple[str, int, Path]:
    """NAME/VERSION or NAME/latest -> (name, version, folder)."""
    name, _, version = spec.partition("/")
    check_name(name)
    known = versions(name)
    if not known:
        root = models_root()
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and versions(p.name)) if root.is_dir() else []
        have = f"the registered models are {', '.join(names)}" if names else "no model is registered yet"
        raise RegistryError(f"no model named {name!r} under {root} ({have}); semspark models list shows them, "
                            "semspark train makes one")
    if version in ("", "latest"):
        number = known[-1]
    elif version.isdigit() and int(version) in known:
        number = int(version)
    else:
        raise RegistryError(f"model {name} has versions {known}, not {version!r}")
    return name, number, models_root() / name / str(number)


def verified_model(spec: str) -> tuple[str, Path, dict]:
    """A registered model ready to load: (NAME/N, model file, metadata), its file checked against
    the SHA-256 recorded when it was registered, so a model changed on disk is never used."""
    name, number, folder = resolve(spec)
    metadata = read_json(folder / "metadata.json") or {}
    path = folder / "model.keras"
    if not path.exists():
        raise RegistryError(f"model {name}/{number} has no model.keras in {folder}")
    recorded = metadata.get("model_sha256")
    actual = file_sha256(path)
    if recorded != actual:
        raise RegistryError(f"model {name}/{number}: {path} has SHA-256 {actual[:12]}..., not the "
                            f"{str(recorded)[:12]}... recorded at registration; it was changed or replaced "
                            "on disk; retrain it or restore the original file")
    return f"{name}/{number}", path, metadata


INFERENCE_WEIGHTS = "inference_weights.npz"
REFERENCE_EMBEDDINGS = "reference_embeddings.npy"   # training images' embeddings, for out-of-distribution


def reference_embeddings(folder: Path, metadata: dict) -> bytes | None:
    """The model's reference embeddings (.npy bytes), checked against the recorded SHA-256, or None
    for a model registered before semspark kept them."""
    recorded = (metadata.get("out_of_distribution") or {}).get("reference_sha256")
    path = folder / REFERENCE_EMBEDDINGS
    if not recorded or not path.exists():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != recorded:
        raise RegistryError(f"{path} does not match the SHA-256 recorded at registration; retrain the model "
                            "or restore the original file")
    return data


def inference_weights(spec: str) -> tuple[str, bytes, dict]:
    """(NAME/N, the model's weights as an .npz of arrays, metadata) for scoring.

    Made once per version from the verified model.keras (Keras's full load of Inception-v3 takes
    20 s, far more than the few seconds of a small nightly's scoring) and kept beside it with its
    SHA-256 in inference_weights.json; both checksums are verified on every use. The arrays are
    read with allow_pickle=False: data only, never code."""
    import io

    import numpy as np

    model_version, path, metadata = verified_model(spec)
    folder = path.parent
    cache, record = folder / INFERENCE_WEIGHTS, folder / "inference_weights.json"
    known = read_json(record) or {}
    if cache.exists() and known.get("model_sha256") == metadata["model_sha256"]:
        data = cache.read_bytes()
        if hashlib.sha256(data).hexdigest() == known.get("sha256"):
            return model_version, data, metadata
    from semspark.train.models import load_for_inference  # TensorFlow only when the cache is made

    model = load_for_inference(path, metadata.get("architecture"), len(metadata["class_names"]),
                               int(metadata["input_size"]))
    buffer = io.BytesIO()
    np.savez(buffer, *model.get_weights())
    data = buffer.getvalue()
    partial = cache.with_suffix(".tmp")
    partial.write_bytes(data)
    partial.replace(cache)
    write_json(record, {"model_sha256": metadata["model_sha256"], "sha256": hashlib.sha256(data).hexdigest(),
                        "arrays": len(model.get_weights())})
    return model_version, data, metadata


INFERENCE_TFLITE = "inference_model.tflite"


def inference_tflite(spec: str, make: bool = True) -> bytes | None:
    """The model's embedding and logits as a TensorFlow Lite flat buffer, for scoring on CPU
    (infer.predictor: the TFLite runtime imports in 0.06 s, TensorFlow in 2.2 s), or None when the
    converter cannot express the model (scoring then uses TensorFlow), or, with ``make=False``,
    when it was not made yet.

    Made once per version from the inference weights (the model scoring with TensorFlow rebuilds)
    and kept beside them; inference_tflite.json records the SHA-256 of both, and the flat buffer's
    is verified on every use, as the weights' are."""
    model_version, weights, metadata = inference_weights(spec)
    folder = resolve(model_version)[2]
    cache, record = folder / INFERENCE_TFLITE, folder / "inference_tflite.json"
    weights_sha256 = hashlib.sha256(weights).hexdigest()
    known = read_json(record) or {}
    if known.get("weights_sha256") == weights_sha256:
        if known.get("error"):
            return None
        if cache.exists():
            data = cache.read_bytes()
            if hashlib.sha256(data).hexdigest() == known.get("sha256"):
                return data
    if not make:
        return None
    from semspark.infer.predictor import weights_from_bytes   # TensorFlow only when the cache is made
    from semspark.train.models import build_model, tflite_model

    model = build_model(metadata["architecture"], len(metadata["class_names"]), int(metadata["input_size"]))
    model.set_weights(weights_from_bytes(weights, weights_sha256))
    try:
        data = tflite_model(model)
    except Exception as exc:   # the converter's limits, not bad input: scoring falls back to TensorFlow
        log.warning("%s cannot be converted to TensorFlow Lite (%s); it scores with TensorFlow", model_version, exc)
        write_json(record, {"weights_sha256": weights_sha256, "error": str(exc)[:2000]})
        return None
    partial = cache.with_suffix(".tmp")
    partial.write_bytes(data)
    partial.replace(cache)
    write_json(record, {"weights_sha256": weights_sha256, "sha256": hashlib.sha256(data).hexdigest()})
    return data


def new_version(name: str) -> tuple[int, Path]:
    number = (versions(name) or [0])[-1] + 1
    folder = models_root() / check_name(name) / str(number)
    folder.mkdir(parents=True, exist_ok=False)
    return number, folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, value) -> None:
    """Written to a temporary file and renamed: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    tmp.replace(path)
