"""Combine vendor metadata and the measured databar into one scale per image, and bin it.

Rules (DESIGN.md, "Scale"):
- the label value and unit come from the databar (OCR), or from a sidecar that names them (JEOL);
- nm_per_px comes from the vendor metadata when it agrees with the measured bar within
  ``metadata_tolerance``; when they disagree the bar wins (a resized image keeps a stale tag) and
  ``scale_mismatch`` is set; with only one of the two, that one;
- scale_bin is the label normalised as the paper bins (``1um``, ``2um``, ``200nm``). With metadata
  but no readable label, the bin is the 1-2-5 bar length nearest a tenth of the field of view,
  and scale_source says the scale came from a tag; with neither, ``unknown``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from semspark.ingest.metadata import MetadataScale, unit_to_nm
from semspark.ingest.ocr import LabelReading

UNKNOWN_BIN = "unknown"


@dataclass(frozen=True)
class ScaleReading:
    scale_value: float | None
    scale_unit: str | None
    scale_bar_px: float | None
    nm_per_px: float | None
    scale_source: str              # CZ_SEM | FEI | Tescan | Hitachi | JEOL | ImageJ | ocr | none
    scale_bin: str
    scale_mismatch: bool
    metadata_nm_per_px: float | None
    scale_label_text: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def format_bin(value: float, unit: str) -> str:
    return f"{value:g}{unit}"


def combine(metadata: MetadataScale | None, label: LabelReading | None, bar_px: float | None,
            width: int, tolerance: float) -> ScaleReading:
    value = unit = label_text = None
    if label is not None:
        value, unit, label_text = label.value, label.unit, label.text
    elif metadata is not None and metadata.label_value is not None:
        value, unit = metadata.label_value, metadata.label_unit
        bar_px = bar_px or metadata.bar_px

    measured = None
    if value is not None and unit is not None and bar_px:
        measured = value * unit_to_nm(unit) / bar_px

    mismatch = False
    meta_nm = metadata.nm_per_px if metadata is not None else None
    if meta_nm is not None and measured is not None:
        mismatch = abs(meta_nm - measured) / measured > tolerance
        nm_per_px, source = (measured, "ocr") if mismatch else (meta_nm, metadata.source)
    elif meta_nm is not None:
        nm_per_px, source = meta_nm, metadata.source
    elif measured is not None:
        nm_per_px, source = measured, "ocr"
    else:
        nm_per_px, source = None, "none"

    if value is not None and unit is not None:
        scale_bin = format_bin(value, unit)
    elif nm_per_px is not None:
        scale_bin = nominal_bin(nm_per_px * width / 10.0)
    else:
        scale_bin = UNKNOWN_BIN
    return ScaleReading(scale_value=value, scale_unit=unit, scale_bar_px=bar_px, nm_per_px=nm_per_px,
                        scale_source=source, scale_bin=scale_bin, scale_mismatch=mismatch,
                        metadata_nm_per_px=meta_nm, scale_label_text=label_text)


def nominal_bin(length_nm: float) -> str:
    """The 1-2-5 series bar length nearest (in log scale) to ``length_nm``, as a bin label."""
    exponent = math.floor(math.log10(length_nm))
    options = [m * 10.0 ** e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)]
    best = min(options, key=lambda v: abs(math.log(v / length_nm)))
    for unit, factor in (("mm", 1e6), ("um", 1e3), ("nm", 1.0)):
        if best >= factor:
            return format_bin(round(best / factor, 6), unit)
    return format_bin(round(best, 6), "nm")
