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
from collections import Counter
from dataclasses import dataclass, field

from semspark.catalog import (append_arrow, append_new_rows, ensure_tables, insert, insert_new, local_columns, new_run_id,
                              qualified, utc_now)
from semspark.config import Config
from semspark.dataset import dataset_url, ensure_consistent
from semspark.ingest.listing import (
    known_keys,
    list_files,
    qualified_root,
    stored_files,
    to_spark_rows,
    with_csv_id_labels,
    with_csv_path_labels,
    with_folder_labels,
)
from semspark.ingest.processing import make_worker
from semspark.ingest.quarantine import (RETRYABLE_STAGES, heal, needs_healing, quarantine_keys, retryable_column,
                                        waiting_files)
from semspark.ingest.writing import (clear_pending, sidecar_records, sidecar_rows, stored_image_ids, stored_images_by_stem,
                                     write_dataset)
from semspark.labels import append_changes, current_user, ensure_labels
from semspark.schema import FILES, IMAGES, INGEST_TABLES, PROCESSED, QUARANTINE
from semspark.storage import home_path, read_staged_rows, read_staged_table, staged_batches

log = logging.getLogger(__name__)

# sem.images rows (no pixels, about 1 KB) one task writes: a night's in one file per scale bin.
IMAGES_ROWS_PER_TASK = 100_000
# Up to this many new images a run names them by path in a filter on the staged rows; more, and the
# new images are staged again on their own (a join, a write) to keep the query plans small.
NAMED_NEW_IMAGES = 5_000


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
    dangling_links: int = 0           # links to nothing under the root: not listed until they point somewhere
    # preparing (catalog checks, reading what is known), listing, comparing, processing, and the
    # writes: dataset (with the new sem.images rows staged), tables (sem.labels, sem.images), files
    # (sem.quarantine, sem.files, the summary's counts)
    phase_seconds: dict[str, float] = field(default_factory=dict)
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
        if self.dangling_links:
            out.append(f"  links to nothing (not listed until they point to a file): {self.dangling_links}")
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
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as ds
    from pyspark.sql import functions as F

    db = config.catalog.database
    run_id = new_run_id()
    started = utc_now()
    summary = IngestSummary(run_id=run_id, dataset_url=dataset_url(config))
    clock = _PhaseClock(summary.phase_seconds)
    root = qualified_root(spark, input_path)
    ensure_tables(spark, db, INGEST_TABLES)
    ensure_labels(spark, db)
    ensure_consistent(spark, config)   # a swap or a metadata step a killed run left half done
    stored = stored_files(spark, db)   # one read of sem.files' keys for the run's comparisons
    ingested = known_keys(stored)
    quarantined = quarantine_keys(spark, db)
    if needs_healing(quarantined, ingested):   # what a run killed before its end left in sem.quarantine
        heal(spark, db, run_id)
        quarantined = quarantine_keys(spark, db)
    log.info("read what is known: %d files ingested, %d quarantined (%s)", len(ingested), len(quarantined),
             clock.lap("preparing", 0, ""))

    listing = list_files(spark, root)
    files = listing.files
    summary.listed = len(files)
    summary.dangling_links = len(listing.dangling_links)
    if listing.dangling_links:
        log.warning("%d links under %s point to nothing and are not ingested until they do (e.g. %s)",
                    len(listing.dangling_links), root, listing.dangling_links[0])
    log.info("listed %d files under %s (%s)", summary.listed, root, clock.lap("listing", summary.listed, "files"))

    # In the driver, on plain columns: only what is new becomes Spark rows (see listing.py).
    files["ext"] = files["path"].str.extract(r"\.([^./]+)$", expand=False).fillna("").str.lower()
    files["stem"] = files["path"].str.replace(r"\.[^./]+$", "", regex=True)
    files["rel"] = files["path"].str.slice(len(root) + 1)
    is_sidecar_ext = files["ext"].isin(list(config.ingest.sidecar_extensions))
    image_stems = set(files.loc[~is_sidecar_ext, "stem"])
    is_attached = is_sidecar_ext & files["stem"].isin(image_stems)   # the sidecar of a listed image
    # quarantined files wait unless their failure may pass (read errors): those are tried again
    known = ingested | known_keys(quarantined[~quarantined["retryable"].astype(bool)])
    is_new = ~pd.Series([k in known for k in zip(files["path"], files["size"], files["mtime_ms"])],
                        index=files.index, dtype=bool)
    sidecar_of = (files[is_attached].sort_values("path").drop_duplicates("stem")
                  .set_index("stem")["path"])
    pending_files = files[~is_attached & is_new].copy()
    pending_files["sidecar_path"] = pending_files["stem"].map(sidecar_of)
    n_pending, n_sidecars = len(pending_files), int((is_attached & is_new).sum())
    # A new sidecar's image is usually new the same night; the others' are looked up here
    sidecar_stems = set(files.loc[is_attached & is_new, "stem"]) - set(pending_files["stem"])
    stored_by_stem = stored_images_by_stem(stored, sidecar_stems)
    retried = known_keys(quarantined)
    summary.retried = sum(k in retried for k in zip(pending_files["path"], pending_files["size"],
                                                    pending_files["mtime_ms"]))
    summary.already_known = summary.listed - n_pending - n_sidecars
    log.info("%d files to process (%d already ingested, %d tried again from quarantine) (%s)", n_pending,
             summary.already_known, summary.retried, clock.lap("comparing", summary.listed, "files"))
    if n_pending == 0 and n_sidecars == 0:
        return summary

    key = ["path", "size", "modification_time"]
    pending = to_spark_rows(spark, pending_files, ("stem", "rel", "sidecar_path"))
    pending_sidecars = to_spark_rows(spark, files[is_attached & is_new], ("stem",))
    pending = with_folder_labels(pending) if labels == "folders" else pending.withColumn("label", F.lit(None).cast("string"))
    if labels not in (None, "folders"):
        pending = with_csv_path_labels(spark, pending, labels, root)

    staging = home_path(f"staging/ingest-{run_id}")
    # Big enough batches for OCR, but never fewer tasks than cores while there is work for them.
    tasks = max(math.ceil(n_pending / config.ingest.files_per_task),
                min(n_pending, spark.sparkContext.defaultParallelism), 1)
    worker = make_worker(config)
    processed = (pending.select("path", "size", "modification_time", "sidecar_path", "label")
                 .repartition(tasks, "path")
                 .mapInPandas(worker, schema=PROCESSED))
    log.info("processing %d files in %d tasks", n_pending, tasks)
    processed.write.mode("overwrite").parquet((staging / "processed").as_uri())
    log.info("processed %d files (%s)", n_pending, clock.lap("processing", n_pending, "files"))
    staged = spark.read.parquet((staging / "processed").as_uri())
    if labels not in (None, "folders"):
        staged = with_csv_id_labels(spark, staged, labels)

    stamp = F.lit(started).cast("timestamp")
    run = F.lit(run_id)
    good = staged.filter(F.col("outcome") == "image")
    # The staged outcomes without their pixels, read in the driver (the staging folder is local):
    # the night's ids, counts and new images, where each was a Spark job of its own
    outcomes = read_staged_rows(staging / "processed", ["path", "sha256", "outcome", "label", "scale_bin",
                                                     "scale_confidence", "size", "modification_time", "stage",
                                                     "reason"])
    images = [r for r in outcomes if r["outcome"] == "image"]
    night_ids = {r["sha256"] for r in images}
    written = Counter(r["outcome"] for r in outcomes)
    existing_ids = stored_image_ids(spark, db, night_ids)   # a rerun after a crash, or a copy of an earlier image
    # an image new to sem.images once, by the first of its paths; the others are copies of it
    first_by_id: dict[str, dict] = {}
    for r in sorted(images, key=lambda r: r["path"]):
        first_by_id.setdefault(r["sha256"], r)
    new_rows = [{"image_id": image_id, **{c: r[c] for c in ("path", "label", "scale_bin", "scale_confidence")}}
                for image_id, r in first_by_id.items() if image_id not in existing_ids]
    new_images = (good.drop("image").withColumnRenamed("sha256", "image_id")
                  .withColumn("ingested_at", stamp).withColumn("ingest_run", run))
    images_in_driver = labels in (None, "folders") and len(new_rows) <= NAMED_NEW_IMAGES
    if images_in_driver:
        # the rows never change (a literal list of paths over this run's staged files): no need to
        # stage them again for the dataset's write, the tables' inserts and the labels to agree
        new_images = new_images.filter(F.col("path").isin(sorted(r["path"] for r in new_rows)))
    else:
        # Materialised, not cached: inserting into sem.images would invalidate a cache that reads
        # it. Without the pixels: the dataset's write takes them from the staged rows, so they are
        # read once after processing (a copy here would write and read them once more).
        first_paths = good.groupBy(F.col("sha256").alias("image_id")).agg(F.min("path").alias("path"))
        (new_images.join(first_paths, ["image_id", "path"], "left_semi")
         .filter(~F.col("image_id").isin(sorted(existing_ids)) if existing_ids else F.lit(True))
         .write.mode("overwrite").parquet((staging / "new_images").as_uri()))
        new_images = spark.read.parquet((staging / "new_images").as_uri())
        new_rows = read_staged_rows(staging / "new_images", ["image_id", "path", "label", "scale_bin", "scale_confidence"])
    pixels = good.select("path", "image")   # one staged row per listed path
    # the new images read back from the staging folder by the driver, for the dataset's write
    # (their pixels streamed) and the sem.images rows: no Spark job for either where they are local
    staged_new = _staged_new_images(staging / "processed", new_rows) if images_in_driver else None
    streamed = None
    if staged_new is not None and all(r["scale_bin"] is not None for r in new_rows):
        def streamed():
            return staged_batches(staging / "processed", DATASET_COLUMNS,
                                  where=ds.field("path").isin(pa.array([r["path"] for r in new_rows], pa.string())))
    write_dataset(spark, config, new_images.join(pixels, "path"), summary.dataset_url, run_id,
                  image_ids=[r["image_id"] for r in new_rows], pixels=streamed)
    log.info("appended the new images to the dataset (%s)", clock.lap("dataset", n_pending, "files"))
    if labels is not None:   # before sem.images: a rerun after a crash finds them and adds nothing
        append_changes(spark, db, [(r["image_id"], r["label"]) for r in new_rows if r["label"] is not None],
                       "folders" if labels == "folders" else "csv", current_user(), run_id, at=started,
                       count_unchanged=False)
    # One file per scale bin a night (Spark would write one per bin and task): a night's scoring
    # reads every small file of sem.images until compaction merges them.
    # from the driver where the warehouse is local: one file per scale bin, no Spark job
    if not (staged_new is not None and append_arrow(spark, db, IMAGES, _image_rows(staged_new, started, run_id))):
        insert(new_images.coalesce(max(1, math.ceil(n_pending / IMAGES_ROWS_PER_TASK))), db, IMAGES)
    clear_pending(spark, summary.dataset_url, qualified(db, IMAGES), run_id)   # the ids sem.images now holds are done
    clock.lap("tables", n_pending, "files")

    # A night with nothing to quarantine and no sidecar starts no job to write or count either.
    bad = staged.filter(F.col("outcome") == "quarantine")
    quarantine_rows = bad.select("path", "sha256", "size", "modification_time", "stage", "reason")
    file_rows = good.select("path", F.col("sha256").alias("image_id"), "size", "modification_time") \
        .withColumn("role", F.lit("image"))
    if n_sidecars:   # a night without new sidecars looks up nothing
        sidecar_file_rows, orphan_sidecars = sidecar_rows(spark, pending_sidecars, good, stored_by_stem)
        quarantine_rows = quarantine_rows.unionByName(orphan_sidecars)
        file_rows = file_rows.unionByName(sidecar_file_rows)
    may_quarantine = written.get("quarantine", 0) > 0 or n_sidecars > 0
    # A night's rows go in from the driver where the tables are local (one small file each, no Spark
    # job); what a rerun after a crash, or another run meanwhile, recorded already is not recorded
    # twice either way
    in_driver = n_pending + n_sidecars <= NAMED_NEW_IMAGES
    if in_driver:
        sidecar_files, orphan_sidecars = sidecar_records(files[is_attached & is_new], images, stored_by_stem)
        failed = [{c: r[c] for c in ("path", "sha256", "size", "modification_time", "stage", "reason")}
                  for r in outcomes if r["outcome"] == "quarantine"] + orphan_sidecars
        image_files = [{"path": r["path"], "size": r["size"], "modification_time": r["modification_time"],
                        "image_id": r["sha256"], "role": "image"} for r in images]
        may_quarantine = bool(failed)
    if may_quarantine:
        appended = None
        if in_driver:
            appended = append_new_rows(spark, db, QUARANTINE, [
                {**r, "ingested_at": started, "ingest_run": run_id, "retryable": r["stage"] in RETRYABLE_STAGES}
                for r in failed], key, unless="retryable")
        if appended is None:
            quarantine_rows = (quarantine_rows
                               .join(waiting_files(spark, db), key, "left_anti")
                               .withColumn("ingested_at", stamp).withColumn("ingest_run", run)
                               .withColumn("retryable", retryable_column()))
            insert(quarantine_rows, db, QUARANTINE)
    appended = None
    if in_driver:
        appended = append_new_rows(spark, db, FILES, [{**r, "ingested_at": started, "ingest_run": run_id}
                                                      for r in image_files + sidecar_files], key)
    if appended is None:
        insert_new(file_rows.withColumn("ingested_at", stamp).withColumn("ingest_run", run), db, FILES, key)
    # files tried again and ingested now leave sem.quarantine; a file keeps its latest outcome only
    summary.healed = heal(spark, db, run_id) if summary.retried else 0

    # The summary counts what this run wrote (small aggregates only).
    summary.new_by_scale_bin = dict(Counter(r["scale_bin"] for r in new_rows))   # the rows sem.images got
    summary.new_by_scale_confidence = dict(Counter(r["scale_confidence"] for r in new_rows))
    summary.new_images = len(new_rows)
    summary.duplicate_files = written.get("image", 0) - summary.new_images
    summary.quarantined = _run_counts(spark, db, QUARANTINE, run_id, "stage") if may_quarantine else {}
    summary.sidecars = _run_counts(spark, db, FILES, run_id, "role").get("sidecar", 0) if n_sidecars else 0
    shutil.rmtree(staging, ignore_errors=True)
    clock.lap("files", n_pending, "files")
    writing = sum(summary.phase_seconds.get(p, 0.0) for p in ("dataset", "tables", "files"))
    log.info("wrote %d new images, %d quarantined (%.1f s)", summary.new_images, sum(summary.quarantined.values()),
             writing)
    return summary


# a dataset row's columns, in their order, from the staged columns
DATASET_COLUMNS = {"image_id": "sha256", "label": "label", "scale_bin": "scale_bin", "nm_per_px": "nm_per_px",
                   "image": "image"}
_STAGED_IMAGE_COLUMNS = [c for c in IMAGES.schema.fieldNames() if c not in ("image_id", "ingested_at", "ingest_run")]


def _staged_new_images(staged_folder, new_rows: list[dict]):
    """The staged rows of ``new_rows`` (a run's new images, by their first path) as a pyarrow
    Table without their pixels: the id (the staged SHA-256) and the columns sem.images takes."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    columns = _STAGED_IMAGE_COLUMNS
    rows = read_staged_table(staged_folder, ["sha256", *columns],
                             where=ds.field("path").isin(pa.array([r["path"] for r in new_rows], pa.string())))
    return rows.rename_columns(["image_id", *columns])


def _image_rows(staged_new, started, run_id: str):
    """sem.images rows of the staged new images: their columns, the run's time and id."""
    import pyarrow as pa

    count = staged_new.num_rows
    return (staged_new.append_column("ingested_at", pa.array([started] * count, pa.timestamp("us")))
            .append_column("ingest_run", pa.array([run_id] * count, pa.string())))


class _PhaseClock:
    """Seconds per phase of a run, kept in ``into``; each lap reads well in a log: '12.3 s, 81 files/s'."""

    def __init__(self, into: dict[str, float]):
        self.into, self.last = into, time.monotonic()

    def lap(self, phase: str, count: int, unit: str) -> str:
        now = time.monotonic()
        seconds, self.last = now - self.last, now
        self.into[phase] = round(self.into.get(phase, 0.0) + seconds, 3)
        return f"{seconds:.1f} s" + (f", {count / seconds:.0f} {unit}/s" if count and seconds > 0 else "")


def _run_counts(spark, database: str, table, run_id: str, column: str) -> dict[str, int]:
    """How many rows of ``table`` this run wrote, by ``column``: with pyarrow from a local
    warehouse's files (catalog.local_columns), else a Spark query."""
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    read = local_columns(spark, database, table, ["ingest_run", column])
    if read is None:
        rows = spark.table(qualified(database, table)).filter(F.col("ingest_run") == run_id)
        return {r[column]: r["count"] for r in rows.groupBy(column).count().collect()}
    values = pc.filter(read[column], pc.equal(read["ingest_run"], run_id))
    return {v["values"]: v["counts"] for v in pc.value_counts(values).to_pylist()}
