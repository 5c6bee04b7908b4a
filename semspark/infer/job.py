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
    scored_in: str = ""               # driver (a small local run, no Spark job) | tasks (Spark's)

    def as_dict(self) -> dict:
        """The summary for ``--json``: every field, as JSON types."""
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        rate = f" ({self.scored / self.seconds:.1f} images/s)" if self.scored and self.seconds else ""
        out = [f"infer with {self.model_version} (run {self.run_id})",
               f"  images in scope: {self.candidates}, already scored by this version: {self.already_scored} "
               f"({self.examined} looked at: the ingest runs it had not finished)",
               f"  scored now: {self.scored} in {self.seconds:.1f} s{rate}"
               + (f", in the {'driver' if self.scored_in == 'driver' else 'Spark tasks'}" if self.scored_in else ""),
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
    from semspark.catalog import local_columns

    name = qualified(database, PROMOTIONS)
    if not spark.catalog.tableExists(name):
        return None
    # where the files are local, read by pyarrow (a night asks first thing: a Spark job is 0.3 s)
    table = local_columns(spark, database, PROMOTIONS, ["model_version", "stage", "promoted_at"])
    if table is not None:
        production = [r for r in table.to_pylist() if r["stage"] == PRODUCTION]
        latest = max(production, default=None,   # undated rows last, as the query below orders them
                     key=lambda r: (r["promoted_at"] is not None, r["promoted_at"] or datetime.datetime.min))
        return latest["model_version"] if latest else None
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
    groups, recorded = _run_groups(spark, database), _recorded_runs(spark, database, model_version)
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


def _run_groups(spark, database: str) -> list[dict]:
    """sem.images per (ingest_run, scale_bin): images, the first ingested_at, how many have one.
    With pyarrow from the table's files where they are local (three columns constant within a
    file or a folder: a night's 0.6-s Spark job becomes a few hundredths), else with Spark."""
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    from semspark.catalog import local_columns

    table = local_columns(spark, database, IMAGES, ["ingest_run", "scale_bin", "ingested_at"])
    if table is None:
        return [r.asDict() for r in spark.table(qualified(database, IMAGES)).groupBy("ingest_run", "scale_bin")
                .agg(F.count("*").alias("images"), F.min("ingested_at").alias("first"),
                     F.count("ingested_at").alias("stamped")).collect()]
    grouped = table.group_by(["ingest_run", "scale_bin"]).aggregate(
        [("scale_bin", "count", pc.CountOptions(mode="all")), ("ingested_at", "min"), ("ingested_at", "count")])
    return [{"ingest_run": g["ingest_run"], "scale_bin": g["scale_bin"], "images": g["scale_bin_count"],
             "first": g["ingested_at_min"], "stamped": g["ingested_at_count"]} for g in grouped.to_pylist()]


def _recorded_runs(spark, database: str, model_version: str) -> dict[str, int]:
    """sem.scored_runs of ``model_version``: ingest run -> the most images recorded as scored."""
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    from semspark.catalog import local_columns

    table = local_columns(spark, database, SCORED_RUNS, ["model_version", "ingest_run", "images"])
    if table is None:
        return {r["ingest_run"]: r["images"] for r in spark.table(qualified(database, SCORED_RUNS))
                .filter(F.col("model_version") == model_version).groupBy("ingest_run")
                .agg(F.max("images").alias("images")).collect()}
    recorded: dict[str, int] = {}
    for row in table.filter(pc.equal(table["model_version"], model_version)).to_pylist():
        if row["images"] is not None:
            recorded[row["ingest_run"]] = max(row["images"], recorded.get(row["ingest_run"], row["images"]))
    return recorded


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
    from pyspark.sql import functions as F

    from semspark.infer.predictor import NO_PIXELS, ModelPayload

    db, run_id = config.catalog.database, summary.run_id
    if runs.check_predictions:
        counts = joined.agg(F.count("*").alias("examined"), F.count("scored").alias("scored")).first()
        n_pending = counts["examined"] - counts["scored"]
    else:   # no image of the open runs can have a prediction: all are pending (a night: no job to count)
        n_pending = runs.images_examined
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
    # Models registered before calibration: temperature 1 (the softmax as trained), no flags.
    payload = ModelPayload(model_version=model_version, sha256=hashlib.sha256(weights).hexdigest(),
                           class_names=tuple(metadata["class_names"]), input_size=int(metadata["input_size"]),
                           architecture=metadata["architecture"], threads=threads,
                           temperature=float(calibration.get("temperature", 1.0)),
                           uncertain_below=calibration.get("uncertain_below_confidence"),
                           ood_threshold=ood.get("threshold") if reference is not None else None,
                           ood_neighbours=int(ood.get("neighbours", 5)),
                           reference_sha256=hashlib.sha256(reference).hexdigest() if reference is not None else None,
                           engine=engine, appearance=AppearanceBounds.from_dict(ood.get("appearance")))
    staging = home_path(f"staging/infer-{run_id}")
    stamp = utc_now()
    import pyarrow as pa

    url = dataset_url(config)
    files, images = _driver_scoring_input(spark, config, runs, scale_bins, url, n_pending, engine, summary)
    summary.scored_in = "driver" if files is not None else "tasks"
    if files is not None:
        log.info("scoring %d images with %s in the driver (TensorFlow Lite, %d threads)", n_pending,
                 model_version, threads)
        try:
            _score_in_driver(config, files, images, runs, scale_bins, payload, weights, reference,
                             staging / "scored", stamp, run_id)
        except (OSError, pa.ArrowException) as exc:   # a file gone or damaged meanwhile: as a task's failure
            raise InferRunFailed(f"scoring with {model_version} failed ({type(exc).__name__}: {exc}); nothing was "
                                 "written to the predictions table, rerun to try again") from exc
    else:
        _score_in_tasks(spark, config, pending, runs, scale_bins, url, payload, weights, reference,
                        staging / "scored", stamp, tasks, summary)
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


def _score_in_tasks(spark, config: Config, pending, runs: _OpenRuns, scale_bins, url: str, payload, weights: bytes,
                    reference: bytes | None, staged_folder, stamp, tasks: int, summary: InferSummary) -> None:
    """Score ``pending`` in Spark tasks (predict_batch_udf), the rows staged to ``staged_folder``."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F

    from semspark.infer.predictor import make_predict_fn

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
    model_bytes = spark.sparkContext.broadcast(weights)
    reference_bytes = spark.sparkContext.broadcast(reference) if reference is not None else None
    predict = predict_batch_udf(make_predict_fn(payload, model_bytes, reference_bytes), return_type=PREDICTION,
                                batch_size=config.infer.batch_size)
    log.info("scoring with %s in %d tasks (%s, %d threads each)", payload.model_version, tasks,
             "TensorFlow Lite" if payload.engine == "tflite" else "TensorFlow", payload.threads)
    try:
        (pixels.repartition(tasks, "image_id")
         .withColumn("p", predict(F.col("image"), F.col("chroma"), F.col("contrast")))
         .select("image_id", "p.*")
         .withColumn("uncertain", _flag("uncertain"))
         .withColumn("out_of_distribution", _flag("out_of_distribution"))
         .withColumn("ood_distance", F.when(F.isnan("ood_distance"), None).otherwise(F.col("ood_distance")))
         .withColumn("predicted_at", F.lit(stamp).cast("timestamp"))
         .withColumn("infer_run", F.lit(summary.run_id))
         .withColumn("model_version", F.lit(payload.model_version))
         .write.mode("overwrite").parquet(staged_folder.as_uri()))
    except Exception as exc:
        raise InferRunFailed(f"scoring with {payload.model_version} failed ({_first_line(exc)}); nothing was "
                             "written to the predictions table, rerun to try again") from exc
    finally:
        model_bytes.unpersist()
        if reference_bytes is not None:
            reference_bytes.unpersist()


def _driver_scoring_input(spark, config: Config, runs: _OpenRuns, scale_bins, url: str, n_pending: int,
                          engine: str, summary: InferSummary):
    """(the dataset files to read, sem.images' rows as pyarrow) when a run is scored in the driver,
    else (None, None): Spark tasks.

    In local mode the driver is the machine the tasks would run on: a small run of a model with
    its TensorFlow Lite conversion (a night's few images) is scored there, the pixels read with
    pyarrow from the files its ingest runs wrote and the rows staged as the tasks stage them, with
    no Spark job (in a py-spy profile of one night of 40 images, a one-off: the tasks' scoring
    job took 1.7 s of the driver's 19, most of it the job and its Python worker's start). Only when nothing of the open runs can be scored yet (a night's new run), every file
    is local, and the runs' named files hold all their images (as ``_files_holding`` checks)."""
    from semspark.catalog import local_columns
    from semspark.dataset import data_files, dataset_root

    if (runs.check_predictions or runs.unnamed or engine != "tflite" or not runs.names
            or n_pending > config.infer.driver_max_images
            or not spark.sparkContext.master.startswith("local") or not url.startswith("file:")):
        return None, None
    root = dataset_root(url)
    if not root.is_dir():
        return None, None
    every = data_files(root)
    files = _files_of_runs(root, every, set(runs.names), runs, scale_bins)
    images = local_columns(spark, config.catalog.database, IMAGES,
                           ["image_id", "chroma", "contrast", "ingest_run", "scale_bin"]) if files else None
    if images is None:
        return None, None
    summary.dataset_files, summary.dataset_files_read = len(every), len(files)
    return [root / f for f in files], images


def _files_of_runs(root, every: list[str], pending_runs: set, runs: _OpenRuns, scale_bins) -> list[str] | None:
    """The dataset files named after ``pending_runs`` (dataset.RUN_FILE) when, bin by bin, they hold
    as many rows as sem.images has of each of those runs there (their Parquet footers say): then
    they hold all its images. Else None."""
    import pyarrow.parquet as pq

    from semspark.dataset import bin_of, run_of_file

    named = [f for f in every if run_of_file(f) in pending_runs and (not scale_bins or bin_of(f) in scale_bins)]
    if not named or None in pending_runs:
        return None
    held: dict[tuple[str, str], int] = {}
    for f in named:
        key = (run_of_file(f), bin_of(f))
        held[key] = held.get(key, 0) + pq.ParquetFile(root / f).metadata.num_rows
    if all(held.get(key, 0) == n for key, n in runs.bin_counts.items() if key[0] in pending_runs):
        return named
    return None


def _score_in_driver(config: Config, files: list, images, runs: _OpenRuns, scale_bins, payload,
                     weights: bytes, reference: bytes | None, staged_folder, stamp, run_id: str) -> None:
    """Score the open runs' images in this process with the worker's own predictor
    (predictor.build_predictor on TensorFlow Lite), and stage their rows to ``staged_folder`` as
    the Spark tasks would (same columns and types): the rest of the run reads them from there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from types import SimpleNamespace

    from semspark.catalog import _arrow_type
    from semspark.infer.predictor import make_predict_fn

    wanted = pc.is_in(images["ingest_run"], pa.array(runs.names, pa.string()))
    if scale_bins:
        wanted = pc.and_(wanted, pc.is_in(images["scale_bin"], pa.array(list(scale_bins), pa.string())))
    first: dict[str, dict] = {}   # each image once, as the tasks' dropDuplicates
    for row in images.filter(wanted).select(["image_id", "chroma", "contrast"]).to_pylist():
        first.setdefault(row["image_id"], row)
    ids = list(first)
    # NULL (not measured) as NaN, as the tasks' pandas batches give it
    chroma = np.array([first[i]["chroma"] for i in ids], dtype=np.float64)
    contrast = np.array([first[i]["contrast"] for i in ids], dtype=np.float64)
    stored = pq.read_table([str(f) for f in files], columns=["image_id", "image"])
    stored = stored.filter(pc.is_in(stored["image_id"], pa.array(ids, pa.string())))
    pixels: dict[str, bytes] = {}
    for image_id, image in zip(stored["image_id"].to_pylist(), stored["image"].to_pylist()):
        pixels.setdefault(image_id, image)
    # the worker's own loading (checksums of the model and the reference embeddings checked), given
    # the bytes as a broadcast would give them
    predict = make_predict_fn(payload, SimpleNamespace(value=weights),
                              SimpleNamespace(value=reference) if reference is not None else None)()
    batch = config.infer.batch_size
    parts = [predict(np.array([pixels.get(i) for i in ids[start:start + batch]], dtype=object),
                     chroma[start:start + batch], contrast[start:start + batch])
             for start in range(0, len(ids), batch)]

    def column(name: str) -> list:
        return [value for part in parts for value in part[name]]

    def flag(name: str) -> list:   # 1.0 / 0.0 / NaN to True / False / None, as the tasks' _flag
        return [None if np.isnan(v) else bool(v > 0.5) for v in column(name)]

    types = {f.name: _arrow_type(f.dataType) for f in PREDICTION.fields}
    table = pa.table({
        "image_id": pa.array(ids, pa.string()),
        "category": pa.array(column("category"), types["category"]),
        "confidence": pa.array([None if np.isnan(v) else float(v) for v in column("confidence")], types["confidence"]),
        "probabilities": pa.array([v.tolist() for v in column("probabilities")], types["probabilities"]),
        "logits": pa.array([v.tolist() for v in column("logits")], types["logits"]),
        "embedding": pa.array([v.tolist() for v in column("embedding")], types["embedding"]),
        "error": pa.array(column("error"), types["error"]),
        "uncertain": pa.array(flag("uncertain"), pa.bool_()),
        "out_of_distribution": pa.array(flag("out_of_distribution"), pa.bool_()),
        "ood_distance": pa.array([None if np.isnan(v) else float(v) for v in column("ood_distance")], pa.float64()),
        "ood_reason": pa.array(column("ood_reason"), types["ood_reason"]),
        "predicted_at": pa.array([stamp.replace(tzinfo=None)] * len(ids), pa.timestamp("us")),
        "infer_run": pa.array([run_id] * len(ids), pa.string()),
        "model_version": pa.array([payload.model_version] * len(ids), pa.string()),
    })
    staged_folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, staged_folder / "part-00000-driver.snappy.parquet", compression="snappy",
                   use_deprecated_int96_timestamps=True)


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

    from semspark.dataset import data_files, dataset_root, hadoop_path

    root = dataset_root(url)
    every = data_files(root)
    summary.dataset_files = len(every)
    if runs.check_predictions:
        pending_runs = {r["ingest_run"] for r in pending.select("ingest_run").distinct().collect()}
    else:   # every image of the open runs is pending
        pending_runs = set(runs.names) | ({None} if runs.unnamed else set())
    named = _files_of_runs(root, every, pending_runs, runs, scale_bins)
    if named is not None:
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
