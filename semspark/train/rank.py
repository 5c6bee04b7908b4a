"""What each Horovod rank runs (inside a Spark task, through horovod.spark.run).

Per rank: pin its GPU if Spark gave it one, build the model, read its own Petastorm shard, train
with the learning rate scaled by the number of ranks and warmed up, initial variables broadcast
from rank 0 and metrics averaged across ranks. Rank 0 alone evaluates validation and test each
epoch (the paper plots test accuracy per epoch), shares the numbers with every rank (so early
stopping stops all of them at once), and writes checkpoints and the run's state.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path


def train_on_rank(payload: dict) -> dict | None:
    import horovod.tensorflow.keras as hvd
    import numpy as np
    import tensorflow as tf

    from semspark.train.data import tf_dataset
    from semspark.train.models import (apply_mode, build_model, copy_backbone, load_backbone_weights,
                                       load_saved_model)
    from semspark.train.registry import read_json, write_json

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    _pin_gpu(hvd, tf)
    if payload["mixed_precision"]:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    tf.keras.utils.set_random_seed(payload["seed"] + rank)

    run = Path(payload["run_dir"])
    state = read_json(run / "state.json", {"completed_epochs": 0, "history": [], "best": None})
    classes = payload["class_names"]
    model = build_model(payload["arch"], len(classes), payload["input_size"])
    if state["completed_epochs"] > 0:
        model.load_weights(str(run / "last.keras"))  # resume: every rank reads the same checkpoint
    elif rank == 0 and payload["init_kind"] == "imagenet":
        load_backbone_weights(model, payload["init_value"])
    elif rank == 0 and payload["init_kind"] == "model":
        earlier = load_saved_model(payload["init_value"])
        copy_backbone(earlier, model)

    lr = payload["learning_rate"] * size

    def compile_for(phase_lr):
        # Legacy optimizers: Horovod 0.28's DistributedOptimizer wraps those in TF >= 2.11.
        base = (tf.keras.optimizers.legacy.Adam(phase_lr) if payload["optimizer"] == "adam"
                else tf.keras.optimizers.legacy.SGD(phase_lr, momentum=0.9))
        model.compile(optimizer=hvd.DistributedOptimizer(base),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    url, image_size, input_size, batch = (payload["dataset_url"], payload["image_size"],
                                          payload["input_size"], payload["batch_size"])
    train_ids = set(payload["train_ids"])
    steps = max(1, math.ceil(len(train_ids) / (batch * size)))
    train = tf_dataset(url, train_ids, classes, image_size, input_size, batch, rank, size, repeat=True,
                       shuffle_buffer=min(512, len(train_ids)), seed=payload["seed"])

    def evaluate(ids):
        data = tf_dataset(url, set(ids), classes, image_size, input_size, batch)
        return model.evaluate(data, verbose=0, return_dict=True)["accuracy"] if ids else float("nan")

    class EpochEnd(tf.keras.callbacks.Callback):
        """Rank 0 evaluates validation and test; every rank gets the same numbers."""

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            scores = [0.0, 0.0]
            if rank == 0:
                scores = [evaluate(payload["validation_ids"]), evaluate(payload["test_ids"])]
            shared = hvd.broadcast(tf.constant(scores, tf.float64), root_rank=0, name=f"eval_{epoch}").numpy()
            logs["val_accuracy"], logs["test_accuracy"] = float(shared[0]), float(shared[1])
            if rank == 0:
                record = {"epoch": epoch + 1, "finished_at": time.time(),
                          **{k: float(v) for k, v in logs.items()}}
                state["history"] = [h for h in state["history"] if h["epoch"] < epoch + 1] + [record]
                best = state["best"]
                if best is None or logs["val_accuracy"] > best["val_accuracy"]:
                    _save_atomically(model, run / "best.keras")
                    state["best"] = {"epoch": epoch + 1, "val_accuracy": logs["val_accuracy"]}
                _save_atomically(model, run / "last.keras")
            # Every rank counts epochs (the next phase starts from here); only rank 0 records them.
            state["completed_epochs"] = epoch + 1
            if rank == 0:
                write_json(run / "state.json", state)  # after the checkpoint: resume never outruns it

    # Phases: one, or feature extraction then fine tuning (Section 4) at a tenth of the rate, so
    # that the trained classifier is not wrecked by the first large updates of the backbone.
    phases = [(payload["mode"], payload["epochs"], lr)]
    if payload["mode"] == "feature_extraction_then_fine_tuning":
        phases = [("feature_extraction", payload["epochs"], lr),
                  ("fine_tuning", payload["epochs"] + payload["fine_tune_epochs"], lr / 10)]
    for phase_mode, until, phase_lr in phases:
        if state["completed_epochs"] >= until:
            continue
        apply_mode(model, phase_mode)
        compile_for(phase_lr)
        warmup = min(payload["warmup_epochs"], max(until - state["completed_epochs"] - 1, 0))
        callbacks = [
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.MetricAverageCallback(),
            EpochEnd(),
            tf.keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=payload["patience"]),
        ]
        if warmup:
            callbacks.insert(2, hvd.callbacks.LearningRateWarmupCallback(
                initial_lr=phase_lr, warmup_epochs=warmup, steps_per_epoch=steps, verbose=0))
        model.fit(train, steps_per_epoch=steps, epochs=until, initial_epoch=state["completed_epochs"],
                  callbacks=callbacks, verbose=2 if rank == 0 else 0)
    if rank != 0:
        return None

    best = load_saved_model(run / "best.keras")
    truth, predicted = [], []
    test = tf_dataset(url, set(payload["test_ids"]), classes, image_size, input_size, batch)
    for x, y in test:
        truth += list(y.numpy())
        predicted += list(np.argmax(best.predict(x, verbose=0), axis=1))
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(truth, predicted):
        confusion[t, p] += 1
    return {"history": state["history"], "best_epoch": state["best"]["epoch"],
            "confusion": confusion.tolist(), "test_images": len(truth)}


def _save_atomically(model, path: Path) -> None:
    """A rank killed while saving must not leave a torn checkpoint for the resumed run to load:
    write beside it (Keras wants the .keras suffix), then rename over it."""
    partial = path.with_name(path.stem + ".partial.keras")
    model.save(str(partial))
    os.replace(partial, path)


def _pin_gpu(hvd, tf) -> None:
    """One GPU per rank: the one Spark assigned to this task (spark.task.resource.gpu.amount=1 and
    a discovery script, see conf/spark-gpu.conf), else the local rank's."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    try:
        from horovod.spark.task import get_available_devices
        assigned = get_available_devices()
    except Exception:  # not under horovod.spark, or no resources given
        assigned = []
    index = int(assigned[0]) if assigned else hvd.local_rank() % len(gpus)
    tf.config.experimental.set_memory_growth(gpus[index], True)
    tf.config.set_visible_devices(gpus[index], "GPU")
