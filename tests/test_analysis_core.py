"""The analysis stage's numerical core on data with known answers: 2-NN on manifolds of known
dimension, planted clusters recovered by every method, nested hierarchies, the incremental NMI
against scikit-learn on SciPy's cuts, and the two scenarios against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from semspark.analysis.hierarchy import METHODS, AnalysisMemoryError, cut, linkage
from semspark.analysis.intrinsic import scale_analysis, two_nn
from semspark.analysis.scoring import (encode_labels, good_scenario_nmi, good_scenario_sizes, k_grid,
                                       nmi_along_hierarchy, uniform_scenario_nmi)


def embedded(points: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """A random linear (orthonormal) embedding into ``dims`` dimensions: distances are kept."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dims, points.shape[1])))
    return points @ q.T


def test_two_nn_finds_the_dimension_of_a_hypercube_in_100_dimensions():
    cube = np.random.default_rng(0).uniform(size=(4000, 5))
    assert two_nn(embedded(cube, 100, 1)) == pytest.approx(5, rel=0.10)


def test_two_nn_finds_the_dimension_of_a_3_sphere_in_100_dimensions():
    g = np.random.default_rng(2).normal(size=(4000, 4))
    sphere = g / np.linalg.norm(g, axis=1, keepdims=True)        # S^3 in R^4: dimension 3
    assert two_nn(embedded(sphere, 100, 3)) == pytest.approx(3, rel=0.10)


def test_scale_analysis_halves_the_points_and_repeats():
    cube = np.random.default_rng(4).uniform(size=(1000, 4))
    levels = scale_analysis(cube, repetitions=3, min_points=100, seed=0)
    assert [p.points for p in levels] == [1000, 500, 250, 125]
    assert [len(p.dimensions) for p in levels] == [1, 3, 3, 3]
    assert all(abs(p.mean - 4) < 0.8 for p in levels)


def planted(n_per: int = 60, clusters: int = 5, dims: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(clusters, dims))
    x = np.concatenate([c + rng.normal(size=(n_per, dims)) for c in centres])
    truth = np.repeat(np.arange(clusters), n_per)
    return x, truth


@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_well_separated_planted_clusters(method):
    x, truth = planted()
    z = linkage(x, method)
    assert z.shape == (len(x) - 1, 4)
    assert normalized_mutual_info_score(truth, cut(z, 5)) > 0.95


@pytest.mark.parametrize("method", METHODS)
def test_hierarchies_are_nested(method):
    x, _ = planted(n_per=30, clusters=4, dims=3, seed=1)
    z = linkage(x, method)
    coarse, fine = cut(z, 3), cut(z, 8)
    for cluster in np.unique(fine):  # every fine cluster lies inside one coarse cluster
        assert len(np.unique(coarse[fine == cluster])) == 1


@pytest.mark.parametrize("method", METHODS)
def test_nmi_along_a_hierarchy_matches_scikit_learn_on_scipys_cuts(method):
    x, truth = planted(n_per=25, clusters=4, dims=3, seed=5)
    rng = np.random.default_rng(0)
    labels = np.where(rng.uniform(size=len(truth)) < 0.6, truth, -1)  # some points unlabelled
    ks = [2, 3, 4, 5, 7, 10, 20, 40, 99]
    scores = nmi_along_hierarchy(linkage(x, method), labels, ks)
    z = linkage(x, method)
    for k, obtained, nmi in zip(scores.requested_k, scores.obtained_k, scores.nmi):
        flat = cut(z, int(k))
        assert obtained == len(np.unique(flat))
        expected = normalized_mutual_info_score(labels[labels >= 0], flat[labels >= 0])
        assert nmi == pytest.approx(expected, abs=1e-9), (method, k)


def test_centroid_inversions_give_fewer_clusters_than_asked_and_are_counted():
    # Three points of an equilateral triangle: centroid linkage merges two at distance 1, then
    # the third is at sqrt(3)/2 < 1 from their centroid: an inversion.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    z = linkage(x, "centroid")
    assert z[1, 2] < z[0, 2]
    scores = nmi_along_hierarchy(z, np.array([0, 1, 1]), [1, 2, 3])
    assert list(scores.obtained_k) == [1, 1, 3]  # asking for 2 gives 1: the inversion hides that level


def test_good_scenario_by_hand():
    # 4 of class a, 2 of class b.
    assert sorted(good_scenario_sizes({"a": 4, "b": 2}, 3)) == [("a", 2), ("a", 2), ("b", 2)]
    assert sorted(good_scenario_sizes({"a": 5, "b": 2}, 4)) == [("a", 1), ("a", 2), ("a", 2), ("b", 2)]
    h_y = -(4 / 6 * math.log(4 / 6) + 2 / 6 * math.log(2 / 6))
    scores = good_scenario_nmi({"a": 4, "b": 2}, [2, 3, 6])
    assert scores[2] == pytest.approx(1.0)
    assert scores[3] == pytest.approx(2 * h_y / (h_y + math.log(3)))            # three clusters of 2
    assert scores[6] == pytest.approx(2 * h_y / (h_y + math.log(6)))            # singletons


def test_uniform_scenario_by_hand():
    codes = np.array([0, 0, 0, 0, 1, 1])
    h_y = -(4 / 6 * math.log(4 / 6) + 2 / 6 * math.log(2 / 6))
    scores = uniform_scenario_nmi(codes, [6], seed=0)
    assert scores[6] == pytest.approx(2 * h_y / (h_y + math.log(6)))  # k = n: every point alone
    many = uniform_scenario_nmi(np.repeat(np.arange(10), 100), [10], seed=0, repetitions=5)
    assert many[10] < 0.05  # random labels carry (almost) no information


def test_labels_encoding_and_k_grid():
    codes, names = encode_labels(["b", None, "a", "", "b"])
    assert list(codes) == [1, -1, 0, -1, 1] and list(names) == ["a", "b"]
    grid = k_grid(7557)
    assert grid[:19] == list(range(2, 21)) and grid[-1] == 7557 and len(grid) < 80


def test_complete_linkage_refuses_beyond_its_memory_budget():
    x = np.zeros((2000, 2))
    with pytest.raises(AnalysisMemoryError, match="max_condensed_gb"):
        linkage(x, "complete", max_condensed_gb=0.001)


def test_autoencoder_codes_keep_the_neighbourhoods_of_planted_clusters():
    from sklearn.neighbors import NearestNeighbors

    from semspark.analysis.autoencoder import fit_autoencoder

    # Six clusters in 5 latent dimensions, mapped non-linearly into 60 features with noise.
    rng = np.random.default_rng(7)
    latent, truth = planted(n_per=80, clusters=6, dims=5, seed=7)
    mixing = rng.normal(size=(5, 60))
    x = np.tanh(latent @ mixing / 20.0) + 0.05 * rng.normal(size=(len(latent), 60))
    result = fit_autoencoder(x, coding_dim=4, seed=0, epochs=80)
    assert result.codes.shape == (len(x), 4)
    assert result.reconstruction_mse < 0.5 * result.baseline_mse
    # The 10 nearest neighbours of a point in the codes are (nearly all) from its own cluster.
    _, ids = NearestNeighbors(n_neighbors=11).fit(result.codes).kneighbors(result.codes)
    same = (truth[ids[:, 1:]] == truth[:, None]).mean()
    assert same > 0.95
    again = fit_autoencoder(x, coding_dim=4, seed=0, epochs=80)
    assert np.allclose(again.codes, result.codes, atol=1e-4)  # seeded
