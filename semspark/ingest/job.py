"""The ingest stage: a folder (any Hadoop path) of raw SEM files -> Petastorm dataset + catalog tables.

Every listed file ends in exactly one place: ``sem.files`` (an image, or the sidecar of one) or
``sem.quarantine`` (with the stage and the reason). A file is known by (path, size, modification
time): a rerun over the same input does nothing, a grown folder adds only the new files, and a
file rewritten in place is ingested again.

Labels (folders or a CSV) go to sem.labels, the one label source (semspark/labels.py).

Crash safety: the work is computed into a staging folder, then written in this order, each write
keeping only what is not there yet: dataset -> sem.labels -> sem.images -> sem.quarantine -> sem.files. A run
killed at any point leaves files that are not in sem.files or sem.quarantine, so the next run
redoes them and writes only what is missing.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass, field

from semspark.catalog import ensure_tables, insert, new_run_id, qualified, utc_now
from semspark.config import Config
from semspark.dataset import IMAGES_PER_FILE, dataset_url, ensure_consistent
from semspark.ingest.quarantine import heal, retryable_column, waiting_files
from semspark.labels import append_changes, current_user, ensure_labels
from semspark.schema import FILES, IMAGES, INGEST_TABLES, PROCESSED, QUARANTINE, image_encoder, image_unischema
from semspark.storage import home_path, pause_point, writer_lock

log = logging.getLogger(__name__)



class IngestError(RuntimeError):
    """The ingest cannot start (bad input path, bad label file); the message says what to do."""


@dataclass
class IngestSummary:
    run_id: str
    listed: int = 0
    already_known: int = 0
    new_images: int = 0
    duplicate_files: int = 0
    sidecars: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    new_by_scale_bin: dict[str, int] = field(default_factory=dict)
    new_by_scale_confidence: dict[str, int] = field(default_factory=dict)
    dataset_url: str = ""
    retried: int = 0                  # quarantined files tried again (their failure may pass)
    phase_seconds: dict[str, float] = field(default_factory=dict)   # listing, comparing, processing, writing
    healed: int = 0                   # quarantine rows dropped: files ingested at last, older outcomes

    def as_dict(self) -> dict:
        """The summary for ``--json``: every field, as JSON types."""
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        out = [f"ingest run {self.run_id}",
               f"  files listed:           {self.listed}",
               f"  already ingested:       {self.already_known}",
               f"  new images:             {self.new_images}",
               f"  duplicates (same bytes): {self.duplicate_files}",
               f"  sidecar files:          {self.sidecars}",
               f"  quarantined:            {sum(self.quarantined.values())}",
               f"  tried again from quarantine: {self.retried} (left it: {self.healed})"]
        out += [f"    {stage:<22}{n}" for stage, n in sorted(self.quarantined.items())]
        if self.new_by_scale_bin:
            out.append("  new images per scale bin:")
            out += [f"    {b:<22}{n}" for b, n in sorted(self.new_by_scale_bin.items(), key=lambda kv: -kv[1])]
        if self.new_by_scale_confidence:
            order = {"high": 0, "medium": 1, "low": 2, "none": 3}
            out.append("  scale confidence of new images (low/none: see scale_reason, semspark rescale):")
            out += [f"    {c:<22}{n}" for c, n in sorted(self.new_by_scale_confidence.items(),
                                                       key=lambda kv: order.get(kv[0], 9))]
        out.append(f"  dataset: {self.dataset_url}")
        return out


def run_ingest(spark, config: Config, input_path: str, labels: str | None = None) -> IngestSummary:
    """Ingest everything new under ``input_path``; ``labels`` is None, 'folders' or a CSV path."""
    from pyspark.sql import functions as F

    db = config.catalog.database
    run_id = new_run_id()
    started = utc_now()
    summary = IngestSummary(run_id=run_id, dataset_url=dataset_url(config))
    clock = _PhaseClock(summary.phase_seconds)
    root = _qualified_root(spark, input_path)
    ensure_tables(spark, db, INGEST_TABLES)
    ensure_labels(spark, db)
    heal(spark, db, run_id)         # what a run killed before its end left in sem.quarantine
    ensure_consistent(spark, config)   # a swap or a metadata step a killed run left half done

    listing = (_list_files(spark, root)
               .withColumn("ext", F.lower(F.regexp_extract("path", r"\.([^./]+)$", 1)))
               .withColumn("stem", F.regexp_replace("path", r"\.[^./]+$", ""))
               .withColumn("rel", F.expr(f"substring(path, {len(root) + 2})")))
    listing = listing.persist()
    summary.listed = listing.count()
    log.info("listed %d files under %s (%s)", summary.listed, root, clock.lap("listing", summary.listed, "files"))

    sidecar_exts = list(config.ingest.sidecar_extensions)
    image_side = listing.filter(~F.col("ext").isin(sidecar_exts))
    attached = (listing.filter(F.col("ext").isin(sidecar_exts))
                .join(image_side.select("stem").distinct(), "stem", "left_semi"))
    candidates = listing.join(attached.select("path"), "path", "left_anti")  # images, orphan .txt, junk

    # quarantined files wait unless their failure may pass (read errors): those are tried again
    known = (spark.table(qualified(db, FILES)).select("path", "size", "modification_time")
             .unionByName(waiting_files(spark, db)))
    key = ["path", "size", "modification_time"]
    pending = candidates.join(known, key, "left_anti")
    pending_sidecars = attached.join(known, key, "left_anti")

    pending = pending.join(
        attached.select("stem", F.col("path").alias("sidecar_path")).dropDuplicates(["stem"]), "stem", "left")
    pending = _with_folder_labels(pending) if labels == "folders" else pending.withColumn("label", F.lit(None).cast("string"))
    if labels not in (None, "folders"):
        pending = _with_csv_path_labels(spark, pending, labels, root)

    pending = pending.persist()
    n_pending = pending.count()
    summary.retried = (pending.select(*key).join(spark.table(qualified(db, QUARANTINE)).select(*key), key, "left_semi")
                       .count())
    n_sidecars = pending_sidecars.count()
    summary.already_known = summary.listed - n_pending - n_sidecars
    log.info("%d files to process (%d already ingested, %d tried again from quarantine) (%s)", n_pending,
             summary.already_known, summary.retried, clock.lap("comparing", summary.listed, "files"))
    if n_pending == 0 and n_sidecars == 0:
        listing.unpersist()
        pending.unpersist()
        return summary

    staging = home_path(f"staging/ingest-{run_id}")
    # Big enough batches for OCR, but never fewer tasks than cores while there is work for them.
    tasks = max(math.ceil(n_pending / config.ingest.files_per_task),
                min(n_pending, spark.sparkContext.defaultParallelism), 1)
    worker = _make_worker(config)
    processed = (pending.select("path", "size", "modification_time", "sidecar_path", "label")
                 .repartition(tasks, "path")
                 .mapInPandas(worker, schema=PROCESSED))
    log.info("processing %d files in %d tasks", n_pending, tasks)
    processed.write.mode("overwrite").parquet((staging / "processed").as_uri())
    log.info("processed %d files (%s)", n_pending, clock.lap("processing", n_pending, "files"))
    staged = spark.read.parquet((staging / "processed").as_uri())
    if labels not in (None, "folders"):
        staged = _with_csv_id_labels(spark, staged, labels)

    stamp = F.lit(started).cast("timestamp")
    run = F.lit(run_id)
    good = staged.filter(F.col("outcome") == "image")
    existing_ids = spark.table(qualified(db, IMAGES)).select("image_id")
    first_paths = good.groupBy(F.col("sha256").alias("image_id")).agg(F.min("path").alias("path"))
    # Materialised, not cached: inserting into sem.images would invalidate a cache that reads it.
    (good.withColumnRenamed("sha256", "image_id")
     .join(first_paths, ["image_id", "path"], "left_semi")
     .join(existing_ids, "image_id", "left_anti")
     .withColumn("ingested_at", stamp).withColumn("ingest_run", run)
     .write.mode("overwrite").parquet((staging / "new_images").as_uri()))
    new_images = spark.read.parquet((staging / "new_images").as_uri())

    _write_dataset(spark, config, new_images, summary.dataset_url)
    if labels is not None:   # before sem.images: a rerun after a crash finds them and adds nothing
        append_changes(spark, db, new_images.filter(F.col("label").isNotNull()).select("image_id", "label"),
                       "folders" if labels == "folders" else "csv", current_user(), run_id, at=started)
    insert(new_images, db, IMAGES)

    bad = staged.filter(F.col("outcome") == "quarantine")
    sidecar_rows, orphan_sidecars = _sidecar_rows(spark, db, pending_sidecars, good)
    quarantine_rows = (bad.select("path", "sha256", "size", "modification_time", "stage", "reason")
                       .unionByName(orphan_sidecars)
                       .join(waiting_files(spark, db), key, "left_anti")
                       .withColumn("ingested_at", stamp).withColumn("ingest_run", run)
                       .withColumn("retryable", retryable_column()))
    insert(quarantine_rows, db, QUARANTINE)

    file_rows = (good.select("path", F.col("sha256").alias("image_id"), "size", "modification_time")
                 .withColumn("role", F.lit("image"))
                 .unionByName(sidecar_rows)
                 .join(spark.table(qualified(db, FILES)).select(*key), key, "left_anti")
                 .withColumn("ingested_at", stamp).withColumn("ingest_run", run))
    insert(file_rows, db, FILES)
    # files tried again and ingested now leave sem.quarantine; a file keeps its latest outcome only
    summary.healed = heal(spark, db, run_id) if summary.retried else 0

    # The summary counts what this run wrote (small aggregates only).
    written = {r["outcome"]: r["count"] for r in staged.groupBy("outcome").count().collect()}
    for row in (spark.table(qualified(db, IMAGES)).filter(F.col("ingest_run") == run_id)
                .groupBy("scale_bin", "scale_confidence").count().collect()):   # one small aggregate
        bins, confidences = summary.new_by_scale_bin, summary.new_by_scale_confidence
        bins[row["scale_bin"]] = bins.get(row["scale_bin"], 0) + row["count"]
        confidences[row["scale_confidence"]] = confidences.get(row["scale_confidence"], 0) + row["count"]
    summary.new_images = sum(summary.new_by_scale_bin.values())
    summary.duplicate_files = written.get("image", 0) - summary.new_images
    summary.quarantined = _counts(spark.table(qualified(db, QUARANTINE)).filter(F.col("ingest_run") == run_id),
                                  "stage")
    summary.sidecars = _counts(spark.table(qualified(db, FILES)).filter(F.col("ingest_run") == run_id),
                               "role").get("sidecar", 0)
    pending.unpersist()
    listing.unpersist()
    shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %d new images, %d quarantined (%s)", summary.new_images, sum(summary.quarantined.values()),
             clock.lap("writing", n_pending, "files"))
    return summary


class _PhaseClock:
    """Seconds per phase of a run, kept in ``into``; each lap reads well in a log: '12.3 s, 81 files/s'."""

    def __init__(self, into: dict[str, float]):
        self.into, self.last = into, time.monotonic()

    def lap(self, phase: str, count: int, unit: str) -> str:
        now = time.monotonic()
        seconds, self.last = now - self.last, now
        self.into[phase] = round(self.into.get(phase, 0.0) + seconds, 3)
        return f"{seconds:.1f} s" + (f", {count / seconds:.0f} {unit}/s" if count and seconds > 0 else "")


def _counts(df, column: str) -> dict[str, int]:
    return {r[column]: r["count"] for r in df.groupBy(column).count().collect()}


def _list_files(spark, root: str):
    """(path, size, modification_time) of every file under root, empty files included.

    Spark's file scan gives the first two without reading content, but a zero-length file has no
    split and yields no row; the file index still holds it, so the difference is stat'ed here.
    """
    from pyspark.sql import functions as F

    from semspark.storage import from_index_uri

    scan = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
    listed = scan.select("path", F.col("length").alias("size"), F.col("modificationTime").alias("modification_time"))
    indexed = spark.createDataFrame([(from_index_uri(u),) for u in scan.inputFiles()], "path string")
    missing = [r["path"] for r in indexed.join(listed, "path", "left_anti").collect()]
    if not missing:
        return listed
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    rows = []
    for path in missing:
        status = jvm.org.apache.hadoop.fs.Path(path)
        status = status.getFileSystem(conf).getFileStatus(status)
        rows.append((path, int(status.getLen()), int(status.getModificationTime())))
    extra = (spark.createDataFrame(rows, "path string, size long, mtime_ms long")
             .select("path", "size", (F.col("mtime_ms") / 1000).cast("timestamp").alias("modification_time")))
    return listed.unionByName(extra)


def _qualified_root(spark, input_path: str) -> str:
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path(input_path)
    try:
        fs = path.getFileSystem(conf)
        qualified_path = fs.makeQualified(path)
        exists = fs.exists(qualified_path)
    except Exception as exc:
        raise IngestError(f"cannot open input {input_path!r}: {exc}") from exc
    if not exists:
        raise IngestError(f"input {input_path!r} does not exist; give a folder of SEM images "
                          f"(a local path, or file://, hdfs://, s3a:// URI)")
    return qualified_path.toString().rstrip("/")


def _with_folder_labels(df):
    from pyspark.sql import functions as F

    # The top folder under the input root names the category (the published SEM data set's layout);
    # files directly in the root have no label.
    top = F.regexp_extract("rel", r"^([^/]+)/", 1)
    return df.withColumn("label", F.when(top == "", F.lit(None)).otherwise(top))


def _read_label_csv(spark, labels_path: str):
    from pathlib import Path

    from pyspark.sql import functions as F

    if not Path(labels_path).exists() and "://" not in labels_path:
        raise IngestError(f"label file {labels_path!r} does not exist; --labels takes 'folders' or a CSV "
                          "with a header: path,label or image_id,label")
    table = spark.read.option("header", True).csv(labels_path)
    columns = set(table.columns)
    if "label" not in columns or not ({"path", "image_id"} & columns):
        raise IngestError(f"label file {labels_path} needs a header with 'label' and 'path' or 'image_id'; "
                          f"it has {sorted(columns)}")
    return table.filter(F.col("label").isNotNull() & (F.trim("label") != ""))


def _with_csv_path_labels(spark, pending, labels_path: str, root: str):
    from pyspark.sql import functions as F

    table = _read_label_csv(spark, labels_path)
    if "path" not in table.columns:
        return pending
    # A relative path is relative to the input root; an absolute one is made a file: URI.
    uri = (F.when(F.col("path").rlike(r"^[a-zA-Z][a-zA-Z0-9+.-]*:"), F.col("path"))
           .when(F.col("path").startswith("/"), F.concat(F.lit("file:"), F.col("path")))
           .otherwise(F.concat(F.lit(root + "/"), F.col("path"))))
    mapping = table.select(uri.alias("path"), F.col("label").alias("csv_label")).dropDuplicates(["path"])
    return (pending.join(mapping, "path", "left")
            .withColumn("label", F.coalesce("csv_label", "label")).drop("csv_label"))


def _with_csv_id_labels(spark, staged, labels_path: str):
    from pyspark.sql import functions as F

    table = _read_label_csv(spark, labels_path)
    if "image_id" not in table.columns:
        return staged
    mapping = table.select(F.lower("image_id").alias("sha256"), F.col("label").alias("id_label")) \
        .dropDuplicates(["sha256"])
    return (staged.join(mapping, "sha256", "left")
            .withColumn("label", F.coalesce("id_label", "label")).drop("id_label"))


def _sidecar_rows(spark, db, pending_sidecars, good):
    """sem.files rows for sidecars whose image is ingested; quarantine rows for the others."""
    from pyspark.sql import functions as F

    images_by_stem = (good.select(F.regexp_replace("path", r"\.[^./]+$", "").alias("stem"),
                                  F.col("sha256").alias("image_id"))
                      .unionByName(spark.table(qualified(db, FILES)).filter(F.col("role") == "image")
                                   .select(F.regexp_replace("path", r"\.[^./]+$", "").alias("stem"), "image_id"))
                      .dropDuplicates(["stem"]))
    with_image = pending_sidecars.join(images_by_stem, "stem", "left")
    rows = (with_image.filter(F.col("image_id").isNotNull())
            .select("path", "image_id", "size", "modification_time").withColumn("role", F.lit("sidecar")))
    orphans = (with_image.filter(F.col("image_id").isNull())
               .select("path", F.lit(None).cast("string").alias("sha256"), "size", "modification_time",
                       F.lit("sidecar").alias("stage"),
                       F.lit("metadata sidecar whose image was quarantined").alias("reason")))
    return rows, orphans


def _write_dataset(spark, config: Config, new_images, url: str) -> None:
    """Append the new images to the Petastorm dataset (partitioned by scale_bin)."""
    from pathlib import Path

    from petastorm.etl.dataset_metadata import materialize_dataset
    from pyspark.sql import functions as F

    schema = image_unischema(config.ingest.image_size)
    rows = new_images.select(*[F.col(name) for name in ("image_id", "label", "scale_bin", "nm_per_px", "image")])
    local = Path(url[len("file://"):]) if url.startswith("file://") else None
    if local is not None and local.exists() and any(local.glob("scale_bin=*/*.parquet")):
        present = spark.read.parquet(url).select("image_id")
        rows = rows.join(present, "image_id", "left_anti")  # a rerun after a crash writes nothing twice
    count = rows.count()
    if count == 0:  # nothing new (or only bad files): leave the dataset as it is
        return
    # About IMAGES_PER_FILE images per Parquet file in each scale bin, not one small file per task
    # and bin: readers (and Petastorm's row-group bookkeeping) cope badly with many tiny files.
    buckets = F.pmod(F.hash("image_id"), F.lit(max(1, count // IMAGES_PER_FILE)))
    with writer_lock(purpose="appending to the dataset"):
        with materialize_dataset(spark, url, schema, config.ingest.row_group_size_mb):
            (rows.repartition("scale_bin", buckets).write.mode("append")
             .partitionBy("scale_bin").parquet(url))
            pause_point("dataset-appended")   # committed; Petastorm's metadata step not run yet


def _make_worker(config: Config):
    """The function each Spark task runs over its batch of files (mapInPandas)."""
    ingest_config = config.ingest

    def process_partition(batches):
        import pandas as pd

        from semspark.ingest.process import RawFile, process_files
        from semspark.storage import decode_text, read_bytes_retrying

        encode = image_encoder(ingest_config.image_size)
        for frame in batches:
            raws, meta = [], []
            for row in frame.itertuples(index=False):
                raw = RawFile(row.path, None)
                if int(row.size) > ingest_config.max_file_bytes:
                    raw.read_stage = "limits"
                    raw.read_error = (f"file of {int(row.size)} bytes is over the limit of "
                                      f"{ingest_config.max_file_bytes} (ingest.max_file_bytes)")
                else:
                    try:
                        raw.data = read_bytes_retrying(row.path)
                    except OSError as exc:   # after the retries: a failure that may pass (io)
                        raw.read_stage, raw.read_error = "io", f"could not read: {exc}"
                if isinstance(row.sidecar_path, str):
                    try:
                        raw.sidecar_text = decode_text(read_bytes_retrying(row.sidecar_path))
                    except OSError as exc:  # the image is still worth ingesting without it
                        log.warning("unreadable sidecar %s: %s", row.sidecar_path, exc)
                raws.append(raw)
                meta.append(row)
            outcomes = process_files(raws, ingest_config, encode=encode)
            records = []
            for row, out in zip(meta, outcomes):
                record = {"outcome": "image" if out.ok else "quarantine", "path": row.path,
                          "sha256": out.sha256, "size": int(row.size),
                          "modification_time": row.modification_time, "stage": out.stage,
                          "reason": out.reason, "format": out.format, "width": out.width,
                          "height": out.height, "bit_depth": out.bit_depth, "color": out.color,
                          "databar_px": out.databar_px, "phash": out.phash,
                          "chroma": out.chroma, "contrast": out.contrast,
                          "label": row.label if isinstance(row.label, str) else None,
                          "image": out.image_png}
                scale = out.scale.as_dict() if out.scale is not None else {}
                for key in ("scale_value", "scale_unit", "scale_bar_px", "nm_per_px", "scale_source",
                            "scale_mismatch", "metadata_nm_per_px", "scale_label_text", "scale_confidence",
                            "scale_reason", "scale_reader", "scale_bin"):
                    record[key] = scale.get(key)
                records.append(record)
            yield pd.DataFrame.from_records(records, columns=PROCESSED.fieldNames())

    return process_partition
