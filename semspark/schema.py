"""Schemas declared once: the catalog tables and the Petastorm image dataset.

Code refers to columns through these definitions; ``catalog.ensure_tables`` creates the tables
from them, so a table's DDL and the rows written into it cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pyspark.sql.types import (ArrayType, BinaryType, BooleanType, DoubleType, FloatType, IntegerType, LongType,
                               StringType, StructField, StructType, TimestampType)


@dataclass(frozen=True)
class TableSpec:
    name: str                       # without the database
    schema: StructType              # every column, partition columns last
    partition_by: tuple[str, ...] = ()
    comment: str = ""

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema.fields]


def _fields(*spec: tuple[str, object]) -> StructType:
    return StructType([StructField(name, dtype, True) for name, dtype in spec])


IMAGES = TableSpec(
    name="images",
    schema=_fields(
        ("image_id", StringType()), ("path", StringType()), ("format", StringType()),
        ("width", IntegerType()), ("height", IntegerType()), ("bit_depth", IntegerType()),
        ("color", StringType()), ("scale_value", DoubleType()), ("scale_unit", StringType()),
        ("scale_bar_px", DoubleType()), ("nm_per_px", DoubleType()), ("scale_source", StringType()),
        ("scale_mismatch", BooleanType()), ("metadata_nm_per_px", DoubleType()),
        ("scale_label_text", StringType()), ("databar_px", IntegerType()), ("phash", StringType()),
        ("label", StringType()), ("ingested_at", TimestampType()), ("ingest_run", StringType()),
        ("scale_confidence", StringType()), ("scale_reason", StringType()), ("scale_reader", IntegerType()),
        ("chroma", DoubleType()), ("contrast", DoubleType()),
        ("scale_bin", StringType()),
    ),
    partition_by=("scale_bin",),
    comment="One row per distinct image (SHA-256 of its bytes), with its scale and the label it was ingested "
            "with (the current label is in current_labels).",
)

FILES = TableSpec(
    name="files",
    schema=_fields(
        ("path", StringType()), ("image_id", StringType()), ("role", StringType()),
        ("size", LongType()), ("modification_time", TimestampType()),
        ("ingested_at", TimestampType()), ("ingest_run", StringType()),
    ),
    comment="One row per ingested file path (role image, or sidecar of an image).",
)

QUARANTINE = TableSpec(
    name="quarantine",
    schema=_fields(
        ("path", StringType()), ("sha256", StringType()), ("size", LongType()),
        ("modification_time", TimestampType()), ("stage", StringType()), ("reason", StringType()),
        ("ingested_at", TimestampType()), ("ingest_run", StringType()), ("retryable", BooleanType()),
    ),
    comment="One row per file that could not be ingested, with the stage and the reason; retryable ones "
            "(read errors) are tried again by every ingest.",
)

SCALE_CORRECTIONS = TableSpec(
    name="scale_corrections",
    schema=_fields(
        ("image_id", StringType()), ("scale_value", DoubleType()), ("scale_unit", StringType()),
        ("scale_bar_px", DoubleType()), ("source", StringType()), ("corrected_at", TimestampType()),
        ("rescale_run", StringType()),
    ),
    comment="Scale corrections given by people (a CSV to semspark rescale); the latest per image wins, "
            "also over later re-readings.",
)

LABELS = TableSpec(
    name="labels",
    schema=_fields(
        ("image_id", StringType()), ("label", StringType()), ("source", StringType()),
        ("labelled_by", StringType()), ("labelled_at", TimestampType()), ("label_run", StringType()),
    ),
    comment="Every labelling of an image (source folders, csv or person; an empty label removes it); the "
            "latest per image is its current label (the view current_labels), which training reads.",
)

INGEST_TABLES = (IMAGES, FILES, QUARANTINE, SCALE_CORRECTIONS)   # the last: people's scale corrections (web app, rescale)

# What a rescale task returns for each image it read again.
RESCALED = _fields(
    ("image_id", StringType()), ("read_error", StringType()), ("scale_value", DoubleType()),
    ("scale_unit", StringType()), ("scale_bar_px", DoubleType()), ("nm_per_px", DoubleType()),
    ("scale_source", StringType()), ("scale_mismatch", BooleanType()), ("metadata_nm_per_px", DoubleType()),
    ("scale_label_text", StringType()), ("scale_confidence", StringType()), ("scale_reason", StringType()),
    ("scale_reader", IntegerType()), ("scale_bin", StringType()),
    # the content above the databar, cut again: the image only when the databar's height changed
    ("databar_px", IntegerType()), ("phash", StringType()), ("chroma", DoubleType()), ("contrast", DoubleType()),
    ("image", BinaryType()),
)

MODELS = TableSpec(
    name="models",
    schema=_fields(
        ("model_version", StringType()), ("name", StringType()), ("version", IntegerType()),
        ("arch", StringType()), ("mode", StringType()), ("init", StringType()),
        ("input_size", IntegerType()), ("classes", StringType()), ("scale_bins", StringType()),
        ("train_images", IntegerType()), ("validation_images", IntegerType()), ("test_images", IntegerType()),
        ("best_epoch", IntegerType()), ("validation_accuracy", DoubleType()), ("test_accuracy", DoubleType()),
        ("num_proc", IntegerType()), ("run_id", StringType()), ("path", StringType()),
        ("model_sha256", StringType()), ("git_commit", StringType()), ("trained_at", TimestampType()),
        # the held-out figures a lab compares models by, from the model's metadata (registry); null
        # for versions registered before semspark recorded them
        ("test_macro_f1", DoubleType()), ("temperature", DoubleType()), ("temperature_low", DoubleType()),
        ("temperature_high", DoubleType()), ("test_ece_before", DoubleType()), ("test_ece_after", DoubleType()),
        ("uncertain_below_confidence", DoubleType()),
    ),
    comment="One row per trained model version (NAME/N).",
)

TRAINING_HISTORY = TableSpec(
    name="training_history",
    schema=_fields(
        ("model_version", StringType()), ("epoch", IntegerType()), ("loss", DoubleType()),
        ("accuracy", DoubleType()), ("val_accuracy", DoubleType()), ("test_accuracy", DoubleType()),
    ),
    comment="Per-epoch metrics of every model version.",
)

TRAIN_TABLES = (MODELS, TRAINING_HISTORY)

PREDICTIONS = TableSpec(
    name="predictions",
    schema=_fields(
        ("image_id", StringType()), ("category", StringType()), ("confidence", DoubleType()),
        ("probabilities", ArrayType(FloatType())), ("logits", ArrayType(FloatType())),
        ("embedding", ArrayType(FloatType())), ("predicted_at", TimestampType()), ("infer_run", StringType()),
        ("uncertain", BooleanType()), ("out_of_distribution", BooleanType()), ("ood_distance", DoubleType()),
        ("ood_reason", StringType()),
        ("model_version", StringType()),
    ),
    partition_by=("model_version",),
    comment="One row per image and model version that scored it: category, calibrated probabilities and "
            "confidence, uncertain and out-of-distribution flags, logits, embedding.",
)

PROMOTIONS = TableSpec(
    name="promotions",
    schema=_fields(("model_version", StringType()), ("stage", StringType()), ("promoted_at", TimestampType())),
    comment="Every promotion of a model version; the latest one of stage production is the production model.",
)

RUN_EVENTS = TableSpec(
    name="run_events",
    schema=_fields(
        ("run_id", StringType()), ("kind", StringType()), ("input", StringType()), ("status", StringType()),
        ("started_at", TimestampType()), ("ended_at", TimestampType()), ("files_listed", LongType()),
        ("already_known", LongType()), ("new_images", LongType()), ("duplicate_files", LongType()),
        ("sidecars", LongType()), ("quarantined", LongType()), ("model_version", StringType()),
        ("scored", LongType()), ("score_failures", LongType()), ("message", StringType()),
        ("recorded_at", TimestampType()),
    ),
    comment="Append-only log of nightly runs (one row when a run starts, one when it ends); "
            "the view runs shows the latest row of each run.",
)

SCORED_RUNS = TableSpec(
    name="scored_runs",
    schema=_fields(
        ("model_version", StringType()), ("ingest_run", StringType()), ("images", LongType()),
        ("infer_run", StringType()), ("recorded_at", TimestampType()),
    ),
    comment="Ingest runs whose every image (images: how many there were) a model version has scored: its "
            "next runs look only at the other runs' images, so a night's scoring reads the night, not the "
            "repository. A run that later holds more images than recorded is looked at again.",
)

INFER_TABLES = (PREDICTIONS, PROMOTIONS, SCORED_RUNS)

CLUSTER_SCORES = TableSpec(
    name="cluster_scores",
    schema=_fields(
        ("model_version", StringType()), ("method", StringType()), ("k", IntegerType()),
        ("clusters_obtained", IntegerType()), ("nmi", DoubleType()), ("ami", DoubleType()),
        ("labelled_images", IntegerType()), ("images", IntegerType()), ("analysis_run", StringType()),
        ("analyzed_at", TimestampType()), ("analysis", StringType()),
    ),
    partition_by=("analysis",),
    comment="NMI (and AMI on a grid of k) of every level of every hierarchy, and of the good and uniform "
            "scenarios, against the labelled images; one partition per analysis (model, bins, features, "
            "coding dimension, category), replaced when the same analysis runs again.",
)

CLUSTERS = TableSpec(
    name="clusters",
    schema=_fields(
        ("image_id", StringType()), ("model_version", StringType()), ("method", StringType()),
        ("k", IntegerType()), ("cluster", IntegerType()), ("analysis_run", StringType()),
        ("analysis", StringType()),
    ),
    partition_by=("analysis",),
    comment="Flat clusters of every analysed image for the configured k, per method.",
)

CLUSTER_NAMES = TableSpec(
    name="cluster_names",
    schema=_fields(
        ("analysis", StringType()), ("analysis_run", StringType()), ("method", StringType()), ("k", IntegerType()),
        ("cluster", IntegerType()), ("name", StringType()), ("named_by", StringType()), ("named_at", TimestampType()),
        ("naming_run", StringType()),
    ),
    comment="Names people gave clusters in the web app, as proposed sub-categories: the latest per analysis "
            "run, method, k and cluster holds (an empty name removes it). A name belongs to the analysis run "
            "whose clusters it names; running the analysis again numbers the clusters anew.",
)

ANALYSIS_TABLES = (CLUSTER_SCORES, CLUSTERS, CLUSTER_NAMES)

# What the prediction UDF returns for each image (error is set, and the rest empty, when the stored
# image could not be decoded).
PREDICTION = StructType([
    StructField("category", StringType(), True), StructField("confidence", DoubleType(), True),
    StructField("probabilities", ArrayType(FloatType()), True), StructField("logits", ArrayType(FloatType()), True),
    StructField("embedding", ArrayType(FloatType()), True), StructField("error", StringType(), True),
    # flags as 1.0 / 0.0 / NaN (unknown): predict_batch_udf returns no booleans; the job casts them
    StructField("uncertain", DoubleType(), True), StructField("out_of_distribution", DoubleType(), True),
    StructField("ood_distance", DoubleType(), True), StructField("ood_reason", StringType(), True),
])

# What a Spark task returns for each file it processed: an image or a quarantine outcome.
PROCESSED = _fields(
    ("outcome", StringType()), ("path", StringType()), ("sha256", StringType()), ("size", LongType()),
    ("modification_time", TimestampType()), ("stage", StringType()), ("reason", StringType()),
    ("format", StringType()), ("width", IntegerType()), ("height", IntegerType()),
    ("bit_depth", IntegerType()), ("color", StringType()), ("scale_value", DoubleType()),
    ("scale_unit", StringType()), ("scale_bar_px", DoubleType()), ("nm_per_px", DoubleType()),
    ("scale_source", StringType()), ("scale_mismatch", BooleanType()),
    ("metadata_nm_per_px", DoubleType()), ("scale_label_text", StringType()),
    ("scale_confidence", StringType()), ("scale_reason", StringType()), ("scale_reader", IntegerType()),
    ("scale_bin", StringType()), ("databar_px", IntegerType()), ("phash", StringType()),
    ("chroma", DoubleType()), ("contrast", DoubleType()), ("label", StringType()), ("image", BinaryType()),
)


def image_encoder(size: int):
    """The function that encodes a uint8 ``size`` x ``size`` image as the dataset stores it (the
    Unischema's PNG codec): ingest and rescale store images alike."""
    field = image_unischema(size).image
    return lambda image: bytes(field.codec.encode(field, image))


@lru_cache(maxsize=8)
def image_unischema(size: int):
    """The Petastorm dataset of stored images: grayscale ``size`` x ``size``, PNG in Parquet."""
    import numpy as np
    from petastorm.codecs import CompressedImageCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField

    return Unischema("SemImage", [
        UnischemaField("image_id", np.str_, (), ScalarCodec(StringType()), False),
        UnischemaField("label", np.str_, (), ScalarCodec(StringType()), True),
        UnischemaField("scale_bin", np.str_, (), ScalarCodec(StringType()), False),
        UnischemaField("nm_per_px", np.float64, (), ScalarCodec(DoubleType()), True),
        UnischemaField("image", np.uint8, (size, size), CompressedImageCodec("png"), False),
    ])
