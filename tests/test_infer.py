"""The infer stage for real: predict_batch_udf on local[2] over the ingested dataset, checked
against the same model run directly in the test; incremental reruns; promotion and the view."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from semspark.infer.job import InferError, production_model, promote, run_inference
from semspark.synth.generate import generate
from semspark import registry

from .conftest import register_copy

pytestmark = pytest.mark.spark

COMPACT_EMBEDDING = 256   # compact_cnn's global average pool over its last block's 256 filters
CATEGORIES = 10            # the synthetic generator's categories, all present in 40 images


def distinct_images(folder: Path) -> set[str]:
    """SHA-256 of every image file the generator wrote: what sem.images must hold."""
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg")}


@pytest.fixture(scope="module")
def first_scoring(spark, scoring):
    """Scored through TensorFlow Lite (forced: the model is not promoted, so auto would run
    TensorFlow): the tests below hold its predictions to the model run by Keras directly."""
    lite = dataclasses.replace(scoring.config, infer=dataclasses.replace(scoring.config.infer, engine="tflite"))
    return run_inference(spark, lite, scoring.model.model_version)


def predictions(spark, scoring, version=None):
    version = version or scoring.model.model_version
    return spark.sql(f"SELECT * FROM scoring.predictions WHERE model_version = '{version}'").toPandas()


def test_every_image_is_scored_once_with_arrays_of_the_right_length(spark, scoring, first_scoring):
    expected = distinct_images(scoring.first)
    assert first_scoring.scored == len(expected) and first_scoring.failures == 0
    rows = predictions(spark, scoring)
    assert sorted(rows["image_id"]) == sorted(expected)
    metadata = registry.read_json(Path(scoring.model.path) / "metadata.json")
    classes = metadata["class_names"]
    temperature = metadata["calibration"]["temperature"]
    threshold = metadata["calibration"]["uncertain_below_confidence"]
    assert len(classes) == CATEGORIES and 0.05 <= temperature <= 20
    for row in rows.itertuples():
        assert len(row.probabilities) == len(row.logits) == CATEGORIES
        assert len(row.embedding) == COMPACT_EMBEDDING
        assert row.category in classes
        assert row.category == classes[int(np.argmax(row.probabilities))]
        assert row.confidence == pytest.approx(max(row.probabilities), abs=1e-6)
        assert sum(row.probabilities) == pytest.approx(1.0, abs=1e-4)
        # the probabilities are the softmax of the logits over the fitted temperature (calibrated)
        exp = np.exp((np.array(row.logits) - max(row.logits)) / temperature)
        assert np.allclose(exp / exp.sum(), row.probabilities, atol=1e-5)
        assert row.uncertain == (row.confidence < threshold)
        assert row.out_of_distribution == (row.ood_distance > metadata["out_of_distribution"]["threshold"])


def test_predictions_agree_with_the_model_run_directly(spark, scoring, first_scoring):
    import cv2
    import pyarrow.parquet as pq
    import tensorflow as tf

    import semspark.train.models  # noqa: F401  registers semspark's layers with Keras
    from semspark.dataset import dataset_url

    stored = pq.read_table(dataset_url(scoring.config)[len("file://"):], columns=["image_id", "image"]).to_pydict()
    ids = stored["image_id"]
    images = np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in stored["image"]])
    assert images.shape[1:] == (96, 96)
    metadata = registry.read_json(Path(scoring.model.path) / "metadata.json")
    size = metadata["input_size"]
    x = tf.image.resize(tf.constant(images[..., None], tf.float32), (size, size), antialias=True)
    model = tf.keras.models.load_model(str(Path(scoring.model.path) / "model.keras"), compile=False)
    probe = tf.keras.Model(model.inputs, [model.get_layer("embedding").output, model.get_layer("logits").output])
    embedding, logits = probe.predict(x, verbose=0)
    # calibrated by hand: softmax of the logits over the temperature
    scaled = np.exp((logits - logits.max(axis=1, keepdims=True)) / metadata["calibration"]["temperature"])
    direct = scaled / scaled.sum(axis=1, keepdims=True)
    classes = metadata["class_names"]

    rows = predictions(spark, scoring).set_index("image_id")
    for i, image_id in enumerate(ids):
        row = rows.loc[image_id]
        assert row["category"] == classes[int(np.argmax(direct[i]))]
        assert np.allclose(row["probabilities"], direct[i], atol=1e-4)
        assert np.allclose(row["embedding"], embedding[i], rtol=1e-3, atol=1e-3)


def test_the_engine_auto_picks(spark, scoring, first_scoring):
    """auto: TensorFlow Lite for small CPU tasks of a version that has its conversion (made by
    promote, or here by the forced first scoring), TensorFlow for large tasks and for versions
    without one; the conversion is kept beside the model with the checksum scoring verifies."""
    from semspark.infer.job import scoring_model

    version = scoring.model.model_version
    weights = registry.inference_weights(version)[1]
    engine, data = scoring_model(spark, scoring.config, version, images_per_task=40)
    record = registry.read_json(Path(scoring.model.path) / "inference_tflite.json")
    assert engine == "tflite" and hashlib.sha256(data).hexdigest() == record["sha256"]
    limit = scoring.config.infer.tflite_max_images_per_task
    assert scoring_model(spark, scoring.config, version, images_per_task=limit + 1) == ("tensorflow", weights)
    forced = dataclasses.replace(scoring.config, infer=dataclasses.replace(scoring.config.infer, engine="tensorflow"))
    assert scoring_model(spark, forced, version, images_per_task=40) == ("tensorflow", weights)
    unconverted = register_copy(scoring.model.path, "unconverted")
    assert scoring_model(spark, scoring.config, unconverted, images_per_task=40)[0] == "tensorflow"
    assert not (registry.resolve(unconverted)[2] / registry.INFERENCE_TFLITE).exists()


def test_resize_matrices_are_tensorflows_antialiased_resize():
    import tensorflow as tf

    from semspark.infer.predictor import resize_matrix

    rng = np.random.default_rng(0)
    for side, size in ((299, 64), (299, 75), (96, 64), (128, 299), (100, 100), (257, 227)):
        images = rng.integers(0, 256, (3, side, side)).astype(np.float32)
        expected = tf.image.resize(images[..., None], (size, size), antialias=True).numpy()[..., 0]
        matrix = resize_matrix(side, size)
        assert np.abs(matrix @ images @ matrix.T - expected).max() < 0.01, (side, size)


def test_both_engines_give_the_same_predictions(scoring, first_scoring):
    """make_predict_fn as a Spark worker runs it, once per engine, on the stored PNGs: the TFLite
    flat buffer (resize by matrices) against TensorFlow rebuilding the model from its weights."""
    import pyarrow.parquet as pq

    from semspark.dataset import dataset_url
    from semspark.infer.predictor import ModelPayload, make_predict_fn

    stored = pq.read_table(dataset_url(scoring.config)[len("file://"):], columns=["image"]).column("image").to_pylist()
    version = scoring.model.model_version
    metadata = registry.read_json(Path(scoring.model.path) / "metadata.json")
    outputs = {}
    for engine, data in (("tflite", registry.inference_tflite(version)),
                         ("tensorflow", registry.inference_weights(version)[1])):
        payload = ModelPayload(model_version=version, sha256=hashlib.sha256(data).hexdigest(),
                               class_names=tuple(metadata["class_names"]), input_size=metadata["input_size"],
                               architecture=metadata["architecture"], threads=1, engine=engine)
        predict = make_predict_fn(payload, SimpleNamespace(value=data))()
        outputs[engine] = predict(np.array(stored + [b"\x89PNG broken"], dtype=object))
    lite, full = outputs["tflite"], outputs["tensorflow"]
    assert list(lite["category"]) == list(full["category"]) and lite["category"][-1] is None
    assert np.allclose(lite["logits"], full["logits"], atol=1e-4)
    assert np.allclose(lite["embedding"], full["embedding"], atol=1e-4)
    with pytest.raises(ValueError, match="SHA-256"):
        broken = ModelPayload(**{**payload.__dict__, "engine": "tflite", "sha256": "0" * 64})
        make_predict_fn(broken, SimpleNamespace(value=registry.inference_tflite(version)))()


def test_a_rerun_scores_only_new_images(spark, scoring, first_scoring, tmp_path):
    from semspark.ingest.job import run_ingest

    before = distinct_images(scoring.first)
    again = run_inference(spark, scoring.config, scoring.model.model_version)
    assert (again.scored, again.already_scored) == (0, len(before))
    assert again.examined == 0            # every ingest run is recorded as finished by this version

    more = tmp_path / "more"
    generate(more, 12, seed=22, width=384, height=288)
    night = run_ingest(spark, scoring.config, str(more), labels="folders")
    new = distinct_images(more) - before
    assert new
    added = run_inference(spark, scoring.config, scoring.model.model_version)
    assert added.scored == len(new)
    assert added.examined == len(new)     # only the night's images were looked at
    rows = predictions(spark, scoring)
    assert len(rows) == rows["image_id"].nunique() == len(before | new)
    latest_run = rows[rows["infer_run"] == added.run_id]
    assert set(latest_run["image_id"]) == new
    # the pixels came only from the dataset files that hold a new image (found here with pyarrow)
    import pyarrow.parquet as pq

    from semspark.dataset import dataset_url

    root = Path(dataset_url(scoring.config)[len("file://"):])
    files = sorted(root.glob("scale_bin=*/*.parquet"))
    holding = [f for f in files if new & set(pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist())]
    assert (added.dataset_files_read, added.dataset_files) == (len(holding), len(files))
    assert len(holding) < len(files)
    from semspark.dataset import run_of_file
    assert {run_of_file(f.name) for f in holding} == {night.run_id}   # found by the run's file names


def test_a_night_scored_in_the_driver_matches_spark_tasks(spark, scoring, first_scoring, tmp_path):
    """A night's few new images are scored in the driver (local mode, TensorFlow Lite, no Spark
    job); the same model registered again is scored in Spark tasks (TensorFlow: a new version
    looks at everything): every column of every night image agrees, the flags and reasons exactly."""
    from semspark.ingest.job import run_ingest

    night = tmp_path / "night"
    generate(night, 10, seed=23, width=384, height=288)
    run_ingest(spark, scoring.config, str(night), labels="folders")
    new = distinct_images(night)
    version = scoring.model.model_version
    in_driver = run_inference(spark, scoring.config, version)
    assert (in_driver.scored_in, in_driver.scored) == ("driver", len(new))
    assert in_driver.dataset_files_read < in_driver.dataset_files
    copy = register_copy(scoring.model.path, "scorer-in-tasks")
    in_tasks = run_inference(spark, scoring.config, copy)
    assert in_tasks.scored_in == "tasks"
    driver_rows = predictions(spark, scoring, version).set_index("image_id").loc[sorted(new)]
    task_rows = predictions(spark, scoring, copy).set_index("image_id").loc[sorted(new)]
    assert list(driver_rows["infer_run"].unique()) == [in_driver.run_id]
    for column in ("category", "uncertain", "out_of_distribution", "ood_reason"):
        assert list(driver_rows[column]) == list(task_rows[column]), column
    for column in ("probabilities", "logits", "embedding"):
        assert np.allclose(np.stack(driver_rows[column]), np.stack(task_rows[column]), atol=1e-4), column
    for column in ("confidence", "ood_distance"):
        assert np.allclose(driver_rows[column].astype(float), task_rows[column].astype(float), atol=1e-4,
                           equal_nan=True), column
    assert driver_rows["predicted_at"].notna().all()


def table_rows(spark, table: str, columns: list[str]):
    """A catalog table's rows read from its Parquet files with pyarrow (not through Spark)."""
    from urllib.parse import unquote

    import pyarrow as pa
    import pyarrow.parquet as pq

    spark.catalog.refreshTable(table)
    files = [unquote(f[len("file:"):]) for f in spark.table(table).inputFiles()]
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).to_pandas() if files else None


def test_finished_ingest_runs_are_recorded_per_model(spark, scoring, first_scoring):
    """sem.scored_runs holds each ingest run with as many images as sem.images' files hold for it."""
    images = table_rows(spark, "scoring.images", ["ingest_run"])
    recorded = table_rows(spark, "scoring.scored_runs", ["model_version", "ingest_run", "images"])
    mine = recorded[recorded["model_version"] == scoring.model.model_version]
    expected = images["ingest_run"].value_counts().to_dict()
    assert mine.groupby("ingest_run")["images"].max().to_dict() == expected   # (0: looked at, before writing)


def test_an_untrusted_record_costs_a_look_never_a_missed_or_doubled_image(spark, scoring, first_scoring):
    """A crash after the predictions and before the record; a run that holds more images than its
    record (an ingest seen half-committed); an image without pixels: each is looked at again."""
    from pyspark.sql import functions as F

    from semspark.catalog import insert, rewrite_table
    from semspark.schema import IMAGES, SCORED_RUNS

    spec = register_copy(scoring.model.path, "scorer-records")
    first = run_inference(spark, scoring.config, spec)
    everything = spark.table("scoring.images").count()
    assert first.scored == first.examined == everything

    def records():
        rows = table_rows(spark, "scoring.scored_runs", ["model_version", "ingest_run", "images"])
        return rows[rows["model_version"] == spec]

    def finished() -> set:     # rows of 0 images say "looked at", not finished
        rows = records()
        return set(rows[rows["images"] > 0]["ingest_run"])

    # the record lost (killed between the two inserts): the rerun looks at everything, scores nothing
    rewrite_table(spark, "scoring", SCORED_RUNS, spark.table("scoring.scored_runs")
                  .filter(F.col("model_version") != spec), "test: a lost record")
    rerun = run_inference(spark, scoring.config, spec)
    assert (rerun.examined, rerun.scored, rerun.already_scored) == (everything, 0, everything)
    assert finished() == {r[0] for r in spark.table("scoring.images").select("ingest_run").distinct().collect()}

    # a record of fewer images than its run holds, and one image of it unscored: that run is looked at
    run = records()[records()["images"] > 0].iloc[0]
    victim = (spark.table("scoring.images").filter(F.col("ingest_run") == run["ingest_run"])
              .select("image_id").first()["image_id"])
    rewrite_table(spark, "scoring", SCORED_RUNS, spark.table("scoring.scored_runs").withColumn(
        "images", F.when((F.col("model_version") == spec) & (F.col("ingest_run") == run["ingest_run"]),
                         F.col("images") - 1).otherwise(F.col("images"))), "test: a short record")
    from semspark.schema import PREDICTIONS
    rewrite_table(spark, "scoring", PREDICTIONS, spark.table("scoring.predictions").filter(
        (F.col("model_version") == spec) & (F.col("image_id") != victim)), "test: one image unscored",
        partitions_only=True)
    healed = run_inference(spark, scoring.config, spec)
    assert (healed.examined, healed.scored) == (run["images"], 1)
    rows = predictions(spark, scoring, spec)
    assert len(rows) == rows["image_id"].nunique() == everything

    # an image without pixels (in sem.images only): its run stays open, the others stay finished
    ghost = spark.table("scoring.images").limit(1).withColumn("image_id", F.lit("0" * 64)) \
        .withColumn("ingest_run", F.lit("ghost-run"))
    insert(ghost, "scoring", IMAGES)
    try:
        for _ in range(2):
            missing = run_inference(spark, scoring.config, spec)
            assert (missing.examined, missing.scored, missing.missing_pixels) == (1, 0, 1)
            assert "ghost-run" not in finished()
    finally:
        rewrite_table(spark, "scoring", IMAGES, spark.table("scoring.images").filter(F.col("image_id") != "0" * 64),
                      "test: the ghost removed")


def test_some_bins_then_all_scores_each_image_once(spark, scoring, first_scoring):
    """A version that scored some bins first, its records lost (as before scored_runs), then some
    more bins, then all: each image scored once, none twice (the runs it may have predictions of are
    looked at, the others are known to have none)."""
    from pyspark.sql import functions as F

    from semspark.catalog import rewrite_table
    from semspark.schema import SCORED_RUNS

    spec = register_copy(scoring.model.path, "scorer-bins-then-all")
    bins = sorted(r[0] for r in spark.table("scoring.images").select("scale_bin").distinct().collect())
    assert len(bins) >= 3
    run_inference(spark, scoring.config, spec, scale_bins=bins[:1])
    rewrite_table(spark, "scoring", SCORED_RUNS, spark.table("scoring.scored_runs")
                  .filter(F.col("model_version") != spec), "test: records lost")
    run_inference(spark, scoring.config, spec, scale_bins=bins[1:2])
    last = run_inference(spark, scoring.config, spec)
    everything = spark.table("scoring.images").count()
    in_first_two = spark.table("scoring.images").filter(F.col("scale_bin").isin(bins[:2])).count()
    assert last.scored == everything - in_first_two
    rows = predictions(spark, scoring, spec)
    assert len(rows) == rows["image_id"].nunique() == everything


def test_images_in_files_without_a_run_name_are_found_by_their_ids(spark, scoring, first_scoring):
    """A file that does not carry its ingest run (compaction's and rescale's, or from before run
    names): scoring reads every file's ids and still finds every image."""
    import shutil

    from semspark.dataset import dataset_url, run_of_file, update_metadata
    from semspark.schema import image_unischema

    root = Path(dataset_url(scoring.config)[len("file://"):])
    files = sorted(root.glob("scale_bin=*/*.parquet"))
    named = [f for f in files if run_of_file(f.name)]
    assert named == files                            # every ingest names its files
    shutil.move(named[0], named[0].with_name("part-00000-5e1f0c2a-c000.snappy.parquet"))   # as Spark names them
    update_metadata(root, image_unischema(scoring.config.ingest.image_size))
    everything = spark.table("scoring.images").count()
    summary = run_inference(spark, scoring.config, register_copy(scoring.model.path, "scorer-unnamed"))
    assert (summary.scored, summary.missing_pixels) == (everything, 0)
    assert summary.dataset_files_read == summary.dataset_files == len(files)


def test_scale_bins_limit_what_is_scored(spark, scoring, first_scoring):
    spec = register_copy(scoring.model.path, "scorer-bins")  # scores of scorer/1 stay as they are
    bins = ["1um", "2um"]
    in_bins = spark.sql("SELECT count(*) FROM scoring.images WHERE scale_bin IN ('1um', '2um')").first()[0]
    assert in_bins > 0
    summary = run_inference(spark, scoring.config, spec, scale_bins=bins)
    assert summary.scored == summary.candidates == in_bins
    scored_bins = spark.sql(f"SELECT DISTINCT i.scale_bin FROM scoring.predictions p JOIN scoring.images i "
                            f"USING (image_id) WHERE p.model_version = '{spec}'").toPandas()
    assert set(scored_bins["scale_bin"]) <= set(bins)


def test_promotion_points_the_view_at_the_production_model(spark, scoring, first_scoring):
    config = scoring.config
    assert production_model(spark, "scoring") is None
    with pytest.raises(InferError, match="semspark promote"):
        run_inference(spark, config, None)  # no --model and no production model
    assert promote(spark, config, "scorer/latest") == scoring.model.model_version
    assert production_model(spark, "scoring") == scoring.model.model_version
    view = spark.sql("SELECT image_id, category, model_version FROM scoring.latest_predictions").toPandas()
    images = spark.sql("SELECT count(*) FROM scoring.images").first()[0]
    assert len(view) == images
    assert view["category"].notna().all()
    assert set(view["model_version"]) == {scoring.model.model_version}


def test_a_model_changed_on_disk_is_refused(scoring):
    source = Path(scoring.model.path)
    version, folder = registry.new_version("tampered")
    shutil.copy(source / "metadata.json", folder / "metadata.json")
    data = bytearray((source / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.keras").write_bytes(bytes(data))
    with pytest.raises(registry.RegistryError, match="SHA-256"):
        registry.verified_model(f"tampered/{version}")


def test_a_broken_stored_image_is_reported_not_written(scoring):
    """The worker's decoder: one undecodable PNG gets an error, the others are scored."""
    import cv2

    from semspark.infer.predictor import decode_png_batch

    good = cv2.imencode(".png", np.full((8, 8), 7, np.uint8))[1].tobytes()
    from semspark.infer.predictor import NO_PIXELS

    stack, errors = decode_png_batch(np.array([good, b"\x89PNG broken", good, None], dtype=object))
    assert stack.shape == (4, 8, 8) and stack[0, 0, 0] == 7 and stack[1].max() == 0
    assert errors[0] is None and errors[2] is None and "decoded" in errors[1]
    assert errors[3] == NO_PIXELS  # in sem.images, not in the dataset: a left join gives NULL


def test_out_of_distribution_reasons_by_hand():
    """The flag and reason of inference on rows made by hand: the embedding's verdict, colour over
    the limit, contrast under it, both, neither, images ingested before chroma and contrast existed
    (NULL: only the embedding decides), a model without a reference (NULL: only the appearance
    does), and a failed row (NULL flag and reason)."""
    from semspark.infer.predictor import verdicts
    from semspark.train.evaluation import AppearanceBounds

    nan = float("nan")
    bounds = AppearanceBounds(training_chroma_max=0.01, training_contrast_min=0.08)  # limits 0.05, 0.04
    rows = [  # name, embedding flag, distance, chroma, contrast, failed
        ("typical", 0.0, 0.05, 0.0, 0.2, False),
        ("far", 1.0, 0.3, 0.0, 0.2, False),
        ("colour", 0.0, 0.05, 0.2, 0.2, False),
        ("flat", 0.0, 0.05, 0.0, 0.01, False),
        ("colour_and_far", 1.0, 0.3, 0.2, 0.2, False),
        ("unmeasured", 0.0, 0.05, nan, nan, False),
        ("unmeasured_far", 1.0, 0.3, None, None, False),
        ("failed", nan, nan, 0.2, 0.2, True),
    ]

    def judged(flags, threshold, appearance):
        flag, reason = verdicts(np.array(flags, dtype=np.float64), np.array([r[2] for r in rows]),
                                np.array([r[3] for r in rows], dtype=object), np.array([r[4] for r in rows], dtype=object),
                                np.array([r[5] for r in rows]), threshold, appearance)
        return {r[0]: (None if np.isnan(f) else bool(f), why) for r, f, why in zip(rows, flag, reason)}

    got = judged([r[1] for r in rows], 0.12, bounds)
    assert got["typical"] == (False, None) and got["unmeasured"] == (False, None)
    assert got["far"] == (True, "unlike the training images to the model (embedding distance 0.300, over 0.120)")
    assert got["colour"] == (True, "colour image (chroma 0.200, the training images at most 0.010)")
    assert got["flat"] == (True, "almost no contrast (contrast 0.010, the training images at least 0.080)")
    assert got["colour_and_far"][0] and got["colour_and_far"][1].count("; ") == 1
    assert got["unmeasured_far"][0] is True and got["failed"] == (None, None)
    # a model registered without reference embeddings: the embedding's flag is unknown, the appearance decides
    got = judged([nan] * len(rows), None, bounds)
    assert got["typical"] == (False, None) and got["colour"][0] is True and got["unmeasured"] == (None, None)
    # a model registered before calibration: no reference, no appearance bounds, so no verdict
    got = judged([nan] * len(rows), None, AppearanceBounds.from_dict(None))
    assert set(got.values()) == {(None, None)}
