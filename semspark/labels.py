"""The one source of labels: sem.labels, an append-only history, and the view sem.current_labels.

Every labelling is a row (image_id, label, source, labelled_by, labelled_at, label_run): ingest
adds one for each new image its folders or CSV label (source ``folders`` / ``csv``), ``semspark
label --csv`` adds corrections (``csv``), a person's correction one at a time (``person``). An
image's current label is its latest row; a row with an empty label removes the label. Training,
the analysis' NMI and sem.latest_predictions read the current labels, never the label a file was
ingested with (sem.images.label and the Petastorm rows keep that one, as history): a correction
reaches the next training without touching pixels.

A row is appended only when it changes an image's current label, so rerunning a labelling (or an
ingest killed after writing its labels) adds nothing.
"""
from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass, field

from semspark.catalog import (append_rows, ensure_tables, ensure_view, insert, local_columns, new_run_id, qualified,
                              utc_now)
from semspark.schema import FILES, IMAGES, LABELS
from semspark.storage import writer_lock

log = logging.getLogger(__name__)

CURRENT_LABELS_VIEW = "current_labels"
SOURCES = ("folders", "csv", "person")


def person_label_adds(current_label: str | None, current_source: str | None, label: str | None) -> bool:
    """Whether a person's ``label`` for an image (None removes it) is a new row of sem.labels: when it
    changes the current label, or confirms one no person gave (a folder's, a CSV's): that person has
    looked at the image, and the web app's review queues drop it. The same label from a person again
    adds nothing. The rule of ``semspark label --image-id`` and of the web app's corrections."""
    return label != current_label or (label is not None and current_source != "person")


class LabelError(ValueError):
    """A labelling that cannot be applied as given (unknown images, a bad CSV); nothing was written."""


@dataclass
class LabelSummary:
    run_id: str
    rows: int = 0                     # labelled rows in the input
    changed: int = 0                  # rows appended to sem.labels (a new or a different label)
    unchanged: int = 0                # the image had that label already
    removed: int = 0                  # of the changed: labels removed (an empty label)
    confirmed: int = 0                # of the unchanged: a person's label appended where no person's was
    by_label: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"labelling {self.run_id}", f"  rows:       {self.rows}", f"  changed:    {self.changed}",
               f"  unchanged:  {self.unchanged}", f"  removed:    {self.removed}"]
        if self.confirmed:
            out.append(f"  confirmed:  {self.confirmed} (a person's label where no person's was: reviewed)")
        out += [f"    {label:<20}{n}" for label, n in sorted(self.by_label.items())]
        return out


def current_user() -> str:
    """Who labels: $SEMSPARK_USER, else the login name."""
    try:
        return os.environ.get("SEMSPARK_USER") or getpass.getuser()
    except (KeyError, OSError):   # a container's uid without a passwd entry
        return f"uid {os.getuid()}"


def ensure_labels(spark, database: str) -> None:
    """sem.labels and the view sem.current_labels; a catalog from before sem.labels gets its
    ingest-time labels from sem.images once, as the first entries of the history."""
    existed = spark.catalog.tableExists(qualified(database, LABELS))
    ensure_tables(spark, database, (LABELS,))
    if not existed and spark.catalog.tableExists(qualified(database, IMAGES)):
        _backfill_from_images(spark, database)
    ensure_view(spark, qualified(database, CURRENT_LABELS_VIEW),
                "The current label of every labelled image: its latest row in labels",
                f"""SELECT image_id, label, source, labelled_by, labelled_at, label_run
        FROM (SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY labelled_at DESC, label_run DESC) AS n
              FROM {qualified(database, LABELS)})
        WHERE n = 1 AND label IS NOT NULL""")


def _backfill_from_images(spark, database: str) -> None:
    from pyspark.sql import functions as F

    images = spark.table(qualified(database, IMAGES)).filter(F.col("label").isNotNull())
    parent = F.element_at(F.split("path", "/"), -2)
    rows = images.select(
        "image_id", "label",
        F.when(parent == F.col("label"), F.lit("folders")).otherwise(F.lit("csv")).alias("source"),
        F.lit("migration").alias("labelled_by"), F.col("ingested_at").alias("labelled_at"),
        F.col("ingest_run").alias("label_run"))
    insert(rows, database, LABELS)
    log.info("sem.labels starts from the labels sem.images was ingested with")


def current_labels(spark, database: str):
    """DataFrame (image_id, label) of every image's current label (after ``ensure_labels``)."""
    return spark.table(qualified(database, CURRENT_LABELS_VIEW)).select("image_id", "label")


# Up to this many ids a caller names are compared with the label history by a filter on the ids
# (below the view's window: the history of those images only); more, and the whole history is read.
FILTERED_IDS = 2_000


def append_changes(spark, database: str, proposed, source: str, labelled_by: str, run_id: str, at=None,
                   count_unchanged: bool = True, image_ids=None) -> dict:
    """Append the rows of ``proposed`` (a DataFrame of image_id, label, or a list of such pairs the
    driver holds; label null = remove) that change an image's current label. Returns {"changed",
    "unchanged", "removed", "by_label"} ("unchanged" None when ``count_unchanged`` is False: the
    ingest does not report it, and counting is a Spark job).
    ``image_ids``: every id ``proposed`` may hold, when the caller knows them (a night's new images),
    so that only their history is read, not every image's."""
    if source not in SOURCES:
        raise ValueError(f"label source {source!r} is none of {SOURCES}")
    ensure_labels(spark, database)
    purpose = f"labels from {source} ({run_id})"
    if isinstance(proposed, list):
        # the history read and the changes appended under the writer lock, as one step: a label given
        # meanwhile (the web app) is either in the history read or appended after these rows
        with writer_lock(purpose=purpose):
            done = _append_changes_in_driver(spark, database, proposed, source, labelled_by, run_id, at,
                                             count_unchanged)
            if done is not None:
                return done
            image_ids = {image_id for image_id, _ in proposed}   # the history of these images only, as below
            proposed = spark.createDataFrame(proposed, "image_id string, label string")
            return _insert_staged(database, *_stage_changes(spark, database, proposed, source, labelled_by, run_id,
                                                            at, image_ids), count_unchanged)
    # A DataFrame (a CSV of many labels): its join with the history is a Spark job of seconds to
    # minutes, too long to hold the lock through (the web app's corrections wait 30 s for it). It is
    # computed first, against the table's files as listed then; under the lock the rows are appended
    # if the table still has exactly those files (every writer adds or replaces files), else the
    # changes are computed again, under the lock, against what was written meanwhile.
    listed = _label_files(spark, database)
    staged = _stage_changes(spark, database, proposed, source, labelled_by, run_id, at, image_ids)
    with writer_lock(purpose=purpose):
        if _label_files(spark, database) != listed:
            log.info("sem.labels changed while %s was compared with it; comparing again", purpose)
            staged = _stage_changes(spark, database, proposed, source, labelled_by, run_id, at, image_ids)
        return _insert_staged(database, *staged, count_unchanged)


def _label_files(spark, database: str) -> list[str]:
    """The data files of sem.labels as Spark lists them now (its cached listing refreshed first):
    appends add files and compaction replaces them, so equal lists mean an unchanged history."""
    name = qualified(database, LABELS)
    spark.catalog.refreshTable(name)
    return sorted(spark.table(name).inputFiles())


def _stage_changes(spark, database: str, proposed, source: str, labelled_by: str, run_id: str, at, image_ids):
    """The rows of ``proposed`` that change a current label, computed once (a local checkpoint)
    against the history as it is now; with their counts by label, and the join for the rest."""
    from pyspark.sql import functions as F

    current = current_labels(spark, database).withColumnRenamed("label", "current")
    if image_ids is not None and len(image_ids) <= FILTERED_IDS:
        current = current.filter(F.col("image_id").isin(sorted(image_ids)))
    joined = proposed.select("image_id", "label").join(current, "image_id", "left")
    same = F.col("label").eqNullSafe(F.col("current"))
    changes = (joined.filter(~same)
               .select("image_id", "label", F.lit(source).alias("source"), F.lit(labelled_by).alias("labelled_by"),
                       F.lit(at or utc_now()).cast("timestamp").alias("labelled_at"), F.lit(run_id).alias("label_run")))
    staged = changes.localCheckpoint()   # computed once against the history before it grows
    counts = {(r["label"] is None, r["label"]): r["count"] for r in staged.groupBy("label").count().collect()}
    return staged, counts, joined


def _insert_staged(database: str, staged, counts: dict, joined, count_unchanged: bool) -> dict:
    insert(staged, database, LABELS)
    changed = sum(counts.values())
    return {"changed": changed, "unchanged": joined.count() - changed if count_unchanged else None,
            "removed": sum(n for (removed, _), n in counts.items() if removed),
            "by_label": {label: n for (removed, label), n in counts.items() if not removed}}


def _append_changes_in_driver(spark, database: str, proposed: list[tuple[str, str | None]], source: str,
                              labelled_by: str, run_id: str, at, count_unchanged: bool) -> dict | None:
    """``append_changes`` for a list of (image_id, label) the driver holds (a night's new images),
    where sem.labels is local: the history of those images read with pyarrow, the changes appended as
    one file (``append_rows``): no Spark job, where the query, its count and its insert were three.
    None when the table is not local (the caller asks Spark)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from semspark.catalog import append_rows

    history = local_columns(spark, database, LABELS, ["image_id", "label", "labelled_at", "label_run"])
    if history is None:
        return None
    wanted = pa.array(sorted({image_id for image_id, _ in proposed}), pa.string())
    history = history.filter(pc.is_in(history["image_id"], value_set=wanted))
    current: dict[str, str | None] = {}
    # the view's order: latest labelled_at, then label_run; a latest row with no label removes it
    # (nulls first here, so last there: as Spark's DESC orders them)
    for row in sorted(history.to_pylist(), key=lambda r: (r["labelled_at"] is not None, r["labelled_at"] or 0,
                                                          r["label_run"] is not None, r["label_run"] or "")):
        current[row["image_id"]] = row["label"]
    when = at or utc_now()
    changes = [{"image_id": image_id, "label": label, "source": source, "labelled_by": labelled_by,
                "labelled_at": when, "label_run": run_id}
               for image_id, label in proposed if current.get(image_id) != label]
    append_rows(spark, database, LABELS, changes)
    by_label: dict[str, int] = {}
    for change in changes:
        if change["label"] is not None:
            by_label[change["label"]] = by_label.get(change["label"], 0) + 1
    return {"changed": len(changes), "unchanged": len(proposed) - len(changes) if count_unchanged else None,
            "removed": sum(1 for change in changes if change["label"] is None), "by_label": by_label}


def label_from_csv(spark, database: str, csv_path: str, labelled_by: str | None = None,
                   source: str = "csv") -> LabelSummary:
    """Add or correct labels from a CSV with a header: ``image_id,label`` or ``path,label`` (the
    path of an ingested file, as sem.files holds it or as a local path). An empty label removes
    the image's label. Every row must name an ingested image, and an image must not get two
    different labels in one file: otherwise nothing is written and the error lists the rows."""
    from pathlib import Path

    from pyspark.sql import functions as F

    if "://" not in csv_path and not Path(csv_path).is_file():
        raise LabelError(f"label file {csv_path!r} does not exist; give a CSV with a header image_id,label or "
                         "path,label")
    table = spark.read.option("header", True).csv(csv_path)
    columns = set(table.columns)
    if "label" not in columns or not ({"path", "image_id"} & columns):
        raise LabelError(f"label file {csv_path} needs a header with 'label' and 'image_id' or 'path'; it has "
                         f"{sorted(columns)}")
    ensure_labels(spark, database)
    label = F.when(F.trim("label") == "", F.lit(None)).otherwise(F.trim("label"))
    by_id = F.lower(F.trim("image_id")) if "image_id" in columns else F.lit(None).cast("string")
    by_path = F.trim("path") if "path" in columns else F.lit(None).cast("string")
    rows = table.select(by_id.alias("given_id"), by_path.alias("given_path"), label.alias("label"),
                        F.monotonically_increasing_id().alias("row"))
    rows = rows.filter(F.col("given_id").isNotNull() | F.col("given_path").isNotNull())
    uri = (F.when(F.col("given_path").rlike(r"^[a-zA-Z][a-zA-Z0-9+.-]*:"), F.col("given_path"))
           .otherwise(F.concat(F.lit("file:"), F.col("given_path"))))
    files = spark.table(qualified(database, FILES)).filter(F.col("role") == "image").select(
        F.col("path").alias("file_uri"), F.col("image_id").alias("file_image_id")).dropDuplicates(["file_uri"])
    images = spark.table(qualified(database, IMAGES)).select(F.col("image_id").alias("known_id"))
    resolved = (rows.join(files, uri == F.col("file_uri"), "left")
                .withColumn("image_id", F.coalesce("given_id", "file_image_id"))
                .join(images, F.col("image_id") == F.col("known_id"), "left")).localCheckpoint()
    unknown = resolved.filter(F.col("known_id").isNull()).select("given_id", "given_path").limit(6).collect()
    if unknown:
        n = resolved.filter(F.col("known_id").isNull()).count()
        named = ", ".join(r["given_id"] or r["given_path"] for r in unknown[:5])
        raise LabelError(f"{n} rows of {csv_path} name no ingested image ({named}{', ...' if n > 5 else ''}); "
                         f"nothing was written: fix or drop them (image ids are in {database}.images, paths in "
                         f"{database}.files)")
    conflicts = (resolved.groupBy("image_id").agg(F.countDistinct(F.coalesce("label", F.lit("\0"))).alias("n"))
                 .filter("n > 1").select("image_id").limit(5).collect())
    if conflicts:
        raise LabelError(f"{csv_path} gives different labels to the same image ({', '.join(r[0] for r in conflicts)}); "
                         "nothing was written: keep one row per image")
    run_id = new_run_id("label-")
    proposed = resolved.select("image_id", "label").dropDuplicates(["image_id"])
    counts = append_changes(spark, database, proposed, source, labelled_by or current_user(), run_id)
    summary = LabelSummary(run_id=run_id, rows=resolved.count(), changed=counts["changed"],
                           unchanged=counts["unchanged"], removed=counts["removed"], by_label=counts["by_label"])
    log.info("%s: %d labels changed, %d unchanged", csv_path, summary.changed, summary.unchanged)
    return summary


def label_one(spark, database: str, image_id: str, label: str | None, labelled_by: str | None = None) -> LabelSummary:
    """A person's label (or its removal: None) for one image, appended when ``person_label_adds``
    says so (also when it confirms the folder's label: counted ``confirmed``)."""
    from pyspark.sql import functions as F

    image_id = image_id.strip().lower()
    if not spark.table(qualified(database, IMAGES)).filter(F.col("image_id") == image_id).limit(1).collect():
        raise LabelError(f"no image {image_id} in {database}.images")
    ensure_labels(spark, database)
    run_id = new_run_id("label-")
    label = (label or "").strip() or None
    # the current label read and the row appended under the writer lock: another person's label
    # for the same image (the web app, another command) lands before the read or after the append
    with writer_lock(purpose=f"label of {image_id[:12]}"):
        current = (spark.table(qualified(database, CURRENT_LABELS_VIEW)).filter(F.col("image_id") == image_id)
                   .select("label", "source").collect())
        current_label, current_source = (current[0]["label"], current[0]["source"]) if current else (None, None)
        if not person_label_adds(current_label, current_source, label):
            return LabelSummary(run_id=run_id, rows=1, unchanged=1)
        append_rows(spark, database, LABELS, [{"image_id": image_id, "label": label, "source": "person",
                                               "labelled_by": labelled_by or current_user(),
                                               "labelled_at": utc_now(), "label_run": run_id}])
    if label == current_label:
        return LabelSummary(run_id=run_id, rows=1, unchanged=1, confirmed=1)
    return LabelSummary(run_id=run_id, rows=1, changed=1, removed=int(label is None),
                        by_label={label: 1} if label is not None else {})
