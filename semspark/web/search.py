"""The gallery's questions to the tables: filters from a request, checked, to SQL with parameters.

Every value of a request reaches DuckDB as a bound parameter; sort keys and column names come
from the lists below, never from the request.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field, fields

from semspark.schema import (CLUSTER_NAMES, CLUSTER_SCORES, CLUSTERS, FILES, IMAGES, LABELS, MODELS, PREDICTIONS,
                             PROMOTIONS, RUN_EVENTS, SCALE_CORRECTIONS, TRAINING_HISTORY)
from semspark.web.tables import Tables

TABLES = (IMAGES, FILES, LABELS, PREDICTIONS, PROMOTIONS, MODELS, TRAINING_HISTORY, SCALE_CORRECTIONS, RUN_EVENTS,
          CLUSTER_SCORES, CLUSTERS, CLUSTER_NAMES)
LEFT_ON_DISK = frozenset({"logits", "embedding"})   # hundreds of floats per image; no page shows them
UNLABELLED = "(none)"
SORTS = {
    "newest": "{i}.ingested_at DESC, {i}.image_id",
    "oldest": "{i}.ingested_at, {i}.image_id",
    "confidence": "{p}.confidence NULLS FIRST, {i}.image_id",
    "-confidence": "{p}.confidence DESC NULLS LAST, {i}.image_id",
    "scale": "{i}.nm_per_px NULLS LAST, {i}.image_id",
    "-scale": "{i}.nm_per_px DESC NULLS LAST, {i}.image_id",
    "path": "{i}.path, {i}.image_id",
}
JOINED = {"i": "i", "l": "l", "p": "p"}
GALLERY_TABLE = {"i": "g", "l": "g", "p": "g"}   # the derived table gallery: one row per image
MAX_PAGE_SIZE = 500
GALLERY_COLUMNS = ("image_id", "path", "width", "height", "scale_bin", "scale_value", "scale_unit", "nm_per_px",
                   "scale_source", "scale_confidence", "ingested_at", "ingest_run", "label", "category",
                   "confidence", "uncertain", "out_of_distribution", "model_version")

# Made once per change of the tables (Tables' derived tables) rather than for every page: every
# image's current label (the latest row of sem.labels, as the view sem.current_labels), and the
# gallery's table: sem.images with the current label and the production model's prediction, one
# row per image, so a search of the production model (nearly all of them) counts, filters and
# sorts one table instead of joining three (70 ms -> a few ms at 150,000 images).
DERIVED = {"current_labels": """SELECT image_id, label, source, labelled_by, labelled_at FROM (
    SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY labelled_at DESC, label_run DESC) AS n FROM labels)
  WHERE n = 1 AND label IS NOT NULL""",
           "gallery": """SELECT i.* EXCLUDE (label), l.label, l.source AS label_source, p.category, p.confidence,
    p.uncertain, p.out_of_distribution, p.model_version
  FROM images i LEFT JOIN current_labels l USING (image_id)
  LEFT JOIN (SELECT * FROM predictions WHERE model_version = (
      SELECT model_version FROM promotions WHERE stage = 'production' ORDER BY promoted_at DESC LIMIT 1)) p
    USING (image_id)"""}
CURRENT_LABELS = "current_labels"


CLUSTER_FILTER = ("analysis", "method", "k", "cluster")


class FilterError(ValueError):
    """A request's filters that cannot be used; the message names the parameter and what it takes."""


@dataclass
class Filters:
    category: str | None = None            # predicted by the model
    label: str | None = None               # current label; UNLABELLED for none
    min_confidence: float | None = None
    max_confidence: float | None = None
    scale_bin: list[str] = field(default_factory=list)
    min_nm_per_px: float | None = None
    max_nm_per_px: float | None = None
    scale_source: str | None = None
    scale_confidence: str | None = None
    ingested_from: datetime.date | None = None
    ingested_to: datetime.date | None = None
    path: str | None = None                # text the path contains
    model: str | None = None               # model version; the production model when not given
    uncertain: bool | None = None
    out_of_distribution: bool | None = None
    disagrees: bool | None = None          # prediction differs from the label
    analysis: str | None = None            # with method, k and cluster: the images of one cluster
    method: str | None = None
    k: int | None = None
    cluster: int | None = None
    sort: str = "newest"
    page: int = 1
    per_page: int = 100

    @classmethod
    def from_args(cls, args, default_page_size: int = 100) -> "Filters":
        """From a request's query (a mapping with ``getlist``); empty values mean no filter."""
        problems, values = [], {}
        kinds = {f.name: f.type for f in fields(cls)}
        known = set(kinds)
        for name in args:
            if name not in known and name not in ("csrf",):
                problems.append(f"unknown parameter {name!r} (known: {', '.join(sorted(known))})")
        for name, kind in kinds.items():
            raw = [v.strip() for v in args.getlist(name) if v.strip()] if name in args else []
            if not raw:
                continue
            try:
                values[name] = _parse(kind, raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        filters = cls(**values)
        if "per_page" not in values:
            filters.per_page = default_page_size
        if filters.sort not in SORTS:
            problems.append(f"sort: {filters.sort!r} is none of {', '.join(SORTS)}")
        if not 1 <= filters.per_page <= MAX_PAGE_SIZE:
            problems.append(f"per_page: from 1 to {MAX_PAGE_SIZE}")
        if filters.page < 1:
            problems.append("page: from 1")
        for low, high in (("min_confidence", "max_confidence"), ("min_nm_per_px", "max_nm_per_px"),
                          ("ingested_from", "ingested_to")):
            a, b = getattr(filters, low), getattr(filters, high)
            if a is not None and b is not None and a > b:
                problems.append(f"{low} is above {high}")
        given = [n for n in CLUSTER_FILTER if getattr(filters, n) is not None]
        if given and len(given) < len(CLUSTER_FILTER):
            problems.append(f"a cluster is named by {', '.join(CLUSTER_FILTER)} together (given: {', '.join(given)})")
        if problems:
            raise FilterError("; ".join(problems))
        return filters

    def as_args(self, **changes) -> dict:
        """The filters as query parameters (for links to other pages of the same search)."""
        out = {}
        for f in fields(self):
            value = changes.get(f.name, getattr(self, f.name))
            if value in (None, [], "") or (f.name == "sort" and value == "newest") or (f.name == "page" and value == 1):
                continue
            out[f.name] = ([str(v) for v in value] if isinstance(value, list)
                           else ("true" if value is True else "false" if value is False else str(value)))
        return out


def _parse(kind: str, raw: list[str]):
    if kind.startswith("list"):
        return raw
    value = raw[-1]
    if "float" in kind:
        return float(value)
    if kind.startswith("int"):
        return int(value)
    if "bool" in kind:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{value!r} is not true or false")
    if "date" in kind:
        return datetime.date.fromisoformat(value)
    if len(value) > 500:
        raise ValueError("longer than 500 characters")
    return value


def production_model(tables: Tables) -> str | None:
    rows = tables.query("SELECT model_version FROM promotions WHERE stage = 'production' "
                        "ORDER BY promoted_at DESC LIMIT 1")
    return rows[0]["model_version"] if rows else None


def _where(filters: Filters, aliases: dict | None = None, cluster_cut: tuple[str, list] | None = None) -> tuple[str, list]:
    """The filters as a WHERE clause over sem.images ``i``, the current labels ``l`` and the
    predictions ``p`` (``aliases``: other names for them, one table's for the gallery table)."""
    aliases = aliases or JOINED
    clauses, params = [], []

    def add(sql: str, *values):
        clauses.append(sql.format(**aliases))
        params.extend(values)

    if filters.category:
        add("{p}.category = ?", filters.category)
    if filters.label == UNLABELLED:
        add("{l}.label IS NULL")
    elif filters.label:
        add("{l}.label = ?", filters.label)
    if filters.min_confidence is not None:
        add("{p}.confidence >= ?", filters.min_confidence)
    if filters.max_confidence is not None:
        add("{p}.confidence <= ?", filters.max_confidence)
    if filters.scale_bin:
        add("{i}.scale_bin IN (" + ", ".join("?" for _ in filters.scale_bin) + ")", *filters.scale_bin)
    if filters.min_nm_per_px is not None:
        add("{i}.nm_per_px >= ?", filters.min_nm_per_px)
    if filters.max_nm_per_px is not None:
        add("{i}.nm_per_px <= ?", filters.max_nm_per_px)
    if filters.scale_source:
        add("{i}.scale_source = ?", filters.scale_source)
    if filters.scale_confidence:
        add("{i}.scale_confidence = ?", filters.scale_confidence)
    if filters.ingested_from:
        add("{i}.ingested_at >= CAST(? AS TIMESTAMP)", filters.ingested_from.isoformat())
    if filters.ingested_to:
        add("{i}.ingested_at < CAST(? AS TIMESTAMP) + INTERVAL 1 DAY", filters.ingested_to.isoformat())
    if filters.path:
        add("strpos(lower({i}.path), lower(?)) > 0", filters.path)
    if filters.uncertain is not None:
        add("coalesce({p}.uncertain, false) = ?", filters.uncertain)
    if filters.out_of_distribution is not None:
        add("coalesce({p}.out_of_distribution, false) = ?", filters.out_of_distribution)
    if filters.disagrees is not None:
        add("({p}.category IS NOT NULL AND {l}.label IS NOT NULL AND {p}.category <> {l}.label) = ?", filters.disagrees)
    if filters.cluster is not None:
        cut, cut_params = cluster_cut or ("SELECT image_id, cluster FROM clusters WHERE analysis = ? AND method = ? "
                                          "AND k = ?", [filters.analysis, filters.method, filters.k])
        add("{i}.image_id IN (SELECT image_id FROM (" + cut.replace("{", "{{").replace("}", "}}") + ") WHERE cluster = ?)",
            *cut_params, filters.cluster)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _from(model: str | None, joins: frozenset = frozenset("lp"), of_ids: list[str] | None = None) -> tuple[str, list]:
    """FROM sem.images ``i``, with the current labels ``l`` and the model's predictions ``p`` when
    ``joins`` names them (each has at most one row per image, so neither changes a count); only the
    images ``of_ids`` when given (a join with the ids: faster than a list of 100 parameters)."""
    source, params = "FROM images i", []
    if of_ids is not None:
        source, params = "FROM (SELECT unnest(?::VARCHAR[]) AS image_id) wanted JOIN images i USING (image_id)", [of_ids]
    if "l" in joins:
        source += f" LEFT JOIN {CURRENT_LABELS} l USING (image_id)"
    if "p" in joins:
        source += """ LEFT JOIN (SELECT image_id, category, confidence, uncertain, out_of_distribution, model_version
                   FROM predictions WHERE model_version = ?) p USING (image_id)"""
        params.append(model or "")
    return source, params


def _joins_needed(filters: Filters) -> frozenset:
    """The joins the filters and the sort read (the page's other columns are joined to its rows only)."""
    needed = set()
    if filters.label or filters.disagrees is not None:
        needed.add("l")
    if (filters.category or filters.disagrees is not None or filters.sort in ("confidence", "-confidence")
            or any(v is not None for v in (filters.min_confidence, filters.max_confidence, filters.uncertain,
                                             filters.out_of_distribution))):
        needed.add("p")
    return frozenset(needed)


def search(tables: Tables, filters: Filters, cut_of=None) -> dict:
    """One page of the gallery: {"model", "total", "page", "per_page", "images": [row, ...]}.

    The count and the page's ids are found with only the joins the filters and the sort need (most
    searches need none: 150,000 rows counted and sorted alone), then the page's 100 rows get their
    label and prediction."""
    production = production_model(tables)
    model = filters.model or production
    if model == production:
        aliases, source, source_params = GALLERY_TABLE, "FROM gallery g", []
    else:   # another model's predictions: joined for this search, with only the joins it needs
        aliases = JOINED
        source, source_params = _from(model, _joins_needed(filters))
    cluster_cut, relations = None, {}
    if filters.cluster is not None:   # one cluster of a cut: kept in sem.clusters, or cut now (cut_source)
        _, cut, cut_params, relations = cut_source(tables, filters.analysis, filters.method, filters.k, cut_of)
        cluster_cut = (cut, cut_params)
    where, params = _where(filters, aliases, cluster_cut)
    total = tables.query(f"SELECT count(*) AS n {source}{where}", source_params + params, relations=relations)[0]["n"]
    ids = [r["image_id"] for r in tables.query(
        f"SELECT {aliases['i']}.image_id {source}{where} ORDER BY {SORTS[filters.sort].format(**aliases)} "
        "LIMIT ? OFFSET ?", source_params + params + [filters.per_page, (filters.page - 1) * filters.per_page],
        relations=relations)]
    rows = []
    if ids:   # the page's rows, found by id
        if model == production:
            columns = ", ".join(f"g.{c}" for c in GALLERY_COLUMNS)
            every, every_params = ("FROM (SELECT unnest(?::VARCHAR[]) AS image_id) wanted JOIN gallery g "
                                   "USING (image_id)", [ids])
        else:
            columns = ", ".join(f"l.{c}" if c == "label" else f"p.{c}" if c in ("category", "confidence", "uncertain",
                                "out_of_distribution", "model_version") else f"i.{c}" for c in GALLERY_COLUMNS)
            every, every_params = _from(model, of_ids=ids)
        found = {r["image_id"]: r for r in tables.query(f"SELECT {columns} {every}", every_params)}
        rows = [found[i] for i in ids]
    return {"model": model, "total": total, "page": filters.page, "per_page": filters.per_page, "images": rows}


def choices(tables: Tables, model: str | None) -> dict:
    """What the gallery's filter fields offer: categories, labels, bins, sources, model versions."""
    rows = tables.query(f"""SELECT
        (SELECT list(DISTINCT category ORDER BY category) FROM predictions WHERE model_version = ?) AS categories,
        (SELECT list(DISTINCT label ORDER BY label) FROM {CURRENT_LABELS}) AS labels,
        (SELECT list(DISTINCT scale_bin ORDER BY scale_bin) FROM images) AS scale_bins,
        (SELECT list(DISTINCT scale_source ORDER BY scale_source) FROM images) AS scale_sources,
        (SELECT list(DISTINCT scale_confidence ORDER BY scale_confidence) FROM images) AS scale_confidences,
        (SELECT list(DISTINCT model_version ORDER BY model_version) FROM predictions) AS models""", [model or ""])[0]
    return {k: [v for v in (rows[k] or []) if v is not None] for k in rows}


def image(tables: Tables, image_id: str) -> dict | None:
    """One image: its sem.images row, files, every model's prediction, current label and history."""
    found = tables.query("SELECT * FROM images WHERE image_id = ?", [image_id])
    if not found:
        return None
    row = found[0]
    row["files"] = tables.query("SELECT path, role, size, ingested_at FROM files WHERE image_id = ? ORDER BY path",
                                [image_id])
    row["predictions"] = tables.query(
        "SELECT model_version, category, confidence, probabilities, uncertain, out_of_distribution, ood_reason, "
        "predicted_at FROM predictions WHERE image_id = ? ORDER BY predicted_at DESC", [image_id])
    classes = {r["model_version"]: r["classes"] for r in tables.query(
        "SELECT model_version, classes FROM models WHERE model_version IN "
        "(SELECT model_version FROM predictions WHERE image_id = ?)", [image_id])}
    for prediction in row["predictions"]:
        names = (classes.get(prediction["model_version"]) or "").split(",")
        probabilities = prediction.pop("probabilities") or []
        prediction["probabilities"] = sorted(
            ({"category": names[k] if k < len(names) and names[k] else str(k), "probability": float(p)}
             for k, p in enumerate(probabilities)), key=lambda e: -e["probability"])
    row["label_history"] = tables.query(
        "SELECT label, source, labelled_by, labelled_at, label_run FROM labels WHERE image_id = ? "
        "ORDER BY labelled_at DESC, label_run DESC", [image_id])
    current = row["label_history"][0] if row["label_history"] else None
    row["current_label"] = current["label"] if current else None
    return row


def described(tables: Tables, model: str | None, image_ids: list[str]) -> dict[str, dict]:
    """Path, scale bin, current label and ``model``'s category of each image id (for tiles)."""
    if not image_ids:
        return {}
    source, params = _from(model, of_ids=list(image_ids))
    rows = tables.query(f"SELECT i.image_id, i.path, i.scale_bin, i.nm_per_px, l.label, p.category, p.confidence {source}",
                        params)
    return {r["image_id"]: r for r in rows}


QUEUES = {"confidence": "least confident first", "disagrees": "prediction differs from the label",
          "scale": "scale of low confidence or unknown"}
QUEUE_LENGTH = 1000


def review_queue(tables: Tables, queue: str) -> list[str]:
    """Image ids of a review queue, in order: images a person has not looked at yet (their current
    label is not a person's), of the production model's predictions; at most QUEUE_LENGTH."""
    # the derived table gallery: sem.images with the current label and the production model's prediction
    not_reviewed = "(g.label_source IS NULL OR g.label_source <> 'person')"
    where, order = {
        "confidence": ("g.confidence IS NOT NULL", "g.confidence, g.image_id"),
        "disagrees": ("g.category IS NOT NULL AND g.label IS NOT NULL AND g.category <> g.label",
                      "g.confidence DESC, g.image_id"),
        "scale": ("(g.scale_confidence IS NULL OR g.scale_confidence IN ('low', 'none') OR g.scale_bin = 'unknown')"
                  " AND NOT EXISTS (SELECT 1 FROM scale_corrections c WHERE c.image_id = g.image_id)",
                  "g.ingested_at DESC, g.image_id"),
    }[queue]
    if queue != "scale":
        where = f"{where} AND {not_reviewed}"
    rows = tables.query(f"SELECT g.image_id FROM gallery g WHERE {where} ORDER BY {order} LIMIT {QUEUE_LENGTH}")
    return [r["image_id"] for r in rows]


def known_labels(tables: Tables) -> list[str]:
    """Categories a person may choose: every current label and every model's class."""
    labels = {r["label"] for r in tables.query(f"SELECT DISTINCT label FROM {CURRENT_LABELS}")}
    for r in tables.query("SELECT classes FROM models"):
        labels.update(c for c in (r["classes"] or "").split(",") if c)
    return sorted(labels)


def runs(tables: Tables, limit: int = 200) -> list[dict]:
    """Nightly runs, newest first: each run's latest event (as the view sem.runs)."""
    return tables.query("""SELECT * EXCLUDE (latest, recorded_at) FROM (
        SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY recorded_at DESC) AS latest FROM run_events)
        WHERE latest = 1 ORDER BY started_at DESC NULLS LAST LIMIT ?""", [limit])


def models(tables: Tables) -> list[dict]:
    """Registered model versions, newest first, with their held-out figures (sem.models)."""
    return tables.query("SELECT model_version, arch, mode, init, input_size, classes, scale_bins, train_images, "
                        "test_images, best_epoch, validation_accuracy, test_accuracy, test_macro_f1, temperature, temperature_low, "
                        "temperature_high, test_ece_before, test_ece_after, uncertain_below_confidence, num_proc, trained_at "
                        "FROM models ORDER BY trained_at DESC NULLS LAST, model_version")


def accuracy_per_epoch(tables: Tables, versions: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Test accuracy per epoch of each version (sem.training_history): the paper's Figures 1 and 2."""
    if not versions:
        return {}
    rows = tables.query(f"SELECT model_version, epoch, test_accuracy FROM training_history WHERE model_version IN "
                        f"({', '.join('?' for _ in versions)}) AND test_accuracy IS NOT NULL ORDER BY epoch", versions)
    out: dict[str, list[tuple[int, float]]] = {v: [] for v in versions}
    for r in rows:
        out[r["model_version"]].append((int(r["epoch"]), float(r["test_accuracy"])))
    return out


def analyses(tables: Tables) -> list[dict]:
    """Every analysis (sem.cluster_scores), newest first: its model, images, run, and each
    method's best NMI with its k; with the (method, k) cuts sem.clusters holds for it."""
    found = tables.query("""SELECT analysis, any_value(model_version) AS model_version, max(analyzed_at) AS analyzed_at,
        max(images) AS images, max(labelled_images) AS labelled_images, max(analysis_run) AS analysis_run
        FROM cluster_scores GROUP BY analysis ORDER BY analyzed_at DESC, analysis""")
    best = tables.query("""SELECT analysis, method, arg_max(k, nmi) AS k, max(nmi) AS nmi FROM cluster_scores
        WHERE method NOT IN ('good_scenario', 'uniform_scenario') AND nmi IS NOT NULL GROUP BY analysis, method
        ORDER BY analysis, method""")
    cuts = tables.query("SELECT DISTINCT analysis, method, k FROM clusters ORDER BY analysis, method, k")
    for row in found:
        row["best"] = [{"method": b["method"], "k": b["k"], "nmi": b["nmi"]} for b in best if b["analysis"] == row["analysis"]]
        row["cuts"] = [{"method": c["method"], "k": c["k"]} for c in cuts if c["analysis"] == row["analysis"]]
    return found


def analysis_of(tables: Tables, analysis: str) -> dict:
    """One analysis as ``analyses`` describes it; FilterError when there is none of that name."""
    found = [a for a in analyses(tables) if a["analysis"] == analysis]
    if not found:
        raise FilterError(f"analysis: no analysis {analysis!r} in sem.cluster_scores (run semspark analyze)")
    return found[0]


def cut_source(tables: Tables, analysis: str, method: str, k: int, cut_of=None,
               about: dict | None = None) -> tuple[dict, str, list, dict]:
    """Where the clusters of one cut are: (the analysis, a SELECT of image_id and cluster, its
    parameters, the relations it needs). A kept cut reads sem.clusters; another k is cut from the
    hierarchy the report keeps (``cut_of(analysis, run, method, k)``: image id -> cluster)."""
    import pandas as pd

    about = about or analysis_of(tables, analysis)
    if {"method": method, "k": k} in about["cuts"]:
        return (about, "SELECT image_id, cluster FROM clusters WHERE analysis = ? AND method = ? AND k = ?",
                [analysis, method, k], {})
    if cut_of is None:
        kept = ", ".join(f"{c['method']} k={c['k']}" for c in about["cuts"]) or "none"
        raise FilterError(f"{analysis} has no clusters for {method} at k={k} in sem.clusters (it has: {kept})")
    try:
        found = cut_of(analysis, about["analysis_run"], method, k)
    except LookupError as exc:
        raise FilterError(str(exc)) from exc
    frame = pd.DataFrame({"image_id": list(found), "cluster": pd.array(list(found.values()), dtype="int32")})
    return about, "SELECT image_id, cluster FROM computed_cut", [], {"computed_cut": frame}


def clusters(tables: Tables, analysis: str, method: str, k: int, page: int = 1, per_page: int = 20,
             samples: int = 6, cut_of=None, about: dict | None = None) -> dict:
    """One cut of an analysis: its clusters, largest first, a page of them, each with its size, the
    current labels and the predicted categories inside (counts), a few image ids, and its name.
    ``about``: the analysis as ``analysis_of`` gives it, when the caller has it already."""
    about, cut, key, relations = cut_source(tables, analysis, method, k, cut_of, about)

    def query(sql: str, parameters: list) -> list[dict]:
        return tables.query(sql, parameters, relations=relations)

    sizes = query(f"SELECT cluster, count(*) AS size FROM ({cut}) GROUP BY cluster ORDER BY size DESC, cluster", key)
    shown = sizes[(page - 1) * per_page: page * per_page]
    ids = [s["cluster"] for s in shown]
    out = {"analysis": analysis, "model_version": about["model_version"], "analysis_run": about["analysis_run"],
           "method": method, "k": k, "clusters_obtained": len(sizes), "images": sum(s["size"] for s in sizes),
           "page": page, "per_page": per_page, "clusters": []}
    if not ids:
        return out
    chosen = f"(SELECT * FROM ({cut}) WHERE cluster IN ({', '.join('?' for _ in ids)}))"
    params = key + ids
    labels = query(f"""SELECT c.cluster, coalesce(l.label, '{UNLABELLED}') AS name, count(*) AS n FROM {chosen} c
        LEFT JOIN {CURRENT_LABELS} l USING (image_id) GROUP BY ALL ORDER BY c.cluster, n DESC, name""", params)
    predicted = query(f"""SELECT c.cluster, p.category AS name, count(*) AS n FROM {chosen} c
        JOIN predictions p ON p.image_id = c.image_id AND p.model_version = ? GROUP BY ALL
        ORDER BY c.cluster, n DESC, name""", params + [about["model_version"]])
    images = query(f"""SELECT cluster, image_id, scale_bin FROM (
        SELECT c.cluster, c.image_id, i.scale_bin, row_number() OVER (PARTITION BY c.cluster ORDER BY c.image_id) AS r
        FROM {chosen} c JOIN images i USING (image_id)) WHERE r <= ? ORDER BY cluster, image_id""", params + [samples])
    names = tables.query("""SELECT cluster, name, named_by, named_at FROM (
        SELECT *, row_number() OVER (PARTITION BY cluster ORDER BY named_at DESC, naming_run DESC) AS r
        FROM cluster_names WHERE analysis = ? AND analysis_run = ? AND method = ? AND k = ?)
        WHERE r = 1 AND name IS NOT NULL""", [analysis, about["analysis_run"], method, k])
    name_of = {n["cluster"]: n for n in names}
    for s in shown:
        c = s["cluster"]
        named = name_of.get(c)
        out["clusters"].append({
            "cluster": c, "size": s["size"],
            "labels": [{"label": r["name"], "images": r["n"]} for r in labels if r["cluster"] == c],
            "predicted": [{"category": r["name"], "images": r["n"]} for r in predicted if r["cluster"] == c],
            "samples": [{"image_id": r["image_id"], "scale_bin": r["scale_bin"]} for r in images if r["cluster"] == c],
            "name": named["name"] if named else None, "named_by": named["named_by"] if named else None,
            "named_at": named["named_at"] if named else None})
    return out
