"""An image's scale reading drawn on its databar, for the image page: why the image has its scale.

The dataset stores only the content above the databar, so the reading is made again from the
image's original file (a path sem.files holds for the image id, never one from a request) by the
reader the ingest runs (semspark/ingest/reader.py, with the vendor metadata of the file and its
sidecar), and drawn as ``semspark scale --debug`` draws it: the band, the bar with its measured
length, the label boxed, under a caption saying what was read. It is made once per image and
reader version and kept under ``$SEMSPARK_HOME/web/scale_readings/``. A file that is gone, that
cannot be read, or whose bytes are no longer this image (its SHA-256 changed) is said so.

One reading at a time: Tesseract takes the cores it gets, and a page opened twice, or a script
asking for many images, must not start many readings together (the second request waits and finds
the first one's result).
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

from semspark.web.pictures import valid_image_id


class ScaleReadings:
    def __init__(self, ingest_config, cache: Path):
        from semspark.ingest.scale import READER_VERSION

        self.ingest_config = ingest_config
        self.folder = cache / f"reader-{READER_VERSION}"
        self._one_at_a_time = threading.Lock()

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        assert valid_image_id(image_id), image_id
        base = self.folder / image_id[:2] / image_id
        return base.with_suffix(".json"), base.with_suffix(".png")

    def picture(self, image_id: str) -> bytes | None:
        """The drawn reading (PNG) once ``reading`` made it; None when the file could not be read."""
        path = self._paths(image_id)[1]
        return path.read_bytes() if path.exists() else None

    def reading(self, image_id: str, files: list[dict]) -> dict:
        """What the reader finds in the image's file: {"ok", "file", "scale": {...}, "reading": {...},
        "caption"} or {"ok": False, "reason"}. ``files``: the image's rows of sem.files (path, role)."""
        summary_path, _ = self._paths(image_id)
        if summary_path.exists():
            return json.loads(summary_path.read_text())
        with self._one_at_a_time:
            if summary_path.exists():     # made while this request waited
                return json.loads(summary_path.read_text())
            summary, picture = self._read(image_id, files)
            if summary.pop("keep", True):
                if picture is not None:
                    _write(summary_path.with_suffix(".png"), picture)
                _write(summary_path, json.dumps(summary).encode())
            return summary

    def _read(self, image_id: str, files: list[dict]) -> tuple[dict, bytes | None]:
        import hashlib

        import cv2

        from semspark.ingest.debug import debug_picture, reading_caption, reading_summary
        from semspark.ingest.process import RawFile, process_files
        from semspark.storage import decode_text, read_bytes

        images = [f["path"] for f in files if f["role"] == "image"]
        sidecars = {_stem(f["path"]): f["path"] for f in files if f["role"] == "sidecar"}
        if not images:
            return {"ok": False, "reason": "sem.files names no file of this image", "keep": False}, None
        problems = []
        for path in images:
            try:
                data = read_bytes(path)
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
                continue
            if hashlib.sha256(data).hexdigest() != image_id:
                problems.append(f"{path} has changed since it was ingested (its bytes are another image now)")
                continue
            sidecar_text = None
            if _stem(path) in sidecars:
                try:
                    sidecar_text = decode_text(read_bytes(sidecars[_stem(path)]))
                except OSError:
                    pass   # the image's own databar and tags still tell the scale
            outcome = process_files([RawFile(path, data, sidecar_text)], self.ingest_config, store=False,
                                    keep_reading=True)[0]
            if not outcome.ok:
                return {"ok": False, "file": path, "reason": f"{outcome.stage}: {outcome.reason}"}, None
            reading = outcome.extra["reading"]
            caption = reading_caption(outcome.scale, reading)
            ok, png = cv2.imencode(".png", debug_picture(outcome.extra["decoded"], reading, caption))
            summary = {"ok": True, "file": path, "caption": caption, "scale": outcome.scale.as_dict(),
                       "databar_px": outcome.databar_px, "reading": reading_summary(reading)}
            return summary, png.tobytes() if ok else None
        # not kept: the file may come back (a mounted share that was down)
        return {"ok": False, "reason": "the original file cannot be read: " + "; ".join(problems), "keep": False}, None


def _stem(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{uuid.uuid4().hex}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
