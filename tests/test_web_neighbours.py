""""More like this" against scikit-learn's exact nearest neighbours (brute-force cosine) on
embeddings written as Spark lays out sem.predictions (a partition per model version, '/' escaped)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.neighbors import NearestNeighbors

from semspark.schema import PREDICTIONS
from semspark.web.neighbours import Neighbours, NeighboursError
from semspark.web.tables import Warehouse

MODEL = "scorer/3"


def _write(folder, name, ids, embeddings):
    folder.mkdir(parents=True, exist_ok=True)
    column = pa.array([None if e is None else [float(v) for v in e] for e in embeddings], pa.list_(pa.float32()))
    pq.write_table(pa.table({"image_id": ids, "embedding": column}), folder / name)


def _exact(ids, embeddings, query, k):
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(embeddings)
    _, found = nn.kneighbors(embeddings[[list(ids).index(query)]])
    return [ids[i] for i in found[0] if ids[i] != query][:k]


def _ids(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def test_nearest_images_are_scikit_learns_and_follow_the_files(tmp_path):
    rng = np.random.default_rng(0)
    warehouse = Warehouse(tmp_path / "sem.db")
    partition = warehouse.folder(PREDICTIONS) / "model_version=scorer%2F3"
    centres = rng.normal(size=(6, 48))
    embeddings = np.maximum(centres[rng.integers(0, 6, 300)] + 0.4 * rng.normal(size=(300, 48)), 0)  # ReLU features
    ids = _ids(300)
    _write(partition, "part-00000-a.snappy.parquet", ids[:200], embeddings[:200])
    _write(partition, "part-00001-b.snappy.parquet", ids[200:] + [f"{999:064x}"], list(embeddings[200:]) + [None])
    _write(warehouse.folder(PREDICTIONS) / "model_version=other%2F1", "part-00000-c.snappy.parquet",
           ids[:5], rng.normal(size=(5, 48)))                 # another model's: never mixed in
    neighbours = Neighbours(warehouse, tmp_path / "cache")
    for query in (ids[0], ids[150], ids[299]):
        found = neighbours.nearest(MODEL, query, k=10)
        assert [i for i, _ in found] == _exact(ids, embeddings, query, 10)
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        expected = unit[ids.index(found[0][0])] @ unit[ids.index(query)]
        assert found[0][1] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(NeighboursError, match="no embedding of image"):
        neighbours.nearest(MODEL, f"{999:064x}", k=3)     # a failed image has none
    with pytest.raises(NeighboursError, match="no embeddings of nobody/1"):
        neighbours.nearest("nobody/1", ids[0], k=3)

    # a night adds a file; a compaction replaces the first two with one
    more = np.maximum(centres[rng.integers(0, 6, 50)] + 0.4 * rng.normal(size=(50, 48)), 0)
    _write(partition, "part-00002-d.snappy.parquet", _ids(50, 300), more)
    every_id, every = ids + _ids(50, 300), np.vstack([embeddings, more])
    assert [i for i, _ in neighbours.nearest(MODEL, every_id[320], k=10)] == _exact(every_id, every, every_id[320], 10)
    for name in ("part-00000-a.snappy.parquet", "part-00001-b.snappy.parquet"):
        (partition / name).unlink()
    _write(partition, "part-00000-e.snappy.parquet", ids[100:], embeddings[100:])
    kept_ids, kept = every_id[100:], every[100:]
    assert [i for i, _ in neighbours.nearest(MODEL, kept_ids[0], k=10)] == _exact(kept_ids, kept, kept_ids[0], 10)
    with pytest.raises(NeighboursError):
        neighbours.nearest(MODEL, ids[0], k=3)                # compacted away


def test_wide_embeddings_are_projected_and_keep_the_nearest_images(tmp_path):
    """4,096-wide embeddings of a few hundred effective dimensions, projected onto 256 principal
    components: the 10 nearest are nearly scikit-learn's exact ones (recall over 0.9)."""
    rng = np.random.default_rng(1)
    warehouse = Warehouse(tmp_path / "sem.db")
    partition = warehouse.folder(PREDICTIONS) / "model_version=scorer%2F3"
    latent = rng.normal(size=(1000, 300)) * np.geomspace(1, 0.01, 300)     # a decaying spectrum
    embeddings = np.maximum(latent @ rng.normal(size=(300, 4096)), 0)
    ids = _ids(1000)
    _write(partition, "part-00000-a.snappy.parquet", ids, embeddings)
    exact = {query: set(_exact(ids, embeddings, query, 10)) for query in ids[::50]}

    def recall(max_dims: int) -> float:
        neighbours = Neighbours(warehouse, tmp_path / "cache", max_dims=max_dims)
        return float(np.mean([len({i for i, _ in neighbours.nearest(MODEL, q, k=10)} & exact[q]) / 10 for q in exact]))

    assert recall(256) > 0.9
    assert recall(32) < 0.8          # a projection that loses the neighbourhoods is seen (0.52 measured)
    assert len(list((tmp_path / "cache").rglob("basis-4096x256.npy"))) == 1    # fitted once, kept
