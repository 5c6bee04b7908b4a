"""Rows the driver appends (a run's log entry, a model's record): written straight into a local
table's folder with pyarrow, through Spark elsewhere; either way what Spark's SQL and a plain
Parquet reader of the files give back is what was appended, times in UTC. The expected values are
written out by hand below."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest

from semspark.catalog import append_rows, ensure_tables
from semspark.schema import RUN_EVENTS
from tests.conftest import VIEWFS_CLUSTER

pytestmark = pytest.mark.spark

KOLKATA = timezone(timedelta(hours=5, minutes=30))


@pytest.mark.parametrize("warehouse", ["local", "viewfs"])
def test_appended_rows_read_back_as_written_in_utc(spark, semspark_home, warehouse):
    database = f"appending_{warehouse}"
    if warehouse == "viewfs":   # not a folder semspark can write to directly: Spark's insert
        spark.sql(f"CREATE DATABASE {database} LOCATION 'viewfs://{VIEWFS_CLUSTER}/remote/{database}.db'")
        folder = semspark_home / "viewfs" / f"{database}.db" / "run_events"
    else:
        folder = semspark_home / "warehouse" / f"{database}.db" / "run_events"
    ensure_tables(spark, database, (RUN_EVENTS,))
    empty = {name: None for name in RUN_EVENTS.columns}
    append_rows(spark, database, RUN_EVENTS, [
        {**empty, "run_id": "a", "status": "running", "started_at": datetime(2026, 3, 4, 5, 6, 7, 123456),
         "new_images": 2**40, "message": "Ångström, µm", "recorded_at": datetime(2026, 3, 4, 5, 6, 8)},
        # an aware time is stored as the same instant in UTC: 10:36:07 in Kolkata is 05:06:07 UTC
        {**empty, "run_id": "b", "status": "succeeded", "started_at": datetime(2026, 3, 4, 10, 36, 7, tzinfo=KOLKATA),
         "ended_at": datetime(2026, 3, 4, 5, 7, 0), "scored": 0, "recorded_at": datetime(2026, 3, 4, 5, 7, 1)},
    ])
    append_rows(spark, database, RUN_EVENTS, [])   # nothing to append: no file
    append_rows(spark, database, RUN_EVENTS, [{**empty, "run_id": "c", "status": "running",
                                               "recorded_at": datetime(2026, 3, 5, 0, 0, 0)}])
    expected = [("a", "running", "2026-03-04 05:06:07.123456", None, 2**40, None, "Ångström, µm",
                 "2026-03-04 05:06:08"),
                ("b", "succeeded", "2026-03-04 05:06:07", "2026-03-04 05:07:00", None, 0, None, "2026-03-04 05:07:01"),
                ("c", "running", None, None, None, None, None, "2026-03-05 00:00:00")]
    # seen at once by this session, in SQL with the session time zone (UTC)
    got = spark.sql(f"""SELECT run_id, status, cast(started_at AS string), cast(ended_at AS string), new_images,
        scored, message, cast(recorded_at AS string) FROM {database}.run_events ORDER BY run_id""").collect()
    assert [tuple(r) for r in got] == expected
    # and by a plain Parquet reader of the files (Spark's INT96 timestamps are UTC instants)
    files = sorted(folder.glob("part-*"))
    assert len(files) == 2 and not [p for p in folder.iterdir() if p.name.endswith(".writing")]
    table = pq.read_table(files, coerce_int96_timestamp_unit="us").sort_by("run_id")
    assert table.column("started_at").to_pylist()[:2] == [datetime(2026, 3, 4, 5, 6, 7, 123456),
                                                          datetime(2026, 3, 4, 5, 6, 7)]
    assert table.column("new_images").to_pylist() == [2**40, None, None]


def test_rows_the_table_holds_already_are_not_appended_again(spark):
    """append_new_rows: a key held by a stored row is not appended again, unless that row's
    ``unless`` column is true (a retryable quarantine row does not hold its file back); a key given
    twice is the caller's to avoid; a remote table is left to the caller (None). Keys by hand."""
    from semspark.catalog import append_new_rows, insert
    from semspark.schema import QUARANTINE

    database = "appending_new"
    ensure_tables(spark, database, (QUARANTINE,))
    t = datetime(2026, 3, 4, 5, 6, 7, 123456)
    columns = "path string, sha256 string, size long, modification_time timestamp, stage string, reason string, " \
              "ingested_at timestamp, ingest_run string, retryable boolean"
    insert(spark.createDataFrame([("/a.tif", None, 1, t, "decode", "bad", t, "r1", False),
                                  ("/b.tif", None, 2, t, "io", "timeout", t, "r1", True)], columns),
           database, QUARANTINE)

    def row(path, size, when):
        return {"path": path, "sha256": None, "size": size, "modification_time": when, "stage": "decode",
                "reason": "bad", "ingested_at": t, "ingest_run": "r2", "retryable": False}
    key = ["path", "size", "modification_time"]
    appended = append_new_rows(spark, database, QUARANTINE, [
        row("/a.tif", 1, t),                                   # held: not again
        row("/a.tif", 1, t + timedelta(microseconds=1)),       # another modification time: new
        row("/a.tif", 3, t),                                   # another size: new
        row("/b.tif", 2, t),                                   # held by a retryable row only: new
        row("/c.tif", 1, t)], key, unless="retryable")
    assert appended == 4
    got = spark.sql(f"SELECT path, size, cast(modification_time AS string) FROM {database}.quarantine "
                    "WHERE ingest_run = 'r2' ORDER BY path, size, modification_time").collect()
    stamp = "2026-03-04 05:06:07.123456"
    assert [tuple(r) for r in got] == [("/a.tif", 1, "2026-03-04 05:06:07.123457"), ("/a.tif", 3, stamp),
                                       ("/b.tif", 2, stamp), ("/c.tif", 1, stamp)]
    assert append_new_rows(spark, database, QUARANTINE, [row("/c.tif", 1, t)], key, unless="retryable") == 0

    spark.sql(f"CREATE DATABASE appending_new_remote LOCATION 'viewfs://{VIEWFS_CLUSTER}/remote/appending_new_remote.db'")
    ensure_tables(spark, "appending_new_remote", (QUARANTINE,))
    assert append_new_rows(spark, "appending_new_remote", QUARANTINE, [row("/c.tif", 1, t)], key) is None


def test_appended_partitions_are_the_ones_spark_makes(spark, semspark_home):
    """append_arrow into a partitioned table: new partitions registered in the metastore, one file
    each in the folder Spark itself names (Hive's escaping, by hand: '/' is %2F, "'" is %27),
    rows read back by Spark as written; a partition Spark made first gets the file beside its own;
    a null partition value is left to Spark (False, nothing written)."""
    import pyarrow as pa

    from semspark.catalog import append_arrow, insert
    from semspark.schema import PREDICTIONS

    database = "appending_partitions"
    ensure_tables(spark, database, (PREDICTIONS,))
    t = datetime(2026, 3, 4, 5, 6, 7, 123456)
    columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in PREDICTIONS.schema.fields)

    def row(image_id, model_version, embedding):
        return {"image_id": image_id, "category": "Fibres", "confidence": 0.5, "probabilities": [0.5, 0.5],
                "logits": [1.0, 1.0], "embedding": embedding, "predicted_at": t, "infer_run": "r",
                "uncertain": False, "out_of_distribution": None, "ood_distance": None, "ood_reason": None,
                "model_version": model_version}
    insert(spark.createDataFrame([tuple(row("a", "old/1", [1.0]).values())], columns), database, PREDICTIONS)
    schema = pa.schema([(f.name, {"string": pa.string(), "double": pa.float64(), "boolean": pa.bool_(),
                                  "timestamp": pa.timestamp("us"), "array<float>": pa.list_(pa.float32())}
                         [f.dataType.simpleString()]) for f in PREDICTIONS.schema.fields])
    rows = [row("b", "old/1", [2.0]), row("c", "learn/1", [3.0, 4.0]), row("d", "it's 2", [])]
    assert append_arrow(spark, database, PREDICTIONS, pa.Table.from_pylist(rows, schema))
    got = spark.sql(f"SELECT image_id, model_version, embedding, cast(predicted_at AS string) "
                    f"FROM {database}.predictions ORDER BY image_id").collect()
    assert [tuple(r) for r in got] == [("a", "old/1", [1.0], "2026-03-04 05:06:07.123456"),
                                       ("b", "old/1", [2.0], "2026-03-04 05:06:07.123456"),
                                       ("c", "learn/1", [3.0, 4.0], "2026-03-04 05:06:07.123456"),
                                       ("d", "it's 2", [], "2026-03-04 05:06:07.123456")]
    partitions = sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {database}.predictions").collect())
    assert partitions == ["model_version=it%27s 2", "model_version=learn%2F1", "model_version=old%2F1"]
    folder = semspark_home / "warehouse" / f"{database}.db" / "predictions"
    files = {p.name: sorted(f.name[:10] for f in p.glob("part-*")) for p in folder.iterdir() if p.is_dir()}
    assert {k: len(v) for k, v in files.items()} == {"model_version=old%2F1": 2, "model_version=learn%2F1": 1,
                                                     "model_version=it%27s 2": 1}
    assert not list(folder.rglob("*.writing"))
    assert not append_arrow(spark, database, PREDICTIONS, pa.Table.from_pylist([row("e", None, [])], schema))
    assert spark.table(f"{database}.predictions").count() == 4


def test_local_columns_read_what_spark_reads(spark, semspark_home, tmp_path):
    """catalog.local_columns (pyarrow from the files, partition values from the metastore's names)
    against Spark's own query of the same partitioned table: escaped values, a partition Spark
    wrote with a null value (Hive's default partition), a folder that is not a registered partition
    (not read, as by Spark); a partition moved to a location of its own is left to Spark (None)."""
    import shutil

    import pyarrow as pa

    from semspark.catalog import append_arrow, insert, local_columns
    from semspark.schema import PREDICTIONS

    database = "local_reads"
    ensure_tables(spark, database, (PREDICTIONS,))
    t = datetime(2026, 3, 4, 5, 6, 7, 123456)
    columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in PREDICTIONS.schema.fields)

    def row(image_id, model_version):
        return (image_id, "Fibres", 0.5, [0.5, 0.5], [1.0, 1.0], [1.0], t, "r", False, None, None, None, model_version)
    insert(spark.createDataFrame([row("a", "old/1"), row("n", None)], columns), database, PREDICTIONS)
    appended = pa.Table.from_pylist([dict(zip(PREDICTIONS.schema.fieldNames(), row(i, v)))
                                     for i, v in (("b", "old/1"), ("c", "it's 2"), ("m", "moved/1"))],
                                    local_columns(spark, database, PREDICTIONS, PREDICTIONS.schema.fieldNames()).schema)
    assert append_arrow(spark, database, PREDICTIONS, appended)
    folder = semspark_home / "warehouse" / f"{database}.db" / "predictions"
    stray = folder / "model_version=stray"   # not registered: Spark does not read it
    stray.mkdir()
    shutil.copy(next((folder / "model_version=old%2F1").glob("part-*")), stray / "part-00000-stray.parquet")
    spark.catalog.refreshTable(f"{database}.predictions")

    def read():
        return local_columns(spark, database, PREDICTIONS, ["image_id", "model_version", "predicted_at"])

    expected = [("a", "old/1"), ("b", "old/1"), ("c", "it's 2"), ("m", "moved/1"), ("n", None)]   # by hand
    assert sorted((r["image_id"], r["model_version"]) for r in read().to_pylist()) == expected
    assert {r["predicted_at"] for r in read().to_pylist()} == {t}
    theirs = spark.sql(f"SELECT image_id, model_version FROM {database}.predictions").collect()
    assert sorted(tuple(r) for r in theirs) == expected

    elsewhere = tmp_path / "moved_partition"
    shutil.copytree(folder / "model_version=moved%2F1", elsewhere)
    spark.sql(f"ALTER TABLE {database}.predictions PARTITION (model_version = 'moved/1') "
              f"SET LOCATION '{elsewhere}'")
    shutil.rmtree(folder / "model_version=moved%2F1")
    spark.catalog.refreshTable(f"{database}.predictions")
    assert read() is None   # its values are in the metastore's record, not in its folder's name: Spark's to read
    theirs = spark.sql(f"SELECT image_id, model_version FROM {database}.predictions").collect()
    assert sorted(tuple(r) for r in theirs) == expected


OWN_SESSION_INGEST = """
import sys
from pyspark.sql import SparkSession
home, raw = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
         .config("spark.sql.warehouse.dir", home + "/warehouse")
         .config("spark.driver.extraJavaOptions", "-Dderby.system.home=" + home)
         .enableHiveSupport().getOrCreate())
from semspark.config import CatalogConfig, Config, IngestConfig
from semspark.ingest.job import run_ingest
config = Config(catalog=CatalogConfig(database="own"), ingest=IngestConfig(image_size=48, dataset_dir="datasets/own"))
print(run_ingest(spark, config, raw, labels="folders").new_images)
spark.stop()
"""


def test_times_are_utc_in_a_session_semspark_did_not_build(tmp_path):
    """A notebook's own SparkSession in a process on New York time: the ingest's times in sem.images
    (a Spark insert of a naive UTC time, which PySpark converts with the process's local zone) are
    the UTC instants the test's own clock saw around the run, read from the files by pyarrow; and
    the process was told why its zone changed. (Before, they were stored five hours late.)"""
    import os
    import subprocess
    import sys

    from semspark.synth.generate import generate

    generate(tmp_path / "raw", 2, seed=5, width=256, height=192)
    home = tmp_path / "home"
    home.mkdir()
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    done = subprocess.run([sys.executable, "-c", OWN_SESSION_INGEST, str(home), str(tmp_path / "raw")],
                          env=dict(os.environ, TZ="America/New_York", SEMSPARK_HOME=str(home),   # a venv on PATH
                                   PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"), cwd=home,
                          capture_output=True, text=True, timeout=600)
    after = datetime.now(timezone.utc).replace(tzinfo=None)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "2"
    table = pq.read_table(sorted((home / "warehouse" / "own.db" / "images").rglob("*.parquet")),
                          columns=["ingested_at"], coerce_int96_timestamp_unit="us")
    stamps = table.column("ingested_at").to_pylist()
    assert len(stamps) == 2 and all(before <= t <= after for t in stamps), (before, stamps, after)
    assert "this process now runs in UTC" in done.stderr
