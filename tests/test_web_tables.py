"""The web app's reading of the tables' files (no Spark): against rows written by hand with pyarrow,
in the folder layout Spark writes (partition folders, escaped values, its hidden staging files)."""
from __future__ import annotations

import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from werkzeug.datastructures import MultiDict

from semspark.schema import IMAGES
from semspark.web.search import FilterError, Filters
from semspark.web.tables import Tables, Warehouse


def _rows(ids, **columns):
    return pa.table({"image_id": ids, **columns})


def test_tables_are_read_as_spark_lays_them_out(tmp_path):
    warehouse = Warehouse(tmp_path / "sem.db")
    top = warehouse.folder(IMAGES)
    (top / "scale_bin=1um").mkdir(parents=True)
    (top / "scale_bin=a%2Fb").mkdir()                          # Spark escapes '/' in a partition value
    (top / "scale_bin=__HIVE_DEFAULT_PARTITION__").mkdir()     # ... and writes NULL so
    (top / "_temporary" / "0").mkdir(parents=True)             # a writer's staging: not rows
    pq.write_table(_rows(["a", "b"], contrast=[0.5, 0.25], path=["/x/a.tif", "/x/b.tif"]),
                   top / "scale_bin=1um" / "part-00000-1.snappy.parquet")
    pq.write_table(_rows(["c"], path=["/x/c.tif"]),          # an older file, before the column contrast
                   top / "scale_bin=a%2Fb" / "part-00000-2.snappy.parquet")
    pq.write_table(_rows(["d"], contrast=[0.75], path=["/x/d.tif"]),
                   top / "scale_bin=__HIVE_DEFAULT_PARTITION__" / "part-00000-3.snappy.parquet")
    pq.write_table(_rows(["staged"], contrast=[1.0], path=["/x/s.tif"]), top / "_temporary" / "0" / "part-9.parquet")
    pq.write_table(_rows(["hidden"], contrast=[1.0], path=["/x/h.tif"]), top / "scale_bin=1um" / ".part-8.parquet")
    (top / "_SUCCESS").write_text("")
    (top / "scale_bin=1um" / ".part-00000-1.snappy.parquet.crc").write_bytes(b"crc")

    tables = Tables(warehouse, (IMAGES,))
    rows = tables.query("SELECT image_id, scale_bin, contrast, path, width FROM images ORDER BY image_id")
    assert rows == [
        {"image_id": "a", "scale_bin": "1um", "contrast": 0.5, "path": "/x/a.tif", "width": None},
        {"image_id": "b", "scale_bin": "1um", "contrast": 0.25, "path": "/x/b.tif", "width": None},
        {"image_id": "c", "scale_bin": "a/b", "contrast": None, "path": "/x/c.tif", "width": None},
        {"image_id": "d", "scale_bin": None, "contrast": 0.75, "path": "/x/d.tif", "width": None},
    ]
    # a file appended (a nightly) and one removed (a compaction) are seen at the next listing
    pq.write_table(_rows(["e"], contrast=[0.1], path=["/x/e.tif"]), top / "scale_bin=1um" / "part-00001-4.snappy.parquet")
    (top / "scale_bin=a%2Fb" / "part-00000-2.snappy.parquet").unlink()
    tables.refresh(force=True)
    assert [r["image_id"] for r in tables.query("SELECT image_id FROM images ORDER BY 1")] == ["a", "b", "d", "e"]


def test_an_empty_table_has_its_declared_columns(tmp_path):
    tables = Tables(Warehouse(tmp_path / "sem.db"), (IMAGES,))
    assert tables.query("SELECT count(*) AS n, count(nm_per_px) AS m FROM images") == [{"n": 0, "m": 0}]


def test_filters_from_a_request():
    filters = Filters.from_args(MultiDict([("category", "Fibres"), ("scale_bin", "1um"), ("scale_bin", "2um"),
                                           ("min_confidence", "0.5"), ("ingested_from", "2026-01-31"),
                                           ("uncertain", "true"), ("label", ""), ("page", "3")]))
    assert (filters.category, filters.scale_bin, filters.min_confidence, filters.ingested_from, filters.uncertain,
            filters.label, filters.page) == ("Fibres", ["1um", "2um"], 0.5, datetime.date(2026, 1, 31), True, None, 3)
    assert Filters.from_args(MultiDict(filters.as_args())) == filters
    with pytest.raises(FilterError) as bad:
        Filters.from_args(MultiDict([("min_confidence", "high"), ("sort", "sideways"), ("colour", "red"),
                                     ("min_nm_per_px", "9"), ("max_nm_per_px", "1"), ("per_page", "5000")]))
    message = str(bad.value)
    for expected in ("min_confidence", "sort", "'colour'", "min_nm_per_px is above max_nm_per_px", "per_page"):
        assert expected in message
