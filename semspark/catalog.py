"""The Spark catalog: creating semspark's tables, and running users' SQL."""
from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

from semspark.schema import TableSpec

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """Now in UTC, naive: the tables' timestamps (the session time zone is UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id(prefix: str = "") -> str:
    """A run identifier that sorts by time and does not collide: 20261124T223346Z-a5df16ab."""
    return prefix + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def qualified(database: str, table: TableSpec | str) -> str:
    return f"{database}.{table.name if isinstance(table, TableSpec) else table}"


def ensure_tables(spark, database: str, tables: tuple[TableSpec, ...]) -> None:
    """Create the database and the tables if missing (Parquet, partitioned as declared); add the
    columns a newer semspark declares to tables an older one created (additive migration); finish
    any table rewrite a killed process left half done."""
    from semspark.session import driver_in_utc

    driver_in_utc()   # before any time is handed to Spark, whoever built the session
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    finish_rewrites(spark, database)
    metastore = spark._jsparkSession.sharedState().externalCatalog()
    for table in tables:
        name = qualified(database, table)
        if metastore.tableExists(database, table.name):
            present = set(stored_columns(spark, database, table).fieldNames())
            missing = [f for f in table.schema.fields if f.name not in present]
            if missing:
                added = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
                spark.sql(f"ALTER TABLE {name} ADD COLUMNS ({added})")
                log.info("added columns %s to %s", [f.name for f in missing], name)
            continue
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in table.schema.fields)
        partition = f" PARTITIONED BY ({', '.join(table.partition_by)})" if table.partition_by else ""
        comment = table.comment.replace("'", "\\'")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {name} ({columns}) USING parquet{partition} COMMENT '{comment}'")


def stored_columns(spark, database: str, table: TableSpec):
    """The table's columns as the metastore records them (a StructType; an older table migrated by
    ``ensure_tables`` has its added columns after the others, partition columns last), read from the
    metastore's own record rather than a query plan (``spark.table``): a nightly asks about seven
    tables several times, 0.4 to 0.6 s a time that way, 0.1 s this way."""
    from pyspark.sql.types import StructType

    record = spark._jsparkSession.sharedState().externalCatalog().getTable(database, table.name)
    return StructType.fromJson(json.loads(record.schema().json()))   # one py4j call for the whole schema


def ensure_view(spark, name: str, comment: str, select: str) -> None:
    """The view ``name`` as ``select`` with ``comment``: replaced only when the metastore holds
    another definition. Replacing a view rewrites its metastore rows (about a second on the
    embedded catalog) and every command that uses a view asks for it, so asking costs one read."""
    wanted = " ".join(select.split())
    database, _, view = name.rpartition(".")
    metastore = spark._jsparkSession.sharedState().externalCatalog()
    if database and metastore.tableExists(database, view):
        # the metastore's record, not DESCRIBE TABLE EXTENDED (a query: 0.2 s more a command)
        record = metastore.getTable(database, view)
        text = record.viewText().get() if record.viewText().isDefined() else ""
        stored_comment = record.comment().get() if record.comment().isDefined() else ""
        if " ".join(text.split()) == wanted and stored_comment == comment:
            return
    escaped = comment.replace("\\", "\\\\").replace("'", "\\'")
    spark.sql(f"CREATE OR REPLACE VIEW {name} COMMENT '{escaped}' AS {select}")


def insert(df, database: str, table: TableSpec) -> None:
    """Append rows, columns matched by name: insertInto matches by position, and a migrated table
    has its added columns after the older ones. Under the writer lock: a compaction rewriting the
    table meanwhile would not see the rows."""
    from semspark.storage import writer_lock

    name = qualified(database, table)
    with writer_lock(purpose=f"appending to {name}"):
        df.select(*stored_columns(df.sparkSession, database, table).fieldNames()).write.insertInto(name)


def append_rows(spark, database: str, table: TableSpec, rows: list[dict]) -> None:
    """Append a few rows the driver holds (a run's log entry, a model's record): ``append_arrow``
    where the table's folder is local, else ``insert``. Naive datetimes are UTC (``utc_now``), in
    both ways."""
    import pyarrow as pa

    if not rows:
        return
    columns = stored_columns(spark, database, table)   # a migrated table's too, as insert matches them by name
    arrow = pa.Table.from_pylist([_utc_naive(row) for row in rows],
                                 schema=pa.schema([(f.name, _arrow_type(f.dataType)) for f in columns.fields]))
    if append_arrow(spark, database, table, arrow):
        return
    rows_frame = spark.createDataFrame([_utc_aware(row) for row in rows], table.schema).coalesce(1)  # one file
    insert(rows_frame, database, table)


def append_arrow(spark, database: str, table: TableSpec, data) -> bool:
    """Append the rows of a pyarrow Table (the table's columns by name; timestamps naive UTC) the
    way Spark appends to a Parquet table, without a Spark job, where the table's folder is local
    (the embedded default's warehouse): one file per partition, written with pyarrow as Spark
    writes them (INT96 timestamps, snappy), under a hidden name first and then renamed, so a
    reader sees the whole file or none. A partition new to the table is registered in the
    metastore before its file is written: a crash between the two leaves an empty partition, never
    rows the catalog cannot see (a rerun would write them again). A Spark job and its commit cost
    0.7 to 1 s an append whatever the rows; this 0.05 to 0.2 s. Returns False, having done
    nothing, when the table is elsewhere (HDFS, S3) or a partition value is null: the caller
    inserts with Spark."""
    import os

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from semspark.storage import writer_lock

    folder = local_table_folder(spark, database, table)
    if folder is None or len(table.partition_by) > 1:
        return False
    if data.num_rows == 0:
        return True
    name = qualified(database, table)
    columns = stored_columns(spark, database, table)
    in_files = [f for f in columns.fields if f.name not in table.partition_by]
    file_schema = pa.schema([(f.name, _arrow_type(f.dataType)) for f in in_files])
    if table.partition_by:
        (column,) = table.partition_by
        values = data[column].unique().to_pylist()
        if any(v is None for v in values):
            return False
        parts = [(v, data.filter(pc.equal(data[column], v))) for v in sorted(values)]
    else:
        parts = [(None, data)]
    written: list[tuple[Path, Path]] = []   # (hidden, final): renamed together once all are written
    with writer_lock(purpose=f"appending to {name}"):
        # the partitions the metastore has, asked once: an ALTER TABLE ... ADD IF NOT EXISTS
        # PARTITION costs 0.3 s even for one that exists (a night touches several scale bins)
        known = set(metastore_partitions(spark, database, table)) if table.partition_by else set()
        for value, rows in parts:
            target = Path(folder)
            if value is not None:
                folder_name = partition_folder_name(spark, column, value)   # where Spark puts it
                if folder_name not in known:
                    literal = str(value).replace("\\", "\\\\").replace("'", "\\'")
                    spark.sql(f"ALTER TABLE {name} ADD IF NOT EXISTS PARTITION ({column} = '{literal}')")
                target = Path(folder) / folder_name
                target.mkdir(parents=True, exist_ok=True)
            file_name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
            written.append((target / f".{file_name}.writing", target / file_name))
            try:
                pq.write_table(rows.select(file_schema.names).cast(file_schema), written[-1][0],
                               compression="snappy", use_deprecated_int96_timestamps=True)
            except BaseException:
                for hidden, _ in written:
                    hidden.unlink(missing_ok=True)
                raise
        # the renames last, one after the other as Spark's commit does: a query meanwhile sees the
        # whole append or none of it, but for the instant of the renames
        for hidden, final in written:
            os.replace(hidden, final)
        # this session's next reads list the folder again; before the lock is let go, so that the
        # next writer's read (another thread's: the web app) sees these rows
        spark.catalog.refreshTable(name)
    return True


def metastore_partitions(spark, database: str, table: TableSpec) -> list[str]:
    """The table's partitions as the metastore records them, by folder name (``scale_bin=100nm``,
    escaped as ``partition_folder_name`` escapes), in one call to the catalog."""
    jvm = spark.sparkContext._jvm
    names = spark._jsparkSession.sharedState().externalCatalog().listPartitionNames(
        database, table.name, jvm.scala.Option.empty())
    # one string (escaped names hold no control character), not a call per partition
    return names.mkString("\n").split("\n") if names.size() else []


def partition_folder_name(spark, column: str, value) -> str:
    """``column=value`` escaped as Spark and Hive name a partition's folder (``/`` as %2F, ``'`` as %27),
    by Spark's own function."""
    utils = spark.sparkContext._jvm.org.apache.spark.sql.catalyst.catalog.ExternalCatalogUtils
    return utils.getPartitionPathString(column, str(value))


def local_table_folder(spark, database: str, table: TableSpec) -> str | None:
    """The table's folder as a local path, or None when it is elsewhere (HDFS, S3, viewfs)."""
    from semspark.storage import local_path

    location = spark._jsparkSession.sharedState().externalCatalog().getTable(database, table.name).location()
    # the metastore's URI percent-encodes (a space is %20); a Hadoop path string does not
    folder = local_path(spark.sparkContext._jvm.org.apache.hadoop.fs.Path(location).toString())
    return folder if folder is not None and Path(folder).is_dir() else None


def _utc_naive(row: dict) -> dict:
    return {k: v.astimezone(timezone.utc).replace(tzinfo=None) if isinstance(v, datetime) and v.tzinfo else v
            for k, v in row.items()}


def _utc_aware(row: dict) -> dict:
    """PySpark turns a naive datetime into a timestamp in the process's local time zone (whatever the
    session's): say it is UTC."""
    return {k: v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) and v.tzinfo is None else v
            for k, v in row.items()}


def insert_new(df, database: str, table: TableSpec, key: list[str]) -> None:
    """Append the rows of ``df`` whose ``key`` the table does not hold yet. The anti-join is lazy:
    it runs inside ``insert``'s write, under the writer lock, which is what stops two runs inserting
    the same key (each sees what the other committed). Reading the table's keys with pyarrow instead
    (and collecting ``df``'s) was measured with a one-off script and not kept: 0.79 s per append of
    100 rows either way at 32,000 rows, 0.78 against 0.83 s at 150,000; the append's own write and
    commit are most of it."""
    insert(df.join(df.sparkSession.table(qualified(database, table)).select(*key), key, "left_anti"), database, table)


def append_new_rows(spark, database: str, table: TableSpec, rows: list[dict], key: list[str],
                    unless: str | None = None) -> int | None:
    """``insert_new`` for rows the driver holds, where the table is local and unpartitioned: under the
    writer lock, the table's keys read again with pyarrow (what another run committed meanwhile)
    and the rows whose key it lacks appended as one file (``append_rows``). A stored row whose
    ``unless`` column is true does not count as holding its key. Returns the rows appended, or None
    (nothing done) when the table is elsewhere: the caller inserts with Spark."""
    from semspark.storage import writer_lock

    if table.partition_by or local_table_folder(spark, database, table) is None:
        return None
    name = qualified(database, table)
    with writer_lock(purpose=f"appending to {name}"):
        stored = local_columns(spark, database, table, key + ([unless] if unless else []), refresh=True)
        if stored is None:
            return None
        held = stored.to_pylist()
        keys = {tuple(r[k] for k in key) for r in held if not (unless and r[unless])}
        new = [row for row in rows if tuple(_utc_naive(row)[k] for k in key) not in keys]
        append_rows(spark, database, table, new)
    return len(new)


def local_columns(spark, database: str, table: TableSpec, columns: list[str], refresh: bool = False):
    """A table's ``columns`` read with pyarrow straight from its files, when every file is local
    (the embedded default's warehouse), as a pyarrow Table; None otherwise (HDFS, S3: query it with
    Spark). For the small reads the driver makes of key columns at the start of a run: as a Spark
    job each costs a few tenths of a second whatever the table's size, a night several of them.
    Timestamps come as Spark stores them: naive UTC (INT96 read in microseconds). Partition
    columns come from the partitions' folder names (``scale_bin=100nm``; Hive's escapes undone, its
    default partition as null). The files are those in the table's folder, or in the folders of
    the partitions the metastore holds, now (``local_data_folders``: other processes' files
    included). Where that cannot be (a partition outside its folder) Spark lists them, and
    ``refresh`` has it list again first (what another process wrote since this session listed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from semspark.storage import from_index_uri, local_path, spark_data_files

    name = qualified(database, table)
    # The table's folder (or its partitions' folders, as the metastore records them) walked as
    # Spark's file index lists them: 0.05 s where Spark's listing took 0.15 to 0.3 s, and as fresh
    # as after a refresh (another process's files included)
    folders = local_data_folders(spark, database, table)
    if folders is not None:
        files = [(f"{folder}/{relative}", values) for folder, values in folders
                 for relative, _ in spark_data_files(folder)]
    else:
        if refresh:
            spark.catalog.refreshTable(name)
        paths = [local_path(from_index_uri(f)) for f in spark.table(name).inputFiles()]
        if any(p is None for p in paths):
            return None
        try:
            files = [(path, {c: _partition_value(path, c) for c in columns if c in table.partition_by})
                     for path in paths]
        except ValueError:   # a partition outside its column=value folder: only Spark knows its values
            return None
    paths = [path for path, _ in files]
    schema = pa.schema([(c, _arrow_type(table.schema[c].dataType)) for c in columns])
    if not paths:
        return schema.empty_table()
    in_folders = [c for c in columns if c in table.partition_by]
    in_files = pa.schema([f for f in schema if f.name not in in_folders])
    if not in_folders:
        # one schema for every file: a column added by a migration is null in the files before it
        return pq.read_table(paths, columns=columns, schema=schema, coerce_int96_timestamp_unit="us")
    pieces = []
    for path, values in files:
        piece = pq.read_table(path, columns=in_files.names, schema=in_files, coerce_int96_timestamp_unit="us")
        for column in in_folders:
            value = values[column]
            piece = piece.append_column(column, pa.array([value] * piece.num_rows, pa.string())
                                        .cast(schema.field(column).type))
        pieces.append(piece.select(columns))
    return pa.concat_tables(pieces)


def local_data_folders(spark, database: str, table: TableSpec) -> list[tuple[str, dict]] | None:
    """The local folders that hold a table's files, each with its partition values: the table's
    folder, or for a partitioned table the folder of every partition the metastore records, where
    Spark puts a partition (``partition_folder_name``; a folder not registered as a partition is
    not read, as by Spark; Hive's default partition is null). The metastore is asked for the
    partitions' names only (one call, 0.03 s; their full records cost 0.1 s more and a call per
    field): None, so that Spark lists the files, when the table or any partition's folder is not
    there (a remote warehouse; a partition moved to a location of its own, which semspark never
    does: one moved by hand with its old folder left in place would be read from the old one)."""
    folder = local_table_folder(spark, database, table)
    if folder is None or len(table.partition_by) > 1:
        return None
    if not table.partition_by:
        return [(folder, {})]
    (column,) = table.partition_by
    folders = []
    for name in metastore_partitions(spark, database, table):
        path = Path(folder) / name
        if not path.is_dir():
            return None
        folders.append((str(path), {column: partition_value_of_folder(name.partition("=")[2])}))
    return folders


def partition_value_of_folder(folder_value: str) -> str | None:
    """A partition value as its folder name holds it, unescaped as Spark unescapes (``%XX`` of single
    characters); Hive's default partition is null."""
    from urllib.parse import unquote

    return None if folder_value == "__HIVE_DEFAULT_PARTITION__" else unquote(folder_value)


def _partition_value(path: str, column: str) -> str | None:
    """The value of partition ``column`` in a file's path: its ``column=value`` folder, unescaped as
    Spark unescapes (``%XX``); Hive's default partition is null."""
    prefix = f"{column}="
    folder = next((part for part in reversed(Path(path).parent.parts) if part.startswith(prefix)), None)
    if folder is None:
        raise ValueError(f"{path} is not in a {prefix}... folder: not a file of a table partitioned by {column}")
    return partition_value_of_folder(folder[len(prefix):])


def _arrow_type(spark_type):
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import TimestampType

    return pa.timestamp("us") if isinstance(spark_type, TimestampType) else to_arrow_type(spark_type)


def _journal_dir():
    from semspark.storage import home_path
    return home_path("journal")


def rewrite_table(spark, database: str, table: TableSpec, rows, reason: str,
                  partitions_only: bool = False, drop_partitions: tuple[str, ...] = ()) -> int:
    """Replace a table's rows with ``rows`` (a DataFrame that may read the table itself), safe if
    the process is killed at any point: the rows are written to a staging folder first, then a
    journal names it, then the table is overwritten from it and the journal removed. A journal
    left by a killed process is replayed by the next ``ensure_tables`` (the staging folder holds
    the complete new rows, so replaying is idempotent). ``partitions_only``: replace only the
    partitions ``rows`` has (the others stay); ``drop_partitions``: values of the single partition
    column to drop afterwards (partitions left empty). Returns the rows written. Holds the writer
    lock throughout: no append can slip between the snapshot and the overwrite."""
    from semspark.storage import home_path, writer_lock

    name = qualified(database, table)
    run = new_run_id()
    staging = home_path(f"staging/rewrite-{database}.{table.name}-{run}")
    with writer_lock(purpose=f"rewriting {name} ({reason})"):
        columns = spark.table(name).columns
        rows.select(*columns).write.mode("overwrite").parquet(staging.as_uri())
        count = spark.read.parquet(staging.as_uri()).count()
        _journal_and_apply(spark, database, table, run, {
            "staging": str(staging), "rows": count, "partitions_only": partitions_only,
            "drop_partitions": list(drop_partitions), "reason": reason})
    return count


def _journal_and_apply(spark, database: str, table: TableSpec, run: str, entry: dict) -> None:
    """Write a rewrite's journal (whole or not at all), then carry it out; a process killed in
    between leaves the journal for the next ``finish_rewrites``."""
    from semspark.storage import pause_point

    journal = _journal_dir() / f"{database}.{table.name}.{run}.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    temporary = journal.with_suffix(".tmp")
    temporary.write_text(json.dumps({"database": database, "table": table.name, **entry}))
    temporary.replace(journal)
    pause_point("rewrite-journalled")
    _apply_rewrite(spark, journal)


MERGE_STAGING_PREFIX = "_semspark_merge-"   # "_": hidden from Spark's (and Hive's, Trino's) listing


def merge_files(spark, database: str, table: TableSpec, folder: str, small: list[str], files_wanted: int,
                reason: str) -> int:
    """Merge the ``small`` files of one folder of a table (the table's, or one partition's; Hadoop
    path strings) into ``files_wanted`` files; the folder's other files stay as they are, so the
    bytes rewritten are those of the small files, not the table's. The merged rows are staged in a
    hidden folder inside ``folder`` (on the warehouse's own file system, so that moving them in is a
    rename there: a local warehouse, HDFS, S3), then a journal names the files to remove and the
    staging folder, then the small files are removed and the staged ones moved in: safe if killed at
    any point (the journal is replayed as a rewrite's is). Returns the rows merged."""
    from pyspark.sql.types import StructType

    from semspark.storage import writer_lock

    name = qualified(database, table)
    run = new_run_id()
    staging = f"{folder}/{MERGE_STAGING_PREFIX}{run}"
    with writer_lock(purpose=f"merging small files of {name} ({reason})"):
        drop_abandoned_merges(spark, folder)
        # the table's columns as the metastore has them (a migration's added ones null in older files)
        columns = StructType([f for f in spark.table(name).schema.fields if f.name not in table.partition_by])
        # Hadoop path strings, not URIs: a partition folder's name keeps its "=" and Hive's escapes
        merged = spark.read.schema(columns).parquet(*small)
        expected = merged.count()
        merged.coalesce(files_wanted).write.mode("overwrite").parquet(staging)
        count = spark.read.schema(columns).parquet(staging).count()
        if count != expected:   # a bug of ours, not bad input
            raise AssertionError(f"merging {len(small)} files of {name} staged {count} rows of {expected}")
        _journal_and_apply(spark, database, table, run, {
            "kind": "merge", "folder": folder, "staging": staging, "rows": count, "remove": list(small),
            "reason": reason})
    return count


def drop_abandoned_merges(spark, folder: str) -> list[str]:
    """Remove the staging folders in ``folder`` of merges killed before their journal (never
    referenced: their small files are still in place); those a journal names are kept for its
    replay. Returns the ones removed."""
    from semspark.storage import hadoop_filesystem

    journalled = set()
    if _journal_dir().is_dir():
        journalled = {json.loads(j.read_text()).get("staging") for j in _journal_dir().glob("*.json")}
    fs, path = hadoop_filesystem(spark, folder)
    removed = []
    pattern = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path, f"{MERGE_STAGING_PREFIX}*")
    for status in fs.globStatus(pattern) or []:
        staging = f"{folder}/{status.getPath().getName()}"
        if staging not in journalled:
            fs.delete(status.getPath(), True)
            removed.append(staging)
    return removed


def _apply_merge(spark, journal, entry: dict) -> None:
    """Remove the merged files, move the staged ones in (renames on the table's file system, which
    keep a local warehouse's checksum files in step); each step skips what a killed earlier attempt
    did, so replaying is idempotent. A journal of an older semspark (staging under SEMSPARK_HOME,
    plain local paths) replays the same way."""
    from semspark.storage import hadoop_filesystem

    fs, folder = hadoop_filesystem(spark, entry["folder"])
    jvm_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path
    for removed in entry["remove"]:
        fs.delete(jvm_path(removed), False)      # False when a killed attempt already removed it
    staging = jvm_path(entry["staging"])
    if fs.exists(staging):
        for staged in fs.globStatus(jvm_path(staging, "part-*")) or []:
            target = jvm_path(folder, staged.getPath().getName())
            if not fs.exists(target) and not fs.rename(staged.getPath(), target):
                raise OSError(f"could not move {staged.getPath()} to {target}; the journal {journal} is "
                              "replayed by the next command that opens the catalog")
        fs.delete(staging, True)
    spark.catalog.refreshTable(f"{entry['database']}.{entry['table']}")
    journal.unlink()


def _apply_rewrite(spark, journal) -> None:
    import shutil

    entry = json.loads(journal.read_text())
    if entry.get("kind") == "merge":
        _apply_merge(spark, journal, entry)
        return
    name = f"{entry['database']}.{entry['table']}"
    staged = spark.read.parquet(Path(entry["staging"]).as_uri()).select(*spark.table(name).columns)
    previous = spark.conf.get("spark.sql.sources.partitionOverwriteMode")
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic" if entry["partitions_only"] else "static")
    try:
        staged.write.insertInto(name, overwrite=True)
    finally:
        spark.conf.set("spark.sql.sources.partitionOverwriteMode", previous)
    spec = next((s for s in table_specs() if s.name == entry["table"]), None)
    for value in entry["drop_partitions"]:
        column = spec.partition_by[0]
        quoted = str(value).replace("'", "\\'")
        spark.sql(f"ALTER TABLE {name} DROP IF EXISTS PARTITION ({column}='{quoted}')")
    spark.catalog.refreshTable(name)
    journal.unlink()
    shutil.rmtree(entry["staging"], ignore_errors=True)


def table_specs() -> list[TableSpec]:
    """Every table semspark declares (semspark/schema.py)."""
    import semspark.schema as schema

    return [v for v in vars(schema).values() if isinstance(v, TableSpec)]


def finish_rewrites(spark, database: str) -> int:
    """Replay the table rewrites of ``database`` a killed process journalled and did not finish."""
    from semspark.storage import writer_lock

    folder = _journal_dir()
    if not folder.is_dir() or not any(folder.glob(f"{database}.*.json")):
        return 0
    done = 0
    with writer_lock(purpose=f"finishing rewrites of {database}"):
        for journal in sorted(folder.glob(f"{database}.*.json")):   # none left by a live writer: it holds the lock
            log.warning("finishing a rewrite a killed process left: %s", journal.name)
            _apply_rewrite(spark, journal)
            done += 1
        for stale in folder.glob(f"{database}.*.tmp"):
            stale.unlink()
    return done


def run_sql(spark, query: str, limit: int = 10_000):
    """Run one statement; return (column names, rows as tuples, truncated?)."""
    df = spark.sql(query)
    columns = df.columns
    if not columns:  # DDL and DML return nothing
        return [], [], False
    rows = df.limit(limit + 1).collect()
    truncated = len(rows) > limit
    return columns, [tuple(r) for r in rows[:limit]], truncated


def _plain(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    return value


def format_result(columns: list[str], rows: list[tuple], fmt: str) -> str:
    """Render rows as an aligned table, CSV, or JSON (one object a line)."""
    if fmt == "json":
        return "\n".join(json.dumps({c: _plain(v) for c, v in zip(columns, row)}, ensure_ascii=False)
                         for row in rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else _plain(v) for v in row])
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use table, csv or json")
    cells = [[("NULL" if v is None else str(_plain(v))) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    header = "|" + "|".join(f" {c:<{w}} " for c, w in zip(columns, widths)) + "|"
    body = ["|" + "|".join(f" {v:<{w}} " for v, w in zip(r, widths)) + "|" for r in cells]
    return "\n".join([line, header, line, *body, line])


def unknown_scale_bins(spark, database: str, bins) -> str | None:
    """None when every bin of ``bins`` holds images in sem.images; else a message that names the
    missing ones and lists the bins there are (a typo must not silently select nothing)."""
    from semspark.schema import IMAGES

    if not bins:
        return None
    present = sorted(r[0] for r in spark.table(qualified(database, IMAGES)).select("scale_bin").distinct().collect()
                     if r[0] is not None)
    missing = [b for b in bins if b not in present]
    if not missing:
        return None
    return (f"no image in scale bin {', '.join(missing)}; the bins of {qualified(database, IMAGES)} are "
            f"{', '.join(present) or '(none: ingest first)'}, or give --scale-bins all")
