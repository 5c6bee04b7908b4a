"""What happens to each file of a Spark task: bytes in, an image row or a quarantine row out.

Each file is read on its own, start to end: hash, recognise, decode, read tags, read the databar
(one small Tesseract call through the worker's engine), combine the scale and store the content
area. Nothing of one file depends on another, so any order or grouping of files gives the same rows.
Any exception in a file's own work becomes a quarantine row for that file; it never stops the task.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from semspark.config import IngestConfig
from semspark.ingest.formats import BadImage, decode_gray, sniff_format
from semspark.ingest.metadata import scale_from_sidecar, scale_from_tiff
from semspark.ingest.ocr import OcrUnavailable, find_tessdata
from semspark.ingest.reader import DatabarReading, read_databar, read_field_width
from semspark.ingest.scale import ScaleReading, combine, corrected
from semspark.phash import hash_hex, perceptual_hash

log = logging.getLogger(__name__)


@dataclass
class RawFile:
    path: str
    data: bytes | None             # None when the file could not be read
    sidecar_text: str | None = None
    read_error: str | None = None
    read_stage: str = "io"           # "limits" when the file was refused unread for its size


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
    chroma: float | None = None     # appearance of the content area (content_appearance)
    contrast: float | None = None
    extra: dict = field(default_factory=dict)


def process_files(files: list[RawFile], config: IngestConfig, encode=None, store: bool = True,
                  keep_reading: bool = False) -> list[FileOutcome]:
    """Turn raw files into outcomes, one per file, in order, each independent of the others.

    ``encode`` turns the stored uint8 image into bytes (the Petastorm codec in the ingest job);
    by default PNG through OpenCV. With ``store=False`` only the scale is read (benchmarks, the
    ``scale`` command). With ``keep_reading`` the databar reading and the decoded image stay in
    ``extra`` (for ``semspark scale --debug``).
    """
    tessdata = find_tessdata(config.tessdata_dir)
    return [process_file(f, config, tessdata, encode or _png, store, keep_reading) for f in files]


def process_file(raw: RawFile, config: IngestConfig, tessdata: str, encode, store: bool = True,
                 keep_reading: bool = False) -> FileOutcome:
    sha256 = None
    try:
        if raw.data is None:
            raise BadImage(raw.read_stage, raw.read_error or "file could not be read")
        sha256 = hashlib.sha256(raw.data).hexdigest()
        decoded, metadata, reading = read_file_scale(raw.data, raw.sidecar_text, config, tessdata)
    except BadImage as exc:
        return FileOutcome(path=raw.path, sha256=sha256, ok=False, stage=exc.stage, reason=exc.reason)
    except OcrUnavailable:
        raise                       # no engine: nothing can be read anywhere, fail the job loudly
    except Exception as exc:
        raise SemsparkBug(raw.path, exc) from exc
    try:
        scale = scale_of(decoded, metadata, reading, config)
        content = stored_content(decoded, reading, config, encode if store else None)
        extra = {"reading": reading, "decoded": decoded} if keep_reading else {}
        return FileOutcome(
            path=raw.path, sha256=sha256, ok=True, format=decoded.format, width=decoded.width,
            height=decoded.height, bit_depth=decoded.bit_depth, color=decoded.color,
            databar_px=content["databar_px"], scale=scale, image_png=content["image"], phash=content["phash"],
            chroma=content["chroma"], contrast=content["contrast"], extra=extra)
    except Exception as exc:
        raise SemsparkBug(raw.path, exc) from exc


class SemsparkBug(RuntimeError):
    """An exception in semspark's own code while processing a file. Bad input is found by the
    decoders and the checks before them (BadImage, a quarantine row with its reason); anything else
    is a bug, so it fails the task loudly with the file named, instead of hiding in sem.quarantine
    as if the file were bad (and being skipped forever after)."""

    def __init__(self, path: str, cause: BaseException):
        super().__init__(f"semspark failed on {path}: {type(cause).__name__}: {cause} (a bug in semspark, "
                         "not a bad file: please report it with this file; the run can be repeated once fixed)")
        self.path = path


def databar_height(decoded, reading: DatabarReading) -> int:
    """Rows cut off the bottom of the image: from the data band's top down (0 without a band)."""
    return decoded.height - reading.databar_top if reading.databar_top is not None else 0


def stored_content(decoded, reading: DatabarReading, config: IngestConfig, encode=None) -> dict:
    """What is kept of the image above its databar: the databar's height, the stored training image
    (``encode``d at ``image_size``; None without ``encode``), its perceptual hash and appearance.
    Ingest stores it; rescale stores it again when a newer reading cuts the databar elsewhere."""
    content_rows = decoded.height - databar_height(decoded, reading)
    content = decoded.gray[:content_rows]
    image = None
    if encode is not None:
        size = config.image_size
        image = encode(cv2.resize(content, (size, size), interpolation=cv2.INTER_AREA))
    return {"databar_px": decoded.height - content_rows, "image": image, "phash": hash_hex(perceptual_hash(content)),
            **content_appearance(content, None if decoded.rgb is None else decoded.rgb[:content_rows])}


def read_file_scale(data: bytes, sidecar_text: str | None, config: IngestConfig, tessdata: str):
    """Decode one file and read what witnesses its scale: (decoded, vendor metadata, databar reading)."""
    if len(data) == 0:
        raise BadImage("read", "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage("decode", "not an image: content is not TIFF, PNG, JPEG or BMP")
    decoded = decode_gray(data, fmt, config.max_pixels)
    metadata = scale_from_tiff(data) if fmt == "tiff" else None
    if metadata is None and sidecar_text:
        metadata = scale_from_sidecar(sidecar_text)
    return decoded, metadata, read_databar(decoded.gray, decoded.rgb, tessdata)


def scale_of(decoded, metadata, reading: DatabarReading, config: IngestConfig, correction=None) -> ScaleReading:
    """The image's scale from its witnesses; ``correction`` = (value, unit, bar_px or None, source)."""
    bar_px = reading.bar.length_px if reading.bar else None
    if correction is not None:
        value, unit, corrected_bar, source = correction
        return corrected(metadata, bar_px, decoded.width, config.metadata_tolerance, value, unit, corrected_bar, source)
    scale = combine(metadata, reading.label, bar_px, decoded.width, config.metadata_tolerance)
    if scale.scale_mismatch:   # tag and bar disagree: the field width printed in the band decides
        field_width = read_field_width(reading, find_tessdata(config.tessdata_dir))
        if field_width is not None:
            scale = combine(metadata, reading.label, bar_px, decoded.width, config.metadata_tolerance, field_width)
    if reading.notes and scale.scale_confidence != "high":
        scale = _with_notes(scale, reading)
    return scale


def _with_notes(scale: ScaleReading, reading: DatabarReading) -> ScaleReading:
    from dataclasses import replace

    notes = "; ".join(reading.notes[:3])
    return replace(scale, scale_reason=f"{scale.scale_reason}; databar: {notes}" if scale.scale_reason else notes)


def content_appearance(gray: np.ndarray, rgb: np.ndarray | None) -> dict[str, float]:
    """Two properties of the content area (above the databar) that tell an SEM image from things
    that are not one, whatever a model learned: ``chroma``, the mean spread between the colour
    channels (0 for a grey image: an SEM detector records one intensity, so a photograph or a
    stained light micrograph stands out), and ``contrast``, the standard deviation of the grey
    levels (RMS contrast, 0 for a blank frame). Both as a fraction of full scale, from a regular
    grid of about 256 x 256 pixels (the statistics of a 1024 px image do not need all of it: the
    full colour image would cost more than reading its scale)."""
    step = max(1, min(gray.shape[:2]) // 256)
    sample = gray[::step, ::step]
    contrast = float(sample.std()) / 255.0 if sample.size else 0.0
    chroma = 0.0
    if rgb is not None and rgb.ndim == 3 and rgb.size:
        channels = cv2.split(np.ascontiguousarray(rgb[::step, ::step]))
        spread = cv2.subtract(cv2.max(cv2.max(channels[0], channels[1]), channels[2]),
                              cv2.min(cv2.min(channels[0], channels[1]), channels[2]))
        chroma = float(cv2.mean(spread)[0]) / 255.0
    return {"chroma": round(chroma, 6), "contrast": round(contrast, 6)}


def _png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def read_scale_files(paths: list[str], config: IngestConfig | None = None,
                     keep_reading: bool = False) -> list[FileOutcome]:
    """The scale reader on local files (and their ``.txt`` sidecars), outside Spark."""
    from pathlib import Path

    from semspark.storage import decode_text

    config = config or IngestConfig()
    files = []
    for path in paths:
        p = Path(path)
        sidecar = p.with_suffix(".txt")
        try:
            data = p.read_bytes()
            text = decode_text(sidecar.read_bytes()) if sidecar.exists() else None
            files.append(RawFile(str(p), data, text))
        except OSError as exc:
            files.append(RawFile(str(p), None, read_error=str(exc)))
    return process_files(files, config, store=False, keep_reading=keep_reading)
