"""The catalog's tables for the web app, read from their Parquet files with DuckDB.

Why not through Spark: the embedded Derby metastore admits one process, so a web app holding a
SparkSession would stop the nightly from starting (and the other way round); and a Spark query
costs hundreds of milliseconds of planning where a gallery page has a budget of well under a
second. The tables are Parquet folders under the warehouse (``<warehouse>/<database>.db/<table>``,
one sub-folder per partition value, as Spark writes them), so DuckDB reads them directly, whatever
the metastore (Derby or PostgreSQL), and nobody waits for anybody: readers never take the writer
lock. A file a compaction removes between the listing and the read makes the query start again.

Each table is copied into an in-memory DuckDB table (its declared columns, semspark/schema.py; a
column an older file lacks reads as NULL; partition columns from the folder names, percent-decoded
as Spark encodes them; files listed with Spark's hidden-name rules) and copied again only when its
list of files changes: a page then filters and sorts 150,000 rows in memory (milliseconds) instead
of opening hundreds of Parquet files. The large arrays (embeddings, logits) are left on disk.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from semspark.catalog import partition_value_of_folder
from semspark.storage import walk_visible
from semspark.schema import TableSpec

RETRIES = 3
LISTING_INTERVAL = 1.0   # seconds: a burst of requests (a page's thumbnails) lists the folders once

_DUCKDB_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "float": "FLOAT", "int": "INTEGER", "bigint": "BIGINT",
                 "boolean": "BOOLEAN", "timestamp": "TIMESTAMP", "binary": "BLOB",
                 "array<float>": "FLOAT[]", "array<double>": "DOUBLE[]"}


class TablesError(RuntimeError):
    """The warehouse or a table is not where the configuration says; the message says what to do."""


def duckdb_type(spark_type: str) -> str:
    return _DUCKDB_TYPES.get(spark_type, "VARCHAR")


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Warehouse:
    """Where a database's tables are: ``root`` holds one folder per table."""
    root: Path

    @classmethod
    def of(cls, home: Path, database: str) -> "Warehouse":
        return cls(home / "warehouse" / f"{database}.db")

    def folder(self, table: TableSpec) -> Path:
        return self.root / table.name

    def files(self, table: TableSpec) -> list[tuple[str, dict[str, str | None]]]:
        """(file, partition values) of every data file of ``table``; [] when it has none yet."""
        top = self.folder(table)
        if not top.is_dir():
            return []
        out = []
        for name, status in walk_visible(str(top)):
            relative = Path(name)
            if status is None or relative.suffix != ".parquet":
                continue
            values = {}
            for part in relative.parent.parts:
                key, _, value = part.partition("=")
                values[key] = partition_value_of_folder(value)
            out.append((str(top / relative), values))
        return out


def table_view_sql(con, table: TableSpec, files: list[tuple[str, dict]]) -> str:
    """SELECT of every declared column of ``table`` over ``files`` (no rows when there are none)."""
    partitions = set(table.partition_by)
    declared = [(f.name, duckdb_type(f.dataType.simpleString())) for f in table.schema.fields]
    if not files:
        return "SELECT " + ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in declared) + " WHERE false"
    by_partition: dict[tuple, list[str]] = {}
    for path, values in files:
        by_partition.setdefault(tuple(sorted(values.items(), key=lambda kv: kv[0])), []).append(path)
    selects = []
    for values, paths in by_partition.items():
        source = f"read_parquet([{', '.join(sql_literal(p) for p in paths)}], union_by_name = true)"
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        given = dict(values)
        columns = []
        for name, kind in declared:
            if name in partitions:
                value = given.get(name)
                columns.append(f"CAST({'NULL' if value is None else sql_literal(value)} AS {kind}) AS {name}")
            elif name in present:
                columns.append(f"CAST({name} AS {kind}) AS {name}")
            else:
                columns.append(f"CAST(NULL AS {kind}) AS {name}")
        selects.append(f"SELECT {', '.join(columns)} FROM {source}")
    return " UNION ALL ".join(selects)


class Tables:
    """Read-only SQL over copies of the catalog's tables, refreshed when their files change."""

    def __init__(self, warehouse: Warehouse, tables: tuple[TableSpec, ...], left_on_disk: frozenset = frozenset(),
                 derived: dict[str, str] | None = None):
        import duckdb

        self.warehouse, self.tables, self.left_on_disk = warehouse, tables, left_on_disk
        self.derived = derived or {}     # name -> SELECT over the tables, made again when any changes
        self._db = duckdb.connect(":memory:")
        self._db.execute("SET threads TO 2")
        self._listed: dict[str, tuple] = {}
        self._refreshing = threading.Lock()
        self._checked = 0.0
        self.generation = 0    # counts the copies: what is computed from the tables may be kept until it moves

    def refresh(self, force: bool = False) -> None:
        """Copy again every table whose files changed since its last copy (an append, a compaction).
        The folders are listed at most once every LISTING_INTERVAL seconds unless ``force``."""
        import duckdb

        with self._refreshing:
            if not force and time.monotonic() - self._checked < LISTING_INTERVAL:
                return
            self._checked = time.monotonic()
            changed = False
            for table in self.tables:
                files = self.warehouse.files(table)
                key = tuple(path for path, _ in files)
                if self._listed.get(table.name) == key:
                    continue
                for attempt in range(RETRIES):
                    try:
                        con = self._db.cursor()
                        kept = [f for f in table.schema.fields if f.name not in self.left_on_disk]
                        spec = TableSpec(table.name, type(table.schema)(kept), table.partition_by)
                        con.execute(f"CREATE OR REPLACE TABLE {table.name} AS {table_view_sql(con, spec, files)}")
                        break
                    except duckdb.IOException:   # a file removed between the listing and the read
                        if attempt == RETRIES - 1:
                            raise
                        time.sleep(0.2 * (attempt + 1))
                        files = self.warehouse.files(table)
                        key = tuple(path for path, _ in files)
                self._listed[table.name] = key
                changed = True
            if changed:
                self.generation += 1
                con = self._db.cursor()
                for name, select in self.derived.items():
                    con.execute(f"CREATE OR REPLACE TABLE {name} AS {select}")

    def query(self, sql: str, parameters: list | None = None, fresh: bool = False,
              relations: dict | None = None) -> list[dict]:
        """Rows as dicts, from the tables as their files are now (``fresh``: listed now, not up
        to LISTING_INTERVAL ago); ``relations``: more tables for this query only (name -> a pandas
        frame), e.g. an analysis's cut at a k that sem.clusters does not keep."""
        self.refresh(force=fresh)
        cursor = self._db.cursor()
        try:
            for name, frame in (relations or {}).items():
                cursor.register(name, frame)
            cursor.execute(sql, parameters or [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            cursor.close()
