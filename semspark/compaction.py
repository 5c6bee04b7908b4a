"""Bounded files: every append (an ingest, a night's scoring, a run's log rows) adds small files to
the tables and the dataset; compaction rewrites a table or a table's partition that holds more
files than the configured threshold into as few as its size needs, and merges the small files of
a dataset bin that holds more small files than its threshold (its full files stay as they are:
the pixels rewritten are the nights' since the last compaction, not the repository's).

Safe if killed at any point: tables are rewritten through ``catalog.rewrite_table`` (staged,
journalled, replayed by the next command that opens the catalog) and dataset bins through the
dataset's journalled partition swap (``dataset.swap_partitions``), after which Petastorm's
metadata is made again (and checked, and rebuilt, by every later use). The rows are the same
before and after; only their files change. Writers wait for compaction (the writer lock).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from semspark.catalog import finish_rewrites, merge_files, new_run_id, qualified, rewrite_table, table_specs
from semspark.config import Config
from semspark.dataset import (DatasetCompaction, compact_dataset, dataset_root, dataset_url, files_per_bin,
                              small_files_per_bin)
from semspark.schema import TableSpec
from semspark.storage import home_path, local_path, writer_lock

log = logging.getLogger(__name__)


@dataclass
class CompactionSummary:
    run_id: str
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)        # table -> (files before, after)
    dataset_bins: dict[str, tuple[int, int]] = field(default_factory=dict)  # scale bin -> (files before, after)
    files_before: int = 0
    files_after: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        out = [f"compaction {self.run_id}: {self.files_before} files before, {self.files_after} after "
               f"({self.seconds:.1f} s)"]
        out += [f"  table {name:<28}{a} -> {b} files" for name, (a, b) in sorted(self.tables.items())]
        out += [f"  dataset bin {name:<22}{a} -> {b} files" for name, (a, b) in sorted(self.dataset_bins.items())]
        if not self.tables and not self.dataset_bins:
            out.append("  nothing over the thresholds (compaction.table_files, compaction.dataset_files_per_bin)")
        return out


def semspark_tables(spark, database: str) -> list[TableSpec]:
    """The semspark tables that exist in ``database``."""
    return [s for s in table_specs() if spark.catalog.tableExists(qualified(database, s))]


def table_files(spark, database: str, table: TableSpec) -> dict[str, list[tuple[str, int]]]:
    """The data files of a table by folder (one folder per partition): [(path, bytes)]."""
    from semspark.storage import from_index_uri

    spark.catalog.refreshTable(qualified(database, table))
    by_folder: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for uri in spark.table(qualified(database, table)).inputFiles():
        path = local_path(from_index_uri(uri)) or from_index_uri(uri)
        try:
            size = Path(path).stat().st_size
        except OSError:
            size = 0
        by_folder[str(Path(path).parent)].append((path, size))
    return by_folder


def file_counts(spark, config: Config) -> dict[str, int]:
    """Files of every semspark table, and of the dataset (key ``dataset``)."""
    db = config.catalog.database
    counts = {qualified(db, t): sum(len(v) for v in table_files(spark, db, t).values())
              for t in semspark_tables(spark, db)}
    root = dataset_root(dataset_url(config))
    counts["dataset"] = sum(files_per_bin(root).values()) if root.exists() else 0
    return counts


def small_files(files: list[tuple[str, int]], target_bytes: int) -> list[tuple[str, int]]:
    """The files of a folder under half the compacted size: what compaction merges. Each merge
    leaves files of at least that much (or one smaller file, merged again next time), so a table's
    files stay bounded by its size, and the full ones are never read again to compact it."""
    return [(path, size) for path, size in files if size < target_bytes / 2]


def needs_compaction(spark, config: Config) -> bool:
    settings = config.compaction
    db = config.catalog.database
    target_bytes = settings.target_file_mb * 1024 * 1024
    for table in semspark_tables(spark, db):
        if any(len(small_files(files, target_bytes)) > settings.table_files
               for files in table_files(spark, db, table).values()):
            return True
    root = dataset_root(dataset_url(config))
    return root.exists() and any(len(small) > settings.dataset_files_per_bin
                                 for small in small_files_per_bin(root).values())


def compact(spark, config: Config, force: bool = False) -> CompactionSummary:
    """Compact every table, table partition and dataset bin over the thresholds (``force``: every
    one holding more files than its size needs)."""
    from pyspark.sql import functions as F

    started = time.monotonic()
    settings = config.compaction
    db = config.catalog.database
    summary = CompactionSummary(run_id=new_run_id("compact-"))
    target_bytes = settings.target_file_mb * 1024 * 1024
    with writer_lock(purpose=f"compaction {summary.run_id}"):
        finish_rewrites(spark, db)
        _drop_abandoned_staging(summary.run_id)
        for table in semspark_tables(spark, db):
            name = qualified(db, table)
            folders = table_files(spark, db, table)
            before = sum(len(files) for files in folders.values())
            summary.files_before += before
            chosen = []
            for folder, files in folders.items():
                small = small_files(files, target_bytes)
                needed = max(1, math.ceil(sum(size for _, size in small) / target_bytes))
                if len(small) > needed and (force or len(small) > settings.table_files):
                    whole = max(1, math.ceil(sum(size for _, size in files) / target_bytes))
                    chosen.append((folder, needed, [path for path, _ in small], whole))
            if not chosen:
                summary.files_after += before
                continue
            rows_before = spark.table(name).count()
            if all(local_path(folder) is not None and Path(folder).is_dir() for folder, *_ in chosen):
                # only the small files are read and rewritten: a compaction costs what the nights
                # since the last one added, not the table's size
                for folder, needed, small, _ in chosen:
                    merge_files(spark, db, table, folder, small, needed, "compaction")
            elif table.partition_by:   # not a local warehouse: the partition rewritten whole
                for folder, _, _, needed in chosen:
                    values = _partition_values(folder, table)
                    condition = F.lit(True)
                    for column, value in values.items():
                        condition = condition & (F.col(column).cast("string") == value)
                    rewrite_table(spark, db, table, spark.table(name).filter(condition).repartition(needed),
                                  "compaction", partitions_only=True)
            else:
                rewrite_table(spark, db, table, spark.table(name).repartition(chosen[0][3]), "compaction")
            rows_after = spark.table(name).count()
            if rows_after != rows_before:   # a bug of ours, not bad input: say so loudly
                raise AssertionError(f"compacting {name} changed its rows from {rows_before} to {rows_after}")
            after = sum(len(files) for files in table_files(spark, db, table).values())
            summary.tables[name] = (before, after)
            summary.files_after += after
            log.info("compacted %s: %d -> %d files", name, before, after)
        dataset: DatasetCompaction = compact_dataset(spark, config, settings.dataset_files_per_bin, summary.run_id,
                                                     force)
        summary.dataset_bins = dataset.bins_rewritten
        summary.files_before += dataset.files_before
        summary.files_after += dataset.files_after
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _partition_values(folder: str, table: TableSpec) -> dict[str, str]:
    """{column: value} of a partition folder (…/scale_bin=1um), values unescaped as Hive writes them."""
    from urllib.parse import unquote

    values = {}
    for part in Path(folder).parts:
        column, sep, value = part.partition("=")
        if sep and column in table.partition_by:
            values[column] = unquote(value)
    if set(values) != set(table.partition_by):
        raise AssertionError(f"{folder} is not a partition folder of {table.name} ({table.partition_by})")
    return values


def _drop_abandoned_staging(current: str) -> None:
    """Staging folders of compactions and rewrites killed before their journal: never referenced."""
    from semspark.catalog import _journal_dir

    root = home_path("staging")
    if not root.is_dir():
        return
    journalled = set()
    folder = _journal_dir()
    if folder.is_dir():
        import json
        journalled = {json.loads(j.read_text())["staging"] for j in folder.glob("*.json")}
    for entry in root.iterdir():
        if entry.name.startswith(("compact-", "rewrite-", "merge-")) and current not in entry.name and str(entry) not in journalled:
            shutil.rmtree(entry, ignore_errors=True)
