"""Pixel size from vendor metadata: TIFF tags and sidecar text files.

Order of trust: the instrument's own tags (Zeiss CZ_SEM, FEI/Thermo, Tescan, Olympus SIS), then
OME-XML physical sizes, then a Hitachi or JEOL sidecar, then an ImageJ calibration (a person may
have set it by hand). Tags are read from the TIFF header without decoding pixels.

A tag describes the frame the instrument wrote. When the tag also names that frame's width (Zeiss'
store resolution, FEI's ResolutionX, the sidecars' data size) and the file is narrower or wider,
the image was resized after acquisition: the pixel size is rescaled by the ratio, and the reading
says so. When the tag names no frame, nothing can be checked here; the bar and label are the
witnesses (scale.py).
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, replace

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
    frame_width: int | None = None     # the width of the frame the tag was written for, if it says
    note: str | None = None            # e.g. "rescaled: tag written for 1024 px, file is 512 px"

    def fitted_to(self, width: int) -> "MetadataScale":
        """This reading for a file ``width`` pixels wide: rescaled when the frame was resized."""
        if not self.frame_width or self.frame_width == width or width <= 0:
            return self
        ratio = self.frame_width / width
        return replace(self, nm_per_px=self.nm_per_px * ratio, bar_px=self.bar_px / ratio if self.bar_px else None,
                       note=f"rescaled x{ratio:.4g}: the tag was written for a {self.frame_width}-px-wide frame, "
                            f"the file is {width} px wide")


def unit_to_nm(unit: str) -> float | None:
    return UNIT_NM.get(unit.strip().lower().replace("\u00b5", "µ"))


def scale_from_tiff(data: bytes) -> MetadataScale | None:
    """Pixel size from the first TIFF page's tags, or None."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            for reader in (_zeiss, _fei, _tescan, _olympus, _ome, _imagej):
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
    frame = None
    store = meta.get("dp_image_store")   # ('Store resolution', '1024 * 768')
    if isinstance(store, tuple) and len(store) >= 2:
        found = re.match(r"\s*(\d+)\s*\*\s*(\d+)", str(store[1]))
        frame = int(found.group(1)) if found else None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = meta.get(key)
        if isinstance(entry, tuple) and len(entry) >= 3:
            factor = unit_to_nm(str(entry[2]))
            if factor:
                return MetadataScale(float(entry[1]) * factor, "CZ_SEM", frame_width=frame)
    return None


def _fei(tif, page) -> MetadataScale | None:
    if not (34680 in page.tags or 34682 in page.tags):
        return None
    meta = tif.fei_metadata or {}
    frame = _positive_int((meta.get("Image") or {}).get("ResolutionX"))
    for section in ("Scan", "EScan", "IScan"):
        width = (meta.get(section) or {}).get("PixelWidth")
        if width:
            return MetadataScale(float(width) * 1e9, "FEI", frame_width=frame)  # metres
    return None


def _positive_int(value) -> int | None:
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _olympus(tif, page) -> MetadataScale | None:
    if not getattr(tif, "is_sis", False):
        return None
    meta = tif.sis_metadata or {}
    size = meta.get("pixelsizex")           # metres
    return MetadataScale(float(size) * 1e9, "Olympus") if size else None


def _ome(tif, page) -> MetadataScale | None:
    if not tif.is_ome:
        return None
    xml = tif.ome_metadata or ""
    size = re.search(r'PhysicalSizeX="([0-9.eE+\-]+)"', xml)
    if not size:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    factor = unit_to_nm(unit.group(1)) if unit else 1e3   # OME's default unit is the micrometre
    # the frame's width: SizeX itself, not the end of PhysicalSizeX (Bio-Formats writes attributes
    # in alphabetical order, PhysicalSizeX="25" before SizeX="512")
    frame = re.search(r'(?<![A-Za-z])SizeX="(\d+)"', xml)
    if not factor:
        return None
    return MetadataScale(float(size.group(1)) * factor, "OME", frame_width=int(frame.group(1)) if frame else None)


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
        size = re.search(r"^\s*DataSize\s*=\s*(\d+)\s*[xX*]\s*(\d+)", text, re.MULTILINE)
        return MetadataScale(float(hitachi.group(1)), "Hitachi", frame_width=int(size.group(1)) if size else None)
    bar = re.search(r"^\s*\$\$SM_MICRON_BAR\s+([0-9.]+)", text, re.MULTILINE)
    marker = re.search(r"^\s*\$\$SM_MICRON_MARKER\s+([0-9.]+)\s*([^\s\d]+)", text, re.MULTILINE)
    if bar and marker:
        factor = unit_to_nm(marker.group(2))
        bar_px = float(bar.group(1))
        if factor and bar_px > 0:
            value = float(marker.group(1))
            size = re.search(r"^\s*\$+CM_FULL_SIZE\s+(\d+)\s+(\d+)", text, re.MULTILINE)
            return MetadataScale(value * factor / bar_px, "JEOL", label_value=value,
                                 label_unit=normalise_unit(marker.group(2)), bar_px=bar_px,
                                 frame_width=int(size.group(1)) if size else None)
    return None


def normalise_unit(unit: str) -> str | None:
    """The canonical unit of a label: nm, um or mm (None for anything else)."""
    factor = unit_to_nm(unit)
    return {1.0: "nm", 1e3: "um", 1e6: "mm"}.get(factor) if factor else None
