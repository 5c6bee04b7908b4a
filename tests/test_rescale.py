"""semspark rescale on real Spark: corrections from a CSV, re-reading images an older reader read,
sem.images and the Petastorm dataset moved together, reruns that change nothing, bad CSVs refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from semspark.catalog import qualified
from semspark.config import CatalogConfig, Config, IngestConfig
from semspark.dataset import dataset_url
from semspark.ingest.job import run_ingest
from semspark.ingest.rescale import RescaleError, run_rescale
from semspark.ingest.scale import READER_VERSION

from .conftest import REAL_SAMPLES

pytestmark = pytest.mark.spark

CONFIG = Config(catalog=CatalogConfig(database="rescale"),
                ingest=IngestConfig(image_size=48, dataset_dir="datasets/rescale", files_per_task=8))
REAL = ("zeiss_auriga_black_a.tif", "tescan_vega3_5um.tif", "nffa_tasc_1um.jpg")


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory, synthetic_set):
    folder, records = synthetic_set
    root = tmp_path_factory.mktemp("rescale_raw")
    chosen = records[:6]
    for record in chosen:
        (root / record.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / record.file, root / record.file)
        sidecar = (folder / record.file).with_suffix(".txt")
        if sidecar.exists():
            shutil.copy(sidecar, (root / record.file).with_suffix(".txt"))
    for name in REAL:
        shutil.copy(REAL_SAMPLES / name, root / name)
    run_ingest(spark, CONFIG, str(root), labels="folders")
    return root, chosen


def images(spark):
    return {r["path"].rsplit("/", 1)[-1]: r for r in spark.table(qualified("rescale", "images")).collect()}


def dataset(spark):
    rows = spark.read.parquet(dataset_url(CONFIG)).select("image_id", "scale_bin", "nm_per_px", "image").collect()
    return {r["image_id"]: r for r in rows}


def test_a_correction_moves_the_image_in_the_table_and_the_dataset(spark, ingested, tmp_path):
    before_images, before_data = images(spark), dataset(spark)
    zeiss = before_images["zeiss_auriga_black_a.tif"]
    assert zeiss["scale_bin"] == "10um" and before_data[zeiss["image_id"]]["scale_bin"] == "10um"
    tasc_path = before_images["nffa_tasc_1um.jpg"]["path"]
    corrections = tmp_path / "corrections.csv"
    # by image_id with the bar's length (nm/px = 5000 nm / 100 px = 50, by hand), and by path
    corrections.write_text(f"image_id,path,value,unit,bar_px\n{zeiss['image_id']},,5,µm,100\n,{tasc_path},2,um,\n")
    summary = run_rescale(spark, CONFIG, "corrections", str(corrections))
    assert (summary.selected, summary.corrections, summary.changed) == (2, 2, 2)

    after = images(spark)
    assert len(after) == len(before_images)
    row = after["zeiss_auriga_black_a.tif"]
    assert (row["scale_bin"], row["scale_value"], row["scale_unit"], row["nm_per_px"]) == ("5um", 5.0, "um", 50.0)
    assert (row["scale_source"], row["scale_confidence"]) == ("correction", "high")
    tasc = after["nffa_tasc_1um.jpg"]
    # the person's label over the bar the reader measured: twice the pixel size of the 1 µm reading
    assert tasc["scale_bin"] == "2um"
    assert tasc["nm_per_px"] == pytest.approx(2 * before_images["nffa_tasc_1um.jpg"]["nm_per_px"])
    for name, old in before_images.items():   # nothing else moved
        if name not in ("zeiss_auriga_black_a.tif", "nffa_tasc_1um.jpg"):
            assert after[name].asDict() == old.asDict(), name

    data = dataset(spark)
    assert set(data) == set(before_data)      # every image once, none lost, none doubled
    moved = data[zeiss["image_id"]]
    assert (moved["scale_bin"], moved["nm_per_px"]) == ("5um", 50.0)
    assert moved["image"] == before_data[zeiss["image_id"]]["image"]   # the pixels are the same bytes
    assert data[tasc["image_id"]]["scale_bin"] == "2um"

    # rerun: the same corrections again, then every image read again: nothing changes
    assert run_rescale(spark, CONFIG, "corrections", str(corrections)).changed == 0
    again = run_rescale(spark, CONFIG, "all")
    assert (again.selected, again.changed, again.unreadable) == (len(after), 0, [])
    assert images(spark) == after and dataset(spark) == data


def test_images_read_by_an_older_reader_are_read_again(spark, ingested):
    """Rows made to look like an older reader's wrong readings go back to the generator's truth."""
    from pyspark.sql import functions as F

    root, records = ingested
    name = qualified("rescale", "images")
    table = spark.table(name)
    stale = [r.file.rsplit("/", 1)[-1] for r in records[:3]]
    is_stale = F.element_at(F.split("path", "/"), -1).isin(stale)
    faked = table.select(*[
        (F.when(is_stale, F.lit(None)).otherwise(F.col(c)).cast("double").alias(c) if c == "scale_value" else
         F.when(is_stale, F.lit(1)).otherwise(F.col(c)).alias(c) if c == "scale_reader" else
         F.when(is_stale, F.lit("unknown")).otherwise(F.col(c)).alias(c) if c == "scale_bin" else F.col(c))
        for c in table.columns])
    staged = str(root.parent / "faked_images")
    faked.write.mode("overwrite").parquet(staged)
    spark.read.parquet(staged).select(*table.columns).write.insertInto(name, overwrite=True)
    spark.catalog.refreshTable(name)

    summary = run_rescale(spark, CONFIG, "older")
    assert (summary.selected, summary.changed) == (3, 3)
    after = images(spark)
    for record in records[:3]:
        row = after[record.file.rsplit("/", 1)[-1]]
        assert (row["scale_bin"], row["scale_reader"]) == (record.scale_bin, READER_VERSION), record.file
        assert dataset(spark)[row["image_id"]]["scale_bin"] == record.scale_bin
    assert run_rescale(spark, CONFIG, "older").selected == 0


def test_a_databar_found_elsewhere_cuts_the_stored_image_again(spark, ingested):
    """An older reader that found no band kept the whole frame, databar included: rescale cuts the
    stored image again above the band the generator drew (its manifest's height), computed here
    from the file with OpenCV alone, and puts the new pixels in the dataset."""
    import cv2
    import numpy as np
    from petastorm.etl.dataset_metadata import materialize_dataset
    from pyspark.sql import functions as F

    from semspark.dataset import finish_swaps as finish_dataset_swap
    from semspark.schema import image_encoder, image_unischema

    root, records = ingested
    record = records[4]                                    # an 8-bit grey TIFF, databar of the Zeiss layout
    frame = cv2.imread(str(root / record.file), cv2.IMREAD_UNCHANGED)
    assert frame.ndim == 2 and frame.dtype == np.uint8 and record.databar_px > 0
    size = CONFIG.ingest.image_size
    whole = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(frame[:frame.shape[0] - record.databar_px], (size, size), interpolation=cv2.INTER_AREA)
    name = qualified("rescale", "images")
    image_id = images(spark)[record.file.rsplit("/", 1)[-1]]["image_id"]
    # what the older reader left: no databar in sem.images, the whole frame in the dataset
    table = spark.table(name)
    is_old = F.col("image_id") == image_id
    faked = table.select(*[F.when(is_old, F.lit(0)).otherwise(F.col(c)).alias(c) if c == "databar_px" else
                           F.when(is_old, F.lit(1)).otherwise(F.col(c)).alias(c) if c == "scale_reader" else
                           F.col(c) for c in table.columns])
    faked.write.mode("overwrite").parquet(str(root.parent / "older_images"))
    spark.read.parquet(str(root.parent / "older_images")).select(*table.columns).write.insertInto(name, overwrite=True)
    spark.catalog.refreshTable(name)
    url = dataset_url(CONFIG)
    data_root = Path(url[len("file://"):])
    bin_name = record.scale_bin
    part = (spark.read.parquet(url).filter(F.col("scale_bin") == bin_name)
            .withColumn("image", F.when(F.col("image_id") == image_id, F.lit(image_encoder(size)(whole)))
                        .otherwise(F.col("image"))))
    part.drop("scale_bin").write.mode("overwrite").parquet(str(root.parent / "older_part"))
    journal = data_root / "_rescale_swap" / f"scale_bin={bin_name}"
    journal.mkdir(parents=True)
    shutil.move(str(root.parent / "older_part"), str(journal / "new"))
    (journal / "ready").touch()
    finish_dataset_swap(data_root)
    with materialize_dataset(spark, url, image_unischema(size), CONFIG.ingest.row_group_size_mb):
        pass
    codec = image_unischema(size).image
    stored = lambda: codec.codec.decode(codec, dataset(spark)[image_id]["image"])  # noqa: E731
    assert np.array_equal(stored(), whole)                 # the older state, as faked
    others = {k: v["image"] for k, v in dataset(spark).items() if k != image_id}

    summary = run_rescale(spark, CONFIG, "older")
    assert (summary.selected, summary.changed, summary.recut) == (1, 1, 1)
    row = images(spark)[record.file.rsplit("/", 1)[-1]]
    assert (row["databar_px"], row["scale_reader"]) == (record.databar_px, READER_VERSION)
    assert np.abs(stored().astype(int) - expected).max() <= 1   # cut above the band, as ingest cuts it
    assert {k: v["image"] for k, v in dataset(spark).items() if k != image_id} == others
    assert run_rescale(spark, CONFIG, "older").selected == 0


def test_a_correction_for_no_ingested_image_changes_nothing(spark, ingested, tmp_path):
    before = images(spark)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,value,unit\n/nowhere/image.tif,2,um\n")
    with pytest.raises(RescaleError, match="name no ingested image"):
        run_rescale(spark, CONFIG, "corrections", str(bad))
    wrong_unit = tmp_path / "unit.csv"
    wrong_unit.write_text(f"path,value,unit\n{before['tescan_vega3_5um.tif']['path']},2,furlong\n")
    with pytest.raises(RescaleError, match="line 2: unit 'furlong'"):
        run_rescale(spark, CONFIG, "corrections", str(wrong_unit))
    assert images(spark) == before
