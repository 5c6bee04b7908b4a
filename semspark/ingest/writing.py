"""Ingest, step 3: what is written where: sidecar rows of sem.files, and the new images appended
to the Petastorm dataset (under the writer lock, Petastorm's metadata made after)."""
from __future__ import annotations

import shutil

from semspark.catalog import local_columns, qualified
from semspark.config import Config
from semspark.dataset import IMAGES_PER_FILE, STAGING, move_in_run_files, petastorm_parquet_settings, update_metadata
from semspark.schema import IMAGES, image_unischema
from semspark.storage import pause_point, writer_lock


def stored_images_by_stem(stored, stems: set[str]):
    """The ingested images (``stored``: listing.stored_files' frame) whose path without its
    extension is one of ``stems``: a pandas frame of stem and image_id, the first path of a stem."""
    import pandas as pd

    if not stems:
        return pd.DataFrame({"stem": pd.Series(dtype=object), "image_id": pd.Series(dtype=object)})
    images = stored[(stored["role"] == "image") & stored["path"].str.startswith(tuple(f"{s}." for s in stems))]
    found = images.assign(stem=images["path"].str.replace(r"\.[^./]+$", "", regex=True)).sort_values("path")
    return found[found["stem"].isin(stems)].drop_duplicates("stem")[["stem", "image_id"]]


def stored_image_ids(spark, database: str, ids: set[str]) -> set[str]:
    """Which of ``ids`` sem.images holds (a rerun after a crash, or new bytes of an image ingested
    before), without a Spark job where the table is local: its id column read with pyarrow."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    if not ids:
        return set()
    column = local_columns(spark, database, IMAGES, ["image_id"])
    if column is None:
        wanted = spark.createDataFrame([(i,) for i in sorted(ids)], "image_id string")
        return {r["image_id"] for r in spark.table(qualified(database, IMAGES)).select("image_id")
                .join(F.broadcast(wanted), "image_id", "left_semi").collect()}
    held = pc.filter(column["image_id"], pc.is_in(column["image_id"], value_set=pa.array(sorted(ids), pa.string())))
    return set(held.to_pylist())


def sidecar_rows(spark, pending_sidecars, good, stored_by_stem):
    """sem.files rows for sidecars whose image is ingested (the night's image of the same stem
    first, else an earlier one: ``stored_by_stem``, stored_images_by_stem's frame); quarantine rows
    for the others."""
    from pyspark.sql import functions as F

    images_by_stem = good.select(F.regexp_replace("path", r"\.[^./]+$", "").alias("stem"),
                                 F.col("sha256").alias("image_id"), F.lit(0).alias("earlier"))
    if len(stored_by_stem):
        earlier = spark.createDataFrame(stored_by_stem[["stem", "image_id"]], "stem string, image_id string")
        images_by_stem = images_by_stem.unionByName(earlier.withColumn("earlier", F.lit(1)))
    images_by_stem = images_by_stem.groupBy("stem").agg(F.min_by("image_id", F.struct("earlier", "image_id"))
                                                        .alias("image_id"))
    with_image = pending_sidecars.join(images_by_stem, "stem", "left")
    rows = (with_image.filter(F.col("image_id").isNotNull())
            .select("path", "image_id", "size", "modification_time").withColumn("role", F.lit("sidecar")))
    orphans = (with_image.filter(F.col("image_id").isNull())
               .select("path", F.lit(None).cast("string").alias("sha256"), "size", "modification_time",
                       F.lit("sidecar").alias("stage"),
                       F.lit(ORPHAN_SIDECAR).alias("reason")))
    return rows, orphans


ORPHAN_SIDECAR = "metadata sidecar whose image was quarantined"


def sidecar_records(pending_sidecars, night_images, stored_by_stem) -> tuple[list[dict], list[dict]]:
    """``sidecar_rows`` in the driver, for a night's few files: (sem.files rows, quarantine rows) as
    dicts. ``pending_sidecars``: the listing's frame of the new sidecars (path, size, mtime_ms,
    stem); ``night_images``: the night's ingested images (rows with path and sha256); the same choice
    of image for a stem (the night's first, by id, else the earlier one)."""
    import datetime
    import re

    chosen: dict[str, tuple[int, str]] = {}
    for earlier, pairs in ((0, ((re.sub(r"\.[^./]+$", "", r["path"]), r["sha256"]) for r in night_images)),
                           (1, zip(stored_by_stem["stem"], stored_by_stem["image_id"]))):
        for stem, image_id in pairs:
            chosen[stem] = min(chosen.get(stem, (earlier, image_id)), (earlier, image_id))
    epoch = datetime.datetime(1970, 1, 1)
    files, orphans = [], []
    for path, size, mtime_ms, stem in zip(pending_sidecars["path"], pending_sidecars["size"],
                                          pending_sidecars["mtime_ms"], pending_sidecars["stem"]):
        when = epoch + datetime.timedelta(milliseconds=int(mtime_ms))   # as timestamp_millis makes it
        if stem in chosen:
            files.append({"path": path, "image_id": chosen[stem][1], "size": int(size), "modification_time": when,
                          "role": "sidecar"})
        else:
            orphans.append({"path": path, "sha256": None, "size": int(size), "modification_time": when,
                            "stage": "sidecar", "reason": ORPHAN_SIDECAR})
    return files, orphans


PENDING_PREFIX = "_ingest_pending-"   # Spark, pyarrow and Petastorm skip files named _...
TRACKED = "_ingest_pending_tracked"


def write_dataset(spark, config: Config, new_images, url: str, run_id: str, image_ids: list[str] | None = None,
                  pixels=None) -> None:
    """Append the new images to the Petastorm dataset (partitioned by scale_bin).

    The images are new to sem.images; the dataset can hold some of them only if an ingest died
    between its dataset write and its sem.images insert. Each write first leaves a marker naming
    the ids it writes (``clear_pending`` drops the ids sem.images holds after the insert); only
    while a marker is left (or for a dataset from before them) are the dataset's ids read to skip
    what is there: a normal night does not read every id of the dataset. ``image_ids``: the ids of
    ``new_images`` when the caller holds them (else they are collected, a Spark job). ``pixels``:
    a function giving the same rows as pyarrow record batches (image_id, label, scale_bin,
    nm_per_px, image; no null bin), streamed to the files by pyarrow where the dataset is local
    (no Spark job, no shuffle, memory bounded); Spark writes them when a marker is left (the rows
    are then filtered against the dataset)."""
    from pathlib import Path

    from petastorm.etl.dataset_metadata import materialize_dataset
    from pyspark.sql import functions as F

    schema = image_unischema(config.ingest.image_size)
    rows = new_images.select(*[F.col(name) for name in ("image_id", "label", "scale_bin", "nm_per_px", "image")])
    local = Path(url[len("file://"):]) if url.startswith("file://") else None
    if local is not None and local.exists() and any(local.glob("scale_bin=*/*.parquet")):
        # a marker left (or a dataset from before them): the dataset may hold some of these images
        if not (local / TRACKED).exists() or _pending_ids(local):
            present = spark.read.parquet(url).select("image_id")
            rows = rows.join(present, "image_id", "left_anti")  # a rerun after a crash writes nothing twice
            image_ids, pixels = None, None
    ids = list(image_ids) if image_ids is not None else [r["image_id"] for r in rows.select("image_id").collect()]
    count = len(ids)
    if count == 0:  # nothing new (or only bad files): leave the dataset as it is
        return
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        marker = local / f"{PENDING_PREFIX}{run_id}"
        marker.with_suffix(".tmp").write_text("\n".join(ids))
        marker.with_suffix(".tmp").replace(marker)
    # About IMAGES_PER_FILE images per Parquet file in each scale bin, not one small file per task
    # and bin: readers (and Petastorm's row-group bookkeeping) cope badly with many tiny files.
    buckets = F.pmod(F.hash("image_id"), F.lit(max(1, count // IMAGES_PER_FILE)))
    appended = rows.repartition("scale_bin", buckets).write.mode("append").partitionBy("scale_bin")
    with writer_lock(purpose="appending to the dataset"):
        if local is None:   # not a local file system: Petastorm's own metadata step, over every file
            with materialize_dataset(spark, url, schema, config.ingest.row_group_size_mb):
                appended.parquet(url)
            return
        # Written beside the dataset (a _ folder readers skip), then renamed in with the run's id
        # in their names: scoring finds a night's images by their run (dataset.RUN_FILE).
        shutil.rmtree(local / STAGING, ignore_errors=True)   # what a killed writer left: writers take turns
        if pixels is None:
            with petastorm_parquet_settings(spark, config.ingest.row_group_size_mb):
                appended.parquet((local / STAGING / run_id).as_uri())
        else:
            _write_bins(spark, pixels(), local / STAGING / run_id, config.ingest.row_group_size_mb)
        move_in_run_files(local, local / STAGING / run_id, run_id)
        shutil.rmtree(local / STAGING, ignore_errors=True)
        pause_point("dataset-appended")   # committed; Petastorm's metadata not updated yet
        update_metadata(local, schema)    # the new files' row groups counted, the others kept


def _write_bins(spark, batches, folder, row_group_size_mb: int) -> None:
    """The rows of ``batches`` (record batches of image_id, label, scale_bin, nm_per_px, image) as
    Spark's ``partitionBy("scale_bin")`` lays them out under ``folder`` (a bin's folder name escaped
    as Spark escapes it), at most IMAGES_PER_FILE images a file, row groups of about
    ``row_group_size_mb`` as Petastorm's settings make them. Streamed: memory holds about one row
    group per bin, whatever the number of images."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from semspark.catalog import partition_folder_name

    bins: dict[str, _BinFiles] = {}
    for batch in batches:
        # without the staged files' Spark schema (all their columns), which Spark would read as the dataset's
        rows = pa.Table.from_batches([batch]).replace_schema_metadata(None)
        if rows.num_rows == 0:
            continue
        for scale_bin in rows["scale_bin"].unique().to_pylist():
            if scale_bin not in bins:
                bins[scale_bin] = _BinFiles(folder / partition_folder_name(spark, "scale_bin", scale_bin),
                                            row_group_size_mb * 1024 * 1024)
            bins[scale_bin].add(rows.filter(pc.equal(rows["scale_bin"], scale_bin)).drop(["scale_bin"]))
    for files in bins.values():
        files.close()


class _BinFiles:
    """One scale bin's Parquet files, written a row group at a time: rows are held until they make
    a row group of ``group_bytes``, a file is closed at IMAGES_PER_FILE rows."""

    def __init__(self, folder, group_bytes: int):
        self.folder, self.group_bytes = folder, group_bytes
        self.held, self.held_bytes = [], 0
        self.writer, self.in_file, self.files = None, 0, 0

    def add(self, rows) -> None:
        self.held.append(rows)
        self.held_bytes += rows.nbytes
        if self.held_bytes >= self.group_bytes:
            self._write_held()

    def close(self) -> None:
        self._write_held()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write_held(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.held:
            return
        rows = pa.concat_tables(self.held)
        self.held, self.held_bytes = [], 0
        while rows.num_rows:
            if self.writer is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.writer = pq.ParquetWriter(str(self.folder / f"part-{self.files:05d}.snappy.parquet"),
                                               rows.schema, compression="snappy")
                self.files += 1
            take = min(rows.num_rows, IMAGES_PER_FILE - self.in_file)
            self.writer.write_table(rows.slice(0, take), row_group_size=take)
            self.in_file += take
            rows = rows.slice(take)
            if self.in_file == IMAGES_PER_FILE:
                self.writer.close()
                self.writer, self.in_file = None, 0


def _pending_ids(local) -> set[str]:
    return {i for marker in local.glob(PENDING_PREFIX + "*") if marker.suffix != ".tmp"
            for i in marker.read_text().split()}


def clear_pending(spark, url: str, images_table: str, run_id: str | None = None) -> None:
    """After the sem.images insert: the markers' ids that sem.images holds are done; a marker keeps
    the ids it does not (a dead run's images whose files were not ingested again yet). The marker of
    ``run_id``, the run that just inserted every id it names, goes without a query."""
    from pathlib import Path

    if not url.startswith("file://"):
        return
    local = Path(url[len("file://"):])
    if not local.exists():
        return
    if run_id is not None:
        (local / f"{PENDING_PREFIX}{run_id}").unlink(missing_ok=True)
    markers = [m for m in local.glob(PENDING_PREFIX + "*") if m.suffix != ".tmp"]
    pending = _pending_ids(local)
    held = set()
    if pending:
        wanted = spark.createDataFrame([(i,) for i in pending], "image_id string")
        held = {r["image_id"] for r in spark.table(images_table).select("image_id")
                .join(wanted, "image_id", "left_semi").collect()}
    for marker in markers:
        left = [i for i in marker.read_text().split() if i not in held]
        if left:
            marker.write_text("\n".join(left))
        else:
            marker.unlink(missing_ok=True)
    (local / TRACKED).touch()
