"""The Spark catalog: creating semspark's tables, and running users' SQL."""
from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal

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
    columns a newer semspark declares to tables an older one created (additive migration)."""
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    for table in tables:
        name = qualified(database, table)
        if spark.catalog.tableExists(name):
            present = set(spark.table(name).columns)
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


def insert(df, database: str, table: TableSpec) -> None:
    """Append rows, columns matched by name: insertInto matches by position, and a migrated table
    has its added columns after the older ones."""
    name = qualified(database, table)
    df.select(*df.sparkSession.table(name).columns).write.insertInto(name)


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
