"""A person's corrections from the web app, appended to the catalog's tables without Spark.

A label is one row of sem.labels (source ``person``, who, when): the table training, the
analysis and sem.latest_predictions read the current label from (semspark/labels.py). A scale is
one row of sem.scale_corrections (source ``web: USER``), which ``semspark rescale`` applies (it
always takes up people's corrections that sem.images does not show yet). An
append to a Parquet table is a new file in its folder, so the web app writes that file itself,
under the catalog's writer lock like every semspark writer (a compaction cannot swap the folder
meanwhile), to a hidden name first and renamed into place (a reader sees all of it or none). No
Spark session and no metastore connection: the web app never holds the embedded Derby catalog
that the nightly needs. Timestamps are written as Spark writes them (INT96, UTC).
"""
from __future__ import annotations

from contextlib import contextmanager
import os
import uuid

from semspark.catalog import new_run_id, utc_now
from semspark.config import WebConfig
from semspark.labels import person_label_adds
from semspark.schema import CLUSTER_NAMES, LABELS, SCALE_CORRECTIONS
from semspark.storage import LockTimeout, writer_lock
from semspark.web.search import CURRENT_LABELS
from semspark.web.tables import Tables

MAX_LABEL = 100
UNITS = {"nm": "nm", "um": "um", "µm": "um", "μm": "um", "micron": "um", "mm": "mm"}


class CorrectionError(ValueError):
    """A correction that cannot be written as given; the message says why."""


class CatalogBusy(RuntimeError):
    """Another writer (a nightly's long append, a compaction) held the catalog's writer lock longer
    than the web app waits (web.write_wait_s): nothing was written; the message says who and what to do."""


@contextmanager
def _catalog_lock(purpose: str, wait_s: float):
    """The writer lock, waited for ``wait_s`` seconds at most: a request thread does not hang while a
    compaction rewrites a table."""
    try:
        with writer_lock(purpose=purpose, wait_s=wait_s):
            yield
    except LockTimeout as exc:
        raise CatalogBusy(f"nothing was recorded: another writer has held the catalog for over {wait_s:g} s "
                          f"({exc.holder}); try again in a minute") from exc


def clean_label(label: str | None) -> str | None:
    """A label as stored: trimmed, None (removes the label) when empty."""
    label = (label or "").strip()
    if len(label) > MAX_LABEL:
        raise CorrectionError(f"a label has at most {MAX_LABEL} characters")
    if any(ord(c) < 32 for c in label):
        raise CorrectionError("a label cannot hold control characters")
    return label or None


def _table_folder(tables: Tables, spec, made_by: str):
    folder = tables.warehouse.folder(spec)
    if not folder.is_dir():
        raise CorrectionError(f"the catalog has no table {spec.name} yet ({folder}): run {made_by} once")
    return folder


def _known_image(tables: Tables, image_id: str) -> None:
    """(Under the writer lock) the image is in sem.images as its files are now."""
    if not tables.query("SELECT 1 FROM images WHERE image_id = ?", [image_id], fresh=True):
        raise CorrectionError(f"no image {image_id}")


def correct_label(tables: Tables, image_id: str, label: str | None, user: str, wait_s: float = WebConfig.write_wait_s) -> dict:
    """Append a person's label for ``image_id`` (None removes it) when ``person_label_adds`` says so:
    it changes the current label, or confirms one no person gave (accepting a prediction the folder's
    label says already). Returns {"changed": bool (the label differs), "recorded": bool (a row was
    appended), "label": ..., "label_run": ...}."""
    label = clean_label(label)
    folder = _table_folder(tables, LABELS, "semspark ingest with labels, or semspark label,")
    with _catalog_lock(f"web: label of {image_id[:12]} by {user}", wait_s):
        _known_image(tables, image_id)
        current = tables.query(f"SELECT label, source FROM {CURRENT_LABELS} WHERE image_id = ?", [image_id])
        current_label, current_source = (current[0]["label"], current[0]["source"]) if current else (None, None)
        changed = current_label != label
        if not person_label_adds(current_label, current_source, label):
            return {"changed": False, "recorded": False, "label": label, "label_run": None}
        run = new_run_id("web-")
        _append(folder, {"image_id": image_id, "label": label, "source": "person", "labelled_by": user,
                         "labelled_at": utc_now(), "label_run": run})
    tables.refresh(force=True)   # the next page shows it
    return {"changed": changed, "recorded": True, "label": label, "label_run": run}


def correct_scale(tables: Tables, image_id: str, value, unit: str, bar_px, user: str,
                  wait_s: float = WebConfig.write_wait_s) -> dict:
    """Record a person's scale for ``image_id`` (the label's value and unit, and the bar's length in
    pixels when they measured it) in sem.scale_corrections; ``semspark rescale`` applies it."""
    try:
        value = float(value)
        bar_px = float(bar_px) if bar_px not in (None, "") else None
    except (TypeError, ValueError) as exc:
        raise CorrectionError("the scale's value and bar length are numbers") from exc
    unit = UNITS.get((unit or "").strip().lower().replace("micrometre", "um"))
    if unit is None:
        raise CorrectionError("the scale's unit is nm, µm (um) or mm")
    if not (value > 0 and value < 1e7) or (bar_px is not None and not 0 < bar_px < 1e6):
        raise CorrectionError("the scale's value and bar length are positive")
    folder = _table_folder(tables, SCALE_CORRECTIONS, "semspark rescale (or an ingest of this release)")
    with _catalog_lock(f"web: scale of {image_id[:12]} by {user}", wait_s):
        _known_image(tables, image_id)
        run = new_run_id("web-")
        _append(folder, {"image_id": image_id, "scale_value": value, "scale_unit": unit, "scale_bar_px": bar_px,
                         "source": f"web: {user}", "corrected_at": utc_now(), "rescale_run": run}, SCALE_CORRECTIONS)
    tables.refresh(force=True)
    return {"image_id": image_id, "scale_value": value, "scale_unit": unit, "scale_bar_px": bar_px, "rescale_run": run}


def name_cluster(tables: Tables, analysis: str, method: str, k: int, cluster: int, name: str | None, user: str,
                 cut_of=None, wait_s: float = WebConfig.write_wait_s) -> dict:
    """Record a person's name for a cluster of an analysis's current run (a proposed sub-category;
    None or "" removes it), in sem.cluster_names. The cut is sem.clusters' or, at another k, the one
    ``cut_of`` makes from the report's hierarchy (search.cut_source)."""
    from semspark.web.search import FilterError, cut_source

    name = clean_label(name)
    folder = _table_folder(tables, CLUSTER_NAMES, "semspark analyze (this release)")
    with _catalog_lock(f"web: name of cluster {cluster} of {analysis} by {user}", wait_s):
        tables.refresh(force=True)
        try:
            about, cut, cut_params, relations = cut_source(tables, analysis, method, int(k), cut_of)
        except FilterError as exc:
            raise CorrectionError(str(exc)) from exc
        run = about["analysis_run"]
        if not tables.query(f"SELECT 1 FROM ({cut}) WHERE cluster = ? LIMIT 1", cut_params + [int(cluster)],
                            relations=relations):
            raise CorrectionError(f"no cluster {cluster} of {analysis} for {method} at k={k}")
        naming = new_run_id("web-")
        _append(folder, {"analysis": analysis, "analysis_run": run, "method": method, "k": int(k),
                         "cluster": int(cluster), "name": name, "named_by": user, "named_at": utc_now(),
                         "naming_run": naming}, CLUSTER_NAMES)
    tables.refresh(force=True)
    return {"analysis": analysis, "analysis_run": run, "method": method, "k": int(k), "cluster": int(cluster),
            "name": name, "naming_run": naming}


def _append(folder, row: dict, spec=LABELS) -> None:
    """One row as a new Parquet file of the table ``spec`` (its declared columns and types)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "double": pa.float64(), "timestamp": pa.timestamp("us"), "int": pa.int32()}
    schema = pa.schema([(f.name, types[f.dataType.simpleString()]) for f in spec.schema.fields])
    table = pa.Table.from_pylist([row], schema=schema)
    name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
    hidden = folder / f".{name}.writing"
    pq.write_table(table, hidden, compression="snappy", use_deprecated_int96_timestamps=True)
    with open(hidden, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(hidden, folder / name)
