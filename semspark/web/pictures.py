"""Pixels for the web app: thumbnails cut once from the stored dataset images and cached.

A thumbnail is made the first time a page shows the image, from the PNG the ingest stored in the
Petastorm dataset (the content above the databar, ``ingest.image_size`` square), and kept under
``$SEMSPARK_HOME/web/thumbnails/<px>/``; the missing ones of a page are read in one query, from
the dataset files of their scale bins only. Images are named by their id (a SHA-256) and nothing
else: no path of a request ever reaches the file system.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from semspark.web.tables import sql_literal

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


def valid_image_id(image_id: str) -> bool:
    return bool(IMAGE_ID.match(image_id or ""))


class Pictures:
    def __init__(self, dataset_root: Path, cache: Path, thumbnail_px: int):
        self.dataset_root, self.cache, self.px = dataset_root, cache, thumbnail_px

    def _thumb_path(self, image_id: str) -> Path:
        assert valid_image_id(image_id), image_id
        return self.cache / str(self.px) / image_id[:2] / f"{image_id}.png"

    def cached(self, image_id: str) -> bytes | None:
        path = self._thumb_path(image_id)
        return path.read_bytes() if path.exists() else None

    def _dataset_files(self, scale_bins: set[str | None]) -> list[str]:
        """The dataset's files of those bins (all of them when a bin is unknown)."""
        from urllib.parse import unquote

        from semspark.dataset import bin_of, data_files

        every = data_files(self.dataset_root)
        wanted = None if None in scale_bins or not scale_bins else scale_bins
        return [str(self.dataset_root / f) for f in every if wanted is None or unquote(bin_of(f)) in wanted]

    def stored(self, wanted: dict[str, str | None]) -> dict[str, bytes]:
        """The stored PNG of each image id (id -> scale bin, None when unknown) the dataset holds."""
        import duckdb

        ids = [i for i in wanted if valid_image_id(i)]
        files = self._dataset_files({wanted[i] for i in ids})
        if not ids or not files:
            return {}
        con = duckdb.connect(":memory:")
        try:
            rows = con.execute(
                f"SELECT image_id, image FROM read_parquet([{', '.join(sql_literal(f) for f in files)}]) "
                f"WHERE image_id IN ({', '.join('?' for _ in ids)})", ids).fetchall()
        finally:
            con.close()
        return {image_id: bytes(png) for image_id, png in rows if png is not None}

    def thumbnails(self, wanted: dict[str, str | None]) -> dict[str, bytes]:
        """Thumbnails of the ids (id -> scale bin), made and cached for those not made yet."""
        out = {i: b for i in wanted if valid_image_id(i) and (b := self.cached(i)) is not None}
        missing = {i: b for i, b in wanted.items() if valid_image_id(i) and i not in out}
        for image_id, png in self.stored(missing).items():
            out[image_id] = self._save(image_id, self._shrink(png))
        return out

    def _shrink(self, png: bytes) -> bytes:
        import cv2
        import numpy as np

        pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ValueError("the stored image cannot be decoded")
        h, w = pixels.shape[:2]
        scale = self.px / max(h, w)
        if scale < 1:
            pixels = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".png", pixels)
        if not ok:
            raise ValueError("the thumbnail cannot be encoded")
        return encoded.tobytes()

    def _save(self, image_id: str, png: bytes) -> bytes:
        path = self._thumb_path(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{uuid.uuid4().hex}.tmp")
        temporary.write_bytes(png)
        os.replace(temporary, path)   # two requests making the same one: either wins, both whole
        return png
