"""sem.quarantine over time: failures that may pass are tried again, and healed files leave it.

A file is quarantined with the stage that refused it. ``io`` failures (an I/O error, a file that
went away between listing and reading) may pass: after the retries within the run
(``storage.read_bytes_retrying``) they are kept as ``retryable``, and every later ingest over their
folder tries them again. The other stages (``read``: an empty file; ``decode``: not an image,
truncated; ``limits``: over a size limit) are permanent: the same bytes fail the same way, so the file stays quarantined until
it changes (a new size or modification time is a new file) or a person asks for another try
(``semspark quarantine retry``, e.g. after an upgrade).

The table keeps one row per file (path, size, modification time): the latest outcome. A file that
is ingested at last leaves it. ``heal`` enforces both, rewriting the (small) table only when there
is something to drop; ingest calls it at its start (finishing what a killed run left) and end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from semspark.catalog import ensure_tables, format_result, qualified, rewrite_table
from semspark.ingest.listing import known_keys
from semspark.schema import FILES, INGEST_TABLES, QUARANTINE

log = logging.getLogger(__name__)

RETRYABLE_STAGES = ("io",)
KEY = ["path", "size", "modification_time"]


class QuarantineError(RuntimeError):
    """A quarantine command that cannot run as given (unknown stage); nothing was changed."""


def retryable_column():
    """The ``retryable`` value of a new quarantine row, from its stage."""
    from pyspark.sql import functions as F

    return F.col("stage").isin(list(RETRYABLE_STAGES))


def waiting_files(spark, database: str):
    """(path, size, modification_time) of the quarantined files an ingest must not try again."""
    from pyspark.sql import functions as F

    return (spark.table(qualified(database, QUARANTINE)).filter(~F.coalesce(F.col("retryable"), F.lit(False)))
            .select(*KEY))


def quarantine_keys(spark, database: str):
    """Every sem.quarantine row's file key (path, size, mtime_ms) and whether it is retryable, in the
    driver (one small read: the table holds one row per failed file), with pyarrow from the table's
    files where they are local (catalog.local_columns), else by Spark."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    from semspark.catalog import local_columns
    from semspark.ingest.listing import unix_millis

    table = local_columns(spark, database, QUARANTINE, ["path", "size", "modification_time", "retryable"])
    if table is None:
        return (spark.table(qualified(database, QUARANTINE))
                .select("path", "size", F.expr("unix_millis(modification_time)").alias("mtime_ms"),
                        F.coalesce(F.col("retryable"), F.lit(False)).alias("retryable")).toPandas())
    return pa.table({"path": table["path"], "size": table["size"], "mtime_ms": unix_millis(table["modification_time"]),
                     "retryable": pc.fill_null(table["retryable"], False)}).to_pandas()


def needs_healing(quarantined, ingested: set) -> bool:
    """Whether ``heal`` would drop anything: a file quarantined more than once, or one that is in
    sem.files (``ingested``: its keys) since. Decided in the driver on the keys an ingest reads
    anyway, so a run with nothing to heal starts no Spark job for it."""
    keys = known_keys(quarantined)
    return len(keys) < len(quarantined) or not keys.isdisjoint(ingested)


def heal(spark, database: str, run_id: str) -> int:
    """Drop quarantine rows of files now in sem.files, and all but the latest row of each file.
    Returns how many rows were dropped; rewrites the table only when there are any."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    name = qualified(database, QUARANTINE)
    table = spark.table(name)
    latest = Window.partitionBy(*KEY).orderBy(F.col("ingested_at").desc_nulls_last(), F.col("ingest_run").desc())
    ranked = table.withColumn("_rank", F.row_number().over(latest))
    kept = (ranked.filter(F.col("_rank") == 1).drop("_rank")
            .join(spark.table(qualified(database, FILES)).select(*KEY), KEY, "left_anti"))
    total, keeping = table.count(), kept.count()
    if keeping == total:
        return 0
    rewrite_table(spark, database, QUARANTINE, kept, "healing")
    log.info("quarantine: %d rows dropped (files ingested since, or older outcomes of a file)", total - keeping)
    return total - keeping


@dataclass
class RetryResult:
    marked: int
    stages: tuple[str, ...]

    def lines(self) -> list[str]:
        which = ", ".join(self.stages) if self.stages else "every stage"
        return [f"{self.marked} quarantined files ({which}) marked to be tried again: the next ingest or "
                "nightly run over their folder reads them again"]


def mark_retryable(spark, config, stages: tuple[str, ...] = (), run_id: str = "retry") -> RetryResult:
    """Mark the quarantined files of ``stages`` (all when empty) to be tried again by the next ingest."""
    from pyspark.sql import functions as F

    database = config.catalog.database
    ensure_tables(spark, database, INGEST_TABLES)
    name = qualified(database, QUARANTINE)
    table = spark.table(name)
    present = sorted(r[0] for r in table.select("stage").distinct().collect() if r[0] is not None)
    unknown = [s for s in stages if s not in present]
    if unknown:
        raise QuarantineError(f"no quarantined file has stage {', '.join(unknown)}; the stages there are "
                              f"{', '.join(present) or '(none: nothing is quarantined)'}")
    chosen = F.col("stage").isin(list(stages)) if stages else F.lit(True)
    marked = table.filter(chosen & ~F.coalesce(F.col("retryable"), F.lit(False))).count()
    if marked:
        rewrite_table(spark, database, QUARANTINE,
                      table.withColumn("retryable", F.when(chosen, F.lit(True)).otherwise(F.col("retryable"))),
                      "marking files to retry")
    return RetryResult(marked=marked, stages=tuple(stages))


def list_quarantine(spark, config, stages: tuple[str, ...] = (), fmt: str = "table", limit: int = 1000) -> str:
    """The quarantined files, newest first: path, stage, reason, retryable, when."""
    from pyspark.sql import functions as F

    database = config.catalog.database
    ensure_tables(spark, database, INGEST_TABLES)
    table = spark.table(qualified(database, QUARANTINE))
    if stages:
        table = table.filter(F.col("stage").isin(list(stages)))
    rows = (table.select("path", "stage", "reason", F.coalesce(F.col("retryable"), F.lit(False)).alias("retryable"),
                         "ingested_at").orderBy(F.col("ingested_at").desc(), "path").limit(limit).collect())
    return format_result(["path", "stage", "reason", "retryable", "ingested_at"], [tuple(r) for r in rows], fmt)
