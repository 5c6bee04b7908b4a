"""The analyze job end to end on predictions of the scoring catalog: tables, figures, HTML,
metrics, cross-checked against scikit-learn on what the tables hold; reruns replace; bounds."""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import cv2
import pytest
from sklearn.metrics import normalized_mutual_info_score

from semspark.analysis.job import AnalysisError, AnalysisRequest, run_analysis
from semspark.analysis.hierarchy import METHODS
from semspark.config import AnalysisConfig
from semspark.infer.job import run_inference

from .conftest import register_copy

pytestmark = pytest.mark.spark

SETTINGS = AnalysisConfig(scale_bins=(), heatmap_images=30, cluster_ks=(3, 10), gallery_k=3, gallery_clusters=3,
                          gallery_images=4, autoencoder_epochs=20, id_repetitions=2, density_neighbours=5)


@pytest.fixture(scope="module")
def analyst(spark, scoring):
    """The scoring model registered again as analyst/N and scored with: the infer tests count what
    scorer/1 scores, whatever order the modules run in."""
    model_version = register_copy(scoring.model.path, "analyst")
    run_inference(spark, scoring.config, model_version)
    return model_version


@pytest.fixture(scope="module")
def analysed(spark, scoring, analyst):
    config = dataclasses.replace(scoring.config, analysis=SETTINGS)
    summary = run_analysis(spark, config, AnalysisRequest(model=analyst, coding_dim="4"))
    return config, summary


def frame(spark, query):
    return spark.sql(query).toPandas()


def test_scores_cover_every_method_and_level_and_agree_with_scikit_learn(spark, scoring, analyst, analysed):
    _, summary = analysed
    version = analyst
    # the current labels, which the analysis reads (another module's test may have corrected some)
    images = frame(spark, f"SELECT i.image_id, l.label FROM scoring.images i JOIN scoring.predictions p "
                          f"USING (image_id) LEFT JOIN scoring.current_labels l USING (image_id) "
                          f"WHERE p.model_version = '{version}'")
    labels = images.dropna(subset=["label"])
    n_lab = len(labels)
    scores = frame(spark, f"SELECT * FROM scoring.cluster_scores WHERE analysis = '{summary.analysis}'")
    assert set(scores["method"]) == set(METHODS) | {"good_scenario", "uniform_scenario"}
    for method in METHODS:
        rows = scores[scores["method"] == method]
        assert sorted(rows["k"]) == list(range(2, n_lab + 1))
        assert rows["nmi"].between(0, 1 + 1e-9).all() and (rows["clusters_obtained"] <= rows["k"]).all()
        assert rows["ami"].notna().sum() >= 10  # the AMI grid
    assert (scores["images"] == len(images)).all() and (scores["labelled_images"] == n_lab).all()

    # Against scikit-learn on the partition the clusters table holds (k = 10, every method).
    clusters = frame(spark, f"SELECT image_id, method, k, cluster FROM scoring.clusters "
                            f"WHERE analysis = '{summary.analysis}'")
    assert set(clusters["k"]) == {3, 10}
    for method in METHODS:
        at10 = clusters[(clusters["method"] == method) & (clusters["k"] == 10)].set_index("image_id")
        assert len(at10) == len(images) and at10.index.is_unique
        assert at10["cluster"].nunique() <= 10
        expected = normalized_mutual_info_score(labels["label"], at10.loc[labels["image_id"], "cluster"])
        row = scores[(scores["method"] == method) & (scores["k"] == 10)]
        assert float(row["nmi"].iloc[0]) == pytest.approx(expected, abs=1e-9)

    # The scenarios against hand formulas on the same labels.
    counts = Counter(labels["label"])
    h = -sum(c / n_lab * math.log(c / n_lab) for c in counts.values())
    good = scores[scores["method"] == "good_scenario"].set_index("k")["nmi"]
    assert good[len(counts)] == pytest.approx(1.0)                         # the categories themselves
    assert good[n_lab] == pytest.approx(2 * h / (h + math.log(n_lab)))     # every image alone
    uniform = scores[scores["method"] == "uniform_scenario"].set_index("k")["nmi"]
    assert uniform[n_lab] == pytest.approx(2 * h / (h + math.log(n_lab)))


def test_report_has_the_figures_the_page_and_the_metrics(analysed):
    _, summary = analysed
    folder = Path(summary.report).parent
    for name, min_width in (("fig3_intrinsic_dimension.png", 500), ("fig4_discrete_distance.png", 400),
                            ("fig5_euclidean_distances.png", 900), ("fig6_nmi.png", 600),
                            ("gallery_ward_k3.png", 300)):
        image = cv2.imread(str(folder / name))
        assert image is not None and image.shape[1] >= min_width, name
        assert image.std() > 10, f"{name} is blank"
    page = (folder / "index.html").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    for needle in ("fig6_nmi.png", "fig3_intrinsic_dimension.png", "gallery_ward_k3.png",
                   f"{metrics['images']} images", "Best NMI"):
        assert needle in page
    # compact_cnn's embedding: the global average pool of its last block's 256 filters
    assert metrics["coding_dimension"] == 4 and metrics["input_dimension"] == 256
    assert set(metrics["best_nmi"]) == set(METHODS)
    assert 0 < metrics["intrinsic_dimension"]["features"] < 256
    assert [p["points"] for p in metrics["intrinsic_dimension"]["scale_features"]][0] == metrics["images"]


def test_rerunning_the_same_analysis_replaces_its_rows(spark, scoring, analyst, analysed):
    config, summary = analysed
    query = f"SELECT count(*) FROM scoring.cluster_scores WHERE analysis = '{summary.analysis}'"
    before = spark.sql(query).first()[0]
    run_analysis(spark, config, AnalysisRequest(model=analyst, coding_dim="4"))
    assert spark.sql(query).first()[0] == before
    runs = spark.sql(f"SELECT count(DISTINCT analysis_run) FROM scoring.clusters "
                     f"WHERE analysis = '{summary.analysis}'").first()[0]
    assert runs == 1


def test_within_category_analyses_only_that_predicted_category(spark, scoring, analyst, analysed):
    config, _ = analysed
    version = analyst
    counts = frame(spark, f"SELECT category, count(*) AS n FROM scoring.predictions WHERE model_version = '{version}' "
                          "GROUP BY category ORDER BY n DESC")
    category, n = counts.iloc[0]["category"], int(counts.iloc[0]["n"])
    summary = run_analysis(spark, config, AnalysisRequest(model=version, coding_dim="3", within_category=category))
    metrics = json.loads((Path(summary.report).parent / "metrics.json").read_text())
    assert metrics["images"] == n and metrics["within_category"] == category


def test_the_driver_bound_and_missing_predictions_are_clear_errors(spark, scoring, analyst, analysed):
    config, _ = analysed
    tight = dataclasses.replace(config, analysis=dataclasses.replace(SETTINGS, max_collect_bytes=1000))
    with pytest.raises(AnalysisError, match="max_collect_bytes"):
        run_analysis(spark, tight, AnalysisRequest(model=analyst))
    with pytest.raises(AnalysisError, match="semspark infer"):
        run_analysis(spark, config, AnalysisRequest(model=analyst, scale_bins=("no-such-bin",)))
