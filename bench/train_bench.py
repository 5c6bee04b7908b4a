"""Benchmark of the training input path. Prints one JSON document.

    .venv/bin/python bench/train_bench.py [--arch inception_v3] [--input-size 150] [--images 256]

Same model, same batch size, same number of timed steps after the same warm-up:
- in memory: the images decoded up front into a numpy array, model.fit in this process;
- real path: Petastorm shards into tf.data inside horovod.spark.run, with 1 and with 2 ranks
  (Gloo), each rank timing its own steps; the throughput is the sum over ranks.
The input pipeline's cost at one rank is 1 - real / in-memory (target: at most 10%).
Machines here are noisy: compare within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed_fit(model, data, steps: int, warmup: int, batch: int) -> float:
    """Images per second over ``steps`` steps after ``warmup`` untimed ones."""
    import tensorflow as tf

    class Clock(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch_index, logs=None):
            if batch_index == warmup:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.stop = time.perf_counter()

    clock = Clock()
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, callbacks=[clock], verbose=0)
    return steps * batch / (clock.stop - clock.start)


def compiled(arch, classes, size, lr, distributed=None):
    import tensorflow as tf

    from semspark.train.models import apply_mode, build_model

    model = build_model(arch, classes, size)
    apply_mode(model, "scratch")
    optimizer = tf.keras.optimizers.legacy.SGD(lr, momentum=0.9)
    if distributed is not None:
        optimizer = distributed.DistributedOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def rank_throughput(payload):
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf

    from semspark.train.data import tf_dataset

    hvd.init()
    model = compiled(payload["arch"], len(payload["classes"]), payload["size"], 0.01, distributed=hvd)
    data = tf_dataset(payload["url"], payload["label_of"], payload["stored"], payload["size"],
                      payload["batch"], hvd.rank(), hvd.size(), repeat=True, shuffle_buffer=64)
    # Everyone starts from rank 0's weights, as in training.
    cb = hvd.callbacks.BroadcastGlobalVariablesCallback(0)
    model.fit(data, steps_per_epoch=1, epochs=1, callbacks=[cb], verbose=0)
    rate = timed_fit(model, data, payload["steps"], payload["warmup"], payload["batch"])
    return float(hvd.allreduce(tf.constant(rate), op=hvd.Sum).numpy()) if hvd.size() > 1 else rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="inception_v3")
    parser.add_argument("--input-size", type=int, default=150)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="semspark-train-bench-"))
    os.environ["SEMSPARK_HOME"] = str(home)
    import numpy as np
    import tensorflow as tf

    from semspark.config import Config, IngestConfig
    from semspark.dataset import dataset_url
    from semspark.ingest.job import run_ingest
    from semspark.session import build_session
    from semspark.synth.generate import generate
    from semspark.train.data import labelled_images, read_shard
    from semspark.train.job import run_ranks

    stored = 160
    config = Config(ingest=IngestConfig(image_size=stored))
    spark = build_session(config, app_name="train-bench", extra={"spark.master": "local[2]",
                                                                  "spark.ui.showConsoleProgress": "false"})
    try:
        generate(home / "raw", args.images, seed=0, width=384, height=288)
        run_ingest(spark, config, str(home / "raw"), labels="folders")
        images = labelled_images(spark, "sem")
        classes, url = images.class_names, dataset_url(config)

        # In memory: the same images, decoded once, resized once.
        pixels, labels = [], []
        for image, label, _ in read_shard(url, images.label_of(), 0, 1):
            pixels.append(tf.image.resize(image[..., None].astype("float32"), (args.input_size, args.input_size),
                                          antialias=True).numpy())
            labels.append(label)
        memory = tf.data.Dataset.from_tensor_slices((np.stack(pixels), np.array(labels))).repeat() \
            .shuffle(64).batch(args.batch).prefetch(tf.data.AUTOTUNE)
        model = compiled(args.arch, len(classes), args.input_size, 0.01)
        in_memory = timed_fit(model, memory, args.steps, args.warmup, args.batch)

        payload = {"arch": args.arch, "size": args.input_size, "stored": stored, "url": url, "label_of": images.label_of(),
                   "classes": classes, "batch": args.batch, "steps": args.steps, "warmup": args.warmup}
        real = {}
        for ranks in (1, 2):
            started = time.perf_counter()
            rates = run_ranks(spark, rank_throughput, (payload,), ranks)   # as training launches them
            real[ranks] = {"images_per_s": round(rates[0], 2), "wall_seconds": round(time.perf_counter() - started, 1)}
    finally:
        spark.stop()

    cost = 1 - real[1]["images_per_s"] / in_memory
    result = {
        "benchmark": "training input path",
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "model": {"arch": args.arch, "input_size": args.input_size, "batch_per_rank": args.batch,
                  "timed_steps": args.steps, "warmup_steps": args.warmup},
        "in_memory_one_process_images_per_s": round(in_memory, 2),
        "petastorm_horovod": {f"{k}_rank{'s' if k > 1 else ''}": v for k, v in real.items()},
        "input_pipeline_cost_at_one_rank": round(cost, 4),
        "targets": {"input_pipeline_cost_at_one_rank <= 0.10": cost <= 0.10},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
