"""``semspark rescale``: read the scale of images already ingested again, or correct it.

Which images: ``all``, ``unknown`` (scale_bin unknown), ``low`` (confidence low or none), or
``older`` (read by an older reader than this one, per ``scale_reader``), plus every image named in
a corrections CSV. Each image is read again from its file (with its sidecar), exactly as ingest
reads it; a person's correction (kept in ``sem.scale_corrections``, the latest per image wins, also
over any later re-reading) gives the label, and optionally the bar's length.

Only images whose scale changes are written: their ``sem.images`` rows (the partitions of the bins
they leave and enter are rewritten, emptied ones dropped) and their rows of the Petastorm dataset
(moved to their new ``scale_bin`` partition with the new ``nm_per_px``; Petastorm's metadata is
regenerated). When the new reading cuts the databar at another height (a newer reader found the band
elsewhere, or found one where the older found none), the stored image is cut again from the file
and written in place of the old one, with its ``databar_px``, ``phash``, ``chroma`` and ``contrast``
in sem.images. A rerun finds nothing to change and writes nothing. A file that is gone or no longer
holds the same bytes is reported and its row left as it was.

The corrections CSV has a header and one row per image: ``path`` or ``image_id``, ``value``,
``unit`` (nm, um, µm, mm), and optionally ``bar_px`` (the bar's length in pixels).
"""
from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from semspark.catalog import ensure_tables, insert, new_run_id, qualified, rewrite_table, utc_now
from semspark.config import Config
from semspark.ingest.metadata import normalise_unit
from semspark.ingest.scale import READER_VERSION
from semspark.schema import FILES, IMAGES, INGEST_TABLES, RESCALED, SCALE_CORRECTIONS, image_encoder
from semspark.dataset import DatasetError, dataset_root, dataset_url, ensure_consistent, rebuild_metadata, swap_partitions
from semspark.storage import home_path, writer_lock

log = logging.getLogger(__name__)

SELECTIONS = ("all", "unknown", "low", "older", "corrections")
SCALE_COLUMNS = ("scale_value", "scale_unit", "scale_bar_px", "nm_per_px", "scale_source", "scale_mismatch",
                 "metadata_nm_per_px", "scale_label_text", "scale_confidence", "scale_reason", "scale_reader",
                 "scale_bin")
# what is kept of the content above the databar; changed only with the databar's height
CONTENT_COLUMNS = ("databar_px", "phash", "chroma", "contrast")


class RescaleError(RuntimeError):
    """A request that cannot be carried out as given (bad CSV, unknown image): nothing was changed."""


@dataclass
class RescaleSummary:
    run_id: str
    selection: str
    selected: int = 0
    corrections: int = 0
    changed: int = 0
    unchanged: int = 0
    unreadable: list[str] = field(default_factory=list)
    moves: dict[str, int] = field(default_factory=dict)   # "old -> new" bin: images
    recut: int = 0                                        # images whose stored pixels were cut again

    def lines(self) -> list[str]:
        out = [f"rescale run {self.run_id} ({self.selection})",
               f"  images read again:      {self.selected}",
               f"  corrections applied:    {self.corrections}",
               f"  scale changed:          {self.changed}",
               f"  unchanged:              {self.unchanged}",
               f"  unreadable (kept as were): {len(self.unreadable)}",
               f"  stored images cut again (databar moved): {self.recut}"]
        out += [f"    {reason}" for reason in self.unreadable[:10]]
        if self.moves:
            out.append("  images moved between scale bins:")
            out += [f"    {move:<28}{n}" for move, n in sorted(self.moves.items(), key=lambda kv: -kv[1])]
        return out


def read_corrections(path: str) -> list[dict]:
    """Rows of a corrections CSV, checked: every problem is reported with its line number."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            fields = set(rows[0].keys()) if rows else set()
    except OSError as exc:
        raise RescaleError(f"cannot read corrections {path}: {exc}") from exc
    if not rows:
        raise RescaleError(f"{path}: no corrections (a header and one row per image are expected)")
    if not ({"path", "image_id"} & fields) or not {"value", "unit"} <= fields:
        raise RescaleError(f"{path}: columns must be path or image_id, value, unit[, bar_px]; found {sorted(fields)}")
    out, problems = [], []
    for line, row in enumerate(rows, start=2):
        key = (row.get("image_id") or "").strip() or (row.get("path") or "").strip()
        unit = normalise_unit((row.get("unit") or "").strip())
        try:
            value = float(row["value"])
            bar = float(row["bar_px"]) if (row.get("bar_px") or "").strip() else None
        except (TypeError, ValueError):
            problems.append(f"line {line}: value and bar_px must be numbers")
            continue
        if not key:
            problems.append(f"line {line}: neither path nor image_id")
        elif unit is None:
            problems.append(f"line {line}: unit {row.get('unit')!r} is not nm, um, µm or mm")
        elif value <= 0 or (bar is not None and bar <= 0):
            problems.append(f"line {line}: value and bar_px must be positive")
        else:
            out.append({"image_id": (row.get("image_id") or "").strip() or None,
                        "path": None if (row.get("image_id") or "").strip() else key,
                        "scale_value": value, "scale_unit": unit, "scale_bar_px": bar})
    if problems:
        raise RescaleError(f"{path}: " + "; ".join(problems[:10]))
    return out


def run_rescale(spark, config: Config, selection: str = "low", corrections: str | None = None) -> RescaleSummary:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if selection not in SELECTIONS:
        raise RescaleError(f"selection {selection!r}: choose one of {', '.join(SELECTIONS)}")
    db = config.catalog.database
    ensure_tables(spark, db, INGEST_TABLES + (SCALE_CORRECTIONS,))
    run_id = new_run_id("rescale-")
    summary = RescaleSummary(run_id=run_id, selection=selection)
    images = spark.table(qualified(db, IMAGES))
    files = spark.table(qualified(db, FILES))

    if corrections:
        rows = read_corrections(corrections)
        given = spark.createDataFrame(rows, "image_id string, path string, scale_value double, scale_unit string, "
                                            "scale_bar_px double")
        by_path = (given.filter(F.col("path").isNotNull()).drop("image_id")
                   .join(files.filter(F.col("role") == "image").select("path", "image_id"), "path", "left"))
        resolved = given.filter(F.col("image_id").isNotNull()).drop("path").unionByName(by_path.drop("path"))
        unknown = resolved.join(images.select("image_id"), "image_id", "left_anti").count() + \
            by_path.filter(F.col("image_id").isNull()).count()
        if unknown:
            missing = [r["path"] for r in by_path.filter(F.col("image_id").isNull()).limit(5).collect()]
            missing += [r["image_id"] for r in resolved.filter(F.col("image_id").isNotNull())
                        .join(images.select("image_id"), "image_id", "left_anti").limit(5).collect()]
            raise RescaleError(f"{corrections}: {unknown} correction(s) name no ingested image, e.g. "
                               f"{', '.join(map(str, missing[:5]))}; nothing was changed")
        stamp = utc_now()
        insert(resolved.withColumn("source", F.lit(str(corrections)))
               .withColumn("corrected_at", F.lit(stamp).cast("timestamp"))
               .withColumn("rescale_run", F.lit(run_id)), db, SCALE_CORRECTIONS)
        summary.corrections = len(rows)

    latest = Window.partitionBy("image_id").orderBy(F.col("corrected_at").desc(), F.col("rescale_run").desc())
    all_corrections = (spark.table(qualified(db, SCALE_CORRECTIONS))
                       .withColumn("rank", F.row_number().over(latest)).filter("rank = 1")
                       .select("image_id", F.col("scale_value").alias("corr_value"),
                               F.col("scale_unit").alias("corr_unit"), F.col("scale_bar_px").alias("corr_bar_px"),
                               F.col("source").alias("corr_source")))
    wanted = {"all": F.lit(True), "unknown": F.col("scale_bin") == "unknown",
              "low": F.col("scale_confidence").isNull() | F.col("scale_confidence").isin("low", "none"),
              "older": F.coalesce(F.col("scale_reader"), F.lit(1)) < READER_VERSION,
              "corrections": F.lit(False)}[selection]
    this_run = (spark.table(qualified(db, SCALE_CORRECTIONS)).filter(F.col("rescale_run") == run_id)
                .select("image_id").distinct())
    # Corrections people recorded elsewhere (the web app) that sem.images does not show yet are
    # applied by every run, whatever it selects: a correction wins over any reading.
    pending = (all_corrections.join(images.select("image_id", "scale_value", "scale_unit"), "image_id")
               .filter(~(F.col("corr_value").eqNullSafe(F.col("scale_value"))
                         & F.col("corr_unit").eqNullSafe(F.col("scale_unit")))).select("image_id"))
    chosen = images.filter(wanted).select("image_id").unionByName(this_run).unionByName(pending).distinct()
    sidecars = (files.filter(F.col("role") == "sidecar")
                .select(F.regexp_replace("path", r"\.[^./]+$", "").alias("stem"), F.col("path").alias("sidecar_path"))
                .dropDuplicates(["stem"]))
    work = (images.join(chosen, "image_id", "left_semi")
            .select("image_id", "path", "width", F.col("databar_px").alias("stored_databar_px"))
            .withColumn("stem", F.regexp_replace("path", r"\.[^./]+$", ""))
            .join(sidecars, "stem", "left").drop("stem")
            .join(all_corrections, "image_id", "left"))
    staging = home_path(f"staging/{run_id}")
    summary.selected = work.count()
    if summary.selected == 0:
        return summary
    tasks = max(1, min(summary.selected, max(spark.sparkContext.defaultParallelism,
                                             -(-summary.selected // config.ingest.files_per_task))))
    reread = work.repartition(tasks, "image_id").mapInPandas(_make_worker(config), schema=RESCALED)
    reread.write.mode("overwrite").parquet((staging / "reread").as_uri())
    reread = spark.read.parquet((staging / "reread").as_uri())

    failed = reread.filter(F.col("read_error").isNotNull())
    summary.unreadable = [f"{r['image_id'][:12]}: {r['read_error']}" for r in failed.limit(50).collect()]
    n_failed = failed.count()
    fresh = reread.filter(F.col("read_error").isNull()).drop("read_error")
    old = images.select("image_id", *[F.col(c).alias(f"old_{c}") for c in SCALE_COLUMNS + ("databar_px",)])
    compared = fresh.join(old, "image_id")
    differs = None
    for column in SCALE_COLUMNS + ("databar_px",):
        test = ~F.col(column).eqNullSafe(F.col(f"old_{column}"))
        differs = test if differs is None else differs | test
    changes = compared.filter(differs)
    changes.write.mode("overwrite").parquet((staging / "changes").as_uri())
    changes = spark.read.parquet((staging / "changes").as_uri())
    summary.changed = changes.count()
    summary.recut = changes.filter(F.col("image").isNotNull()).count()
    summary.unchanged = summary.selected - summary.changed - n_failed
    if summary.changed == 0:
        shutil.rmtree(staging, ignore_errors=True)
        return summary
    summary.moves = {f"{r['old_scale_bin']} -> {r['scale_bin']}": r["count"]
                     for r in changes.filter(F.col("old_scale_bin") != F.col("scale_bin"))
                     .groupBy("old_scale_bin", "scale_bin").count().collect()}

    _rewrite_images(spark, db, changes, staging)
    _rewrite_dataset(spark, config, changes, staging)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("rescale %s: %d of %d images changed", run_id, summary.changed, summary.selected)
    return summary


def _rewrite_images(spark, db: str, changes, staging: Path) -> None:
    """Rewrite the sem.images partitions the changed rows leave or enter; drop the emptied ones."""
    from pyspark.sql import functions as F

    name = qualified(db, IMAGES)
    images = spark.table(name)
    bins = {r[0] for r in changes.select("old_scale_bin").distinct().collect()} | \
           {r[0] for r in changes.select("scale_bin").distinct().collect()}
    # the scale always; what is kept of the content only where it was cut again
    updated_cols = [F.col(f"new.{c}").alias(c) if c in SCALE_COLUMNS else
                    F.when(F.col("new.image").isNotNull(), F.col(f"new.{c}")).otherwise(F.col(f"img.{c}")).alias(c)
                    if c in CONTENT_COLUMNS else F.col(f"img.{c}") for c in images.columns]
    new_rows = (images.alias("img")
                .join(changes.select("image_id", *SCALE_COLUMNS, *CONTENT_COLUMNS, "image").alias("new"), "image_id")
                .select(*updated_cols))
    kept = images.filter(F.col("scale_bin").isin(list(bins))).join(changes.select("image_id"), "image_id", "left_anti")
    # Staged first: the bins that remain are known before the table is touched.
    kept.select(*images.columns).unionByName(new_rows.select(*images.columns)) \
        .write.mode("overwrite").parquet((staging / "images").as_uri())
    rewritten = spark.read.parquet((staging / "images").as_uri())
    remaining = {r[0] for r in rewritten.select("scale_bin").distinct().collect()}
    rewrite_table(spark, db, IMAGES, rewritten, "rescale", partitions_only=True,
                  drop_partitions=tuple(sorted(bins - remaining)))


def _rewrite_dataset(spark, config: Config, changes, staging: Path) -> None:
    """Move the changed images' rows of the Petastorm dataset to their new scale_bin partitions.

    Each touched partition is written anew beside the dataset, then swapped in by renames; the
    swap is journalled so that a rerun after a crash finishes it. Petastorm's metadata is made again.
    """
    url = dataset_url(config)
    try:
        root = dataset_root(url)
    except DatasetError as exc:
        raise RescaleError(f"rescale moves dataset partitions: {exc}") from exc
    with writer_lock(purpose="rescale: moving images between the dataset's partitions"):
        ensure_consistent(spark, config)
        if any(root.glob("scale_bin=*/*.parquet")):
            _move_dataset_rows(spark, config, changes, staging, url, root)


def _move_dataset_rows(spark, config: Config, changes, staging: Path, url: str, root: Path) -> None:
    from pyspark.sql import functions as F

    dataset = spark.read.parquet(url)
    moved = dataset.join(changes.select("image_id"), "image_id", "left_semi")
    bins = {r[0] for r in moved.select("scale_bin").distinct().collect()} | \
           {r[0] for r in changes.select("scale_bin").distinct().collect()}
    columns = ["image_id", "label", "scale_bin", "nm_per_px", "image"]
    kept = dataset.filter(F.col("scale_bin").isin(list(bins))).join(changes.select("image_id"), "image_id", "left_anti")
    new_rows = (moved.withColumnRenamed("image", "stored_image").drop("scale_bin", "nm_per_px")
                .join(changes.select("image_id", "scale_bin", "nm_per_px", F.col("image").alias("recut")), "image_id")
                .withColumn("image", F.coalesce("recut", "stored_image")))
    target = staging / "dataset"
    (kept.select(*columns).unionByName(new_rows.select(*columns))
     .repartition("scale_bin").write.mode("overwrite").partitionBy("scale_bin").parquet(target.as_uri()))
    swap_partitions(root, target, bins)
    rebuild_metadata(spark, config, url)


def _make_worker(config: Config):
    ingest_config = config.ingest

    def reread_partition(batches):
        import hashlib

        import pandas as pd

        from semspark.ingest.formats import BadImage
        from semspark.ingest.ocr import find_tessdata
        from semspark.ingest.process import databar_height, read_file_scale, scale_of, stored_content
        from semspark.storage import decode_text, read_bytes_retrying as read_bytes

        tessdata = find_tessdata(ingest_config.tessdata_dir)
        encode = image_encoder(ingest_config.image_size)

        for frame in batches:
            records = []
            for row in frame.itertuples(index=False):
                record = {"image_id": row.image_id, "read_error": None}
                try:
                    data = read_bytes(row.path)
                except OSError as exc:
                    record["read_error"] = f"{row.path}: cannot read: {exc}"
                    records.append(record)
                    continue
                if hashlib.sha256(data).hexdigest() != row.image_id:
                    record["read_error"] = f"{row.path}: no longer holds the ingested bytes"
                    records.append(record)
                    continue
                sidecar = None
                if isinstance(row.sidecar_path, str):
                    try:
                        sidecar = decode_text(read_bytes(row.sidecar_path))
                    except OSError as exc:
                        log.warning("unreadable sidecar %s: %s", row.sidecar_path, exc)
                try:
                    decoded, metadata, reading = read_file_scale(data, sidecar, ingest_config, tessdata)
                except BadImage as exc:
                    record["read_error"] = f"{row.path}: {exc.reason}"
                    records.append(record)
                    continue
                correction = None
                if isinstance(row.corr_unit, str):
                    bar = float(row.corr_bar_px) if pd.notna(row.corr_bar_px) else None
                    correction = (float(row.corr_value), row.corr_unit, bar, row.corr_source)
                record.update(scale_of(decoded, metadata, reading, ingest_config, correction).as_dict())
                height = databar_height(decoded, reading)
                if pd.isna(row.stored_databar_px) or height != int(row.stored_databar_px):
                    # the databar moved: the stored image is cut again, with what is measured of it
                    record.update(stored_content(decoded, reading, ingest_config, encode))
                else:
                    record["databar_px"] = height
                records.append(record)
            yield pd.DataFrame.from_records(records, columns=RESCALED.fieldNames())

    return reread_partition
