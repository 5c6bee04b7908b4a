"""The PostgreSQL metastore: making its schema (``semspark catalog init``) and moving a catalog
from the embedded Derby metastore to it (``semspark catalog move-to-postgresql``).

The schema is the one Spark's built-in Hive 2.3 client maps its objects to (``package.jdo`` in
hive-metastore's jar), made whole by DataNucleus' own SchemaTool, the library Hive persists with;
the few tables DataNucleus adds for itself (its value-generation sequences) are made by a first
catalog operation in the same command. Sessions never make schema lazily (see session.py).

The data stays where it is (``$SEMSPARK_HOME/warehouse``); only the metastore's description of it
moves. One JVM holds one metastore, so the Derby side runs in a child process that writes what it
knows (databases, tables with their columns, partitioning and row counts, views with their SQL)
to a JSON file; this process, on PostgreSQL, then creates each table as a managed table at the
same place (its files are moved aside for the CREATE and back, within the same folder tree),
finds its partitions, checks its row count against Derby's, and recreates the views. Rerunning
after a kill finishes what is missing; at the end the Derby metastore is renamed, so that a
configuration that still says derby fails loudly instead of showing an empty catalog.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from semspark.config import Config

log = logging.getLogger(__name__)

MIGRATING_SUFFIX = ".moving-to-postgresql"


class MoveError(RuntimeError):
    """The catalog cannot be moved as asked; nothing of the Derby catalog was changed."""


@dataclass
class MoveSummary:
    database: str
    tables: dict[str, int] = field(default_factory=dict)      # table -> rows (equal on both sides)
    views: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    derby_kept_at: str = ""

    def as_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"catalog {self.database} moved to PostgreSQL: {len(self.tables)} tables, {len(self.views)} views"]
        out += [f"  {name:<32}{rows} rows" for name, rows in sorted(self.tables.items())]
        if self.already_there:
            out.append(f"  already in PostgreSQL (left as they are): {', '.join(self.already_there)}")
        if self.derby_kept_at:
            out.append(f"  the Derby metastore is kept, renamed, at {self.derby_kept_at}")
        return out


def init_schema(config: Config) -> str:
    """Make the metastore schema in the PostgreSQL database ``catalog.postgresql_url`` names (a no-op
    where it exists): DataNucleus' SchemaTool over Hive's mapping, in a JVM of its own."""
    import shutil
    import zipfile

    import pyspark

    from semspark.config import semspark_home
    from semspark.session import metastore_password

    if config.catalog.metastore != "postgresql":
        raise MoveError("catalog.metastore is derby in this configuration: the embedded Derby catalog needs no init")
    jars = Path(pyspark.__file__).parent / "jars"
    hive = next(iter(sorted(jars.glob("hive-metastore-*.jar"))), None)
    if hive is None:
        raise MoveError(f"no hive-metastore jar in {jars}: is this pyspark built with Hive support?")
    driver = Path(config.catalog.jdbc_driver_jar)
    if not driver.is_file():
        raise MoveError(f"the PostgreSQL JDBC driver {driver} is missing: apt-get install libpostgresql-jdbc-java")
    java = shutil.which("java", path=os.pathsep.join(filter(None, [str(Path(os.environ["JAVA_HOME"]) / "bin")
                                                                     if os.environ.get("JAVA_HOME") else None,
                                                                     os.environ.get("PATH")])))
    if java is None:
        raise MoveError("java not found (JAVA_HOME or PATH): Spark needs Java 17 anyway")
    work = semspark_home() / "tmp" / f"metastore-init-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o700)
    try:
        with zipfile.ZipFile(hive) as jar:
            (work / "package.jdo").write_bytes(jar.read("package.jdo"))
        props = work / "datanucleus.properties"
        props.touch(mode=0o600)
        props.write_text("\n".join([
            f"javax.jdo.option.ConnectionURL={config.catalog.postgresql_url}",
            "javax.jdo.option.ConnectionDriverName=org.postgresql.Driver",
            f"javax.jdo.option.ConnectionUserName={config.catalog.postgresql_user}",
            f"javax.jdo.option.ConnectionPassword={metastore_password(config)}",
            # as Hive's ObjectStore names things, so that the client finds what the tool made
            "datanucleus.identifierFactory=datanucleus1", "datanucleus.rdbms.useLegacyNativeValueStrategy=true",
            "datanucleus.storeManagerType=rdbms", "datanucleus.schema.autoCreateAll=true", ""]))
        result = subprocess.run([java, "-cp", f"{jars}/*:{driver}", "org.datanucleus.store.schema.SchemaTool",
                                 "-create", "-api", "JDO", "-props", str(props), str(work / "package.jdo")],
                                capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.returncode != 0 or "completed successfully" not in result.stdout:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise MoveError(f"making the metastore schema in {config.catalog.postgresql_url} failed: {' | '.join(tail)}")
    return config.catalog.postgresql_url


def warm_up(spark) -> None:
    """The first catalog operations, with DataNucleus allowed to add its own tables (the schema
    itself exists: nothing refers to what it adds, so nothing can deadlock). In a database of its
    own, dropped after: a database's location is fixed when it is made, and the real ones must be
    made by the commands that use them, under their SEMSPARK_HOME."""
    import shutil
    import uuid

    from semspark.config import semspark_home

    name = f"semspark_probe_{uuid.uuid4().hex[:8]}"
    where = semspark_home() / "tmp" / name
    spark.sql(f"CREATE DATABASE {name} LOCATION '{where.as_uri()}'")
    try:
        spark.sql(f"CREATE TABLE {name}.probe (x int) USING parquet")
        spark.sql(f"INSERT INTO {name}.probe VALUES (1)")
    finally:
        spark.sql(f"DROP DATABASE {name} CASCADE")
        shutil.rmtree(where, ignore_errors=True)


@dataclass
class InitSummary:
    url: str
    database: str

    def as_dict(self) -> dict:
        return {"url": self.url, "database": self.database}

    def lines(self) -> list[str]:
        return [f"metastore schema ready in {self.url}"]


def export_catalog(spark, database: str) -> dict:
    """What the current metastore knows of ``database``: tables (columns, partitioning, location,
    comment, rows) and views (their CREATE statement)."""
    from semspark.catalog import qualified

    tables, views = [], []
    for entry in spark.catalog.listTables(database):
        name = qualified(database, entry.name)
        if entry.tableType == "VIEW":
            views.append({"name": entry.name, "sql": spark.sql(f"SHOW CREATE TABLE {name}").first()[0]})
            continue
        detail = {r["col_name"]: r["data_type"] for r in spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()}
        columns = spark.catalog.listColumns(entry.name, database)
        tables.append({
            "name": entry.name, "location": detail.get("Location", ""), "provider": detail.get("Provider", "parquet"),
            "comment": detail.get("Comment") or "", "type": entry.tableType,
            "columns": [(c.name, c.dataType) for c in columns if not c.isPartition],
            "partition_columns": [(c.name, c.dataType) for c in columns if c.isPartition],
            "rows": spark.table(name).count(),
        })
    return {"database": database, "location": _database_location(spark, database), "tables": tables, "views": views}


def _database_location(spark, database: str) -> str:
    rows = {r[0]: r[1] for r in spark.sql(f"DESCRIBE DATABASE {database}").collect()}
    return rows.get("Location", "")


def move_to_postgresql(spark, config: Config) -> MoveSummary:
    """Move ``config.catalog.database`` from the Derby metastore under SEMSPARK_HOME into the
    PostgreSQL metastore this session uses."""
    from semspark.config import semspark_home

    if config.catalog.metastore != "postgresql":
        raise MoveError("catalog.metastore is derby in this configuration: give the configuration that names "
                        "the PostgreSQL metastore (deploy/metastore.sh conf prints its catalog section)")
    home = semspark_home()
    derby = home / "metastore" / "metastore_db"
    database = config.catalog.database
    summary = MoveSummary(database=database)
    if not derby.exists():
        kept = sorted(home.glob("metastore/metastore_db.moved-*"))
        if kept:
            summary.derby_kept_at = str(kept[-1])
            summary.already_there = sorted(t.name for t in spark.catalog.listTables(database)) \
                if spark.catalog.databaseExists(database) else []
            return summary      # moved by an earlier run
        raise MoveError(f"there is no Derby metastore at {derby}: nothing to move")
    exported = _export_in_child(home, database)
    warm_up(spark)
    warehouse = Path(spark.conf.get("spark.sql.warehouse.dir").replace("file:", ""))
    where = Path(exported["location"].replace("file:", ""))
    if spark.catalog.databaseExists(database):
        present = Path(_database_location(spark, database).replace("file:", ""))
        if present.resolve() != where.resolve():
            raise MoveError(f"database {database} exists in PostgreSQL's catalog at {present}, not at {where} where "
                            "Derby's has its files: drop it there (DROP DATABASE ... CASCADE) or choose another "
                            "catalog.database")
    else:
        spark.sql(f"CREATE DATABASE {database} LOCATION '{where.as_uri()}'")
    for table in exported["tables"]:
        name = f"{database}.{table['name']}"
        if spark.catalog.tableExists(name) and not _aside(table).exists():
            summary.already_there.append(table["name"])
        else:
            _recreate_table(spark, database, table, warehouse)
        rows = spark.table(name).count()
        if rows != table["rows"]:
            raise MoveError(f"{name} has {rows} rows in PostgreSQL's catalog and {table['rows']} in Derby's; "
                            "the Derby metastore is left as it was: rerun, or report it")
        summary.tables[table["name"]] = rows
    pending = list(exported["views"])
    for _ in range(len(pending) + 1):   # a view over a view waits for it
        failed = []
        for view in pending:
            try:
                spark.sql(view["sql"].replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
                summary.views.append(view["name"])
            except Exception as exc:   # noqa: BLE001 - retried once the views it reads exist
                failed.append((view, exc))
        pending = [view for view, _ in failed]
        if not pending:
            break
    if pending:
        raise MoveError(f"views {', '.join(v['name'] for v in pending)} could not be made again: {failed[0][1]}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = derby.with_name(f"metastore_db.moved-{stamp}")
    derby.rename(kept)
    summary.derby_kept_at = str(kept)
    return summary


def _aside(table: dict) -> Path:
    location = Path(table["location"].replace("file:", ""))
    return location.with_name(location.name + MIGRATING_SUFFIX)


def _recreate_table(spark, database: str, table: dict, warehouse: Path) -> None:
    """The table as a managed table at its own folder: the folder is moved aside (a managed table
    cannot be created over existing files), the table created, the files moved back, partitions found."""
    import shutil

    name = f"{database}.{table['name']}"
    location = Path(table["location"].replace("file:", ""))
    expected = warehouse / f"{database}.db" / table["name"]
    if table["type"] != "MANAGED" or location.resolve() != expected.resolve():
        raise MoveError(f"{name} lives at {location}, not in the warehouse ({expected}): move it by hand")
    aside = _aside(table)
    if location.exists() and not aside.exists():
        location.rename(aside)
    if not spark.catalog.tableExists(name):
        if location.exists() and not any(location.iterdir()):
            location.rmdir()
        columns = ", ".join(f"`{c}` {t}" for c, t in table["columns"] + table["partition_columns"])
        partition = (f" PARTITIONED BY ({', '.join(f'`{c}`' for c, _ in table['partition_columns'])})"
                     if table["partition_columns"] else "")
        comment = table["comment"].replace("'", "\\'")
        spark.sql(f"CREATE TABLE {name} ({columns}) USING {table['provider']}{partition} COMMENT '{comment}'")
    location.mkdir(parents=True, exist_ok=True)
    if aside.exists():
        for entry in aside.iterdir():
            target = location / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            entry.rename(target)
        aside.rmdir()
    made = {r["col_name"]: r["data_type"] for r in spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()}
    if Path(made.get("Location", "").replace("file:", "")).resolve() != location.resolve():
        raise MoveError(f"{name} was made at {made.get('Location')}, not at {location}")
    if table["partition_columns"]:
        spark.sql(f"MSCK REPAIR TABLE {name}")
    spark.catalog.refreshTable(name)


def _export_in_child(home: Path, database: str) -> dict:
    """The Derby side, in a child process (its own JVM, its own metastore)."""
    out = home / "tmp" / f"derby-catalog-{os.getpid()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SEMSPARK_HOME=str(home))
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    result = subprocess.run([sys.executable, "-m", "semspark.metastore", "export", database, str(out)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise MoveError(f"reading the Derby catalog failed (is another semspark process using it?): "
                        f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
    exported = json.loads(out.read_text())
    out.unlink()
    return exported


def _export_main(database: str, out: str) -> int:
    from semspark.config import CatalogConfig, Config
    from semspark.session import console_progress, session_scope

    config = Config(catalog=CatalogConfig(database=database, metastore="derby"))
    with session_scope(config, app_name="semspark-catalog-export", extra=console_progress()) as spark:
        if not spark.catalog.databaseExists(database):
            print(f"the Derby catalog has no database {database}", file=sys.stderr)
            return 2
        Path(out).write_text(json.dumps(export_catalog(spark, database)))
    return 0


if __name__ == "__main__":   # the child of _export_in_child
    if len(sys.argv) != 4 or sys.argv[1] != "export":
        print("usage: python -m semspark.metastore export DATABASE OUT.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(_export_main(sys.argv[2], sys.argv[3]))
