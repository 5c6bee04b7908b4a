"""Pixel size from vendor metadata: TIFF tags and sidecar text files.

Order of trust: the instrument's own tags (Zeiss CZ_SEM, FEI/Thermo, Tescan), then a Hitachi or
JEOL sidecar, then an ImageJ calibration (a person may have set it by hand). Tags are read from
the TIFF header without decoding pixels.
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

# nanometres in one unit, for every spelling the vendors and ImageJ use
UNIT_NM = {
    "m": 1e9, "mm": 1e6, "cm": 1e7, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3,
    "nm": 1.0, "pm": 1e-3, "inch": 2.54e7, "in": 2.54e7, "\\u00b5m": 1e3,
}


@dataclass(frozen=True)
class MetadataScale:
    nm_per_px: float
    source: str                 # CZ_SEM | FEI | Tescan | Hitachi | JEOL | ImageJ
    label_value: float | None = None   # a sidecar may also name the scale bar's label
    label_unit: str | None = None
    bar_px: float | None = None


def unit_to_nm(unit: str) -> float | None:
    return UNIT_NM.get(unit.strip().lower().replace("\u00b5", "µ"))


def scale_from_tiff(data: bytes) -> MetadataScale | None:
    """Pixel size from the first TIFF page's tags, or None."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            for reader in (_zeiss, _fei, _tescan, _imagej):
                found = reader(tif, page)
                if found is not None and found.nm_per_px > 0:
                    return found
    except Exception as exc:  # a broken tag must not lose the image: the databar may still work
        log.debug("unreadable TIFF tags: %s", exc)
    return None


def _zeiss(tif, page) -> MetadataScale | None:
    if 34118 not in page.tags:
        return None
    meta = tif.sem_metadata or {}
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = meta.get(key)
        if isinstance(entry, tuple) and len(entry) >= 3:
            factor = unit_to_nm(str(entry[2]))
            if factor:
                return MetadataScale(float(entry[1]) * factor, "CZ_SEM")
    return None


def _fei(tif, page) -> MetadataScale | None:
    if not (34680 in page.tags or 34682 in page.tags):
        return None
    meta = tif.fei_metadata or {}
    for section in ("Scan", "EScan", "IScan"):
        width = (meta.get(section) or {}).get("PixelWidth")
        if width:
            return MetadataScale(float(width) * 1e9, "FEI")  # metres
    return None


def _tescan(tif, page) -> MetadataScale | None:
    tag = page.tags.get(50431)
    if tag is None:
        return None
    value = tag.value
    text = value.decode("latin-1", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    match = re.search(r"PixelSizeX\s*=\s*([0-9.+\-eE]+)", text)
    return MetadataScale(float(match.group(1)) * 1e9, "Tescan") if match else None  # metres


def _imagej(tif, page) -> MetadataScale | None:
    if not tif.is_imagej:
        return None
    unit = str((tif.imagej_metadata or {}).get("unit", "")).strip()
    factor = unit_to_nm(unit.replace("\\u00B5", "µ"))
    resolution = page.tags.get(282)  # XResolution: pixels per unit
    if not factor or resolution is None:
        return None
    num, den = resolution.value
    px_per_unit = num / den if den else 0
    if px_per_unit <= 0 or (num, den) == (1, 1):  # 1/1 means "not calibrated"
        return None
    return MetadataScale(factor / px_per_unit, "ImageJ")


def scale_from_sidecar(text: str) -> MetadataScale | None:
    """Hitachi (``[SemImageFile] PixelSize=`` in nm) or JEOL (``$$SM_MICRON_BAR`` px and marker)."""
    hitachi = re.search(r"^\s*PixelSize\s*=\s*([0-9.+\-eE]+)", text, re.MULTILINE)
    if hitachi and float(hitachi.group(1)) > 0:
        return MetadataScale(float(hitachi.group(1)), "Hitachi")
    bar = re.search(r"^\s*\$\$SM_MICRON_BAR\s+([0-9.]+)", text, re.MULTILINE)
    marker = re.search(r"^\s*\$\$SM_MICRON_MARKER\s+([0-9.]+)\s*([^\s\d]+)", text, re.MULTILINE)
    if bar and marker:
        factor = unit_to_nm(marker.group(2))
        bar_px = float(bar.group(1))
        if factor and bar_px > 0:
            value = float(marker.group(1))
            return MetadataScale(value * factor / bar_px, "JEOL", label_value=value,
                                 label_unit=normalise_unit(marker.group(2)), bar_px=bar_px)
    return None


def normalise_unit(unit: str) -> str | None:
    """The canonical unit of a label: nm, um or mm (None for anything else)."""
    factor = unit_to_nm(unit)
    return {1.0: "nm", 1e3: "um", 1e6: "mm"}.get(factor) if factor else None
