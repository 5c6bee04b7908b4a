""""More like this": the images nearest to one by a model's embedding (cosine similarity).

The embeddings stay on disk in sem.predictions (hundreds to thousands of floats per image; the
gallery's copies leave them out). For a model version they are read once from its partition's
Parquet files with pyarrow, file by file (a night adds files: only those are read again; a file a
compaction replaced is dropped with it), made unit length, and kept in memory as one matrix: a
question is then one matrix-vector product over every image (150,000 x 256 floats: milliseconds).

Embeddings wider than ``max_dims`` (AlexNet's 4,096) are projected first onto their first
``max_dims`` principal components, fitted once per model version on up to ``FIT_ROWS`` of its
embeddings and kept (a model version's embeddings never change, so neither does its basis): 150,000
images then hold 150 MB instead of 2.4 GB. The paper measures the intrinsic dimension of these
embeddings in the tens (Section 3, 2-NN), so the nearest images under the projection are nearly
the same ones (bench/web_bench.py measures the share, recall at 12, against exact cosine).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from semspark.schema import PREDICTIONS
from semspark.web.tables import Warehouse

FIT_ROWS = 20_000


class NeighboursError(LookupError):
    """The question has no answer (no embedding of that image for that model); the message says why."""


class Neighbours:
    def __init__(self, warehouse: Warehouse, cache: Path, max_dims: int = 256):
        self.warehouse, self.cache, self.max_dims = warehouse, cache, max_dims
        self._blocks: dict[str, dict[tuple, tuple[np.ndarray, np.ndarray]]] = {}   # model -> file key -> (ids, rows)
        self._joined: dict[str, tuple[tuple, np.ndarray, np.ndarray, dict]] = {}    # model -> (keys, ids, rows, position)
        self._basis: dict[str, np.ndarray | None] = {}
        self._lock = threading.Lock()

    def nearest(self, model_version: str, image_id: str, k: int = 12) -> list[tuple[str, float]]:
        """(image id, cosine similarity) of the ``k`` images most like ``image_id``, most similar first."""
        with self._lock:
            ids, rows, position = self._index(model_version)
        if image_id not in position:
            raise NeighboursError(f"{model_version} has no embedding of image {image_id} (not scored by it yet)")
        similarity = rows @ rows[position[image_id]]
        similarity[position[image_id]] = -np.inf
        k = min(k, len(ids) - 1)
        if k <= 0:
            return []
        top = np.argpartition(-similarity, k - 1)[:k]
        top = top[np.lexsort((ids[top], -similarity[top]))]    # ties in a stable order
        return [(str(ids[i]), float(similarity[i])) for i in top]

    def warm(self, model_version: str | None) -> None:
        """Make the model's index now (a server starting: its first "more like this" then answers at
        once); a failure only means the first question makes it."""
        if model_version is None:
            return
        try:
            with self._lock:
                self._index(model_version)
        except Exception as exc:    # noqa: BLE001 - the question itself reports it properly
            import logging

            logging.getLogger(__name__).info("more like this: no index of %s yet (%s)", model_version, exc)

    def _files(self, model_version: str) -> list[tuple]:
        import os

        out = []
        for path, values in self.warehouse.files(PREDICTIONS):
            if values.get("model_version") == model_version:
                stat = os.stat(path)
                out.append((path, stat.st_size, stat.st_mtime_ns))
        return out

    def _index(self, model_version: str):
        keys = tuple(self._files(model_version))
        joined = self._joined.get(model_version)
        if joined is not None and joined[0] == keys:
            return joined[1:]
        blocks = self._blocks.setdefault(model_version, {})
        for gone in set(blocks) - set(keys):
            del blocks[gone]
        for key in keys:
            if key not in blocks:
                ids, embeddings = _read_embeddings(key[0])
                blocks[key] = (ids, self._reduce(model_version, embeddings, keys) if len(ids) else None)
        filled = [key for key in keys if blocks[key][1] is not None]
        if not filled:
            raise NeighboursError(f"no embeddings of {model_version}: run semspark infer --model {model_version}")
        ids = np.concatenate([blocks[key][0] for key in filled])
        rows = np.concatenate([blocks[key][1] for key in filled])
        # an image scored twice by one version (it should not be) counts once: the last row listed
        position = {image_id: i for i, image_id in enumerate(ids)}
        if len(position) < len(ids):
            keep = np.array(sorted(position.values()))
            ids, rows = ids[keep], rows[keep]
            position = {image_id: i for i, image_id in enumerate(ids)}
        self._joined[model_version] = (keys, ids, rows, position)
        return ids, rows, position

    def _reduce(self, model_version: str, embeddings: np.ndarray, keys) -> np.ndarray:
        """Unit rows, projected onto the model's principal components when wider than max_dims."""
        if embeddings.shape[1] > self.max_dims:
            basis = self._basis_of(model_version, embeddings.shape[1], keys)
            embeddings = embeddings @ basis
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)

    def _basis_of(self, model_version: str, width: int, keys) -> np.ndarray:
        if model_version in self._basis:
            return self._basis[model_version]
        path = self.cache / model_version.replace("/", "--") / f"basis-{width}x{self.max_dims}.npy"
        if path.exists():
            basis = np.load(path)
        else:
            sample, taken = [], 0
            for key in keys:
                if taken >= FIT_ROWS:
                    break
                part = _read_embeddings(key[0])[1][:FIT_ROWS - taken]
                if len(part):
                    sample.append(part)
                    taken += len(part)
            matrix = np.concatenate(sample)
            matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            # principal directions of the unit rows (no centring: cosine is about directions from 0);
            # randomized SVD: seconds for 20,000 x 4,096, where a full one takes minutes
            from sklearn.utils.extmath import randomized_svd

            _, _, vt = randomized_svd(matrix, self.max_dims, n_iter=4, random_state=0)
            basis = np.ascontiguousarray(vt[:self.max_dims].T.astype(np.float32))
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.tmp.npy")
            np.save(temporary, basis)
            temporary.replace(path)
        self._basis[model_version] = basis
        return basis


def _read_embeddings(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, embeddings as an n x d float32 matrix) of one predictions file; rows without an
    embedding (a failed image) are left out."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["image_id", "embedding"])
    table = table.filter(pc.invert(pc.is_null(table["embedding"])))
    if table.num_rows == 0:
        return np.array([], dtype=str), np.zeros((0, 0), np.float32)
    embedding = table["embedding"].combine_chunks()
    lengths = pc.list_value_length(embedding).to_numpy()
    if lengths.min() != lengths.max():
        raise ValueError(f"{path}: embeddings of different lengths ({lengths.min()} to {lengths.max()})")
    flat = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return table["image_id"].to_numpy().astype(str), flat.reshape(len(lengths), int(lengths[0]))
