"""Bounded files: compaction rewrites the small files of the tables and the dataset into few, with
the same rows, and survives a kill at any point; Petastorm's metadata is checked against the files
and rebuilt, also after a kill between an ingest's Parquet commit and its metadata step.

The expected contents come from outside the code under test: the SHA-256 of every raw file
(hashlib), the files on disk (os.walk), and Petastorm's own reader."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semspark.compaction import compact, needs_compaction
from semspark.config import CatalogConfig, CompactionConfig, Config, IngestConfig
from semspark.dataset import dataset_url
from semspark.ingest.job import run_ingest
from semspark.synth.generate import generate
from tests.conftest import VIEWFS_CLUSTER

pytestmark = pytest.mark.spark

VENV_BIN = Path(sys.executable).parent
DB = "compacting"
CONFIG = Config(catalog=CatalogConfig(database=DB),
                ingest=IngestConfig(image_size=48, dataset_dir="datasets/compacting", files_per_task=8),
                compaction=CompactionConfig(table_files=2, dataset_files_per_bin=2))
IMAGE_SUFFIXES = (".tif", ".png", ".jpg")


def raw_ids(*folders) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in Path(folder).rglob("*")
            if p.suffix in IMAGE_SUFFIXES}


def parquet_files(folder: Path) -> dict[str, int]:
    """Parquet data files per folder under ``folder``, counted on disk."""
    counts: dict[str, int] = {}
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        n = sum(1 for f in files if f.endswith(".parquet") or f.startswith("part-"))
        if n:
            counts[os.path.relpath(parent, folder)] = n
    return counts


def petastorm_ids(url: str) -> list[str]:
    from petastorm import make_reader

    with make_reader(url, schema_fields=["image_id"], reader_pool_type="dummy", num_epochs=1) as reader:
        return sorted(row.image_id for row in reader)


def rows(spark, table: str) -> list[tuple]:
    return sorted(tuple(str(v) for v in r) for r in spark.table(f"{DB}.{table}").collect())


@pytest.fixture(scope="module")
def three_nights(spark, semspark_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("compacting_raw")
    for night in range(3):
        generate(root / f"night{night}", 6, seed=300 + night, width=256, height=192)
        run_ingest(spark, CONFIG, str(root / f"night{night}"), labels="folders")
    return root, semspark_home / "warehouse" / f"{DB}.db"


def test_compaction_rewrites_small_files_into_few_with_the_same_rows(spark, three_nights):
    root, warehouse = three_nights
    truth = raw_ids(*(root / f"night{n}" for n in range(3)))
    url = dataset_url(CONFIG)
    dataset = Path(url[len("file://"):])
    before_tables = {t: parquet_files(warehouse / t) for t in ("images", "files", "labels")}
    before_dataset = parquet_files(dataset)
    assert max(before_dataset.values()) == 3 and max(before_tables["files"].values()) >= 3   # a file a night
    contents = {t: rows(spark, t) for t in ("images", "files", "labels")}
    # the files a local table's folders hold, walked, are those Spark's file index gives the table
    # (images: partitioned by scale bin), with their sizes on disk
    from semspark.compaction import semspark_tables, table_files
    from semspark.storage import from_index_uri, local_path
    for table in semspark_tables(spark, DB):
        folders = table_files(spark, DB, table)
        walked = {path: size for files in folders.values() for path, size in files}
        indexed = {from_index_uri(f) for f in spark.table(f"{DB}.{table.name}").inputFiles()}
        assert set(walked) == indexed, table.name
        if table.name == "images":
            assert len(folders) > 1     # a folder per scale bin
        assert all(os.path.getsize(local_path(p)) == size for p, size in walked.items())
    assert needs_compaction(spark, CONFIG)

    def over_threshold_become_one(before: dict[str, int]) -> dict[str, int]:
        return {folder: 1 if n > 2 else n for folder, n in before.items()}

    summary = compact(spark, CONFIG)
    assert summary.files_after < summary.files_before
    for table in ("images", "files", "labels"):
        assert parquet_files(warehouse / table) == over_threshold_become_one(before_tables[table]), table
        assert rows(spark, table) == contents[table]
    assert parquet_files(dataset) == over_threshold_become_one(before_dataset)
    assert petastorm_ids(url) == sorted(truth)      # Petastorm's reader: every image once, metadata in step
    assert not needs_compaction(spark, CONFIG)
    again = compact(spark, CONFIG)                  # nothing over the thresholds any more
    assert again.tables == {} and again.dataset_bins == {} and again.files_after == again.files_before

    forced = compact(spark, CONFIG, force=True)     # everything that has more files than it needs
    for table in ("images", "files", "labels"):
        assert set(parquet_files(warehouse / table).values()) == {1} and rows(spark, table) == contents[table]
    assert set(parquet_files(dataset).values()) == {1} and petastorm_ids(url) == sorted(truth)
    left_over = [n for before in (*before_tables.values(), before_dataset) for n in before.values() if n == 2]
    assert forced.files_before - forced.files_after == len(left_over)


@pytest.mark.parametrize("warehouse", ["local", "viewfs"])
def test_compaction_merges_a_tables_small_files_and_keeps_its_full_ones(spark, semspark_home, warehouse):
    """A table of one full file (over half the compacted size) and three small ones: the small ones
    become one, the full one is not rewritten (the same file, untouched), every row kept. In the
    local warehouse, and in one on another file system (Hadoop's view file system mounted on a local
    folder, see conftest: not a path semspark can open, as on HDFS or S3), where a merge killed
    before its journal also left its staging folder: hidden from queries, removed by the next merge."""
    import datetime

    from semspark.catalog import MERGE_STAGING_PREFIX, ensure_tables, insert
    from semspark.compaction import table_files
    from semspark.schema import FILES

    database = f"tiered_{warehouse}"
    config = Config(catalog=CatalogConfig(database=database),
                    ingest=IngestConfig(dataset_dir=f"datasets/{database}"),
                    compaction=CompactionConfig(table_files=2, target_file_mb=1))
    if warehouse == "viewfs":
        spark.sql(f"CREATE DATABASE {database} LOCATION 'viewfs://{VIEWFS_CLUSTER}/remote/{database}.db'")
        folder = semspark_home / "viewfs" / f"{database}.db" / "files"
    else:
        folder = semspark_home / "warehouse" / f"{database}.db" / "files"
    ensure_tables(spark, database, (FILES,))
    at = datetime.datetime(2026, 1, 1)
    made = [(f"file:/raw/{hashlib.sha256(str(i).encode()).hexdigest()}.tif", hashlib.sha256(b"%d" % i).hexdigest(),
             "image", i, at, at, "bulk") for i in range(20_000)]
    columns = "path string, image_id string, role string, size long, modification_time timestamp, " \
              "ingested_at timestamp, ingest_run string"
    insert(spark.createDataFrame(made, columns).coalesce(1), database, FILES)
    (full,) = [p for p in folder.glob("part-*")]
    assert full.stat().st_size > 512 * 1024
    identity = (full.stat().st_ino, full.stat().st_mtime_ns)
    for night in range(3):
        rows = [(f"file:/raw/night{night}/{i}.tif", f"{night:02d}{i:062d}", "image", i, at, at, f"night{night}")
                for i in range(5)]
        insert(spark.createDataFrame(rows, columns).coalesce(1), database, FILES)
        made += rows
    [(listed_folder, listed)] = table_files(spark, database, FILES).items()
    assert listed_folder.startswith("viewfs://" if warehouse == "viewfs" else "file:/")
    assert sorted(size for _, size in listed) == sorted(p.stat().st_size for p in folder.glob("part-*"))
    if warehouse == "viewfs":   # a merge killed after staging, before its journal
        abandoned = folder / f"{MERGE_STAGING_PREFIX}20260101T000000-dead"
        abandoned.mkdir()
        shutil.copy(full, abandoned / full.name)
        assert spark.table(f"{database}.files").count() == len(made)     # not read by queries
    assert parquet_files(folder) == {".": 4} and needs_compaction(spark, config)
    summary = compact(spark, config)
    assert summary.tables == {f"{database}.files": (4, 2)}
    assert parquet_files(folder) == {".": 2}
    assert (full.stat().st_ino, full.stat().st_mtime_ns) == identity      # the full file not rewritten
    assert not list(folder.glob(f"{MERGE_STAGING_PREFIX}*"))
    stored = sorted(tuple(r) for r in spark.table(f"{database}.files").collect())
    assert stored == sorted(made)
    assert not needs_compaction(spark, config)


def test_a_merge_journal_left_by_an_older_semspark_is_replayed(spark, semspark_home):
    """semspark before 48d5b69 staged a merge under $SEMSPARK_HOME/staging/merge-* and journalled
    plain local paths. A process of that version killed after its journal leaves the journal to the
    current one: the next command that opens the catalog finishes it (small files removed, the
    staged file moved in, every row once); a staging folder of that version that no journal names
    (killed before its journal) is removed by the next compaction."""
    import datetime

    from semspark.catalog import _journal_dir, ensure_tables, insert
    from semspark.schema import FILES

    database = "old_journal"
    folder = semspark_home / "warehouse" / f"{database}.db" / "files"
    ensure_tables(spark, database, (FILES,))
    at = datetime.datetime(2026, 1, 1)
    columns = "path string, image_id string, role string, size long, modification_time timestamp, " \
              "ingested_at timestamp, ingest_run string"
    made = []
    for night in range(3):
        rows = [(f"file:/raw/night{night}/{i}.tif", f"{night:02d}{i:062d}", "image", i, at, at, f"night{night}")
                for i in range(4)]
        insert(spark.createDataFrame(rows, columns).coalesce(1), database, FILES)
        made += rows
    small = sorted(folder.glob("part-*"))
    assert len(small) == 3
    # what the older version did before its journal: the merged rows staged under SEMSPARK_HOME
    staging = semspark_home / "staging" / f"merge-{database}.files-20260101T000000-old"
    spark.read.parquet(*[f"file:{p}" for p in small]).coalesce(1).write.parquet(staging.as_uri())
    abandoned = semspark_home / "staging" / f"merge-{database}.files-20260101T000000-dead"
    shutil.copytree(staging, abandoned)
    journal = _journal_dir() / f"{database}.files.20260101T000000-old.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"database": database, "table": "files", "kind": "merge", "folder": str(folder),
                                   "staging": str(staging), "rows": len(made), "remove": [str(p) for p in small],
                                   "reason": "small files"}))
    ensure_tables(spark, database, (FILES,))          # what every command does first
    assert not journal.exists() and not staging.exists()
    assert parquet_files(folder) == {".": 1} and not set(folder.glob("part-*")) & set(small)
    assert sorted(tuple(r) for r in spark.table(f"{database}.files").collect()) == sorted(made)
    compact(spark, Config(catalog=CatalogConfig(database=database), ingest=IngestConfig(dataset_dir=f"datasets/{database}"),
                          compaction=CompactionConfig(table_files=2)))
    assert not abandoned.exists()


def test_compaction_merges_a_bins_small_files_and_keeps_its_full_ones(spark, semspark_home, tmp_path, monkeypatch):
    """Tiered: the files of a big first load are full and stay (the same inode after the swap);
    the nights' small files of the same bin are merged. Full means SMALL_FILE_IMAGES images or
    more (1,000 in production, 3 here so that test-sized files are full)."""
    import semspark.dataset as dataset_module

    config = Config(catalog=CatalogConfig(database="tiered"),
                    ingest=IngestConfig(image_size=32, dataset_dir="datasets/tiered", files_per_task=16),
                    compaction=CompactionConfig(table_files=64, dataset_files_per_bin=1))
    generate(tmp_path / "load", 40, seed=410, width=256, height=192)
    run_ingest(spark, config, str(tmp_path / "load"), labels="folders")
    for night in range(3):
        generate(tmp_path / f"night{night}", 8, seed=420 + night, width=256, height=192)
        run_ingest(spark, config, str(tmp_path / f"night{night}"), labels="folders")
    monkeypatch.setattr(dataset_module, "SMALL_FILE_IMAGES", 3)
    url = dataset_url(config)
    root = Path(url[len("file://"):])
    import pyarrow.parquet as pq
    rows_of = {p: pq.read_metadata(p).num_rows for p in root.glob("scale_bin=*/*.parquet")}
    full = {p: p.stat().st_ino for p, n in rows_of.items() if n >= 3}
    small_by_bin: dict[str, list[Path]] = {}
    for p, n in rows_of.items():
        if n < 3:
            small_by_bin.setdefault(p.parent.name, []).append(p)
    merged_bins = {b for b, small in small_by_bin.items() if len(small) > 1}
    assert full and merged_bins and any(p.parent.name in merged_bins for p in full)   # the case is there
    truth = raw_ids(tmp_path)

    summary = compact(spark, config)
    assert set(summary.dataset_bins) == {b[len("scale_bin="):] for b in merged_bins}
    for p, inode in full.items():
        assert p.exists() and p.stat().st_ino == inode            # not rewritten, not copied
    after = {p: pq.read_metadata(p).num_rows for p in root.glob("scale_bin=*/*.parquet")}
    for bin_folder in merged_bins:
        new = [p for p in after if p.parent.name == bin_folder and p not in full]
        assert len(new) == 1 and after[new[0]] == sum(rows_of[p] for p in small_by_bin[bin_folder])
    assert sum(after.values()) == sum(rows_of.values())
    assert petastorm_ids(url) == sorted(truth)


def test_the_metadata_kept_up_to_date_is_the_one_petastorm_makes(spark, three_nights, tmp_path):
    """semspark counts only new files' row groups after an append (dataset.update_metadata);
    Petastorm's materialize_dataset counts every file. On a copy of the dataset given a file of
    several row groups (written by pyarrow, 2 rows a group) and missing another: the same counts,
    the same Unischema, and Petastorm's reader finds every row the files hold."""
    import pickle
    import shutil

    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import materialize_dataset

    from semspark.dataset import ROW_GROUPS_KEY, UNISCHEMA_KEY, data_files, update_metadata
    from semspark.schema import image_unischema

    source = Path(dataset_url(CONFIG)[len("file://"):])
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(source, ours)
    files = data_files(ours)
    grown = pq.read_table(ours / files[0])
    pq.write_table(grown, ours / files[0].replace(".parquet", "-grouped.parquet"), row_group_size=2)
    removed = files[-1]
    (ours / removed).unlink()
    shutil.copytree(ours, theirs)
    unischema = image_unischema(CONFIG.ingest.image_size)

    counts = update_metadata(ours, unischema)
    with materialize_dataset(spark, theirs.as_uri(), unischema, CONFIG.ingest.row_group_size_mb):
        pass

    def written(folder: Path) -> tuple[dict, object]:
        meta = pq.read_schema(folder / "_common_metadata").metadata
        schema = pickle.loads(meta[UNISCHEMA_KEY])
        return json.loads(meta[ROW_GROUPS_KEY]), [(f, type(f.codec)) for f in schema.fields.values()]

    assert written(ours) == written(theirs) and written(ours)[0] == counts
    assert removed not in counts and max(counts.values()) == -(-grown.num_rows // 2) > 1
    held = sum(pq.read_metadata(ours / f).num_rows for f in data_files(ours))
    assert len(petastorm_ids(ours.as_uri())) == held


@pytest.fixture(scope="module")
def separate_home(tmp_path_factory):
    """A SEMSPARK_HOME of its own for processes that are killed (Derby admits one JVM per catalog).
    Thresholds of one file: two nights are enough to compact."""
    root = tmp_path_factory.mktemp("compaction_kills")
    conf = root / "semspark.yaml"
    conf.write_text("ingest:\n  image_size: 48\n  files_per_task: 8\n"
                    "compaction:\n  table_files: 1\n  dataset_files_per_bin: 1\n")
    env = dict(os.environ, SEMSPARK_HOME=str(root / "home"), SEMSPARK_CONF=str(conf), SEMSPARK_MASTER="local[2]",
               PYSPARK_PYTHON=sys.executable, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("SEMSPARK_PAUSE_AT", None)
    return root, env


def semspark(env, *args, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(VENV_BIN / "semspark"), *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def killed_at(env, point: str, *args, timeout=300) -> None:
    """Run a command until it reaches ``point`` (storage.pause_point), then SIGKILL its process group."""
    marker = Path(env["SEMSPARK_HOME"]) / f"paused-{point}"
    marker.unlink(missing_ok=True)
    process = subprocess.Popen([str(VENV_BIN / "semspark"), *args], env=dict(env, SEMSPARK_PAUSE_AT=point),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert process.poll() is None, f"{args} ended before {point}:\n{process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{args} never reached {point}"
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    marker.unlink()


def table_rows(folder: Path) -> int:
    """Rows of a table's Parquet files, read by pyarrow (not Spark, not semspark)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(folder), format="parquet", partitioning="hive",
                      exclude_invalid_files=True).count_rows()


def test_killed_between_the_parquet_commit_and_the_metadata_step_readers_recover(separate_home):
    from petastorm.etl.dataset_metadata import PetastormMetadataError

    root, env = separate_home
    for night in range(2):
        generate(root / f"night{night}", 6, seed=400 + night, width=256, height=192)
    semspark(env, "ingest", "--input", str(root / "night0"), "--labels", "folders")
    url = (Path(env["SEMSPARK_HOME"]) / "datasets" / "images").as_uri()
    assert petastorm_ids(url) == sorted(raw_ids(root / "night0"))

    dataset = Path(env["SEMSPARK_HOME"]) / "datasets" / "images"
    assert not list(dataset.glob("_ingest_pending-*"))        # a finished ingest leaves no marker
    killed_at(env, "dataset-appended", "ingest", "--input", str(root / "night1"), "--labels", "folders")
    [marker] = dataset.glob("_ingest_pending-*")              # the dead run's ids: the next one checks them
    assert set(marker.read_text().split()) == raw_ids(root / "night1")
    with pytest.raises((KeyError, PetastormMetadataError)):   # files Petastorm's metadata does not name
        petastorm_ids(url)
    rerun = semspark(env, "ingest", "--input", str(root / "night1"), "--labels", "folders")
    assert "does not match its files" in rerun.stderr                 # checked, and rebuilt
    assert petastorm_ids(url) == sorted(raw_ids(root / "night0", root / "night1"))   # each image once
    assert not list(dataset.glob("_ingest_pending-*"))


def test_compaction_killed_in_a_table_rewrite_and_in_the_dataset_swap_then_rerun(separate_home):
    root, env = separate_home
    truth = raw_ids(root / "night0", root / "night1")
    home = Path(env["SEMSPARK_HOME"])
    warehouse, dataset = home / "warehouse" / "sem.db", home / "datasets" / "images"
    rows = {t: table_rows(warehouse / t) for t in ("images", "files", "labels")}
    assert rows["images"] == rows["labels"] == len(truth) and max(parquet_files(dataset).values()) == 2

    killed_at(env, "rewrite-journalled", "compact")             # the first table: staged and journalled
    assert list((home / "journal").glob("sem.*.json"))
    killed_at(env, "dataset-swap-ready", "compact")             # replays the table, then dies in the swap
    assert not list((home / "journal").glob("sem.*.json"))
    assert (dataset / "_swap").is_dir()
    checked = semspark(env, "compact", "--check", "--json").stdout
    assert "partition swap" in checked
    assert not (dataset / "_swap").exists()
    assert petastorm_ids(dataset.as_uri()) == sorted(truth)
    assert set(parquet_files(dataset).values()) == {1}
    for table in ("images", "files", "labels"):
        assert table_rows(warehouse / table) == rows[table], table        # the same rows ...
        assert set(parquet_files(warehouse / table).values()) == {1}, table   # ... in one file a partition
