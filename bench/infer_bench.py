"""Benchmark of the infer stage. Prints one JSON document.

    .venv/bin/python bench/infer_bench.py [--arch inception_v3] [--input-size 299] [--images 720]
                                          [--engine auto|tflite|tensorflow]

Same model (registered in a scratch SEMSPARK_HOME, random weights: speed does not depend on
them), same stored images, same cores, measured in one run:
- bare model: the stored images decoded up front into one numpy array, model.predict in this
  process with TensorFlow's default threads (all cores);
- Spark path: semspark.infer.job.run_inference on local[N] over sem.images and the Petastorm
  dataset: planning, predict_batch_udf in N Python workers (model loaded once per worker), staging,
  the insert into sem.predictions: the whole wall time of the stage.
A first scoring with another version of the model warms the session (JVM, Python workers) and is
not timed; then --rounds pairs of timings (bare, then Spark with a new version of the model, so
everything is scored again), reported each and as the median ratio. Target: Spark path >= 80% of the bare model. Machines here are noisy: compare ratios.
The Spark path runs ``--engine`` (infer.engine; auto: TensorFlow Lite on CPU); each version's
TFLite conversion is made before the timings, as `semspark promote` makes it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def register(arch: str, classes: list[str], input_size: int, name: str) -> str:
    from semspark import registry
    from semspark.train.models import build_model

    model = build_model(arch, len(classes), input_size)
    version, folder = registry.new_version(name)
    model.save(folder / "model.keras")
    registry.write_json(folder / "metadata.json", {
        "model_version": f"{name}/{version}", "architecture": arch, "class_names": classes,
        "input_size": input_size, "model_sha256": registry.file_sha256(folder / "model.keras")})
    registry.inference_weights(f"{name}/{version}")  # as training's registration does
    return f"{name}/{version}"


def import_seconds() -> dict:
    """Seconds a fresh Python takes to import each engine (what a scoring worker pays once)."""
    import subprocess

    out = {}
    for name, module in (("tensorflow", "tensorflow"), ("tflite_runtime", "tflite_runtime.interpreter")):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
        out[name] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="inception_v3")
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--images", type=int, default=720)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="paired bare / Spark timings")
    parser.add_argument("--images-per-task", type=int, default=1000,
                        help="infer.images_per_task (360 with 720 images: two tasks)")
    parser.add_argument("--threads-per-task", type=int, default=0,
                        help="infer.threads_per_task (0 = auto: idle cores go to TensorFlow)")
    parser.add_argument("--engine", choices=("auto", "tflite", "tensorflow"), default="auto", help="infer.engine")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="semspark-infer-bench-"))
    os.environ["SEMSPARK_HOME"] = str(home)
    import cv2
    import numpy as np
    import pyarrow.parquet as pq

    from semspark.config import CatalogConfig, Config, InferConfig, IngestConfig
    from semspark.infer.job import run_inference
    from semspark.dataset import dataset_url
    from semspark.ingest.job import run_ingest
    from semspark.session import build_session
    from semspark.synth.generate import CATEGORIES, generate

    config = Config(catalog=CatalogConfig(database="bench"),
                    ingest=IngestConfig(image_size=args.input_size, dataset_dir="datasets/bench"),
                    infer=InferConfig(batch_size=args.batch_size, images_per_task=args.images_per_task,
                                      threads_per_task=args.threads_per_task, engine=args.engine))
    spark = build_session(config, app_name="infer-bench", extra={
        "spark.master": f"local[{args.cores}]", "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false"})
    try:
        raw = home / "raw"
        generate(raw, args.images, seed=7, width=512, height=384)
        run_ingest(spark, config, str(raw))
        classes = sorted(CATEGORIES)
        versions = [register(args.arch, classes, args.input_size, f"round{i}") for i in range(args.rounds + 1)]

        # Bare model: the same stored images, decoded up front.
        stored = pq.read_table(dataset_url(config)[len("file://"):], columns=["image"]).column("image").to_pylist()
        images = np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in stored])
        x = images[..., None].astype(np.float32)
        from semspark import registry
        from semspark.train.models import load_saved_model

        # What a scoring worker spends on the model: Keras's full load of model.keras, against what
        # semspark's workers do (rebuild the architecture, set the registered weight arrays).
        start = time.perf_counter()
        model = load_saved_model(registry.resolve(versions[0])[2] / "model.keras")
        keras_load = time.perf_counter() - start
        from semspark.infer.predictor import weights_from_bytes
        from semspark.train.models import build_model

        start = time.perf_counter()
        _, weights, _ = registry.inference_weights(versions[0])
        rebuilt = build_model(args.arch, len(classes), args.input_size)
        rebuilt.set_weights(weights_from_bytes(weights, hashlib.sha256(weights).hexdigest()))
        rebuild_load = time.perf_counter() - start
        del rebuilt
        conversion_seconds, bare_tflite = None, None
        if args.engine != "tensorflow":
            start = time.perf_counter()
            for version in versions:   # as promote does: not in the timed scoring
                registry.inference_tflite(version)
            conversion_seconds = (time.perf_counter() - start) / len(versions)
            # the TFLite engine's own speed on the same images (what a worker runs), batch by batch
            from semspark.infer.predictor import tflite_forward

            forward = tflite_forward(registry.inference_tflite(versions[0]), args.input_size, args.cores)
            forward(images[: args.batch_size])
            start = time.perf_counter()
            for first in range(0, len(images), args.batch_size):
                forward(images[first:first + args.batch_size])
            bare_tflite = len(images) / (time.perf_counter() - start)
        model.predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)  # trace, warm up
        run_inference(spark, config, versions[0])  # untimed: JVM, Python workers, code paths

        # Interleaved rounds: this machine's speed drifts by 2x over minutes, so each Spark timing
        # is paired with a bare timing taken just before it.
        rounds = []
        for version in versions[1:]:
            start = time.perf_counter()
            model.predict(x, batch_size=args.batch_size, verbose=0)
            bare = len(x) / (time.perf_counter() - start)
            start = time.perf_counter()
            summary = run_inference(spark, config, version)
            spark_rate = summary.scored / (time.perf_counter() - start)
            rounds.append({"bare_model_images_per_s": round(bare, 2), "spark_path_images_per_s": round(spark_rate, 2),
                           "spark_over_bare": round(spark_rate / bare, 3), "scored": summary.scored})
        ratios = sorted(r["spark_over_bare"] for r in rounds)
        print(json.dumps({
            "benchmark": "infer", "arch": args.arch, "input_size": args.input_size, "images": len(x),
            "cores": args.cores, "batch_size": args.batch_size, "images_per_task": args.images_per_task,
            "threads_per_task": args.threads_per_task, "engine": args.engine,
            "tflite_conversion_seconds": conversion_seconds and round(conversion_seconds, 2),
            "bare_tflite_images_per_s": bare_tflite and round(bare_tflite, 2),
            "import_seconds": import_seconds(),
            "model_load_seconds": {"keras_full_load": round(keras_load, 2),
                                   "rebuild_and_set_weights": round(rebuild_load, 2)},
            "rounds": rounds,
            "median_spark_over_bare": ratios[len(ratios) // 2], "target_spark_over_bare": 0.8,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
        }, indent=2))
    finally:
        spark.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
