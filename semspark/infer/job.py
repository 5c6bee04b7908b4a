"""The infer stage: score with Spark every image a model version has not scored yet.

The images to score are the rows of sem.images (optionally some scale bins) without a row of
sem.predictions for this model version, looked for only among the ingest runs sem.scored_runs does
not record as finished by that version (so a night's scoring reads the night); their pixels come from the ingest stage's Petastorm
dataset (plain Parquet to Spark: PNG bytes per row). ``predict_batch_udf`` runs the model once per
Python worker on numpy batches; results are staged to Parquet once (the model runs once per image)
and appended to sem.predictions, partitioned by model version, leaving out anything already there.
So a rerun, or a run after a crash at any point, scores nothing twice and duplicates no row.

``promote`` marks a model version as production and points the view sem.latest_predictions at it.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field

from semspark.catalog import append_arrow, append_rows, ensure_tables, insert, new_run_id, qualified, unknown_scale_bins, utc_now
from semspark.config import Config
from semspark.errors import RunFailed
from semspark.dataset import dataset_url, ensure_consistent
from semspark.schema import (IMAGES, INFER_TABLES, INGEST_TABLES, PREDICTION, PREDICTIONS, PROMOTIONS,
                             SCORED_RUNS)
from semspark.storage import home_path, read_staged_rows, read_staged_table
from semspark import registry
from semspark.train.evaluation import AppearanceBounds

log = logging.getLogger(__name__)

PRODUCTION = "production"
LATEST_VIEW = "latest_predictions"
FAILURES_SHOWN = 10
PREDICTIONS_APPENDED_IN_DRIVER = 5_000   # at most this many a run (embeddings of 1,536 floats: ~30 MB)


class InferError(RuntimeError):
    """Scoring could not start or did not finish; the message says what to do."""


class InferRunFailed(InferError, RunFailed):
    """Scoring failed part-way; nothing half-written is kept and a rerun scores what is left."""


@dataclass
class InferSummary:
    model_version: str
    run_id: str
    candidates: int = 0               # images in the chosen scale bins
    already_scored: int = 0
    examined: int = 0                 # images of the ingest runs this version had not finished
    scored: int = 0
    missing_pixels: int = 0           # in sem.images but not in the dataset (reported, retried next run)
    dataset_files: int = 0            # files of the image dataset in scope ...
    dataset_files_read: int = 0       # ... and those whose pixels were read: the ones holding images to score
    failures: int = 0                 # stored image could not be decoded (reported, retried next run)
    failure_examples: list[tuple[str, str]] = field(default_factory=list)
    by_category: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """The summary for ``--json``: every field, as JSON types."""
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        rate = f" ({self.scored / self.seconds:.1f} images/s)" if self.scored and self.seconds else ""
        out = [f"infer with {self.model_version} (run {self.run_id})",
               f"  images in scope: {self.candidates}, already scored by this version: {self.already_scored} "
               f"({self.examined} looked at: the ingest runs it had not finished)",
               f"  scored now: {self.scored} in {self.seconds:.1f} s{rate}",
               f"  pixels read from {self.dataset_files_read} of {self.dataset_files} dataset files"]
        out += [f"    {name:<30}{n}" for name, n in sorted(self.by_category.items(), key=lambda kv: -kv[1])]
        if self.missing_pixels:
            out.append(f"  {self.missing_pixels} images have no stored pixels in the dataset: rerun semspark ingest")
        if self.failures:
            out.append(f"  {self.failures} stored images could not be decoded (not written; retried next run):")
            out += [f"    {image_id}: {reason}" for image_id, reason in self.failure_examples]
        return out


def production_model(spark, database: str) -> str | None:
    """The model version most recently promoted to production, or None."""
    name = qualified(database, PROMOTIONS)
    if not spark.catalog.tableExists(name):
        return None
    rows = (spark.table(name).filter(f"stage = '{PRODUCTION}'")
            .orderBy("promoted_at", ascending=False).limit(1).collect())
    return rows[0]["model_version"] if rows else None


def promote(spark, config: Config, spec: str) -> str:
    """Mark NAME/VERSION (or NAME/latest) as the production model; returns NAME/N."""
    model_version, _, _ = registry.verified_model(spec)
    db = config.catalog.database
    ensure_tables(spark, db, INGEST_TABLES + INFER_TABLES)
    row = {"model_version": model_version, "stage": PRODUCTION,
           "promoted_at": utc_now()}
    append_rows(spark, db, PROMOTIONS, [row])
    create_latest_view(spark, db, model_version)
    if config.infer.engine != "tensorflow":
        registry.inference_tflite(model_version)   # its TFLite conversion, once per version: not in a night
    log.info("%s is the production model", model_version)
    return model_version


def create_latest_view(spark, database: str, model_version: str) -> None:
    """sem.latest_predictions: every image, with the production model's prediction where it has one.

    The version is written into the view as a literal (registry names cannot hold a quote), so a
    query on the view reads one partition of sem.predictions."""
    from semspark.labels import CURRENT_LABELS_VIEW, ensure_labels

    registry.check_name(model_version.split("/")[0])
    ensure_labels(spark, database)
    images, predictions = qualified(database, IMAGES), qualified(database, PREDICTIONS)
    labels = qualified(database, CURRENT_LABELS_VIEW)
    spark.sql(f"""
        CREATE OR REPLACE VIEW {qualified(database, LATEST_VIEW)}
        COMMENT 'Every image with the prediction of the production model ({model_version})'
        AS SELECT i.image_id, i.path, i.format, i.width, i.height, i.scale_bin, i.scale_value, i.scale_unit,
                  i.nm_per_px, l.label, i.ingested_at, p.model_version, p.category, p.confidence,
                  p.uncertain, p.out_of_distribution, p.ood_distance, p.ood_reason,
                  p.probabilities, p.logits, p.embedding, p.predicted_at
        FROM {images} i LEFT JOIN {predictions} p
          ON p.image_id = i.image_id AND p.model_version = '{model_version}'
        LEFT JOIN {labels} l ON l.image_id = i.image_id""")


def run_inference(spark, config: Config, model: str | None = None,
                  scale_bins: list[str] | None = None) -> InferSummary:
    """Score every image in scope that ``model`` (NAME/VERSION, NAME/latest, or None for the
    production model) has not scored yet."""
    from pyspark.sql import functions as F

    started = time.monotonic()
    db = config.catalog.database
    if not spark.catalog.tableExists(qualified(db, IMAGES)):
        raise InferError(f"there is no table {qualified(db, IMAGES)}: run semspark ingest first")
    ensure_tables(spark, db, INGEST_TABLES + INFER_TABLES)
    ensure_consistent(spark, config)   # a dataset swap a killed process left is finished before pixels are read
    if model is None:
        model = production_model(spark, db)
        if model is None:
            raise InferError("no model is marked as production: give --model NAME/VERSION, or run "
                             "semspark promote --model NAME/VERSION first")
    model_version, _, metadata = registry.verified_model(model)
    if not metadata.get("architecture"):
        raise InferError(f"{model_version} has no architecture in its metadata.json; retrain it with this semspark")
    run_id = new_run_id()
    summary = InferSummary(model_version=model_version, run_id=run_id)

    problem = unknown_scale_bins(spark, db, scale_bins)
    if problem:
        raise InferError(problem)
    images = spark.table(qualified(db, IMAGES))
    if scale_bins:
        images = images.filter(F.col("scale_bin").isin(scale_bins))
    runs = _open_runs(spark, db, scale_bins, model_version)
    summary.candidates = runs.images_in_scope
    summary.examined = runs.images_examined
    candidates = (images.filter(runs.condition())
                  .select("image_id", "scale_bin", "chroma", "contrast", "ingest_run"))
    scored = spark.table(qualified(db, PREDICTIONS)).filter(F.col("model_version") == model_version)
    if not runs.check_predictions:
        # no open run was ever looked at by this version: none of their images has a prediction
        scored = scored.limit(0)
    elif runs.scored_after is not None:
        # An image is scored after it is ingested: older prediction files (their predicted_at
        # statistics say so) are not opened. The margin covers clocks of different hosts.
        scored = scored.filter(F.col("predicted_at") >= F.lit(runs.scored_after).cast("timestamp"))
    scored = scored.select("image_id", F.lit(True).alias("scored")).distinct()
    # Read once (the counts, the pending images for the files to read and the pixels to join all
    # come from this cached join).
    joined = candidates.join(scored, "image_id", "left").persist()
    try:
        return _score(spark, config, joined, scored, scale_bins, model_version, metadata, summary, runs, started)
    finally:
        joined.unpersist()


# How much earlier than its image's ingest a prediction may be stamped (clocks of two hosts).
CLOCK_MARGIN = datetime.timedelta(hours=1)


@dataclass
class _OpenRuns:
    """The ingest runs a model version has not finished scoring, from the per-run counts of
    sem.images and sem.scored_runs."""
    names: list[str]                   # open ingest runs in scope (sem.images rows of them to look at)
    unnamed: bool                      # rows without an ingest run (never recorded as finished)
    images_in_scope: int
    images_examined: int               # rows of the open runs in scope
    counts: dict[str | None, int]      # rows per open run in scope
    bin_counts: dict[tuple[str | None, str], int]   # rows per (open run, scale bin) in scope
    scored_after: datetime.datetime | None   # predictions older than this cannot be of them
    check_predictions: bool            # False: no open run was ever looked at, nothing of them is scored
    first_contact: list[str]           # every run of sem.images, when this version has no record yet

    def condition(self):
        from pyspark.sql import functions as F

        condition = F.col("ingest_run").isin(self.names) if self.names else F.lit(False)
        return condition | F.col("ingest_run").isNull() if self.unnamed else condition


def _open_runs(spark, database: str, scale_bins, model_version: str) -> _OpenRuns:
    """Which of sem.images' ingest runs ``model_version`` may not have scored in full.

    Reads three columns of sem.images that are constant within an ingest run or a partition
    (ingest_run, ingested_at, scale_bin: Parquet keeps them in a few bytes per file) and
    sem.scored_runs. A run counts as finished when scored_runs records it with at least as many
    images as it holds now; so a new model version, or a catalog from before scored_runs, looks at
    everything once. Before any prediction is written, every run it may be of is recorded as looked
    at (0 images): on a version's first run with records, every run sem.images holds (its
    predictions from before may be of any of them); later, the open runs in scope. So a run that is
    not recorded at all has no prediction of this version (a night's new run): nothing to look for."""
    from pyspark.sql import functions as F

    groups = (spark.table(qualified(database, IMAGES)).groupBy("ingest_run", "scale_bin")
              .agg(F.count("*").alias("images"), F.min("ingested_at").alias("first"),
                   F.count("ingested_at").alias("stamped")).collect())
    per_run: dict[str | None, dict] = {}
    per_run_bin: dict[tuple[str | None, str], int] = {}
    every_run = set()
    for g in groups:
        every_run.add(g["ingest_run"])
        if scale_bins and g["scale_bin"] not in scale_bins:
            continue
        per_run_bin[g["ingest_run"], g["scale_bin"]] = g["images"]
        run = per_run.setdefault(g["ingest_run"], {"images": 0, "first": None, "stamped": 0})
        run["images"] += g["images"]
        run["stamped"] += g["stamped"]
        if g["first"] is not None and (run["first"] is None or g["first"] < run["first"]):
            run["first"] = g["first"]
    recorded = {r["ingest_run"]: r["images"] for r in spark.table(qualified(database, SCORED_RUNS))
                .filter(F.col("model_version") == model_version).groupBy("ingest_run")
                .agg(F.max("images").alias("images")).collect()}
    open_runs = {run: row for run, row in per_run.items()
                 if run is None or row["images"] > recorded.get(run, -1)}
    maybe_scored = {run: row for run, row in open_runs.items() if not recorded or run is None or run in recorded}
    firsts = [row["first"] for row in maybe_scored.values()]
    unstamped = any(row["first"] is None or row["stamped"] < row["images"] for row in maybe_scored.values())
    return _OpenRuns(names=sorted(r for r in open_runs if r is not None), unnamed=None in open_runs,
                     images_in_scope=sum(r["images"] for r in per_run.values()),
                     images_examined=sum(r["images"] for r in open_runs.values()),
                     counts={run: row["images"] for run, row in open_runs.items()},
                     bin_counts={key: n for key, n in per_run_bin.items() if key[0] in open_runs},
                     scored_after=None if unstamped or not firsts else min(firsts) - CLOCK_MARGIN,
                     check_predictions=bool(maybe_scored),
                     first_contact=[] if recorded else sorted(r for r in every_run if r is not None))


def _record_runs(spark, database: str, model_version: str, run_id: str, images: dict[str, int]) -> None:
    """Rows of sem.scored_runs: ingest run -> images of it this version has scored (0: looked at)."""
    rows = [{"model_version": model_version, "ingest_run": run, "images": n, "infer_run": run_id,
             "recorded_at": utc_now()} for run, n in sorted(images.items()) if run is not None]
    append_rows(spark, database, SCORED_RUNS, rows)


def _record_finished_runs(spark, database: str, model_version: str, runs: _OpenRuns, unfinished: set,
                          run_id: str) -> None:
    """sem.scored_runs gets the open runs whose every image is now scored."""
    _record_runs(spark, database, model_version, run_id,
                 {run: n for run, n in runs.counts.items() if run not in unfinished})


def _record_looked_at(spark, database: str, model_version: str, runs: _OpenRuns, run_id: str) -> None:
    """Before predictions are written: the runs they may be of, as looked at (see _open_runs)."""
    _record_runs(spark, database, model_version, run_id,
                 {run: 0 for run in [*runs.counts, *runs.first_contact]})


def _score(spark, config: Config, joined, scored, scale_bins, model_version: str, metadata: dict,
           summary: InferSummary, runs: _OpenRuns, started: float) -> InferSummary:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F

    from semspark.infer.predictor import NO_PIXELS, ModelPayload, make_predict_fn

    db, run_id = config.catalog.database, summary.run_id
    counts = joined.agg(F.count("*").alias("examined"), F.count("scored").alias("scored")).first()
    n_pending = counts["examined"] - counts["scored"]
    summary.already_scored = summary.candidates - n_pending
    # The record of finished runs counts every image of a run: with a subset of the scale bins,
    # a run's images in the other bins were not looked at.
    record = not scale_bins
    log.info("%s: %d of %d images to score (%d of them looked at: the ingest runs it has not finished)",
             model_version, n_pending, summary.candidates, summary.examined)
    if n_pending == 0:
        if record:
            _record_finished_runs(spark, db, model_version, runs, set(), run_id)
        summary.seconds = time.monotonic() - started
        return summary
    pending = joined.filter(F.col("scored").isNull()).select("image_id", "chroma", "contrast", "ingest_run")

    url = dataset_url(config)
    try:
        stored = spark.read.parquet(url)
    except Exception as exc:
        raise InferError(f"no readable image dataset at {url}: run semspark ingest first ({exc})") from exc
    if scale_bins:
        stored = stored.filter(F.col("scale_bin").isin(scale_bins))  # reads only those partitions
    source = _files_holding(spark, stored, pending, runs, scale_bins, url, summary)
    # A left join: an image of sem.images without stored pixels reaches the model as NULL and comes
    # back as an error row (reported, retried next run) instead of vanishing.
    pixels = (pending.drop("ingest_run").join(source.select("image_id", "image"), "image_id", "left")
              .dropDuplicates(["image_id"]))

    # Tasks of at most images_per_task images. When there are fewer tasks than cores, each task's
    # TensorFlow gets the idle cores too (up to an executor's): measured here, one task with two
    # threads scores 20% faster than two tasks with one. Else one thread per task (task cpus).
    tasks = max(1, min(n_pending, math.ceil(n_pending / config.infer.images_per_task)))
    slots = max(1, spark.sparkContext.defaultParallelism)
    threads = config.infer.threads_per_task or max(1, min(_executor_cores(spark), slots // min(tasks, slots)))
    engine, weights = scoring_model(spark, config, model_version, images_per_task=math.ceil(n_pending / tasks))
    _, _, folder = registry.resolve(model_version)
    reference = registry.reference_embeddings(folder, metadata)
    calibration = metadata.get("calibration") or {}
    ood = metadata.get("out_of_distribution") or {}
    appearance = AppearanceBounds.from_dict(ood.get("appearance"))
    # Models registered before calibration: temperature 1 (the softmax as trained), no flags.
    payload = ModelPayload(model_version=model_version, sha256=hashlib.sha256(weights).hexdigest(),
                           class_names=tuple(metadata["class_names"]), input_size=int(metadata["input_size"]),
                           architecture=metadata["architecture"], threads=threads,
                           temperature=float(calibration.get("temperature", 1.0)),
                           uncertain_below=calibration.get("uncertain_below_confidence"),
                           ood_threshold=ood.get("threshold") if reference is not None else None,
                           ood_neighbours=int(ood.get("neighbours", 5)),
                           reference_sha256=hashlib.sha256(reference).hexdigest() if reference is not None else None,
                           engine=engine)
    model_bytes = spark.sparkContext.broadcast(weights)
    reference_bytes = spark.sparkContext.broadcast(reference) if reference is not None else None
    predict = predict_batch_udf(make_predict_fn(payload, model_bytes, reference_bytes), return_type=PREDICTION,
                                batch_size=config.infer.batch_size)
    staging = home_path(f"staging/infer-{run_id}")
    stamp = utc_now()
    log.info("scoring %d images with %s in %d tasks (%s, %d threads each)", n_pending, model_version,
             tasks, "TensorFlow Lite" if engine == "tflite" else "TensorFlow", threads)
    try:
        (pixels.repartition(tasks, "image_id")
         .withColumn("p", predict(F.col("image")))
         .select("image_id", "chroma", "contrast", "p.*")
         .withColumn("uncertain", _flag("uncertain"))
         .withColumn("out_of_distribution", _flag("out_of_distribution"))
         .withColumn("ood_distance", F.when(F.isnan("ood_distance"), None).otherwise(F.col("ood_distance")))
         .transform(lambda scored_rows: _with_ood_reason(scored_rows, payload.ood_threshold, appearance))
         .drop("chroma", "contrast")
         .withColumn("predicted_at", F.lit(stamp).cast("timestamp"))
         .withColumn("infer_run", F.lit(run_id))
         .withColumn("model_version", F.lit(model_version))
         .write.mode("overwrite").parquet((staging / "scored").as_uri()))
    except Exception as exc:
        raise InferRunFailed(f"scoring with {model_version} failed ({_first_line(exc)}); nothing was written "
                             "to the predictions table, rerun to try again") from exc
    finally:
        model_bytes.unpersist()
        if reference_bytes is not None:
            reference_bytes.unpersist()
    log.info("scored %d images; writing them to %s", n_pending, qualified(db, PREDICTIONS))
    staged = spark.read.parquet((staging / "scored").as_uri())
    # the outcomes without embeddings or logits, read in the driver (the staging folder is local)
    outcomes = read_staged_rows(staging / "scored", ["image_id", "category", "error"])
    outcome = Counter((r["category"], r["error"]) for r in outcomes)
    summary.by_category = {c: n for (c, e), n in outcome.items() if e is None}
    summary.scored = sum(summary.by_category.values())
    summary.missing_pixels = sum(n for (_, e), n in outcome.items() if e == NO_PIXELS)
    summary.failures = sum(n for (_, e), n in outcome.items() if e is not None and e != NO_PIXELS)
    if summary.missing_pixels:
        log.warning("%d images of %s have no stored pixels in %s; they are left for the next run",
                    summary.missing_pixels, qualified(db, IMAGES), url)
    if summary.failures:
        summary.failure_examples = sorted((r["image_id"], r["error"]) for r in outcomes
                                          if r["error"] is not None and r["error"] != NO_PIXELS)[:FAILURES_SHOWN]
    # Appended leaving out what is already there: after a crash in the middle of an earlier insert
    # the rerun fills in only the rest.
    good = staged.filter(F.col("error").isNull()).drop("error").dropDuplicates(["image_id"])
    if runs.check_predictions:
        good = good.join(scored.select("image_id"), "image_id", "left_anti")
    _record_looked_at(spark, db, model_version, runs, run_id)   # before any prediction of them exists
    unfinished = set()
    if record and summary.failures + summary.missing_pixels:
        # (before the insert: appending to sem.predictions drops the cached join, which reads it)
        unfinished = {r["ingest_run"] for r in staged.filter(F.col("error").isNotNull()).select("image_id")
                      .join(joined.select("image_id", "ingest_run"), "image_id").select("ingest_run")
                      .distinct().collect()}
    # a night's predictions from the driver where the warehouse is local (no Spark job); a large
    # run's embeddings stay out of the driver's memory
    in_driver = not runs.check_predictions and n_pending <= PREDICTIONS_APPENDED_IN_DRIVER
    if not (in_driver and append_arrow(spark, db, PREDICTIONS, _scored_rows(staging / "scored"))):
        insert(good, db, PREDICTIONS)
    if record:   # after the predictions: a crash between the two only costs the next run a look
        _record_finished_runs(spark, db, model_version, runs, unfinished, run_id)
    log.info("written")
    shutil.rmtree(staging, ignore_errors=True)
    summary.seconds = time.monotonic() - started
    return summary


def _scored_rows(staged_folder):
    """The staged predictions without an error, as a pyarrow Table, for ``append_arrow`` (a local
    warehouse): the images were made distinct before scoring, as the Spark path's
    ``dropDuplicates`` makes sure of again."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    rows = read_staged_table(staged_folder, PREDICTIONS.schema.fieldNames(), where=ds.field("error").is_null())
    if rows is not None and pc.count_distinct(rows["image_id"]).as_py() != rows.num_rows:
        raise AssertionError("an image was scored twice in one run: semspark's scoring lost its distinct images")
    return rows


def _with_ood_reason(scored, embedding_threshold: float | None, appearance: AppearanceBounds):
    """``out_of_distribution`` and ``ood_reason`` from the embedding's distance (the model's worker
    decided it) and from the appearance bounds of the training images (decided here, in SQL, from
    sem.images' chroma and contrast). The reason says which, with the figures; NULL when in
    distribution. The flag is NULL only when nothing could be checked."""
    from pyspark.sql import functions as F

    reasons, checked = [], F.col("out_of_distribution").isNotNull()
    if embedding_threshold is not None:
        reasons.append(F.when(F.col("out_of_distribution"), F.format_string(
            "unlike the training images to the model (embedding distance %.3f, over %.3f)",
            F.col("ood_distance"), F.lit(float(embedding_threshold)))))
    if appearance.chroma_limit is not None:
        reasons.append(F.when(F.col("chroma") > appearance.chroma_limit, F.format_string(
            "colour image (chroma %.3f, the training images at most %.3f)", F.col("chroma"),
            F.lit(appearance.training_chroma_max))))
        checked = checked | F.col("chroma").isNotNull()
    if appearance.contrast_limit is not None:
        reasons.append(F.when(F.col("contrast") < appearance.contrast_limit, F.format_string(
            "almost no contrast (contrast %.3f, the training images at least %.3f)", F.col("contrast"),
            F.lit(appearance.training_contrast_min))))
        checked = checked | F.col("contrast").isNotNull()
    failed = F.col("error").isNotNull()
    if reasons:
        reason = F.concat_ws("; ", *reasons)
        ood_reason = F.when(failed | (reason == ""), None).otherwise(reason)
    else:   # a model without thresholds: no reason (comparing two empty literals made Spark warn)
        ood_reason = F.lit(None).cast("string")
    return (scored.withColumn("ood_reason", ood_reason)
            .withColumn("out_of_distribution",
                        F.when(failed, None).when(F.col("ood_reason").isNotNull(), True)
                        .when(checked, False).otherwise(None)))


def _flag(column: str):
    """1.0 / 0.0 from the model's worker to a boolean; NaN (unknown) to NULL."""
    from pyspark.sql import functions as F

    return F.when(F.isnan(column) | F.col(column).isNull(), None).otherwise(F.col(column) > 0.5)


def _files_holding(spark, stored, pending, runs: _OpenRuns, scale_bins, url: str, summary: InferSummary):
    """The stored images, read only from the dataset files that hold an image to score.

    A night's images sit in the few files that night's ingest wrote; reading every file's pixels
    to find them would make each night cost as much as the whole repository (9 GB at 150,000
    images). Ingest names its files after its run (dataset.RUN_FILE), writes them before
    sem.images, and nothing but compaction and rescale (which write files of other names) removes
    them: when the named files of each pending run hold, bin by bin, as many rows as sem.images has
    of that run there (their Parquet footers say, read here without a Spark job), they hold all its
    images, and only they are read. Otherwise (a run's files compacted or rescaled since, a dataset
    from before run names) the ids of every file are read (one small column, Parquet reads it
    alone) and the pixels from the files that hold a pending id, and no others."""
    from pyspark.sql import functions as F

    from semspark.dataset import bin_of, data_files, dataset_root, hadoop_path, run_of_file

    root = dataset_root(url)
    every = data_files(root)
    summary.dataset_files = len(every)
    pending_runs = {r["ingest_run"] for r in pending.select("ingest_run").distinct().collect()}
    named = [f for f in every if run_of_file(f) in pending_runs and (not scale_bins or bin_of(f) in scale_bins)]
    if named and None not in pending_runs:
        import pyarrow.parquet as pq

        held: dict[tuple[str, str], int] = {}
        for f in named:
            key = (run_of_file(f), bin_of(f))
            held[key] = held.get(key, 0) + pq.ParquetFile(root / f).metadata.num_rows
        if all(held.get(key, 0) == n for key, n in runs.bin_counts.items() if key[0] in pending_runs):
            summary.dataset_files_read = len(named)
            log.info("reading the pixels of %d of %d dataset files (the pending images' ingest runs)",
                     len(named), summary.dataset_files)
            return spark.read.option("basePath", url).parquet(*[hadoop_path(root, f) for f in named])
    holders = (stored.select("image_id", F.col("_metadata.file_path").alias("file"))
               .join(pending.select("image_id"), "image_id", "left_semi").select("file").distinct())
    files = sorted(r["file"] for r in holders.collect())
    summary.dataset_files_read = len(files)
    if not files:
        return stored.limit(0)
    log.info("reading the pixels of %d of %d dataset files", len(files), summary.dataset_files)
    return spark.read.option("basePath", url).parquet(*files)


def scoring_model(spark, config: Config, model_version: str, images_per_task: int) -> tuple[str, bytes]:
    """The engine the scoring tasks run (infer.predictor) and the model bytes they are sent.

    ``infer.engine: auto``: TensorFlow Lite for CPU tasks of at most
    ``infer.tflite_max_images_per_task`` images when the version has its conversion (`semspark
    promote` makes it): its runtime's import is 2.2 s shorter than TensorFlow's, most of a small
    night's scoring, but its kernels are slower on large models (Inception-v3 at 299 px, 2 threads:
    30 against 38 images/s), so larger tasks, GPU tasks (spark.task.resource.gpu.amount,
    conf/spark-gpu.conf) and models without a conversion run TensorFlow. ``tflite`` (converting
    the model if needed) or ``tensorflow`` force one."""
    import importlib.util

    wanted = config.infer.engine
    on_gpus = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    has_runtime = importlib.util.find_spec("tflite_runtime") is not None
    if wanted == "tflite":
        if not has_runtime:
            raise InferError("infer.engine is tflite but the tflite-runtime package is not installed "
                             "(make env installs it), or set infer.engine: auto")
        data = registry.inference_tflite(model_version)
        if data is None:
            raise InferError(f"{model_version} cannot be converted to TensorFlow Lite (see inference_tflite.json "
                             "in its model folder); set infer.engine: auto or tensorflow")
        return "tflite", data
    if (wanted == "auto" and not on_gpus and has_runtime
            and images_per_task <= config.infer.tflite_max_images_per_task):
        data = registry.inference_tflite(model_version, make=False)
        if data is not None:
            return "tflite", data
        log.info("%s has no TensorFlow Lite conversion (semspark promote makes one): scoring with TensorFlow",
                 model_version)
    _, weights, _ = registry.inference_weights(model_version)
    return "tensorflow", weights


def _executor_cores(spark) -> int:
    """Cores of one executor: spark.executor.cores, or every core of local mode."""
    cores = spark.conf.get("spark.executor.cores", None)
    if cores:
        return max(1, int(cores))
    if spark.sparkContext.master.startswith("local"):
        return max(1, spark.sparkContext.defaultParallelism)
    return 1


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    # A Python worker's error arrives inside a long Java trace; its last line names the cause.
    lines = [line for line in text.splitlines() if line.strip()]
    cause = next((line for line in reversed(lines) if "Error:" in line or "Exception:" in line), None)
    return f"{type(exc).__name__}: {(cause or (lines[0] if lines else '')).strip()[:300]}"
