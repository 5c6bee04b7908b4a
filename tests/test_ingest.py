"""Ingest on local[2] with real Spark, real Tesseract and the real samples: tables, counts,
partitions, labels, duplicates, bad files, incremental reruns and recovery after a crash."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import dataclasses

from semspark.config import CatalogConfig, Config, IngestConfig
from semspark.dataset import dataset_url
from semspark.ingest.job import run_ingest
from semspark.ingest.listing import IngestError
from semspark.synth.generate import generate

from .conftest import REAL_SAMPLES
from .test_formats import png_header_only

pytestmark = pytest.mark.spark

CONFIG = Config(ingest=IngestConfig(image_size=64, max_file_bytes=5_000_000, files_per_task=16))
BAD_FILES = {  # name -> (stage, words the reason must contain)
    "broken/empty.tif": ("read", "empty"),
    "broken/truncated.jpg": ("decode", "truncated"),
    "broken/notes.txt": ("decode", "not an image"),
    "broken/bomb.png": ("limits", "pixels is over the limit"),
    "broken/huge.bin": ("limits", "over the limit"),
}


def uri(path: Path) -> str:
    return "file:" + str(path)


def listed(root: Path) -> set[str]:
    """What the listing must find: every file, as Spark names it (hidden files excluded)."""
    return {uri(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))}


@pytest.fixture(scope="module")
def raw(tmp_path_factory, synthetic_set):
    """The synthetic set in its category folders, the real samples, a duplicate and bad files."""
    folder, records = synthetic_set
    root = tmp_path_factory.mktemp("raw")
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, root / entry.name)
    for sample in REAL_SAMPLES.iterdir():
        if sample.suffix.lower() in (".tif", ".tiff", ".jpg", ".jpeg", ".png"):
            shutil.copy(sample, root / sample.name)
    first = records[0]
    shutil.copy(folder / first.file, root / "Powder" / ("zz_copy_of_" + Path(first.file).name))
    # A name with a space and a '#': Spark's paths are not URIs and must not be parsed as such.
    odd = records[1]
    (root / odd.file).rename((root / odd.file).with_name("odd name #1" + Path(odd.file).suffix))
    (root / "broken").mkdir()
    (root / "broken/empty.tif").write_bytes(b"")
    jpeg = next(r for r in records if r.format == "jpeg")
    data = (folder / jpeg.file).read_bytes()
    (root / "broken/truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "broken/notes.txt").write_text("lab notes, not an image\n")
    (root / "broken/bomb.png").write_bytes(png_header_only(60_000, 60_000))
    (root / "broken/huge.bin").write_bytes(os.urandom(6_000_000))
    return root, records


def where(root: Path, record) -> Path:
    """Where a synthetic record's file is in the raw folder (one was renamed)."""
    path = root / record.file
    return path if path.exists() else path.with_name("odd name #1" + path.suffix)


@pytest.fixture(scope="module")
def first_run(spark, raw):
    root, _ = raw
    return run_ingest(spark, CONFIG, str(root), labels="folders")


def table(spark, name):
    return spark.table(f"sem.{name}")


def test_every_file_ends_in_exactly_one_place(spark, raw, first_run):
    root, _ = raw
    files = [r["path"] for r in table(spark, "files").select("path").collect()]
    quarantine = [r["path"] for r in table(spark, "quarantine").select("path").collect()]
    assert len(files) == len(set(files)) and len(quarantine) == len(set(quarantine))
    assert not set(files) & set(quarantine)
    assert set(files) | set(quarantine) == listed(root)
    assert first_run.listed == len(listed(root))


def test_one_image_row_per_distinct_content(spark, raw, first_run):
    root, records = raw
    images = table(spark, "images").toPandas()
    expected = {hashlib.sha256(where(root, r).read_bytes()).hexdigest() for r in records}
    expected |= {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir() if p.is_file()}
    assert set(images["image_id"]) == expected and len(images) == len(expected)
    assert images["phash"].str.fullmatch("[0-9a-f]{16}").all()
    assert first_run.new_images == len(expected) and first_run.duplicate_files == 1
    # the summary's confidence counts are the table's
    assert first_run.new_by_scale_confidence == images["scale_confidence"].value_counts().to_dict()


def test_the_same_bytes_under_two_paths_is_one_image(spark, raw, first_run):
    root, records = raw
    original = root / records[0].file
    copy = root / "Powder" / ("zz_copy_of_" + original.name)
    image_id = hashlib.sha256(original.read_bytes()).hexdigest()
    rows = table(spark, "files").filter(f"image_id = '{image_id}' AND role = 'image'").collect()
    assert sorted(r["path"] for r in rows) == sorted([uri(original), uri(copy)])
    image = table(spark, "images").filter(f"image_id = '{image_id}'").collect()
    assert len(image) == 1 and image[0]["path"] == min(uri(original), uri(copy))


def test_labels_from_folders_and_none_for_the_root(spark, raw, first_run):
    root, records = raw
    by_path = {r["path"]: r["label"] for r in table(spark, "images").select("path", "label").collect()}
    for record in records:
        assert by_path[uri(where(root, record))] == record.category
    for sample in root.iterdir():
        if sample.is_file():
            assert by_path[uri(sample)] is None


def test_scales_and_bins_match_the_truth(spark, raw, real_manifest, first_run):
    root, records = raw
    rows = {r["path"]: r for r in table(spark, "images").collect()}
    right = sum(rows[uri(where(root, rec))]["scale_bin"] == rec.scale_bin for rec in records)
    assert right >= len(records) - 1
    for rec in records:
        row = rows[uri(where(root, rec))]
        assert row["format"] == {"tiff8": "tiff", "tiff16": "tiff"}.get(rec.format, rec.format)
        assert row["bit_depth"] == rec.bit_depth and row["width"] == rec.width
        if row["scale_bin"] == rec.scale_bin:
            assert row["scale_mismatch"] == rec.stale_metadata
    for sample in real_manifest:
        value, unit = sample["scale_label_value"], sample["scale_label_unit"]
        expected = f"{float(value):g}{unit}" if value else "unknown"
        row = rows[uri(root / sample["file"])]
        assert row["scale_bin"] == expected, sample["file"]
        # the reading's confidence and reason reach the table: a tag that agrees with label and bar
        # is the one case called high; a file without a databar has no confidence at all
        if sample["nm_per_px_reference"]:
            assert row["scale_confidence"] == "high", (sample["file"], row["scale_reason"])
        elif not value:
            assert row["scale_confidence"] == "none" and "no label" in row["scale_reason"]
        assert row["scale_reader"] >= 2


def test_bad_files_are_quarantined_with_their_reason(spark, raw, first_run):
    root, _ = raw
    rows = {r["path"]: r for r in table(spark, "quarantine").collect()}
    for name, (stage, words) in BAD_FILES.items():
        row = rows[uri(root / name)]
        assert row["stage"] == stage and words in row["reason"], (name, row["reason"])
    assert rows[uri(root / "broken/huge.bin")]["sha256"] is None  # refused unread
    assert rows[uri(root / "broken/empty.tif")]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert sum(first_run.quarantined.values()) == len(BAD_FILES)


def test_sidecars_are_files_of_their_image(spark, raw, first_run):
    root, records = raw
    sidecars = {uri(p) for p in root.rglob("*.txt") if p.parent.name != "broken"}
    assert sidecars, "the synthetic set should hold Hitachi or JEOL sidecars"
    rows = table(spark, "files").filter("role = 'sidecar'").collect()
    assert {r["path"] for r in rows} == sidecars
    image_ids = {r["image_id"] for r in table(spark, "images").select("image_id").collect()}
    assert all(r["image_id"] in image_ids for r in rows)
    by_path = {uri(where(root, r)): r for r in records}
    for row in table(spark, "images").filter("scale_source IN ('Hitachi', 'JEOL')").collect():
        assert by_path[row["path"]].metadata == row["scale_source"]


def test_the_petastorm_dataset_is_partitioned_by_scale_bin_and_readable(spark, first_run):
    from petastorm import make_reader

    images = {r["image_id"]: r for r in table(spark, "images").collect()}
    url = dataset_url(CONFIG)
    folder = Path(url[len("file://"):])
    assert {p.name for p in folder.glob("scale_bin=*")} == {f"scale_bin={r['scale_bin']}" for r in images.values()}
    seen = []
    # The 'dummy' pool: petastorm 0.13's thread pool sometimes ends a small dataset early
    # (30 of 35 rows in 2 of 15 reads here), which would make this test flaky.
    with make_reader(url, num_epochs=1, reader_pool_type="dummy", shuffle_row_groups=False) as reader:
        for row in reader:
            seen.append(row.image_id)
            assert row.image.shape == (64, 64) and row.image.dtype == np.uint8
            assert row.scale_bin == images[row.image_id]["scale_bin"]
            assert row.label == images[row.image_id]["label"]
    assert sorted(seen) == sorted(images)


def test_each_stored_image_holds_the_pixels_of_the_file_its_id_names(spark, first_run):
    """The dataset's pixels and its ids are written from different staged rows: each image must be
    the file whose bytes hash to its id (read here by OpenCV, the databar's rows cut, resized)."""
    import cv2
    from petastorm import make_reader

    images = {r["image_id"]: r for r in table(spark, "images").collect()}
    checked = 0
    with make_reader(dataset_url(CONFIG), num_epochs=1, reader_pool_type="dummy", shuffle_row_groups=False) as reader:
        for row in reader:
            source = images[row.image_id]
            path = Path(source["path"].removeprefix("file:"))
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row.image_id
            if source["bit_depth"] != 8 or source["color"] != "gray":
                continue   # OpenCV's grayscale of colour or 16-bit files is not semspark's
            gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            content = gray[: gray.shape[0] - source["databar_px"]]
            expected = cv2.resize(content, (64, 64), interpolation=cv2.INTER_AREA).astype(float)
            assert np.abs(row.image.astype(float) - expected).mean() < 2.0, source["path"]
            checked += 1
    assert checked >= 10


def test_images_table_is_partitioned_by_scale_bin(spark, first_run):
    partitions = {r[0] for r in spark.sql("SHOW PARTITIONS sem.images").collect()}
    bins = {r[0] for r in spark.sql("SELECT DISTINCT scale_bin FROM sem.images").collect()}
    assert partitions == {f"scale_bin={b}" for b in bins}
    # one file per scale bin a run (not one per bin and Spark task: a night's scoring reads every
    # small file of the table until compaction), found with pyarrow in the table's folders
    import pyarrow.parquet as pq
    from urllib.parse import unquote

    of_run = {}
    for uri in spark.table("sem.images").inputFiles():
        path = Path(unquote(uri.replace("file://", "").replace("file:", "")))
        runs = set(pq.read_table(path, columns=["ingest_run"]).column("ingest_run").to_pylist())
        if first_run.run_id in runs:
            of_run.setdefault(path.parent.name, []).append(path.name)
    assert set(of_run) == {f"scale_bin={b}" for b in first_run.new_by_scale_bin}
    assert all(len(files) == 1 for files in of_run.values()), of_run


def snapshot(spark):
    return {name: sorted(tuple(r) for r in table(spark, name).drop("ingested_at", "ingest_run").collect())
            for name in ("images", "files", "quarantine")}


def dataset_ids(spark):
    return sorted(r[0] for r in spark.read.parquet(dataset_url(CONFIG)).select("image_id").collect())


def test_rerun_adds_nothing(spark, raw, first_run):
    root, _ = raw
    before, ids = snapshot(spark), dataset_ids(spark)
    again = run_ingest(spark, CONFIG, str(root), labels="folders")
    assert (again.new_images, again.already_known, again.listed) == (0, first_run.listed, first_run.listed)
    assert snapshot(spark) == before and dataset_ids(spark) == ids


def test_the_directory_walk_lists_what_sparks_file_index_lists(spark, tmp_path):
    """The driver's walk of a local root against Spark's own file index and file scan (the
    listing every ingest used before): the same paths, sizes and times to the millisecond, for
    names with spaces, percent signs, hashes and accents, names Spark hides, empty files, links to
    files and folders; a link to nothing is named, not listed (Spark skips it silently)."""
    from semspark.ingest.listing import _spark_listing, list_files, qualified_root

    for n, rel in enumerate(["a/x.tif", "a b/y z.tif", "a%20b/p#1.tif", "\u00fcn\u00ef/\u00e7\u00e9.tif",
                             "_hidden/h.tif", ".dot/d.tif", "a/_u.tif", "a/.v.tif", "p=1/_q=2.tif",
                             "a/c.tif._COPYING_", "deep/er/st/f.TIF", "empty/e.tif", "a/x.txt"]):
        path = tmp_path / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if rel.startswith("empty") else os.urandom(10 + n))
    root_dir = tmp_path / "in"
    (root_dir / "link.tif").symlink_to(root_dir / "a" / "x.tif")
    (root_dir / "folder_link").symlink_to(root_dir / "deep")
    (root_dir / "late.tif").symlink_to(root_dir / "not_there_yet.tif")
    root = qualified_root(spark, str(root_dir))
    walked = list_files(spark, root)
    by_spark = _spark_listing(spark, root)
    rows = lambda frame: sorted(map(tuple, frame[["path", "size", "mtime_ms"]].values.tolist()))  # noqa: E731
    assert rows(walked.files) == rows(by_spark)
    (root_dir / "deep" / "er" / "up").symlink_to(root_dir)      # a loop: followed, the walk would not end
    assert rows(list_files(spark, root).files) == rows(walked.files)
    names = {p[len(root) + 1:] for p in walked.files["path"]}
    assert {"a b/y z.tif", "a%20b/p#1.tif", "p=1/_q=2.tif", "empty/e.tif", "link.tif",
            "folder_link/er/st/f.TIF"} <= names
    assert not names & {"_hidden/h.tif", ".dot/d.tif", "a/_u.tif", "a/.v.tif", "a/c.tif._COPYING_"}
    assert len(names) == 10
    assert walked.dangling_links == [f"{root}/late.tif"]
    summary = run_ingest(spark, dataclasses.replace(CONFIG, catalog=CatalogConfig(database="walked")), str(root_dir))
    assert (summary.listed, summary.dangling_links) == (10, 1)
    assert "links to nothing (not listed until they point to a file): 1" in [s.strip() for s in summary.lines()]


def test_a_grown_folder_adds_only_the_new_files(spark, raw, first_run, tmp_path):
    root, _ = raw
    before = snapshot(spark)
    generate(tmp_path, 3, seed=12345, width=384, height=288)
    new = []
    for i, src in enumerate(sorted(p for p in tmp_path.rglob("*") if p.suffix in (".tif", ".png", ".jpg"))):
        target = root / "Fibres" / f"new_{i}{src.suffix}"
        shutil.copy(src, target)
        new.append(target)
    summary = run_ingest(spark, CONFIG, str(root), labels="folders")
    assert summary.new_images == 3 and summary.already_known == first_run.listed
    after = snapshot(spark)
    assert len(after["images"]) == len(before["images"]) + 3
    assert len(after["files"]) == len(before["files"]) + 3
    assert after["quarantine"] == before["quarantine"]
    labels = {r["path"]: r["label"] for r in table(spark, "images").collect()}
    assert all(labels[uri(p)] == "Fibres" for p in new)


def test_the_known_files_read_with_pyarrow_are_what_spark_reads(spark, raw, first_run):
    """The run's one read of sem.files (pyarrow, straight from the local files) against Spark's own
    query of the table: the same rows, modification times in the same milliseconds."""
    from semspark.ingest.listing import stored_files

    mine = stored_files(spark, "sem").sort_values("path").reset_index(drop=True)
    sparks = (spark.table("sem.files").selectExpr("path", "size", "unix_millis(modification_time) AS mtime_ms", "role",
                                                  "image_id").toPandas().sort_values("path").reset_index(drop=True))
    assert len(mine) >= first_run.listed - sum(first_run.quarantined.values()) > 0   # later tests add files
    assert mine.astype(str).values.tolist() == sparks.astype(str).values.tolist()
    on_disk = {uri(p): p.stat().st_mtime_ns // 1_000_000 for p in raw[0].rglob("*") if p.is_file()}
    assert all(on_disk[p] == m for p, m in zip(mine["path"], mine["mtime_ms"]))


@pytest.mark.parametrize("warehouse", ["local", "viewfs"])
def test_a_sidecar_that_comes_after_its_image_and_one_whose_image_fails(spark, tmp_path, warehouse):
    """A sidecar listed a night after its image belongs to the image ingested before (its id the
    SHA-256 of the image's bytes, computed here); a sidecar whose image is quarantined is
    quarantined too, with its own reason. In the local warehouse, where a night's rows are appended
    from the driver, and in one on another file system (Hadoop's view file system, see conftest),
    where Spark appends them."""
    from tests.conftest import VIEWFS_CLUSTER

    database = f"latesidecar_{warehouse}"
    if warehouse == "viewfs":
        spark.sql(f"CREATE DATABASE {database} LOCATION 'viewfs://{VIEWFS_CLUSTER}/remote/{database}.db'")
    config = Config(catalog=CatalogConfig(database=database),
                    ingest=dataclasses.replace(CONFIG.ingest, dataset_dir=f"datasets/{database}"))
    root = tmp_path / "in"
    (root / "Tips").mkdir(parents=True)
    image = root / "Tips" / "early.tif"
    shutil.copy(REAL_SAMPLES / "zeiss_auriga_2um_tagged.tif", image)
    assert run_ingest(spark, config, str(root), labels="folders").new_images == 1
    (root / "Tips" / "early.txt").write_text("[SemImageFile]\nInstructName=S-4800\nPixelSize=12.5\n")
    (root / "Tips" / "broken.tif").write_bytes(b"II*\x00garbage")
    (root / "Tips" / "broken.txt").write_text("[SemImageFile]\nPixelSize=3.0\n")
    summary = run_ingest(spark, config, str(root), labels="folders")
    assert (summary.new_images, summary.sidecars, summary.already_known) == (0, 1, 1)
    rows = {r["path"]: r for r in spark.table(f"{database}.files").collect()}
    late = rows[uri(root / "Tips" / "early.txt")]
    assert (late["role"], late["image_id"]) == ("sidecar", hashlib.sha256(image.read_bytes()).hexdigest())
    quarantined = {r["path"]: r["stage"] for r in spark.table(f"{database}.quarantine").collect()}
    assert quarantined == {uri(root / "Tips" / "broken.tif"): "decode", uri(root / "Tips" / "broken.txt"): "sidecar"}
    assert run_ingest(spark, config, str(root), labels="folders").already_known == 4   # nothing left to do


def test_rerun_after_a_crash_between_the_labels_and_the_images_table(spark, tmp_path):
    """The state a run killed after appending its labels and before inserting into sem.images
    leaves (the dataset holds its images and its marker names them; sem.labels their folder labels;
    sem.images and sem.files nothing): the rerun adds each image, each label and each dataset row
    once."""
    from semspark.ingest.writing import PENDING_PREFIX

    config = Config(catalog=CatalogConfig(database="labelcrash"),
                    ingest=dataclasses.replace(CONFIG.ingest, dataset_dir="datasets/labelcrash"))
    generate(tmp_path / "in", 3, seed=31, width=384, height=288)
    images = sorted(p for p in (tmp_path / "in").rglob("*") if p.suffix in (".tif", ".png", ".jpg"))
    truth = {hashlib.sha256(p.read_bytes()).hexdigest(): p.relative_to(tmp_path / "in").parts[0] for p in images}
    assert run_ingest(spark, config, str(tmp_path / "in"), labels="folders").new_images == 3
    dataset = Path(dataset_url(config)[len("file://"):])
    (dataset / f"{PENDING_PREFIX}killed").write_text("\n".join(sorted(truth)))
    spark.sql("TRUNCATE TABLE labelcrash.images")
    spark.sql("TRUNCATE TABLE labelcrash.files")
    assert run_ingest(spark, config, str(tmp_path / "in"), labels="folders").new_images == 3
    labels = [(r["image_id"], r["label"]) for r in spark.table("labelcrash.labels").collect()]
    assert sorted(labels) == sorted(truth.items())
    assert sorted(r["image_id"] for r in spark.table("labelcrash.images").collect()) == sorted(truth)
    stored = [r["image_id"] for r in spark.read.parquet(dataset_url(config)).select("image_id").collect()]
    assert sorted(stored) == sorted(truth)
    assert not list(dataset.glob(PENDING_PREFIX + "*"))


def test_rerun_after_a_crash_before_the_files_table_converges(spark, raw, first_run):
    """A run killed after writing the dataset and sem.images, before sem.files: simulated by
    emptying sem.files. The rerun must redo the work and duplicate nothing."""
    root, _ = raw
    before, ids = snapshot(spark), dataset_ids(spark)
    spark.sql("TRUNCATE TABLE sem.files")
    summary = run_ingest(spark, CONFIG, str(root), labels="folders")
    assert summary.new_images == 0
    assert snapshot(spark) == before and dataset_ids(spark) == ids


def test_labels_from_a_csv_by_path_and_by_image_id(spark, tmp_path):
    generate(tmp_path / "in", 3, seed=77, width=384, height=288)
    images = sorted(p for p in (tmp_path / "in").rglob("*") if p.suffix in (".tif", ".png", ".jpg"))
    digest = hashlib.sha256(images[2].read_bytes()).hexdigest()
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n"
                      f"{images[0].relative_to(tmp_path / 'in')},Tips\n"
                      f"{images[1]},Nanowires\n")
    by_id = tmp_path / "by_id.csv"
    by_id.write_text(f"image_id,label\n{digest.upper()},Powder\n")
    config = Config(catalog=CatalogConfig(database="csvlabels"),
                    ingest=dataclasses.replace(CONFIG.ingest, dataset_dir="datasets/csvlabels"))
    run_ingest(spark, config, str(tmp_path / "in"), labels=str(labels))
    got = {r["path"]: r["label"] for r in spark.table("csvlabels.images").collect()}
    assert got[uri(images[0])] == "Tips" and got[uri(images[1])] == "Nanowires" and got[uri(images[2])] is None
    shutil.copy(images[2], tmp_path / "in" / "again.tif")  # new path, known bytes: no new image
    bad = tmp_path / "bad.csv"
    bad.write_text("file,category\nx,y\n")
    with pytest.raises(IngestError, match="needs a header"):
        run_ingest(spark, config, str(tmp_path / "in"), labels=str(bad))


def test_a_missing_input_is_a_clear_error(spark, tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        run_ingest(spark, CONFIG, str(tmp_path / "nowhere"))


def test_only_bad_files_and_an_empty_folder(spark, tmp_path):
    config = Config(catalog=CatalogConfig(database="badonly"),
                    ingest=dataclasses.replace(CONFIG.ingest, dataset_dir="datasets/badonly"))
    (tmp_path / "empty").mkdir()
    summary = run_ingest(spark, config, str(tmp_path / "empty"))
    assert (summary.listed, summary.new_images) == (0, 0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "bad" / "b.png").write_bytes(b"")
    summary = run_ingest(spark, config, str(tmp_path / "bad"))
    assert summary.new_images == 0 and sum(summary.quarantined.values()) == 2
    assert spark.table("badonly.quarantine").count() == 2 and spark.table("badonly.images").count() == 0


def test_tables_made_by_an_older_version_gain_new_columns(spark):
    from semspark.catalog import ensure_tables, insert
    from semspark.schema import IMAGES

    spark.sql("CREATE DATABASE IF NOT EXISTS migrate")
    old = [f for f in IMAGES.schema.fields if f.name != "phash"]  # sem.images before phash existed
    columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in old)
    spark.sql(f"CREATE TABLE migrate.images ({columns}) USING parquet PARTITIONED BY (scale_bin)")
    ensure_tables(spark, "migrate", (IMAGES,))
    assert "phash" in spark.table("migrate.images").columns
    row = {f.name: None for f in IMAGES.schema.fields}
    row.update(image_id="abc", phash="00ff00ff00ff00ff", scale_bin="1um", width=7)
    insert(spark.createDataFrame([row], IMAGES.schema), "migrate", IMAGES)
    got = spark.table("migrate.images").collect()[0]
    assert (got["image_id"], got["phash"], got["scale_bin"], got["width"]) == ("abc", "00ff00ff00ff00ff", "1um", 7)


def test_insert_new_appends_only_the_keys_the_table_lacks(spark):
    """catalog.insert_new, by hand: of five rows, the two whose (path, size, modification time)
    the table holds are not appended again; one differing from a held one by a microsecond of its
    modification time, or by its size, is."""
    from datetime import datetime, timedelta

    import semspark.catalog as catalog
    from semspark.schema import FILES

    database = "insertnew"
    spark.sql(f"DROP DATABASE IF EXISTS {database} CASCADE")
    catalog.ensure_tables(spark, database, (FILES,))
    at = datetime(2026, 11, 30, 23, 59, 58, 123456)
    def rows(*keys):
        fields = [f.name for f in FILES.schema.fields]
        return spark.createDataFrame([{**dict.fromkeys(fields), "path": p, "size": s, "modification_time": t,
                                       "image_id": "x", "role": "image"} for p, s, t in keys], FILES.schema)

    held = [("file:/a.tif", 10, at), ("file:/b.tif", 20, at), ("file:/c.tif", 30, at)]
    catalog.insert(rows(*held), database, FILES)
    offered = [("file:/a.tif", 10, at), ("file:/b.tif", 20, at),
               ("file:/c.tif", 30, at + timedelta(microseconds=1)), ("file:/c.tif", 31, at), ("file:/d.tif", 40, at)]
    catalog.insert_new(rows(*offered), database, FILES, ["path", "size", "modification_time"])
    got = sorted((r["path"], r["size"], r["modification_time"]) for r in spark.table(f"{database}.files").collect())
    assert got == sorted(held + offered[2:])
    catalog.insert_new(rows(*offered), database, FILES, ["path", "size", "modification_time"])   # all held now
    assert spark.table(f"{database}.files").count() == 6
    spark.sql(f"DROP DATABASE {database} CASCADE")


def test_quarantined_files_are_tried_again_when_asked_and_leave_when_ingested(spark, tmp_path):
    """Permanent failures wait; `quarantine retry` has the next ingest read them again; a file
    ingested at last leaves sem.quarantine; a file keeps one row, its latest outcome."""
    from semspark.ingest.quarantine import QuarantineError, list_quarantine, mark_retryable

    strict = Config(catalog=CatalogConfig(database="healing"),
                    ingest=dataclasses.replace(CONFIG.ingest, dataset_dir="datasets/healing", max_file_bytes=1000))
    normal = dataclasses.replace(strict, ingest=dataclasses.replace(strict.ingest, max_file_bytes=5_000_000))
    folder = tmp_path / "night"
    folder.mkdir()
    shutil.copy(REAL_SAMPLES / "zeiss_auriga_2um_tagged.tif", folder / "good.tif")   # 0.8 MB
    (folder / "broken.tif").write_bytes(b"II*\x00garbage")                             # 12 bytes
    first = run_ingest(spark, strict, str(folder))
    assert (first.quarantined, first.new_images) == ({"limits": 1, "decode": 1}, 0)

    def quarantined():
        return sorted((r["path"].rsplit("/", 1)[-1], r["stage"], r["retryable"])
                      for r in spark.table("healing.quarantine").collect())
    assert quarantined() == [("broken.tif", "decode", False), ("good.tif", "limits", False)]
    # permanent failures wait, even once the limit is raised, until someone asks
    assert (run_ingest(spark, normal, str(folder)).retried, quarantined()[1][1]) == (0, "limits")
    assert mark_retryable(spark, normal, ("limits",)).marked == 1
    third = run_ingest(spark, normal, str(folder))
    assert (third.retried, third.new_images, third.healed) == (1, 1, 1)
    assert quarantined() == [("broken.tif", "decode", False)]
    assert [r["path"].rsplit("/", 1)[-1] for r in spark.table("healing.files").collect()] == ["good.tif"]
    # every stage again: the broken file is read again and fails the same way, one row still
    assert mark_retryable(spark, normal).marked == 1
    fourth = run_ingest(spark, normal, str(folder))
    assert (fourth.retried, fourth.new_images) == (1, 0)
    assert quarantined() == [("broken.tif", "decode", False)]
    assert run_ingest(spark, normal, str(folder)).retried == 0
    with pytest.raises(QuarantineError, match="the stages there are decode"):
        mark_retryable(spark, normal, ("nosuch",))
    assert "broken.tif,decode," in list_quarantine(spark, normal, fmt="csv")


def test_an_unreadable_file_is_quarantined_as_io_and_retryable(tmp_path):
    """A file listed but unreadable when its task reads it (here a link to nothing, read by the
    task's own function): stage io after the retries, which the next ingest tries again."""
    import pandas as pd

    from semspark.ingest.processing import make_worker
    from semspark.ingest.quarantine import RETRYABLE_STAGES

    link = tmp_path / "late.tif"
    link.symlink_to(tmp_path / "not_there_yet.tif")
    frame = pd.DataFrame([{"path": uri(link), "size": 1000, "modification_time": pd.Timestamp("2026-01-01"),
                           "sidecar_path": None, "label": None}])
    out = pd.concat(list(make_worker(CONFIG)(iter([frame]))))
    assert (out["outcome"][0], out["stage"][0]) == ("quarantine", "io") and "could not read" in out["reason"][0]
    assert "io" in RETRYABLE_STAGES and "read" not in RETRYABLE_STAGES    # an empty file stays quarantined


def test_a_read_that_fails_is_tried_again_after_a_pause(tmp_path):
    import threading

    from semspark.storage import read_bytes_retrying

    late = tmp_path / "late.bin"
    threading.Timer(0.1, late.write_bytes, args=(b"arrived",)).start()
    assert read_bytes_retrying(str(late), attempts=3, pause_s=0.4) == b"arrived"
    with pytest.raises(FileNotFoundError):
        read_bytes_retrying(str(tmp_path / "never.bin"), attempts=2, pause_s=0.01)


def test_a_task_holds_one_file_at_a_time_whatever_its_batch_weighs(tmp_path):
    """Memory per ingest task: six 8 MB files in one batch; Python's own allocation tracer
    (tracemalloc) sees a peak near one file's bytes, not the batch's 48 MB."""
    import tracemalloc

    import pandas as pd

    from semspark.ingest.processing import make_worker

    size = 8 * 1024 * 1024
    rows = []
    for i in range(6):
        path = tmp_path / f"heavy{i}.tif"
        path.write_bytes(os.urandom(size))          # not an image: read whole, then refused (decode)
        rows.append({"path": uri(path), "size": size, "modification_time": pd.Timestamp("2026-01-01"),
                     "sidecar_path": None, "label": None})
    worker = make_worker(dataclasses.replace(CONFIG, ingest=dataclasses.replace(CONFIG.ingest,
                                                                                max_file_bytes=4 * size)))
    tracemalloc.start()
    try:
        out = pd.concat(list(worker(iter([pd.DataFrame(rows)]))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert list(out["stage"]) == ["decode"] * 6
    assert size <= peak < 2.5 * size, f"peak {peak / 2**20:.1f} MB for six files of 8 MB"


def test_healing_is_needed_for_a_file_quarantined_twice_or_ingested_since():
    """What heal would drop, decided on the keys in the driver, against cases written by hand."""
    import pandas as pd

    from semspark.ingest.quarantine import needs_healing

    def frame(*keys):
        return pd.DataFrame(keys, columns=["path", "size", "mtime_ms"]).assign(retryable=False)

    quarantined = frame(("file:/a.tif", 10, 1000), ("file:/b.tif", 20, 2000))
    assert not needs_healing(quarantined, set())
    assert not needs_healing(quarantined, {("file:/a.tif", 10, 1001)})          # another version of a.tif
    assert needs_healing(quarantined, {("file:/a.tif", 10, 1000)})              # a.tif ingested since
    assert needs_healing(frame(("file:/a.tif", 10, 1000), ("file:/a.tif", 10, 1000)), set())   # twice
    assert not needs_healing(frame(), {("file:/a.tif", 10, 1000)})


def test_a_bulk_is_written_to_the_dataset_a_row_group_at_a_time(spark, tmp_path, monkeypatch):
    """The driver's streamed write: batches of mixed bins go to Spark's partition folders (a bin
    with a slash escaped as Spark escapes it), files of at most IMAGES_PER_FILE rows, row groups
    closed at the size asked for, and Spark reads back every row with its own bin."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from semspark.ingest import writing

    monkeypatch.setattr(writing, "IMAGES_PER_FILE", 5)
    image = b"\x89" * 1000   # 1,000 bytes of pixels a row: a row group of 2,500 bytes closes at 3 rows
    bins = ["1um", "2um", "1um", "a/b", "1um", "1um", "1um", "1um", "2um", "1um", "1um", "1um", "1um"]
    rows = [{"image_id": f"id{n:02d}", "label": None, "scale_bin": b, "nm_per_px": float(n), "image": image}
            for n, b in enumerate(bins)]
    schema = pa.schema([("image_id", pa.string()), ("label", pa.string()), ("scale_bin", pa.string()),
                        ("nm_per_px", pa.float64()), ("image", pa.binary())],
                       metadata={"org.apache.spark.sql.parquet.row.metadata": "{\"staged\": true}"})
    table = pa.Table.from_pylist(rows, schema=schema)
    batches = table.to_batches(max_chunksize=2)
    big = tmp_path / "big"
    writing._write_bins(spark, iter(batches), big, row_group_size_mb=1)   # one group a file here
    ones = sorted((big / "scale_bin=1um").glob("*.parquet"))
    # 10 rows of 1um: two files of 5 (IMAGES_PER_FILE), the bins' folders as Spark names them
    assert [pq.ParquetFile(f).metadata.num_rows for f in ones] == [5, 5]
    assert sorted(p.name for p in big.iterdir()) == ["scale_bin=1um", "scale_bin=2um", "scale_bin=a%2Fb"]

    small = tmp_path / "small"
    monkeypatch.setattr(writing, "IMAGES_PER_FILE", 100)
    writing._write_bins(spark, iter(table.to_batches(max_chunksize=1)), small, row_group_size_mb=0)
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in (small / "scale_bin=1um").glob("*.parquet")]
    assert groups == [10]   # a row group for each row held when the group size is reached at once
    read = {(r["image_id"], r["scale_bin"]) for r in spark.read.parquet(str(big)).collect()}
    assert read == {(r["image_id"], r["scale_bin"]) for r in rows}
    # the staged files' Spark schema is not carried over: Spark would read its columns as the dataset's
    assert spark.read.parquet(str(small)).columns == ["image_id", "label", "nm_per_px", "image", "scale_bin"]
    assert b"staged" not in (pq.read_schema(ones[0]).metadata or {}).get(b"org.apache.spark.sql.parquet.row.metadata", b"")
