"""The analyze stage: the paper's Section 3 on the predictions of one model version.

Spark selects the features (embedding or logits) of the images in the chosen scale bins from
sem.predictions joined with sem.images, and the driver collects them within a stated bound
(rows x dimensions x 4 bytes <= analysis.max_collect_bytes, checked before anything is collected).
The study runs on the driver (semspark.analysis.study); results go to sem.cluster_scores and
sem.clusters (one partition per analysis, replaced when the same analysis runs again) and to a
report folder $SEMSPARK_HOME/reports/<analysis>/ (figures, index.html, metrics.json, gallery).
"""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass

import numpy as np

from semspark.catalog import ensure_tables, new_run_id, qualified, utc_now
from semspark.config import Config
from semspark.dataset import dataset_url
from semspark.labels import current_labels, ensure_labels
from semspark.schema import ANALYSIS_TABLES, CLUSTER_SCORES, CLUSTERS, IMAGES, PREDICTIONS
from semspark.storage import home_path
from semspark import registry

log = logging.getLogger(__name__)


class AnalysisError(RuntimeError):
    """The analysis cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class AnalysisRequest:
    model: str
    scale_bins: tuple[str, ...] | None = None      # None: the configured bins; (): every bin
    features: str | None = None                    # None: the configured features
    coding_dim: str | None = None
    within_category: str | None = None


@dataclass
class AnalysisSummary:
    analysis: str
    report: str
    lines_: list[str]

    def lines(self) -> list[str]:
        return self.lines_


def analysis_key(model_version: str, bins, features: str, coding_dim: str, category: str | None) -> str:
    raw = f"{model_version}_{'-'.join(bins) or 'all'}_{features}_{coding_dim}" + (f"_{category}" if category else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def run_analysis(spark, config: Config, request: AnalysisRequest) -> AnalysisSummary:
    from pyspark.sql import functions as F

    from semspark.analysis import report
    from semspark.analysis.study import run_study

    settings = config.analysis
    db = config.catalog.database
    name, version, _ = registry.resolve(request.model)
    model_version = f"{name}/{version}"
    bins = settings.scale_bins if request.scale_bins is None else request.scale_bins
    features = request.features or settings.features
    if features not in ("embedding", "logits"):
        raise AnalysisError("--features must be embedding or logits")
    coding_dim = request.coding_dim or settings.coding_dim
    if not (coding_dim == "auto" or (coding_dim.isdigit() and int(coding_dim) >= 1)):
        raise AnalysisError("--coding-dim must be a positive integer or auto")
    for table in (IMAGES, PREDICTIONS):
        if not spark.catalog.tableExists(qualified(db, table)):
            raise AnalysisError(f"there is no table {qualified(db, table)}: run semspark ingest and infer first")
    ensure_tables(spark, db, ANALYSIS_TABLES)
    ensure_labels(spark, db)

    rows = (spark.table(qualified(db, PREDICTIONS)).filter(F.col("model_version") == model_version)
            .select("image_id", "category", F.col(features).alias("features"))
            .join(spark.table(qualified(db, IMAGES)).select("image_id", "scale_bin"), "image_id")
            .join(current_labels(spark, db), "image_id", "left"))
    if bins:
        rows = rows.filter(F.col("scale_bin").isin(list(bins)))
    if request.within_category:
        rows = rows.filter(F.col("category") == request.within_category)
    stats = rows.agg(F.count("*").alias("n"), F.max(F.size("features")).alias("d")).first()
    n, d = int(stats["n"]), int(stats["d"] or 0)
    scope = (f"{model_version}, scale bins {', '.join(bins) or 'all'}"
             + (f", predicted category {request.within_category}" if request.within_category else ""))
    if n == 0:
        raise AnalysisError(f"no predictions for {scope}: run semspark infer --model {model_version} first, "
                            "or choose other --scale-bins")
    need = n * d * 4
    if need > settings.max_collect_bytes:
        raise AnalysisError(f"{n} images x {d} {features} = {need / 1e9:.1f} GB to collect to the driver, over "
                            f"analysis.max_collect_bytes ({settings.max_collect_bytes / 1e9:.1f} GB); raise it if "
                            "the driver has the memory (spark.driver.memory), or narrow --scale-bins")
    log.info("collecting %d x %d %s (%.2f GB) to the driver", n, d, features, need / 1e9)
    local = rows.select("image_id", "label", "category", "features").orderBy("image_id").toPandas()
    matrix = np.stack(local["features"].to_numpy()).astype(np.float32)
    image_ids = local["image_id"].to_numpy()
    labels = local["label"].where(local["label"].notna(), None).to_numpy(dtype=object)

    try:
        result = run_study(matrix, labels, settings, coding_dim=coding_dim, progress=log.info)
    except ValueError as exc:
        raise AnalysisError(f"{scope}: {exc}") from exc

    key = analysis_key(model_version, bins, features, coding_dim, request.within_category)
    run_id = new_run_id()
    stamp = utc_now()
    _write_tables(spark, db, key, run_id, stamp, model_version, result, image_ids, set(settings.cluster_ks))

    folder = home_path(f"reports/{key}")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    report.figure_intrinsic_dimension(result, partial / "fig3_intrinsic_dimension.png")
    report.figure_discrete(result, partial / "fig4_discrete_distance.png")
    report.figure_euclidean(result, matrix, partial / "fig5_euclidean_distances.png")
    report.figure_nmi(result, partial / "fig6_nmi.png")
    gallery = _gallery(spark, config, result, image_ids, partial)
    save_hierarchies(partial / HIERARCHIES, run_id, image_ids, result)
    context = {"analysis": key, "analysis_run": run_id, "model_version": model_version, "scale_bins": list(bins),
               "features": features, "within_category": request.within_category}
    report.write_html(partial, report.metrics(result, context), gallery)
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)  # the finished report appears whole

    best = result.best()
    lines = [f"analysis {key} (run {run_id})",
             f"  {result.images} images ({result.labelled} labelled, {len(result.classes)} categories), "
             f"{result.input_dim} {features} -> autoencoder {result.coding_dim}",
             f"  2-NN intrinsic dimension: {result.id_before:.2f} before, {result.id_after:.2f} after the autoencoder",
             f"  reconstruction MSE {result.reconstruction_mse:.4f} (mean only: {result.baseline_mse:.4f})",
             f"  correlation with the label distance: {result.correlation_before:.3f} before, "
             f"{result.correlation_after:.3f} after"]
    lines += [f"  best NMI {m:<15} {v['nmi']:.3f} at k={v['k']}" for m, v in best.items()]
    lines += [f"  {m} not run: {r.skipped}" for m, r in result.methods.items() if r.skipped]
    lines.append(f"  report: {folder / 'index.html'}")
    return AnalysisSummary(analysis=key, report=str(folder / "index.html"), lines_=lines)


HIERARCHIES = "hierarchies.npz"


def save_hierarchies(path, run_id: str, image_ids, result) -> None:
    """Every method's linkage matrix with the image ids in its row order and the run: the web app
    cuts them at any k (sem.clusters keeps only analysis.cluster_ks). 150,000 images: 4.8 MB each."""
    linkages = {f"linkage_{m}": r.linkage for m, r in result.methods.items() if r.linkage is not None}
    np.savez_compressed(path, image_ids=np.asarray(image_ids, dtype=str), analysis_run=np.asarray(run_id),
                        **linkages)


def _write_tables(spark, db, key, run_id, stamp, model_version, result, image_ids, table_ks: set[int]) -> None:
    import pandas as pd

    score_rows = []
    for method, m in result.methods.items():
        if m.skipped is not None:
            continue
        for k, obtained, nmi in zip(m.ks, m.obtained, m.nmi):
            score_rows.append((method, int(k), int(obtained), float(nmi), m.ami.get(int(k))))
    score_rows += [("good_scenario", k, k, v, None) for k, v in result.good.items()]
    score_rows += [("uniform_scenario", k, k, v, None) for k, v in result.uniform.items()]
    scores = pd.DataFrame(score_rows, columns=["method", "k", "clusters_obtained", "nmi", "ami"])
    scores = scores.assign(model_version=model_version, labelled_images=result.labelled, images=result.images,
                           analysis_run=run_id, analyzed_at=stamp, analysis=key)
    cluster_frames = [pd.DataFrame({"image_id": image_ids, "method": method, "k": k, "cluster": labels.astype("int32")})
                      for method, m in result.methods.items() for k, labels in m.cuts.items()
                      if k in table_ks]
    clusters = (pd.concat(cluster_frames, ignore_index=True) if cluster_frames else
                pd.DataFrame(columns=["image_id", "method", "k", "cluster"]))
    clusters = clusters.assign(model_version=model_version, analysis_run=run_id, analysis=key)
    previous = spark.conf.get("spark.sql.sources.partitionOverwriteMode")
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")  # replace this analysis only
    try:
        for table, frame in ((CLUSTER_SCORES, scores), (CLUSTERS, clusters)):
            df = spark.createDataFrame(frame[table.columns], table.schema)
            df.write.insertInto(qualified(db, table), overwrite=True)
    finally:
        spark.conf.set("spark.sql.sources.partitionOverwriteMode", previous)


def _gallery(spark, config: Config, result, image_ids, folder) -> str | None:
    """Thumbnails of the largest clusters at the configured method and k, read from the dataset."""
    import cv2
    from pyspark.sql import functions as F

    from semspark.analysis import report

    settings = config.analysis
    method = result.methods.get(settings.gallery_method)
    if method is None or method.skipped or settings.gallery_k not in method.cuts:
        return None
    labels = method.cuts[settings.gallery_k]
    clusters, sizes = np.unique(labels, return_counts=True)
    top = clusters[np.argsort(-sizes, kind="stable")][: settings.gallery_clusters]
    rng = np.random.default_rng(settings.seed)
    chosen: dict[int, list[str]] = {}
    for c in top:
        members = image_ids[labels == c]
        chosen[int(c)] = list(rng.choice(members, size=min(settings.gallery_images, len(members)), replace=False))
    wanted = [i for ids in chosen.values() for i in ids]
    try:
        pixels = {r["image_id"]: r["image"] for r in spark.read.parquet(dataset_url(config))
                  .filter(F.col("image_id").isin(wanted)).select("image_id", "image").collect()}
    except Exception:  # the report is still useful without thumbnails
        log.warning("could not read thumbnails from %s", dataset_url(config), exc_info=True)
        return None
    groups = []
    for c in top:
        thumbs = [cv2.imdecode(np.frombuffer(pixels[i], np.uint8), cv2.IMREAD_GRAYSCALE)
                  for i in chosen[int(c)] if i in pixels]
        groups.append((int(c), int((labels == c).sum()), thumbs))
    name = f"gallery_{settings.gallery_method}_k{settings.gallery_k}.png"
    report.figure_gallery(groups, f"{settings.gallery_method} linkage, k = {settings.gallery_k}: "
                                  f"the {len(groups)} largest clusters", folder / name)
    return name
