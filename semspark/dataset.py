"""The Petastorm image dataset, shared by every stage: where it is, what it stores, and keeping its
files and Petastorm's metadata in step.

Petastorm readers find the row groups of each Parquet file in ``_common_metadata``; a file missing
from it makes every reader fail, a file that was removed is ignored. Two things change the files:
appends (ingest) and partition swaps (rescale moving images between bins, compaction rewriting a
bin into fewer files). A swap is journalled in ``_swap/`` inside the dataset (Spark and pyarrow
skip ``_`` folders) and finished by the next writer if the process dies in it; the metadata is
checked against the files before every use and rebuilt when they differ, so a kill between the
Parquet commit and Petastorm's metadata step heals itself instead of breaking readers.

The metadata is the one Petastorm's ``materialize_dataset`` makes (the pickled Unischema and each
file's row-group count in ``_common_metadata``), kept up to date incrementally: Petastorm's own step
runs a Spark task per file of the whole dataset after every append, where only the new files'
footers are unknown (bench/scale_bench.py: the ingest's writing phase at 8,000 images went from
16.8 s to 4.0 s with this and the run-named files below). Counts of files already there are
kept, the new ones read from their footers, removed ones dropped, and the file replaced whole
(written beside it, then renamed), so a reader never sees half of it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from semspark.config import Config
from semspark.schema import image_unischema
from semspark.storage import home_path, pause_point, writer_lock

log = logging.getLogger(__name__)

IMAGES_PER_FILE = 2000           # ~100 MB of 299x299 PNGs: the size ingest and compaction aim at
SWAP_JOURNAL = "_swap"
_OLDER_SWAP_JOURNALS = ("_rescale_swap",)
ROW_GROUPS_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"
UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"


# An ingest's files carry its run id (``part-<run id>-00000.parquet``): sem.images names each
# image's ingest run, so scoring a night's images opens the files of that night's run, not the
# image ids of every file (infer/job.py). Compaction's and rescale's files carry no run.
RUN_FILE = re.compile(r"^part-(\d{8}T\d{6}Z-[0-9a-f]+)-\d{5}\.[a-z0-9.]*parquet$")
STAGING = "_staging"


def run_of_file(relative: str) -> str | None:
    """The ingest run that wrote a dataset file (a ``data_files`` name), or None."""
    match = RUN_FILE.match(relative.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def move_in_run_files(root: Path, staged: Path, run_id: str) -> list[str]:
    """Move the partition folders' Parquet files Spark wrote under ``staged`` into the dataset,
    each renamed ``part-<run id>-<n>``. A rename within the dataset's file system: a reader sees
    a file whole or not at all. Returns the new files (``data_files`` names)."""
    moved = []
    for n, source in enumerate(sorted(staged.glob("scale_bin=*/*.parquet"))):
        suffix = source.name[source.name.index("."):] if "." in source.name else ".parquet"
        relative = f"{source.parent.name}/part-{run_id}-{n:05d}{suffix}"
        (root / source.parent.name).mkdir(exist_ok=True)
        os.replace(source, root / relative)
        moved.append(relative)
    return moved


class DatasetError(RuntimeError):
    """The dataset cannot be used as configured (not on a file system semspark can swap files on)."""


def dataset_url(config: Config) -> str:
    return home_path(config.ingest.dataset_dir).as_uri()


def dataset_root(url: str) -> Path:
    if not url.startswith("file://"):
        raise DatasetError(f"the dataset must be on a local or mounted file system (file://); {url} is not")
    return Path(url[len("file://"):])


def data_files(root: Path) -> list[str]:
    """The dataset's Parquet files, relative to its root, as Petastorm keys them."""
    return sorted(str(p.relative_to(root)) for p in root.glob("scale_bin=*/*.parquet"))


def bin_of(relative: str) -> str:
    """The scale bin of a dataset file (a ``data_files`` name: ``scale_bin=1um/part-...``)."""
    return relative.split("/", 1)[0][len("scale_bin="):]


def hadoop_path(root: Path, relative: str) -> str:
    """A dataset file as Spark is given it: a Hadoop path string (``=`` as is, nothing
    percent-encoded as ``Path.as_uri`` would)."""
    return f"file://{root / relative}"


def files_per_bin(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for relative in data_files(root):
        counts[bin_of(relative)] = counts.get(bin_of(relative), 0) + 1
    return counts


def stored_image_size(url: str) -> int | None:
    """The side of the stored images from the dataset's own schema (the config may have changed
    since they were ingested); None when there is no readable schema."""
    from petastorm.etl.dataset_metadata import get_schema_from_dataset_url

    try:
        return int(get_schema_from_dataset_url(url).fields["image"].shape[0])
    except Exception:   # no dataset yet, or metadata unreadable: the caller decides
        return None


def metadata_problems(root: Path) -> list[str]:
    """How Petastorm's metadata differs from the files: [] when a reader will find every file."""
    import pyarrow.parquet as pq

    files = data_files(root)
    common = root / "_common_metadata"
    if not files:
        return []
    if not common.exists():
        return ["no _common_metadata"]
    try:
        meta = pq.read_schema(common).metadata or {}
    except Exception as exc:   # a write killed half way leaves a file pyarrow cannot read
        return [f"_common_metadata unreadable ({type(exc).__name__})"]
    if UNISCHEMA_KEY not in meta:
        return ["no Unischema in _common_metadata"]
    if ROW_GROUPS_KEY not in meta:
        return ["no row-group counts in _common_metadata"]
    counted = set(json.loads(meta[ROW_GROUPS_KEY].decode()))
    missing = sorted(set(files) - counted)
    gone = sorted(counted - set(files))
    problems = []
    if missing:
        problems.append(f"{len(missing)} files without row-group counts (e.g. {missing[0]})")
    if gone:
        problems.append(f"{len(gone)} counted files no longer there (e.g. {gone[0]})")
    return problems


@contextmanager
def petastorm_parquet_settings(spark, row_group_size_mb: int):
    """Hadoop's Parquet settings while writing dataset files, as Petastorm's materialize_dataset
    sets them: row groups of ``row_group_size_mb``, checked from the third row on (images are big
    rows), and no Parquet summary files (Petastorm keeps its own row-group counts). Restored after."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    settings = {"parquet.summary.metadata.level": "NONE",
                "parquet.block.size.row.check.min": "3", "parquet.row-group.size.row.check.min": "3",
                "parquet.block.size": str(row_group_size_mb * 1024 * 1024)}
    before = {key: conf.get(key) for key in settings}
    for key, value in settings.items():
        conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                conf.unset(key)
            else:
                conf.set(key, value)


def _footers(root: Path, files: list[str]) -> dict[str, object]:
    """Each file's Parquet footer (pyarrow FileMetaData): row groups and rows without the data."""
    import pyarrow.parquet as pq

    with ThreadPoolExecutor(max_workers=8) as pool:   # footers: small reads, I/O bound
        return dict(zip(files, pool.map(lambda f: pq.read_metadata(root / f), files)))


def _row_group_counts(root: Path, files: list[str]) -> dict[str, int]:
    return {f: footer.num_row_groups for f, footer in _footers(root, files).items()}


# A file under half the size compaction aims at is small: compaction merges a bin's small files
# and leaves its full ones alone (tiered), so a night's compaction rewrites the nights since the
# last one, not the whole bin (15,000 images of a bin at 150,000 would be 1 GB rewritten).
SMALL_FILE_IMAGES = IMAGES_PER_FILE // 2


def small_files_per_bin(root: Path) -> dict[str, list[str]]:
    """Each scale bin's small files (fewer than SMALL_FILE_IMAGES images), from the footers."""
    small: dict[str, list[str]] = {}
    for relative, footer in _footers(root, data_files(root)).items():
        if footer.num_rows < SMALL_FILE_IMAGES:
            small.setdefault(bin_of(relative), []).append(relative)
    return small


def update_metadata(root: Path, unischema, recount: bool = False) -> dict[str, int]:
    """Petastorm's ``_common_metadata`` for the files there are now: the Unischema, and each file's
    row-group count, kept from the file there for files it counted (unless ``recount``) and read
    from the footers of the others. Returns {file: row groups} (Petastorm's keys)."""
    import pyarrow.parquet as pq

    files = data_files(root)
    common = root / "_common_metadata"
    counted: dict[str, int] = {}
    schema = None
    if common.exists() and not recount:
        try:
            schema = pq.read_schema(common)
            counted = json.loads((schema.metadata or {}).get(ROW_GROUPS_KEY, b"{}").decode())
        except Exception:   # unreadable (a write killed half way, before renames): counted afresh
            schema, counted = None, {}
    counts = {f: counted[f] for f in files if f in counted}
    counts.update(_row_group_counts(root, [f for f in files if f not in counted]))
    if not files:
        return counts
    if schema is None:
        schema = pq.read_metadata(root / files[0]).schema.to_arrow_schema()
    metadata = dict(schema.metadata or {})
    metadata[UNISCHEMA_KEY] = pickle.dumps(unischema)
    metadata[ROW_GROUPS_KEY] = json.dumps(counts).encode()
    partial = root / "_common_metadata.partial"
    pq.write_metadata(schema.with_metadata(metadata), str(partial))
    os.replace(partial, common)
    (root / "._common_metadata.crc").unlink(missing_ok=True)   # Hadoop's checksum of the older file
    return counts


def rebuild_metadata(spark, config: Config, url: str) -> None:
    """Petastorm's metadata made again over the files there are: the Unischema and every file's
    row-group count, read again from the footers."""
    root = dataset_root(url)
    size = stored_image_size(url) or config.ingest.image_size
    with writer_lock(purpose="rebuilding the dataset's metadata"):
        update_metadata(root, image_unischema(size), recount=True)


def ensure_consistent(spark, config: Config) -> list[str]:
    """Before using the dataset: finish a partition swap a killed process left, then check the
    metadata against the files and rebuild it if they differ. Returns what was wrong ([] if nothing)."""
    url = dataset_url(config)
    root = dataset_root(url)
    if not root.exists():
        return []
    repaired = []
    if any((root / name).exists() for name in (SWAP_JOURNAL, *_OLDER_SWAP_JOURNALS)):
        with writer_lock(purpose="finishing a dataset swap"):
            finish_swaps(root)
        repaired.append("finished a partition swap a killed process left")
    problems = metadata_problems(root)
    if problems:
        log.warning("the dataset's Petastorm metadata does not match its files (%s): rebuilding it",
                    "; ".join(problems))
        rebuild_metadata(spark, config, url)
        left = metadata_problems(root)
        if left:   # not bad input: Petastorm's metadata step did not do what it does
            raise RuntimeError(f"rebuilding the metadata of {url} left it inconsistent: {'; '.join(left)}")
        repaired += problems
    return repaired


def swap_partitions(root: Path, staged: Path, bins) -> None:
    """Replace the dataset's partitions ``bins`` with the ones written under ``staged`` (a bin
    missing there is removed). Journalled: every new partition is moved into ``_swap`` and marked
    ready before the first live partition is touched, so ``finish_swaps`` completes it after a kill."""
    journal = root / SWAP_JOURNAL
    journal.mkdir(exist_ok=True)
    for bin_name in sorted(bins):
        part = f"scale_bin={bin_name}"
        (journal / part).mkdir(exist_ok=True)
        if (staged / part).exists():
            shutil.move(str(staged / part), str(journal / part / "new"))
        (journal / part / "ready").touch()
    pause_point("dataset-swap-ready")
    finish_swaps(root)


def finish_swaps(root: Path) -> None:
    """Complete journalled partition swaps: each ready partition's new files replace the old."""
    for name in (SWAP_JOURNAL, *_OLDER_SWAP_JOURNALS):
        journal = root / name
        if not journal.exists():
            continue
        for entry in sorted(journal.iterdir()):
            if not (entry / "ready").exists():
                shutil.rmtree(entry)          # never finished preparing: the dataset was not touched
                continue
            live = root / entry.name
            if (entry / "new").exists():
                if live.exists():
                    shutil.rmtree(live)
                shutil.move(str(entry / "new"), str(live))
            elif live.exists():
                shutil.rmtree(live)           # the partition is empty now
            shutil.rmtree(entry)
        journal.rmdir()


@dataclass
class DatasetCompaction:
    files_before: int = 0
    files_after: int = 0
    bins_rewritten: dict[str, tuple[int, int]] = field(default_factory=dict)   # bin -> (files before, after)


def compact_dataset(spark, config: Config, max_files_per_bin: int, staging_name: str,
                    force: bool = False) -> DatasetCompaction:
    """In each scale bin holding more than ``max_files_per_bin`` small files (with ``force``, more
    small files than their images need), merge the small files into ceil(images / IMAGES_PER_FILE)
    files; the bin's full files are kept as they are (hard links in the staged bin, the same files
    after the swap). The staged bin is swapped in whole, then the metadata updated. The same rows
    before and after (counted from the footers before the swap). Staged inside the dataset (a ``_``
    folder readers skip), on its file system, where links and renames work."""
    url = dataset_url(config)
    root = dataset_root(url)
    result = DatasetCompaction()
    if not root.exists():
        return result
    with writer_lock(purpose="compacting the dataset"):
        ensure_consistent(spark, config)
        files = data_files(root)
        result.files_before = result.files_after = len(files)
        footers = _footers(root, files)
        by_bin: dict[str, list[str]] = {}
        for relative in files:
            by_bin.setdefault(bin_of(relative), []).append(relative)
        chosen = {}
        for bin_name, bin_files in by_bin.items():
            small = [f for f in bin_files if footers[f].num_rows < SMALL_FILE_IMAGES]
            needed = max(1, math.ceil(sum(footers[f].num_rows for f in small) / IMAGES_PER_FILE))
            if len(small) > needed and (force or len(small) > max_files_per_bin):
                chosen[bin_name] = (small, needed)
        if not chosen:
            return result
        size = stored_image_size(url) or config.ingest.image_size
        target = root / STAGING / staging_name
        shutil.rmtree(root / STAGING, ignore_errors=True)   # what a killed writer left: writers take turns
        columns = [f.name for f in image_unischema(size).fields.values()]
        for bin_name, (small, needed) in sorted(chosen.items()):
            rows = spark.read.option("basePath", url).parquet(*[hadoop_path(root, f) for f in small]).select(*columns)
            # the Petastorm row-group size, as ingest writes; the metadata is made once, after the swap
            with petastorm_parquet_settings(spark, config.ingest.row_group_size_mb):
                rows.repartition(needed).write.mode("append").partitionBy("scale_bin").parquet(target.as_uri())
            part = target / f"scale_bin={bin_name}"
            part.mkdir(parents=True, exist_ok=True)   # small files of no rows leave Spark nothing to write
            for full in sorted(set(by_bin[bin_name]) - set(small)):
                os.link(root / full, part / Path(full).name)
            staged = [str(p.relative_to(target)) for p in part.glob("*.parquet")]
            written = sum(footer.num_rows for footer in _footers(target, staged).values())
            expected = sum(footers[f].num_rows for f in by_bin[bin_name])
            if written != expected:   # a bug of ours, not bad input
                raise DatasetError(f"compacting scale bin {bin_name} staged {written} rows of {expected}; "
                                   "the dataset was left as it was")
        swap_partitions(root, target, chosen)
        shutil.rmtree(root / STAGING, ignore_errors=True)
        pause_point("dataset-compacted-before-metadata")
        update_metadata(root, image_unischema(size))
        after = files_per_bin(root)
        result.files_after = sum(after.values())
        result.bins_rewritten = {b: (len(by_bin[b]), after.get(b, 0)) for b in sorted(chosen)}
    return result
