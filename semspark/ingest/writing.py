"""Ingest, step 3: what is written where: sidecar rows of sem.files, and the new images appended
to the Petastorm dataset (under the writer lock, Petastorm's metadata made after)."""
from __future__ import annotations

from semspark.catalog import qualified
from semspark.config import Config
from semspark.dataset import IMAGES_PER_FILE
from semspark.schema import FILES, image_unischema
from semspark.storage import pause_point, writer_lock


def sidecar_rows(spark, db, pending_sidecars, good):
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


def write_dataset(spark, config: Config, new_images, url: str) -> None:
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
