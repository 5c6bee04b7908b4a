"""What each Horovod rank runs (inside a Spark task, through horovod.spark.run).

Per rank: pin its GPU if Spark gave it one, build the model, read its own Petastorm shard, train
with the recipe of train/recipe.py (learning rate scaled by the number of ranks, warmed up, then
cosine-decayed; label smoothing; balanced class weights; decoupled weight decay), initial variables
broadcast from rank 0 and metrics averaged across ranks. Rank 0 alone evaluates validation and test each
epoch (the paper plots test accuracy per epoch), shares the numbers with every rank (so early
stopping stops all of them at once), and writes checkpoints, the optimizer's state and the run's state.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path


def train_on_rank(payload: dict) -> dict | None:
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf

    from semspark.train.data import tf_dataset
    from semspark.train.models import (apply_mode, build_model, copy_backbone, load_backbone_weights,
                                       load_saved_model)
    from semspark.train.recipe import (DecoupledWeightDecay, Recipe, SmoothedSparseCrossentropy, class_weights,
                                       learning_rate_schedule, make_optimizer, mix_batches_in_training,
                                       restore_optimizer_state, save_optimizer_state)
    from semspark.registry import read_json, write_json

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

    recipe = Recipe(**{k: payload[k] for k in ("optimizer", "learning_rate", "schedule", "warmup_epochs",
                                                "label_smoothing", "weight_decay", "class_weighting")},
                    mixup=payload.get("mixup", 0.0))
    lr = recipe.learning_rate * size
    train_ids = set(payload["train_ids"])
    steps = max(1, math.ceil(len(train_ids) / (payload["batch_size"] * size)))
    optimizer_file = run / "optimizer.npz"

    def compile_for(phase_lr, phase_start, until):
        schedule = learning_rate_schedule(phase_lr, recipe.schedule, recipe.warmup_epochs * steps,
                                          (until - phase_start) * steps)
        loss = SmoothedSparseCrossentropy(len(classes), recipe.label_smoothing)
        model.compile(optimizer=hvd.DistributedOptimizer(make_optimizer(recipe, schedule)), loss=loss,
                      metrics=["accuracy"])
        mix_batches_in_training(model, loss, recipe.mixup, seed=payload["seed"] * 1000 + rank)   # each rank its own mixes
        done = state["completed_epochs"] - phase_start
        if done > 0:
            # resuming inside this phase: the optimizer continues where the checkpoint left it
            # (moments and step, hence the learning rate); an older run without the file at least
            # continues the schedule from the right step
            if not (state.get("optimizer_phase_start") == phase_start and restore_optimizer_state(model, optimizer_file)):
                model.optimizer.iterations.assign(done * steps)
    url, image_size, input_size, batch = (payload["dataset_url"], payload["image_size"],
                                          payload["input_size"], payload["batch_size"])
    counts = payload.get("train_class_counts")
    weights = class_weights({classes.index(c): n for c, n in counts.items()} if counts else None, recipe)
    label_of = payload["label_of"]
    train = tf_dataset(url, {i: label_of[i] for i in train_ids}, image_size, input_size, batch, rank, size, repeat=True,
                       shuffle_buffer=min(512, len(train_ids)), seed=payload["seed"])

    def evaluate(ids) -> tuple[float, float]:
        """(accuracy, loss) on held-out images."""
        if not ids:
            return float("nan"), float("nan")
        scores = model.evaluate(tf_dataset(url, {i: label_of[i] for i in ids}, image_size, input_size, batch), verbose=0,
                                return_dict=True)
        return scores["accuracy"], scores["loss"]

    class EpochEnd(tf.keras.callbacks.Callback):
        """Rank 0 evaluates validation and test; every rank gets the same numbers."""

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            scores = [0.0, 0.0, 0.0]
            if rank == 0:
                # refitted on training + validation: the validation images are training images now
                held_out = [] if payload.get("validation_in_training") else payload["validation_ids"]
                scores = [*evaluate(held_out), evaluate(payload["test_ids"])[0]]
            shared = hvd.broadcast(tf.constant(scores, tf.float64), root_rank=0, name=f"eval_{epoch}").numpy()
            logs["val_accuracy"], logs["val_loss"], logs["test_accuracy"] = (float(v) for v in shared)
            if rank == 0:
                record = {"epoch": epoch + 1, "finished_at": time.time(),
                          **{k: float(v) if math.isfinite(float(v)) else None for k, v in logs.items()}}
                state["history"] = [h for h in state["history"] if h["epoch"] < epoch + 1] + [record]
                if math.isfinite(logs["val_accuracy"]) and better_than_best(logs["val_accuracy"], logs["val_loss"],
                                                                            state["best"]):
                    if payload["keep"] == "best":
                        _save_atomically(model, run / "best.keras")
                    state["best"] = {"epoch": epoch + 1, "val_accuracy": logs["val_accuracy"],
                                     "val_loss": logs["val_loss"]}
                _save_atomically(model, run / "last.keras")
                save_optimizer_state(model.optimizer, optimizer_file)
                state["optimizer_phase_start"] = phase_start_now[0]
            # Every rank counts epochs (the next phase starts from here); only rank 0 records them.
            state["completed_epochs"] = epoch + 1
            if rank == 0:
                write_json(run / "state.json", state)  # after the checkpoint: resume never outruns it

    # Phases: one, or feature extraction then fine tuning (Section 4) at a tenth of the rate, so
    # that the trained classifier is not wrecked by the first large updates of the backbone.
    phases = [(payload["mode"], 0, payload["epochs"], lr)]
    if payload["mode"] == "feature_extraction_then_fine_tuning":
        phases = [("feature_extraction", 0, payload["epochs"], lr),
                  ("fine_tuning", payload["epochs"], payload["epochs"] + payload["fine_tune_epochs"], lr / 10)]
    phase_start_now = [0]
    for phase_mode, phase_start, until, phase_lr in phases:
        if state["completed_epochs"] >= until:
            continue
        phase_start_now[0] = phase_start
        apply_mode(model, phase_mode)
        compile_for(phase_lr, phase_start, until)
        callbacks = [
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.MetricAverageCallback(),
            DecoupledWeightDecay(recipe.weight_decay),
            EpochEnd(),
        ]
        if payload["patience"] > 0:
            callbacks.append(tf.keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                              patience=payload["patience"]))
        model.fit(train, steps_per_epoch=steps, epochs=until, initial_epoch=state["completed_epochs"],
                  callbacks=callbacks, class_weight=weights, verbose=2 if rank == 0 else 0)
        if rank == 0 and len(phases) > 1 and phase_mode == "feature_extraction":
            # the classifier trained on the frozen backbone, before fine tuning moves it (Section 4
            # reports both): kept beside best.keras
            _save_atomically(model, run / "feature_extraction.keras")
    if rank != 0:
        return None

    return _evaluate_kept(payload, run, state, classes, url, image_size, input_size, batch)


def better_than_best(val_accuracy: float, val_loss: float, best: dict | None) -> bool:
    """Whether this epoch's model replaces the best so far: more accurate on validation, or as
    accurate with a lower validation loss. Accuracy on a few dozen validation images moves in steps
    of one image and often ties; without the loss, the first of equals won, and a lucky early epoch
    (measured: epoch 5 of 15, 0.82 on test, against 0.93 for the tied epoch 11) was registered.
    Checkpoints of runs before the loss was recorded compare by accuracy, ties to the later epoch."""
    if best is None:
        return True
    if val_accuracy != best["val_accuracy"]:
        return val_accuracy > best["val_accuracy"]
    return val_loss < best.get("val_loss", float("inf"))


def _evaluate_kept(payload, run: Path, state: dict, classes, url, image_size, input_size, batch) -> dict:
    """Rank 0, after training: the kept checkpoint (the last epoch's, or the best on validation's:
    TrainRequest.resolved_keep) on the held-out images. Test scores with their
    bootstrap intervals; temperature scaling, the uncertainty threshold and the out-of-distribution
    distance fitted on validation; a sample of training embeddings kept as the reference of what the
    model was trained on (run/reference_embeddings.npy)."""
    import numpy as np
    import tensorflow as tf

    from semspark.train.data import tf_dataset
    from semspark.train.evaluation import (OutOfDistribution, confidence_threshold, expected_calibration_error,
                                           TEMPERATURE_PRIOR_SCALE, fit_temperature, held_out_scores, softmax,
                                           temperature_interval)
    from semspark.train.models import load_saved_model

    keep_best = payload["keep"] == "best"
    kept_checkpoint = "best.keras" if keep_best else "last.keras"
    kept_epoch = state["best"]["epoch"] if keep_best else state["completed_epochs"]
    # refitted on training + validation (TrainRequest.refit_with_validation): the calibration comes
    # from the first model's validation images (carried), and the out-of-distribution reference
    # from the first model's training images, so that the validation images stay apart from it
    refitted = bool(payload.get("validation_in_training"))
    carried = payload.get("carried_calibration") if refitted else None
    kept = load_saved_model(run / kept_checkpoint)
    heads = tf.keras.Model(kept.inputs, [kept.get_layer("embedding").output, kept.get_layer("logits").output])

    def outputs(ids):
        embeddings, logits, truth = [], [], []
        if ids:
            for x, y in tf_dataset(url, {i: payload["label_of"][i] for i in ids}, image_size, input_size, batch):
                e, z = heads(x, training=False)
                embeddings.append(e.numpy().reshape(len(e), -1))
                logits.append(z.numpy())
                truth.append(y.numpy())
        if not truth:
            return np.zeros((0, 1), np.float32), np.zeros((0, len(classes)), np.float32), np.zeros(0, np.int64)
        return np.concatenate(embeddings), np.concatenate(logits), np.concatenate(truth).astype(np.int64)

    _, test_logits, test_truth = outputs(payload["test_ids"])
    validation_embeddings, validation_logits, validation_truth = outputs(payload["validation_ids"])
    rng = np.random.default_rng(payload["seed"])
    train_ids = sorted(set(payload["train_ids"]) - set(payload["validation_ids"]) if refitted else payload["train_ids"])
    sample = [train_ids[i] for i in sorted(rng.choice(len(train_ids), min(len(train_ids), 1000), replace=False))]
    train_embeddings, _, _ = outputs(sample)

    scores = held_out_scores(test_truth, test_logits.argmax(axis=1), classes, seed=payload["seed"])
    if carried:
        temperature, interval = carried["temperature"], tuple(carried["temperature_interval_95"])
        threshold, coverage = carried["uncertain_below_confidence"], carried["validation_confident_share"]
    else:
        temperature = fit_temperature(validation_logits, validation_truth)
        interval = temperature_interval(validation_logits, validation_truth)
        calibrated = softmax(validation_logits, temperature)
        threshold, coverage = confidence_threshold(calibrated.max(axis=1),
                                                   calibrated.argmax(axis=1) == validation_truth,
                                                   payload["uncertain_target"])
    test_calibrated = softmax(test_logits, temperature)
    test_confident = test_calibrated.max(axis=1) >= threshold
    test_right = test_calibrated.argmax(axis=1) == test_truth
    ood = OutOfDistribution.fit(train_embeddings, validation_embeddings, seed=payload["seed"])
    np.save(run / "reference_embeddings.npy", ood.reference)
    calibration = {
        "temperature": temperature, "temperature_prior_scale": TEMPERATURE_PRIOR_SCALE,
        # how far the validation images pin T down: a few dozen leave it uncertain by a third
        "temperature_interval_95": list(interval), "validation_images": int(len(validation_truth)),
        # the first model's, whose validation images the temperature was fitted on, when refitted
        "validation_ece_before": carried["validation_ece_before"] if carried else expected_calibration_error(
            softmax(validation_logits), validation_truth),
        "validation_ece_after": carried["validation_ece_after"] if carried else expected_calibration_error(
            calibrated, validation_truth),
        "test_ece_before": expected_calibration_error(softmax(test_logits), test_truth),
        "test_ece_after": expected_calibration_error(test_calibrated, test_truth),
        "uncertain_target_accuracy": payload["uncertain_target"], "uncertain_below_confidence": threshold,
        "validation_confident_share": coverage,
        "test_confident_share": float(test_confident.mean()) if len(test_truth) else None,
        "test_accuracy_of_confident": float(test_right[test_confident].mean()) if test_confident.any() else None,
        **({"carried_from_first_model": True} if carried else {}),
    }
    return {"history": state["history"], "best_epoch": kept_epoch, "kept": payload["keep"],
            "kept_checkpoint": kept_checkpoint,
            "best_validation_epoch": state["best"]["epoch"] if state.get("best") else None,
            "confusion": scores["confusion_matrix"], "test_images": int(len(test_truth)),
            "test_scores": scores, "calibration": calibration,
            "out_of_distribution": {"neighbours": ood.neighbours, "threshold": ood.threshold,
                                    "reference_images": int(len(ood.reference)),
                                    "validation_max_distance": ood.threshold / 1.5 if np.isfinite(ood.threshold) else None}}


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
