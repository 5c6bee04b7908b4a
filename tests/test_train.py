"""The train stage for real: Horovod on Spark with two Gloo ranks over the ingested Petastorm
dataset, a model that learns the synthetic categories, and what it leaves behind. (Resuming a run
whose rank was killed: tests/test_cluster.py.)"""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from semspark.config import CatalogConfig, Config, IngestConfig
from semspark.ingest.job import run_ingest
from semspark.synth.generate import generate
from semspark import registry
from semspark.train.job import TrainError, TrainRequest, run_training

pytestmark = pytest.mark.spark

CONFIG = Config(catalog=CatalogConfig(database="training"),
                ingest=IngestConfig(image_size=96, dataset_dir="datasets/training", files_per_task=64))
# The fast recipe as the demo trains it (compact_cnn at 64 px, warm-up and cosine decay, label
# smoothing, balanced class weights, weight decay), with two Horovod ranks of 16 images a step at
# 1e-3 each: a step of 32 images at 2e-3 in all.
FAST = TrainRequest(arch="compact_cnn", batch_size=16, learning_rate=1e-3, num_proc=2, patience=100)
CHANCE = 0.1
LEARNED_EPOCHS = 15


@pytest.fixture(scope="module")
def catalog(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("training_raw")
    generate(folder, 600, seed=5, width=384, height=288)
    run_ingest(spark, CONFIG, str(folder), labels="folders")
    return folder


def test_requests_are_checked_before_anything_runs():
    for bad, words in [(dict(arch="vgg"), "--arch"), (dict(mode="fine_tuning"), "--init"),
                       (dict(input_size=16), "--input-size"), (dict(epochs=0), "--epochs"),
                       (dict(init="imagenet"), "--init"), (dict(name="a/b"), "model name"),
                       (dict(optimizer="lbfgs"), "--optimizer"), (dict(learning_rate=-1e-3), "--learning-rate"),
                       (dict(schedule="step"), "--schedule"),
                       (dict(label_smoothing=1.0), "--label-smoothing"), (dict(weight_decay=-1), "--weight-decay"),
                       (dict(class_weighting="inverse"), "--class-weights"), (dict(keep="first"), "--keep"),
                       (dict(patience=-1), "--patience"), (dict(validation=-0.1), "--validation-fraction"),
                       (dict(validation=0.5), "--validation-fraction"), (dict(mixup=-0.4), "--mixup"), (dict(batch_size=-1), "--batch-size"),
                       (dict(arch="alexnet", input_size=64), "at least 67 for alexnet"),
                       # a refit trains on the validation images: none is left to stop early on or choose by
                       (dict(refit_with_validation=True), "--refit-with-validation"),
                       (dict(refit_with_validation=True, patience=0, keep="best"), "--refit-with-validation"),
                       (dict(refit_with_validation=True, patience=0, schedule="constant"), "--refit-with-validation")]:
        with pytest.raises(TrainError, match=words):
            dataclasses.replace(FAST, **bad).check()


@pytest.fixture(scope="module")
def learned(spark, catalog):
    return run_training(spark, CONFIG, dataclasses.replace(FAST, name="learn", epochs=LEARNED_EPOCHS))


def backbone_weights(path):
    from semspark.train.models import BACKBONE, load_saved_model
    return [w.numpy() for w in load_saved_model(path).get_layer(BACKBONE).weights]


def test_two_ranks_learn_the_categories_and_register_the_model(spark, learned):
    result = learned
    # Measured here: 0.9 to 0.95 test accuracy after 15 epochs (the first recipe, AlexNet at 75 px
    # with a constant rate: 0.4 to 0.5 after 20); 0.8 leaves a margin for seeds and machines.
    assert result.test_accuracy >= 0.8, result.lines()
    assert result.model_version == "learn/1"
    folder = registry.models_root() / "learn" / "1"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["class_names"] == sorted(metadata["class_names"]) and len(metadata["class_names"]) == 10
    assert metadata["architecture"] == "compact_cnn" and metadata["num_proc"] == 2
    assert metadata["input_size"] == 64 and metadata["recipe"]["schedule"] == "cosine"
    # under the cosine schedule the last epoch is registered, whichever was best on validation
    assert (metadata["kept"], metadata["best_epoch"], result.best_epoch) == ("last", LEARNED_EPOCHS, LEARNED_EPOCHS)
    assert 1 <= metadata["best_validation_epoch"] <= LEARNED_EPOCHS
    assert registry.file_sha256(folder / "model.keras") == registry.file_sha256(registry.run_dir(result.run_id) / "last.keras")
    assert (metadata["recipe"]["batch_size"], metadata["recipe"]["learning_rate"]) == (16, 1e-3)   # as given
    scores = metadata["test_scores"]
    assert scores["accuracy"]["value"] == pytest.approx(result.test_accuracy)
    assert scores["accuracy"]["low"] < result.test_accuracy <= scores["accuracy"]["high"]
    assert set(scores["precision"]) == set(scores["recall"]) == set(metadata["class_names"])
    # label smoothing leaves the model less sure than it is right: the temperature fitted on
    # validation corrects it on the test images (measured: ECE 0.17 -> 0.05)
    calibration = metadata["calibration"]
    assert calibration["test_ece_after"] < calibration["test_ece_before"]
    assert calibration["temperature_prior_scale"] == 0.5      # recorded with T: how T was fitted
    assert 0 < calibration["uncertain_below_confidence"] <= 1 and calibration["test_confident_share"] > 0.5
    assert metadata["model_sha256"] == registry.file_sha256(folder / "model.keras")
    assert sum(map(sum, metadata["confusion_matrix"])) == metadata["test_images"]
    assert metadata["test_accuracy"] == pytest.approx(result.test_accuracy)
    split = json.loads((registry.run_dir(result.run_id) / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"]) and not set(split["train"]) & set(split["validation"])
    low, high = calibration["temperature_interval_95"]       # from the split's validation images
    assert low < calibration["temperature"] < high and calibration["validation_images"] == len(split["validation"])
    for figure in ("accuracy.png", "confusion.png"):
        assert (folder / figure).stat().st_size > 10_000
    row = spark.table("training.models").filter("model_version = 'learn/1'").collect()[0]
    assert row["test_accuracy"] == pytest.approx(result.test_accuracy) and row["train_images"] == len(split["train"])
    # the figures a lab compares models by, queryable in SQL as the registry records them
    assert (row["temperature"], row["temperature_low"], row["temperature_high"]) == pytest.approx(
        (calibration["temperature"], low, high))
    assert (row["test_ece_before"], row["test_ece_after"]) == pytest.approx(
        (calibration["test_ece_before"], calibration["test_ece_after"]))
    assert row["test_macro_f1"] == pytest.approx(scores["macro_f1"]["value"])
    assert row["uncertain_below_confidence"] == pytest.approx(calibration["uncertain_below_confidence"])
    epochs = spark.table("training.training_history").filter("model_version = 'learn/1'").count()
    assert epochs == LEARNED_EPOCHS

    from semspark.train.models import load_saved_model
    model = load_saved_model(folder / "model.keras")
    assert model.get_layer("logits").output.shape[-1] == 10


def test_inference_sees_what_training_saw(spark, learned):
    """Scored through the real inference path (Spark, predict_batch_udf, the stored PNGs), the
    training images are classified at least as well as training itself classified them (the
    registered epoch's accuracy, in training mode: augmented, dropout on), and the test images exactly as the
    training run recorded. A model trained on other images than inference feeds it (the first
    release's contrast clipping: 0.74 in training mode, 0.19 in inference) fails both."""
    from semspark.infer.job import run_inference

    run_inference(spark, CONFIG, model=learned.model_version)
    split = json.loads((registry.run_dir(learned.run_id) / "split.json").read_text())
    rows = spark.sql("SELECT p.image_id, p.category = i.label AS right FROM training.predictions p "
                     "JOIN training.images i USING (image_id) "
                     f"WHERE p.model_version = '{learned.model_version}'").collect()
    right = {r["image_id"]: bool(r["right"]) for r in rows}
    train_accuracy = sum(right[i] for i in split["train"]) / len(split["train"])
    test_accuracy = sum(right[i] for i in split["test"]) / len(split["test"])
    state = json.loads((registry.run_dir(learned.run_id) / "state.json").read_text())
    training_mode = next(h["accuracy"] for h in state["history"] if h["epoch"] == learned.best_epoch)
    assert train_accuracy >= training_mode - 0.05, (train_accuracy, training_mode)
    assert abs(test_accuracy - learned.test_accuracy) <= 1 / len(split["test"]) + 1e-9


def test_feature_extraction_keeps_the_earlier_models_backbone_and_fine_tuning_then_moves_it(spark, learned):
    """One run of feature_extraction_then_fine_tuning from the learned model, one epoch per phase:
    the backbone after the first phase (run/feature_extraction.keras) is the earlier model's, bit
    for bit; after the second, most of its weights have moved. With mixup (its train step on two
    Horovod ranks, made again for the second phase's compile.) Kept: the epoch best on validation
    (--keep best), the one the run's state names, and its checkpoint is what is registered."""
    import numpy as np

    result = run_training(spark, CONFIG, dataclasses.replace(
        FAST, name="fe-ft", mode="feature_extraction_then_fine_tuning", init=f"model:{learned.model_version}",
        epochs=1, fine_tune_epochs=1, run_id="fe-then-ft", mixup=0.4, keep="best"))
    run = registry.run_dir("fe-then-ft")
    state = json.loads((run / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert result.best_epoch == state["best"]["epoch"]
    assert registry.file_sha256(registry.models_root() / "fe-ft" / "1" / "model.keras") == registry.file_sha256(run / "best.keras")
    source = backbone_weights(registry.models_root() / "learn" / "1" / "model.keras")
    extracted = backbone_weights(run / "feature_extraction.keras")   # after the first phase
    assert len(source) == len(extracted) > 5
    for a, b in zip(source, extracted):
        np.testing.assert_array_equal(a, b)
    last = backbone_weights(run / "last.keras")                      # after the fine-tuning epoch
    moved = [not (a == b).all() for a, b in zip(source, last)]
    assert sum(moved) > 0.5 * len(moved)
    metadata = json.loads((registry.models_root() / "fe-ft" / "1" / "metadata.json").read_text())
    assert (metadata["mode"], metadata["recipe"]["mixup"]) == ("feature_extraction_then_fine_tuning", 0.4)
    assert result.model_version == "fe-ft/1"


def test_a_two_phase_run_is_refitted_phase_by_phase(spark, learned):
    """The refit (the default) of feature_extraction_then_fine_tuning runs both phases again from the
    same start: its first phase (run/refit/feature_extraction.keras) keeps the earlier model's
    backbone bit for bit, its second moves it, and the refit's last checkpoint is registered,
    trained on the training and validation images."""
    import numpy as np

    result = run_training(spark, CONFIG, dataclasses.replace(
        FAST, name="fe-ft-refit", mode="feature_extraction_then_fine_tuning", init=f"model:{learned.model_version}",
        epochs=1, fine_tune_epochs=1, run_id="fe-ft-refit", patience=0))
    run = registry.run_dir("fe-ft-refit")
    split = json.loads((run / "split.json").read_text())
    assert result.refit and result.train_images == len(split["train"]) + len(split["validation"])
    assert [h["epoch"] for h in json.loads((run / "refit" / "state.json").read_text())["history"]] == [1, 2]
    source = backbone_weights(registry.models_root() / "learn" / "1" / "model.keras")
    for a, b in zip(source, backbone_weights(run / "refit" / "feature_extraction.keras")):
        np.testing.assert_array_equal(a, b)
    moved = [not (a == b).all() for a, b in zip(source, backbone_weights(run / "refit" / "last.keras"))]
    assert sum(moved) > 0.5 * len(moved)
    assert registry.file_sha256(registry.models_root() / "fe-ft-refit" / "1" / "model.keras") == \
        registry.file_sha256(run / "refit" / "last.keras")


def _logits_and_truth(model_path, ids, split, config=CONFIG):
    """A saved model's logits on these images, read from the stored dataset as inference-free Keras
    calls, with their labels from the run's split."""
    import numpy as np
    import tensorflow as tf

    from semspark.dataset import dataset_url, stored_image_size
    from semspark.train.data import tf_dataset
    from semspark.train.models import load_saved_model

    model = load_saved_model(model_path)
    heads = tf.keras.Model(model.inputs, model.get_layer("logits").output)
    index = {name: i for i, name in enumerate(split["class_names"])}
    url = dataset_url(config)
    logits, truth = [], []
    for x, y in tf_dataset(url, {i: index[split["labels"][i]] for i in ids}, stored_image_size(url),
                           model.input_shape[1], 32):
        logits.append(heads(x, training=False).numpy())
        truth.append(y.numpy())
    return np.concatenate(logits), np.concatenate(truth)


def test_a_refit_trains_on_validation_too_and_keeps_the_first_models_calibration(spark, catalog, caplog):
    """The default (--refit-with-validation): 0.2 of the images are held out for validation, the first
    model (run/last.keras) is trained and calibrated on them, then the recipe trains again on training
    + validation (run/refit) and that model is registered, with the temperature the first model's
    validation images choose (fitted here again from the first checkpoint), and test figures that are
    its own (recomputed here from the registered checkpoint and the split's test images)."""
    import hashlib

    import numpy as np

    from semspark.train.evaluation import expected_calibration_error, fit_temperature, softmax

    default = dataclasses.replace(FAST, name="refit", epochs=8, patience=0, run_id="refit-run")
    assert default.refit_with_validation is None and default.validation == 0   # nothing asked: the defaults
    result = run_training(spark, CONFIG, default)
    run = registry.run_dir("refit-run")
    split = json.loads((run / "split.json").read_text())
    saved = json.loads((run / "request.json").read_text())
    assert (saved["refit_with_validation"], saved["validation"]) == (True, 0.2)   # what the run did, resolved
    held = sum(len(split[side]) for side in ("train", "validation", "test"))
    assert 0.15 <= len(split["validation"]) / held <= 0.25
    folder = registry.models_root() / "refit" / "1"
    metadata = json.loads((folder / "metadata.json").read_text())
    trained_on = split["train"] + split["validation"]
    assert metadata["train_images"] == result.train_images == len(trained_on)
    assert metadata["train_image_ids_sha256"] == hashlib.sha256("\n".join(trained_on).encode()).hexdigest()
    registered = registry.file_sha256(folder / "model.keras")
    assert registered == registry.file_sha256(run / "refit" / "last.keras") != registry.file_sha256(run / "last.keras")
    refit_state = json.loads((run / "refit" / "state.json").read_text())
    assert [h["epoch"] for h in refit_state["history"]] == list(range(1, 9))
    assert all(h["val_accuracy"] is None for h in refit_state["history"])   # no validation image left out

    calibration = metadata["calibration"]
    first_logits, first_truth = _logits_and_truth(run / "last.keras", split["validation"], split)
    assert calibration["temperature"] == pytest.approx(fit_temperature(first_logits, first_truth), rel=1e-4)
    assert calibration["carried_from_first_model"] and calibration["validation_images"] == len(split["validation"])

    test_logits, test_truth = _logits_and_truth(folder / "model.keras", split["test"], split)
    accuracy = float(np.mean(test_logits.argmax(1) == test_truth))
    assert metadata["test_accuracy"] == pytest.approx(accuracy) and accuracy >= 0.5, result.lines()
    assert calibration["test_ece_after"] == pytest.approx(
        expected_calibration_error(softmax(test_logits, calibration["temperature"]), test_truth), abs=1e-6)
    first = metadata["refit_with_validation"]
    assert first["first_model_train_images"] == len(split["train"]) and first["train_images"] == len(trained_on)
    first_test_logits, first_test_truth = _logits_and_truth(run / "last.keras", split["test"], split)
    assert first["first_model_test_accuracy"] == pytest.approx(float(np.mean(first_test_logits.argmax(1) == first_test_truth)))
    assert any("refitted on training + validation" in line for line in result.lines())
    row = spark.table("training.models").filter("model_version = 'refit/1'").collect()[0]
    assert row["train_images"] == len(trained_on) and row["temperature"] == pytest.approx(calibration["temperature"])

    # a rerun of the finished run trains neither model again and starts no rank: each training's
    # outcome is read back (run/outcome.json, run/refit/outcome.json); it registers the same
    # checkpoint with the figures the ranks computed for the first registration
    written = [(run / side / "outcome.json").stat().st_mtime_ns for side in ("", "refit")]
    with caplog.at_level(logging.INFO, logger="semspark.train.job"):
        again = run_training(spark, CONFIG, dataclasses.replace(FAST, name="refit", run_id="refit-run"))
    assert again.model_version == "refit/2"
    assert registry.file_sha256(registry.models_root() / "refit" / "2" / "model.keras") == registered
    assert json.loads((run / "refit" / "state.json").read_text())["history"] == refit_state["history"]
    reused = [r.getMessage() for r in caplog.records if "its evaluation is reused" in r.getMessage()]
    assert [m.split(" of run")[0] for m in reused] == ["Training", "Refitting on training + validation"], reused
    assert [(run / side / "outcome.json").stat().st_mtime_ns for side in ("", "refit")] == written   # not rewritten
    again_metadata = json.loads((registry.models_root() / "refit" / "2" / "metadata.json").read_text())
    for figure in ("calibration", "test_scores", "out_of_distribution", "refit_with_validation", "test_accuracy",
                   "best_epoch", "history"):
        assert again_metadata.get(figure) == metadata.get(figure), figure

    # a run saved before the refit existed (no such key in its request) resumes as it was trained:
    # its first model registered, not refitted by today's default
    (run / "request.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "refit_with_validation"}))
    older = run_training(spark, CONFIG, default)
    assert not older.refit and older.train_images == len(split["train"])
    assert registry.file_sha256(registry.models_root() / "refit" / "3" / "model.keras") == \
        registry.file_sha256(run / "last.keras")


def test_a_finished_trainings_outcome_is_reused_only_while_what_it_was_computed_from_is_unchanged(tmp_path):
    """run/outcome.json answers a rerun only for the same payload and train code, the same kept
    checkpoint bytes and the same reference embeddings; anything else changed or missing means the
    ranks evaluate again."""
    from semspark.train.job import _finished_outcome, _outcome_key, _record_outcome

    payload = {"arch": "compact_cnn", "epochs": 3, "train_ids": ["a", "b"], "uncertain_target": 0.99}
    (tmp_path / "last.keras").write_bytes(b"weights")
    (tmp_path / "reference_embeddings.npy").write_bytes(b"reference")
    outcome = {"kept_checkpoint": "last.keras", "best_epoch": 3, "calibration": {"temperature": 0.8}}
    key = _outcome_key(payload)
    _record_outcome(tmp_path, key, outcome)                                     # what _train_ranks writes
    assert _finished_outcome(tmp_path, key) == outcome
    assert _outcome_key(dict(payload)) == key                                   # the same payload, rebuilt
    assert _outcome_key({**payload, "uncertain_target": 0.95}) != key          # anything the ranks are given
    assert _finished_outcome(tmp_path, _outcome_key({**payload, "epochs": 4})) is None
    (tmp_path / "last.keras").write_bytes(b"weights, trained on")
    assert _finished_outcome(tmp_path, key) is None
    (tmp_path / "last.keras").write_bytes(b"weights")
    assert _finished_outcome(tmp_path, key) == outcome
    (tmp_path / "reference_embeddings.npy").unlink()
    assert _finished_outcome(tmp_path, key) is None
    assert _finished_outcome(tmp_path / "never-trained", key) is None


# Why each odd image is out of distribution. The model's embedding alone places all three among
# the generated SEM categories (distances 0.03 to 0.13 against a threshold near 0.12, varying with
# the training run), so the appearance of the training images decides: colour where they are grey,
# no contrast where they all have some.
EXPECTED_OOD_REASON = {"blank_frame": "almost no contrast", "photograph": "colour image",
                       "optical_micrograph": "colour image"}


def test_images_unlike_the_training_set_are_flagged_out_of_distribution(spark, learned, tmp_path):
    """A blank frame, a photograph (matplotlib's sample portrait of Grace Hopper) and a stained
    optical micrograph (pink field, purple nuclei: what a light microscope's H&E slide looks like),
    ingested without labels and scored through the real path: their distance is recorded and each
    is flagged, with the reason of EXPECTED_OOD_REASON among its reasons; the test split's SEM
    images, never trained on but of the kind the model knows, almost never are."""
    import cv2
    import matplotlib.cbook
    import numpy as np

    from semspark.infer.job import run_inference

    odd = tmp_path / "odd"
    odd.mkdir()
    cv2.imwrite(str(odd / "blank_frame.png"), np.full((288, 384), 128, np.uint8))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        photo = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_COLOR)
    cv2.imwrite(str(odd / "photograph.jpg"), photo)
    rng = np.random.default_rng(0)
    slide = np.zeros((288, 384, 3), np.uint8)
    slide[:] = (200, 170, 235)                                       # eosin pink (BGR)
    for _ in range(60):
        centre = (int(rng.integers(0, 384)), int(rng.integers(0, 288)))
        cv2.ellipse(slide, centre, (int(rng.integers(6, 14)), int(rng.integers(5, 10))), float(rng.uniform(0, 180)),
                    0, 360, (150, 60, 110), -1)                       # haematoxylin purple nuclei
    cv2.imwrite(str(odd / "optical_micrograph.png"), cv2.GaussianBlur(slide, (5, 5), 1.5))
    run_ingest(spark, CONFIG, str(odd))
    run_inference(spark, CONFIG, model=learned.model_version)
    rows = spark.sql("SELECT regexp_extract(i.path, '[^/]+$', 0) AS file, p.image_id, p.out_of_distribution, "
                     "p.ood_distance, p.ood_reason FROM training.predictions p JOIN training.images i USING (image_id) "
                     f"WHERE p.model_version = '{learned.model_version}'").collect()
    odd_rows = {r["file"]: r for r in rows if r["file"].split(".")[0] in
                ("blank_frame", "photograph", "optical_micrograph")}
    assert len(odd_rows) == 3 and all(r["ood_distance"] > 0 for r in odd_rows.values())
    reasons = {name.split(".")[0]: row["ood_reason"] for name, row in odd_rows.items()}
    assert all(row["out_of_distribution"] for row in odd_rows.values()), reasons
    assert all(EXPECTED_OOD_REASON[name] in reasons[name] for name in reasons), reasons
    split = json.loads((registry.run_dir(learned.run_id) / "split.json").read_text())
    test_ids = set(split["test"])
    flagged = [r["out_of_distribution"] for r in rows if r["image_id"] in test_ids]
    assert len(flagged) == len(test_ids) and sum(flagged) <= 0.05 * len(flagged)
    assert all((r["ood_reason"] is None) == (not r["out_of_distribution"]) for r in rows)


def test_images_the_model_cannot_decide_are_flagged_uncertain(spark, learned, tmp_path):
    """Images made to be ambiguous for this model: three generated images of different categories
    mixed pixel by pixel, with the weights (a grid of 0.05, then 0.01 around its best) at which the
    model, run directly here on the pixels inference will see, is least sure: near where its
    decision changes, its top probability is shared with another (about half or less); the 12
    least sure of 40. Ingested and scored through the real path, every one is flagged uncertain
    (confidence under the threshold chosen on validation for 99% accuracy among the confident),
    while most of the test split's images are not."""
    import itertools

    import cv2
    import numpy as np
    import tensorflow as tf

    from semspark.infer.job import run_inference
    from semspark.synth.morphology import CATEGORIES, render
    from semspark.train.evaluation import softmax
    from semspark.train.models import load_saved_model

    folder = registry.models_root() / "learn" / "1"
    metadata = json.loads((folder / "metadata.json").read_text())
    threshold, temperature = (metadata["calibration"][k] for k in ("uncertain_below_confidence", "temperature"))
    model = load_saved_model(folder / "model.keras")
    heads = tf.keras.Model(model.inputs, model.get_layer("logits").output)
    stored, size = CONFIG.ingest.image_size, metadata["input_size"]
    weights = np.array([w for w in itertools.product(np.linspace(0, 1, 21), repeat=3) if abs(sum(w) - 1) < 1e-9])
    rng = np.random.default_rng(17)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    def least_sure_of(parts, mixes):
        candidates = (np.tensordot(mixes, parts, axes=1) * 255).round().astype(np.uint8)
        # what inference sees: ingest's INTER_AREA resize to the stored size, then the model's input size
        seen = np.stack([cv2.resize(c, (stored, stored), interpolation=cv2.INTER_AREA) for c in candidates])
        x = tf.image.resize(tf.constant(seen[..., None], tf.float32), (size, size), antialias=True)
        # called directly, not through predict(): eighty small batches, each paying predict's set-up
        confidence = softmax(heads(x, training=False).numpy(), temperature).max(axis=1)
        best = int(np.argmin(confidence))
        return float(confidence[best]), candidates[best], mixes[best]

    steps = np.linspace(-0.05, 0.05, 11)
    found = []
    for _ in range(40):
        parts = np.stack([render(CATEGORIES[k], rng, 2 * stored, 2 * stored)
                          for k in rng.choice(len(CATEGORIES), 3, replace=False)])
        _, _, mix = least_sure_of(parts, weights)
        # then finer around it (steps of 0.01): a decision can change between two grid points
        near = np.array([(mix[0] + a, mix[1] + b, 1 - mix[0] - a - mix[1] - b) for a in steps for b in steps])
        confidence, image, _ = least_sure_of(parts, near[(near >= 0).all(axis=1)])
        found.append((confidence, image))
    # a mixture can jump from one confident answer to another between grid points: the 12 least
    # sure of the 40 mixtures are the ones made to be undecided
    found.sort(key=lambda f: f[0])
    least_sure = [confidence for confidence, _ in found[:12]]
    for i, (_, image) in enumerate(found[:12]):
        cv2.imwrite(str(mixed / f"mixed_{i}.png"), image)
    print("least sure mixtures:", [round(c, 3) for c, _ in found])
    assert max(least_sure) < 0.55, [round(c, 3) for c, _ in found]
    run_ingest(spark, CONFIG, str(mixed))
    run_inference(spark, CONFIG, model=learned.model_version)
    rows = spark.sql("SELECT regexp_extract(i.path, '[^/]+$', 0) AS file, p.image_id, p.uncertain, p.confidence, "
                     "i.databar_px FROM training.predictions p JOIN training.images i USING (image_id) "
                     f"WHERE p.model_version = '{learned.model_version}'").collect()
    assert all(r["uncertain"] == (r["confidence"] < threshold) for r in rows)
    made = {r["file"]: r for r in rows if r["file"].startswith("mixed_")}
    assert len(made) == 12 and all(r["databar_px"] == 0 for r in made.values())
    scored = [made[f"mixed_{i}.png"]["confidence"] for i in range(12)]
    assert all(r["uncertain"] for r in made.values()), (threshold, scored)
    assert scored == pytest.approx(least_sure, abs=0.02), (scored, least_sure)   # the direct run's, through Spark
    split = json.loads((registry.run_dir(learned.run_id) / "split.json").read_text())
    test_ids = set(split["test"])
    plain = [r["uncertain"] for r in rows if r["image_id"] in test_ids]
    # the threshold depends on the run (0.69 to 0.99 seen here): at least half the test split is
    # confident, as the training run's own figure (test_confident_share) says
    assert len(plain) == len(test_ids) and sum(plain) < 0.5 * len(plain), (threshold, sum(plain))


def test_models_are_compared_on_one_plot(learned, tmp_path, capsys):
    """`semspark models compare` draws each run's test accuracy per epoch on one plot and prints
    their scores with intervals; `semspark models list` lists every version."""
    from semspark.cli import main

    out = tmp_path / "compare.png"
    assert main(["models", "compare", learned.model_version, "fe-ft/latest", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert learned.model_version in printed and "fe-ft/1" in printed and str(out) in printed
    accuracy = json.loads((registry.models_root() / "learn" / "1" / "metadata.json").read_text())["test_scores"]["accuracy"]
    assert f"{accuracy['value']:.3f} [{accuracy['low']:.3f}, {accuracy['high']:.3f}]" in printed
    calibration = json.loads((registry.models_root() / "learn" / "1" / "metadata.json").read_text())["calibration"]
    low, high = calibration["temperature_interval_95"]
    assert f"{calibration['temperature']:.2f} [{low:.2f}, {high:.2f}]" in printed
    assert out.stat().st_size > 10_000
    assert main(["models", "list"]) == 0
    assert learned.model_version in capsys.readouterr().out
    assert main(["models", "compare", "nosuchmodel/1"]) == 2
