"""Ingest, step 1: what is under the input root (every file, empty ones too) and the labels the
input gives them (the top folder, or a CSV by path or by image id)."""
from __future__ import annotations


class IngestError(RuntimeError):
    """The ingest cannot start (bad input path, bad label file); the message says what to do."""


def list_files(spark, root: str):
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


def qualified_root(spark, input_path: str) -> str:
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
