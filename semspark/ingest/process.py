"""What happens to each file of a Spark task: bytes in, an image row or a quarantine row out.

Three passes over a batch, so that Tesseract runs once per ``ocr_batch_size`` labels instead of
once per image: (1) per file, hash, recognise, decode, read tags and find the databar and its bar;
(2) one OCR pass over all label crops; (3) per file, combine the scale and store the content area.
Any exception in a file's own work becomes a quarantine row for that file; it never stops the task.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from semspark.config import IngestConfig
from semspark.ingest import databar as databar_mod
from semspark.ingest.formats import BadImage, DecodedImage, decode_gray, sniff_format
from semspark.ingest.metadata import MetadataScale, scale_from_sidecar, scale_from_tiff
from semspark.ingest.ocr import read_labels
from semspark.ingest.scale import ScaleReading, combine
from semspark.phash import hash_hex, perceptual_hash

log = logging.getLogger(__name__)


@dataclass
class RawFile:
    path: str
    data: bytes | None             # None when the file could not be read
    sidecar_text: str | None = None
    read_error: str | None = None
    read_stage: str = "read"         # "limits" when the file was refused unread for its size


@dataclass
class FileOutcome:
    path: str
    sha256: str | None
    ok: bool
    stage: str | None = None       # for quarantine rows: read | limits | decode | scale | store
    reason: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None
    color: str | None = None
    databar_px: int | None = None
    scale: ScaleReading | None = None
    image_png: bytes | None = None  # the content area resized to image_size, PNG-encoded
    phash: str | None = None        # perceptual hash of the content area, 16 hex digits
    extra: dict = field(default_factory=dict)


@dataclass
class _Work:
    raw: RawFile
    sha256: str | None = None
    decoded: DecodedImage | None = None
    metadata: MetadataScale | None = None
    databar: databar_mod.Databar | None = None
    bar: databar_mod.ScaleBar | None = None
    crop: databar_mod.LabelCrop | None = None
    failure: tuple[str, str] | None = None


def process_files(files: list[RawFile], config: IngestConfig, encode=None, store: bool = True) -> list[FileOutcome]:
    """Turn a batch of raw files into outcomes, one per file, in order.

    ``encode`` turns the stored uint8 image into bytes (the Petastorm codec in the ingest job);
    by default PNG through OpenCV. With ``store=False`` only the scale is read (benchmarks).
    """
    works = [_analyse(f, config) for f in files]
    readings = read_labels([w.crop for w in works], config.tesseract_cmd, config.ocr_batch_size,
                           config.ocr_timeout_s)
    return [_finish(w, reading, config, encode or _png, store) for w, reading in zip(works, readings)]


def _analyse(raw: RawFile, config: IngestConfig) -> _Work:
    work = _Work(raw=raw)
    try:
        if raw.data is None:
            raise BadImage(raw.read_stage, raw.read_error or "file could not be read")
        work.sha256 = hashlib.sha256(raw.data).hexdigest()
        if len(raw.data) == 0:
            raise BadImage("read", "empty file (0 bytes)")
        fmt = sniff_format(raw.data)
        if fmt is None:
            raise BadImage("decode", "not an image: content is not TIFF, PNG, JPEG or BMP")
        work.decoded = decode_gray(raw.data, fmt, config.max_pixels)
        if fmt == "tiff":
            work.metadata = scale_from_tiff(raw.data)
        if work.metadata is None and raw.sidecar_text:
            work.metadata = scale_from_sidecar(raw.sidecar_text)
        gray = work.decoded.gray
        work.databar = databar_mod.find_databar(gray)
        if work.databar is not None:
            work.bar = databar_mod.find_scale_bar(gray, work.databar)
            if work.bar is not None:
                work.crop = databar_mod.label_crop(gray, work.databar, work.bar)
    except BadImage as exc:
        work.failure = (exc.stage, exc.reason)
    except Exception as exc:  # an unexpected failure is still only this file's
        log.warning("ingest failed on %s: %r", raw.path, exc)
        work.failure = ("decode", f"unexpected error: {type(exc).__name__}: {exc}")
    return work


def _finish(work: _Work, reading, config: IngestConfig, encode, store: bool = True) -> FileOutcome:
    raw = work.raw
    if work.failure is not None:
        stage, reason = work.failure
        return FileOutcome(path=raw.path, sha256=work.sha256, ok=False, stage=stage, reason=reason)
    decoded = work.decoded
    try:
        scale = combine(work.metadata, reading, work.bar.length_px if work.bar else None,
                        decoded.width, config.metadata_tolerance)
        content_rows = work.databar.top if work.databar is not None else decoded.height
        content = decoded.gray[:content_rows]
        stored = None
        if store:
            size = config.image_size
            stored = encode(cv2.resize(content, (size, size), interpolation=cv2.INTER_AREA))
        return FileOutcome(
            path=raw.path, sha256=work.sha256, ok=True, format=decoded.format, width=decoded.width,
            height=decoded.height, bit_depth=decoded.bit_depth, color=decoded.color,
            databar_px=decoded.height - content_rows, scale=scale, image_png=stored,
            phash=hash_hex(perceptual_hash(content)))
    except Exception as exc:
        log.warning("storing %s failed: %r", raw.path, exc)
        return FileOutcome(path=raw.path, sha256=work.sha256, ok=False, stage="store",
                           reason=f"{type(exc).__name__}: {exc}")


def _png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def read_scale_files(paths: list[str], config: IngestConfig | None = None) -> list[FileOutcome]:
    """The scale reader on local files (and their ``.txt`` sidecars), outside Spark."""
    from pathlib import Path

    config = config or IngestConfig()
    files = []
    for path in paths:
        p = Path(path)
        sidecar = p.with_suffix(".txt")
        try:
            data = p.read_bytes()
            files.append(RawFile(str(p), data, sidecar.read_text(errors="replace") if sidecar.exists() else None))
        except OSError as exc:
            files.append(RawFile(str(p), None, read_error=str(exc)))
    return process_files(files, config)
