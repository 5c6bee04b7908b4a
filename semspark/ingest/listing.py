"""Ingest, step 1: what is under the input root (every file, empty ones too), which of it is new
against what the catalog knows, and the labels the input gives them (the top folder, or a CSV by
path or by image id).

A night adds a few hundred files to a repository of a hundred thousand: the listing and the
comparison with sem.files are done in the driver, on columns of plain values (a file is known by
path, size and modification time in milliseconds), so that only the night's files become Spark
rows. On a local or mounted file system the listing is a directory walk; other file systems
(hdfs://, s3a://) are listed by Spark's own file index.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

LISTING_COLUMNS = ("path", "size", "mtime_ms")


class IngestError(RuntimeError):
    """The ingest cannot start (bad input path, bad label file); the message says what to do."""


@dataclass
class Listing:
    """What is under the input root: a pandas frame of ``LISTING_COLUMNS`` (path as Spark names
    it, ``file:/...``), and links that point to nothing (not listed; named so nobody wonders)."""
    files: object
    dangling_links: list[str] = field(default_factory=list)


def list_files(spark, root: str) -> Listing:
    """Every file under ``root`` (a qualified root, as ``qualified_root`` gives), empty files
    included; sizes and modification times as Hadoop's file system reports them (milliseconds)."""
    from semspark.storage import local_path

    directory = local_path(root)
    if directory is not None:
        return _walk(root, directory)
    return Listing(_spark_listing(spark, root))


def _walk(root: str, directory: str) -> Listing:
    """A local directory walk with Spark's rules (``storage.walk_visible``); a link to nothing is set
    aside, not listed."""
    import pandas as pd

    from semspark.storage import UnlistableFolder, walk_visible

    paths, sizes, mtimes, dangling = [], [], [], []
    prefix = root.rstrip("/")
    try:
        for name, status in walk_visible(directory):
            if status is None:
                dangling.append(f"{prefix}/{name}")
                continue
            paths.append(f"{prefix}/{name}")
            sizes.append(status.st_size)
            mtimes.append(status.st_mtime_ns // 1_000_000)
    except UnlistableFolder as exc:   # not bad input of one file: the listing itself cannot be complete
        raise IngestError(f"cannot list {prefix}/{exc.relative}: {exc.cause}; make it readable or move it "
                          "out of the input folder") from exc
    files = pd.DataFrame({"path": pd.Series(paths, dtype=object), "size": pd.Series(sizes, dtype="int64"),
                          "mtime_ms": pd.Series(mtimes, dtype="int64")})
    return Listing(files, sorted(dangling))


def _spark_listing(spark, root: str):
    """Spark's file index over a Hadoop file system. Its file scan gives size and time without
    reading content, but a zero-length file has no split and yields no row; the file index still
    holds it, so the difference is stat'ed here."""
    from pyspark.sql import functions as F

    from semspark.storage import from_index_uri

    scan = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
    listed = scan.select("path", F.col("length").alias("size"),
                         F.expr("unix_millis(modificationTime)").alias("mtime_ms")).toPandas()
    scanned = set(listed["path"])
    missing = [p for p in (from_index_uri(u) for u in scan.inputFiles()) if p not in scanned]
    if not missing:
        return listed
    import pandas as pd

    from semspark.storage import hadoop_filesystem

    rows = []
    for path in missing:
        fs, hadoop_path = hadoop_filesystem(spark, path)
        status = fs.getFileStatus(hadoop_path)
        rows.append((path, int(status.getLen()), int(status.getModificationTime())))
    return pd.concat([listed, pd.DataFrame(rows, columns=list(LISTING_COLUMNS))], ignore_index=True)


def known_keys(frame) -> set[tuple[str, int, int]]:
    """(path, size, mtime_ms) tuples of a frame with those columns."""
    return set(zip(frame["path"], frame["size"].astype("int64"), frame["mtime_ms"].astype("int64")))


def stored_files(spark, database: str):
    """What sem.files holds, as the driver needs it for a run's comparisons: a pandas frame of
    ``LISTING_COLUMNS``, role and image_id, one row per ingested file. Read once per run, with
    pyarrow from the table's files where they are local (catalog.local_columns), else by Spark."""
    from pyspark.sql import functions as F

    from semspark.catalog import local_columns, qualified
    from semspark.schema import FILES

    table = local_columns(spark, database, FILES, ["path", "size", "modification_time", "role", "image_id"])
    if table is None:
        return (spark.table(qualified(database, FILES))
                .select("path", "size", F.expr("unix_millis(modification_time)").alias("mtime_ms"), "role", "image_id")
                .toPandas())
    frame = table.drop(["modification_time"]).append_column("mtime_ms", unix_millis(table["modification_time"]))
    return frame.to_pandas()[["path", "size", "mtime_ms", "role", "image_id"]]


def unix_millis(timestamps):
    """A pyarrow column of timestamps (microseconds, naive UTC, as ``local_columns`` reads them) as
    whole milliseconds since the epoch, rounded down as Spark's unix_millis does (integer division
    rounds toward zero: one less for a time before 1970 between two milliseconds)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    micros = timestamps.cast(pa.int64())
    truncated = pc.divide(micros, 1000)
    below = pc.and_(pc.less(micros, 0), pc.not_equal(pc.multiply(truncated, 1000), micros))
    return pc.subtract(truncated, pc.cast(below, pa.int64()))


def to_spark_rows(spark, frame, extra: tuple[str, ...] = ()):
    """A frame of the night's listed files as Spark rows: ``modification_time`` a timestamp again,
    the ``extra`` string columns kept."""
    from pyspark.sql import functions as F

    columns = [*LISTING_COLUMNS, *extra]
    schema = ", ".join(["path string", "size long", "mtime_ms long", *(f"{c} string" for c in extra)])
    rows = spark.createDataFrame(frame[columns].reset_index(drop=True), schema)
    return rows.withColumn("modification_time", F.expr("timestamp_millis(mtime_ms)")).drop("mtime_ms")


def qualified_root(spark, input_path: str) -> str:
    from semspark.storage import hadoop_filesystem

    try:
        fs, path = hadoop_filesystem(spark, input_path)
        qualified_path = fs.makeQualified(path)
        exists = fs.exists(qualified_path)
    except Exception as exc:
        raise IngestError(f"cannot open input {input_path!r}: {exc}") from exc
    if not exists:
        raise IngestError(f"input {input_path!r} does not exist; give a folder of SEM images "
                          f"(a local path, or file://, hdfs://, s3a:// URI)")
    return qualified_path.toString().rstrip("/")


def with_folder_labels(df):
    from pyspark.sql import functions as F

    # The top folder under the input root names the category (the published SEM data set's layout);
    # files directly in the root have no label.
    top = F.regexp_extract("rel", r"^([^/]+)/", 1)
    return df.withColumn("label", F.when(top == "", F.lit(None)).otherwise(top))


def read_label_csv(spark, labels_path: str):
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


def with_csv_path_labels(spark, pending, labels_path: str, root: str):
    from pyspark.sql import functions as F

    table = read_label_csv(spark, labels_path)
    if "path" not in table.columns:
        return pending
    # A relative path is relative to the input root; an absolute one is made a file: URI.
    uri = (F.when(F.col("path").rlike(r"^[a-zA-Z][a-zA-Z0-9+.-]*:"), F.col("path"))
           .when(F.col("path").startswith("/"), F.concat(F.lit("file:"), F.col("path")))
           .otherwise(F.concat(F.lit(root + "/"), F.col("path"))))
    mapping = table.select(uri.alias("path"), F.col("label").alias("csv_label")).dropDuplicates(["path"])
    return (pending.join(mapping, "path", "left")
            .withColumn("label", F.coalesce("csv_label", "label")).drop("csv_label"))


def with_csv_id_labels(spark, staged, labels_path: str):
    from pyspark.sql import functions as F

    table = read_label_csv(spark, labels_path)
    if "image_id" not in table.columns:
        return staged
    mapping = table.select(F.lower("image_id").alias("sha256"), F.col("label").alias("id_label")) \
        .dropDuplicates(["sha256"])
    return (staged.join(mapping, "sha256", "left")
            .withColumn("label", F.coalesce("id_label", "label")).drop("id_label"))
