"""``semspark synth``: a folder of SEM-like images in the published data set's layout, with truth.

Writes ``OUT/<Category>/<name>.<ext>`` and ``OUT/manifest.csv`` (one row per image: category,
layout, format, scale label, bar length in pixels, nm per pixel, embedded metadata). The same seed
always gives the same files, byte for byte.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from semspark.synth.databars import LAYOUTS, draw
from semspark.synth.morphology import CATEGORIES, render

log = logging.getLogger(__name__)

# (value, unit, how often): 1 um and 2 um are the paper's subset, so they are the most common.
SCALES = ((200, "nm", 1), (500, "nm", 1), (1, "um", 3), (2, "um", 3), (5, "um", 1), (10, "um", 1),
          (20, "um", 1), (100, "um", 1), (1, "mm", 1))
FORMATS = ("tiff8", "tiff16", "png", "jpeg")
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class SynthRecord:
    file: str                 # relative to the output folder
    category: str
    layout: str
    format: str
    bit_depth: int
    width: int
    height: int
    databar_px: int
    scale_value: float
    scale_unit: str
    scale_label: str          # as printed in the databar
    scale_bin: str
    bar_px: int
    nm_per_px: float
    metadata: str             # none | FEI | ImageJ | Tescan | Hitachi | JEOL
    metadata_nm_per_px: float | None
    stale_metadata: bool      # the tag was written for other pixels: ingest must flag it


def generate(out: str | Path, n: int, seed: int = 0, width: int = 512, height: int = 384,
             metadata_share: float = 0.3, stale_share: float = 0.05) -> list[SynthRecord]:
    """Write ``n`` images and the manifest; return the manifest rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = np.array([s[2] for s in SCALES], dtype=float)
    records = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        category = CATEGORIES[i % len(CATEGORIES)]
        # The first len(SCALES) x len(LAYOUTS) images walk through every scale in every layout, so
        # small sets cover them all; after that scales follow their weights.
        layout = LAYOUTS[(i // len(SCALES)) % len(LAYOUTS)]
        cover = len(SCALES) * len(LAYOUTS)
        scale_index = i % len(SCALES) if i < cover else rng.choice(len(SCALES), p=weights / weights.sum())
        value, unit, _ = SCALES[scale_index]
        fmt = FORMATS[(i // len(CATEGORIES) + i) % len(FORMATS)]
        records.append(_one(out, i, rng, category, layout, value, unit, fmt, width, height,
                            metadata_share, stale_share))
    with open(out / MANIFEST, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(records[0]).keys()) if records else ["file"])
        writer.writeheader()
        for record in records:
            writer.writerow(asdict(record))
    log.info("wrote %d synthetic images and %s to %s", n, MANIFEST, out)
    return records


def _one(out, i, rng, category, layout, value, unit, fmt, width, height, metadata_share, stale_share):
    content = (render(category, rng, height, width) * 255).round().astype(np.uint8)
    bar_px = int(rng.integers(int(width * 0.35), int(width * 0.6))) if layout == "tabletop" \
        else int(rng.integers(int(width * 0.1), int(width * 0.25)))
    unit_nm = {"nm": 1.0, "um": 1e3, "mm": 1e6}[unit]
    nm_per_px = value * unit_nm / bar_px
    shown_unit = {"um": "µm"}.get(unit, unit)
    micro = "µ" if layout != "fei" else str(rng.choice(["μ", "µ"]))  # micro sign or Greek mu
    label = f"{value:g} {shown_unit}"
    drawn = draw(layout, content, label, bar_px, rng, micro=micro)
    image = drawn.image

    metadata, meta_nm, stale = "none", None, False
    extension = {"tiff8": "tif", "tiff16": "tif", "png": "png", "jpeg": "jpg"}[fmt]
    if rng.random() < metadata_share:
        metadata = str(rng.choice(["FEI", "ImageJ", "Tescan"] if extension == "tif" else ["Hitachi", "JEOL"]))
        stale = bool(rng.random() < stale_share / max(metadata_share, 1e-9)) and metadata != "JEOL"
        meta_nm = nm_per_px * (1.3 if stale else 1.0)  # a stale tag: written before a resize
    name = f"{category.lower()}_{i:05d}.{extension}"
    rel = f"{category}/{name}"
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    bit_depth = 16 if fmt == "tiff16" else 8
    _write(path, image, fmt, metadata, meta_nm, rng)
    if metadata in ("Hitachi", "JEOL"):
        path.with_suffix(".txt").write_text(_sidecar(metadata, meta_nm, bar_px, value, unit, image.shape,
                                                     name_frame=not stale))
    return SynthRecord(
        file=rel, category=category, layout=layout, format=fmt, bit_depth=bit_depth,
        width=image.shape[1], height=image.shape[0], databar_px=drawn.databar_px,
        scale_value=float(value), scale_unit=unit, scale_label=label.replace("µ", micro),
        scale_bin=f"{value:g}{unit}", bar_px=bar_px, nm_per_px=nm_per_px, metadata=metadata,
        metadata_nm_per_px=meta_nm, stale_metadata=stale)


def _write(path: Path, image: np.ndarray, fmt: str, metadata: str, meta_nm: float | None, rng) -> None:
    import tifffile

    if fmt in ("png", "jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(88, 97))] if fmt == "jpeg" else []
        if not cv2.imwrite(str(path), image, params):
            raise OSError(f"could not write {path}")
        return
    pixels = image.astype(np.uint16) * 257 if fmt == "tiff16" else image
    if metadata == "ImageJ":
        px_per_um = 1000.0 / meta_nm
        tifffile.imwrite(path, pixels, imagej=True, resolution=(px_per_um, px_per_um), metadata={"unit": "um"})
        return
    extratags = []
    if metadata == "FEI":
        text = f"[User]\nDate=01/02/2024\n[Beam]\nHV=10000\n[Scan]\nPixelWidth={meta_nm * 1e-9:.6e}\n" \
               f"PixelHeight={meta_nm * 1e-9:.6e}\n"
        extratags.append((34682, "s", 0, text, True))
    elif metadata == "Tescan":
        text = f"[MAIN]\r\nDevice=VEGA3\r\nPixelSizeX={meta_nm * 1e-9:.7e}\r\nPixelSizeY={meta_nm * 1e-9:.7e}\r\n"
        extratags.append((50431, "B", 0, text.encode(), True))
    tifffile.imwrite(path, pixels, photometric="minisblack", extratags=extratags)


def _sidecar(vendor: str, nm_per_px: float, bar_px: int, value, unit, shape, name_frame: bool = True) -> str:
    # A stale sidecar here is one written for other pixels without saying for which frame (so only
    # the bar can tell); one that names this frame describes these pixels.
    if vendor == "Hitachi":
        size = f"DataSize={shape[1]}x{shape[0]}\n" if name_frame else ""
        return (f"[SemImageFile]\nInstructName=S-4800\n{size}"
                f"PixelSize={nm_per_px:.4f}\nMagnification=5000\n")
    return (f"$CM_FORMAT JEOL/SEM\n$CM_FULL_SIZE {shape[1]} {shape[0]}\n$CM_MAG 5000\n"
            f"$$SM_MICRON_BAR {bar_px}\n$$SM_MICRON_MARKER {value:g}{unit}\n")


def read_manifest(folder: str | Path) -> list[dict]:
    with open(Path(folder) / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh))
