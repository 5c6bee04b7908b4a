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


def test_searches_agree_with_pandas_for_the_production_model_and_another(tmp_path):
    """The gallery's search (the production model through the derived gallery table, another model
    through joins) against the same question asked of the rows with pandas."""
    import numpy as np
    import pandas as pd

    from semspark.schema import LABELS, PREDICTIONS, PROMOTIONS
    from semspark.web.search import DERIVED, TABLES, search

    rng = np.random.default_rng(5)
    warehouse = Warehouse(tmp_path / "sem.db")
    n = 60
    ids = [f"{i:064x}" for i in range(n)]
    base = datetime.datetime(2026, 3, 1)
    images = pd.DataFrame({"image_id": ids, "path": [f"/data/{'a' if i % 3 else 'b'}/img{i:03d}.tif" for i in range(n)],
                           "nm_per_px": rng.uniform(1, 50, n).round(3),
                           "ingested_at": [base + datetime.timedelta(hours=int(h)) for h in rng.permutation(n)],
                           "scale_bin": rng.choice(["1um", "10um"], n)})
    for bin_name, part in images.groupby("scale_bin"):
        folder = warehouse.folder(IMAGES) / f"scale_bin={bin_name}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(part.drop(columns="scale_bin"), preserve_index=False), folder / "part-0.parquet")
    categories = ["Fibres", "Tips", "Powder"]
    labels = pd.DataFrame({"image_id": [ids[i] for i in range(0, n, 2)] + [ids[0], ids[4]],
                           "label": [categories[i % 3] for i in range(0, n, 2)] + [None, "Tips"],
                           "labelled_at": [base] * (n // 2) + [base + datetime.timedelta(days=1)] * 2,
                           "label_run": ["r1"] * (n // 2) + ["r2"] * 2})
    warehouse.folder(LABELS).mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(labels, preserve_index=False), warehouse.folder(LABELS) / "part-0.parquet")
    predictions = {}
    for model in ("m/1", "m/2"):
        scored = sorted(rng.choice(n, n - 5, replace=False))      # a few images not scored by each
        predictions[model] = pd.DataFrame({"image_id": [ids[i] for i in scored],
                                           "category": rng.choice(categories, len(scored)),
                                           "confidence": rng.uniform(0, 1, len(scored)).round(4)})
        predictions[model]["uncertain"] = predictions[model]["confidence"] < 0.3
        folder = warehouse.folder(PREDICTIONS) / f"model_version={model.replace('/', '%2F')}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(predictions[model], preserve_index=False), folder / "part-0.parquet")
    warehouse.folder(PROMOTIONS).mkdir(parents=True)
    pq.write_table(pa.table({"model_version": ["m/2", "m/1"], "stage": ["production", "production"],
                             "promoted_at": [base, base + datetime.timedelta(days=2)]}),
                   warehouse.folder(PROMOTIONS) / "part-0.parquet")
    tables = Tables(warehouse, TABLES, frozenset({"logits", "embedding"}), DERIVED)

    latest = labels.sort_values(["labelled_at", "label_run"]).groupby("image_id").tail(1)
    current = latest[latest["label"].notna()][["image_id", "label"]]

    def expected(model, keep, order, ascending):
        rows = images.merge(current, on="image_id", how="left").merge(predictions[model], on="image_id", how="left")
        rows = rows[keep(rows)].sort_values([order, "image_id"], ascending=[ascending, True], na_position="first"
                                            if order == "confidence" else "last")
        return len(rows), list(rows["image_id"][:7])

    questions = [
        ({}, lambda r: np.ones(len(r), bool), "ingested_at", False),
        ({"category": "Tips"}, lambda r: r["category"] == "Tips", "ingested_at", False),
        ({"label": "(none)", "sort": "confidence"}, lambda r: r["label"].isna(), "confidence", True),
        ({"disagrees": "true", "sort": "-scale"},
         lambda r: r["category"].notna() & r["label"].notna() & (r["category"] != r["label"]), "nm_per_px", False),
        ({"path": "/B/", "min_confidence": "0.4"}, lambda r: r["path"].str.contains("/b/") & (r["confidence"] >= 0.4),
         "ingested_at", False),
        ({"uncertain": "false", "scale_bin": "10um", "sort": "path"},
         lambda r: (r["uncertain"] != True) & (r["scale_bin"] == "10um"), "path", True),   # noqa: E712 - NaN is not uncertain
    ]
    for model, given in (("m/1", {}), ("m/2", {"model": "m/2"})):
        for args, keep, order, ascending in questions:
            found = search(tables, Filters.from_args(MultiDict({**args, **given, "per_page": "7"})))
            assert found["model"] == model
            assert (found["total"], [r["image_id"] for r in found["images"]]) == expected(model, keep, order, ascending), \
                (model, args)
            for row in found["images"]:   # each row's label and prediction are its own
                truth = predictions[model].set_index("image_id")
                assert row["category"] == (truth.loc[row["image_id"], "category"] if row["image_id"] in truth.index else None)
