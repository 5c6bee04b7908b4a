"""Combine vendor metadata and the databar's bar and label into one scale per image, and bin it.

Witnesses: the label printed over the bar (value and unit), the bar's measured length, and the
vendor tag's pixel size (rescaled when the file is not the frame the tag was written for).

- label, bar and tag agree (within ``tolerance``): confidence ``high``; nm_per_px is the tag's.
- tag and bar disagree: the frame size is the third witness. A tag that names the frame it was
  written for, and that frame is this file, describes these pixels: the tag wins and the bar is
  taken as mis-measured. A tag that names no frame cannot be checked against a resize, so the bar
  and label the image shows win. Either way ``scale_mismatch`` is set and confidence is ``low``
  with the reason.
- one of tag or label+bar: confidence ``medium``; a label without a bar or a tag without a label:
  ``low``; nothing: ``none`` and the bin ``unknown``.
- A label whose bar would make the pixel size implausible for an SEM (under 0.01 nm or over
  100 µm per pixel) is a misreading and is dropped, with the reason.

scale_bin is the printed label, as the paper bins (``1um``, ``2um``, ``200nm``). With a tag but no
readable label, the bin is the 1-2-5 bar length nearest a tenth of the field of view (low confidence).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from semspark.ingest.metadata import MetadataScale, unit_to_nm
from semspark.ingest.ocr import LabelReading

UNKNOWN_BIN = "unknown"
# Recorded per image, so that `semspark rescale --select older` finds what an older reader read.
READER_VERSION = 4      # 3: text laid over the image also read from its strokes (resampled JEOL frames);
                        # 4: a label crop keeps only the ink (not the image behind it), i read as 1, a faint
                        #    reading not taken still contradicts a saturated one of the same bar
PLAUSIBLE_NM_PER_PX = (0.01, 1e5)
CONFIDENCES = ("high", "medium", "low", "none")


@dataclass(frozen=True)
class ScaleReading:
    scale_value: float | None
    scale_unit: str | None
    scale_bar_px: float | None
    nm_per_px: float | None
    scale_source: str              # CZ_SEM | FEI | Tescan | Olympus | OME | Hitachi | JEOL | ImageJ | ocr | correction | none
    scale_bin: str
    scale_mismatch: bool
    metadata_nm_per_px: float | None
    scale_label_text: str | None
    scale_confidence: str = "none"  # high | medium | low | none
    scale_reason: str | None = None
    scale_reader: int = READER_VERSION

    def as_dict(self) -> dict:
        return asdict(self)


def format_bin(value: float, unit: str) -> str:
    return f"{value:g}{unit}"


def combine(metadata: MetadataScale | None, label: LabelReading | None, bar_px: float | None,
            width: int, tolerance: float, field_width: tuple[float, str] | None = None) -> ScaleReading:
    """``field_width``: the horizontal field width printed in the band (nm, text read), the third
    witness when tag and bar disagree."""
    reasons: list[str] = []
    if metadata is not None:
        metadata = metadata.fitted_to(width)
        if metadata.note:
            reasons.append(metadata.note)
    value = unit = label_text = None
    if label is not None:
        value, unit, label_text = label.value, label.unit, label.text
        if bar_px:
            implied = value * unit_to_nm(unit) / bar_px
            if not PLAUSIBLE_NM_PER_PX[0] <= implied <= PLAUSIBLE_NM_PER_PX[1]:
                reasons.append(f"label {label.text!r} over a {bar_px:.0f}-px bar would be {implied:.3g} nm/px: "
                               "taken as a misreading")
                value = unit = None
    if value is None and metadata is not None and metadata.label_value is not None:
        value, unit = metadata.label_value, metadata.label_unit
        bar_px = bar_px or metadata.bar_px
        reasons.append(f"label from the {metadata.source} sidecar")

    measured = None
    if value is not None and unit is not None and bar_px:
        measured = value * unit_to_nm(unit) / bar_px

    mismatch = False
    meta_nm = metadata.nm_per_px if metadata is not None else None
    if meta_nm is not None and measured is not None:
        gap = abs(meta_nm - measured) / measured
        mismatch = gap > tolerance
        if not mismatch:
            nm_per_px, source, confidence = meta_nm, metadata.source, "high"
            reasons.append(f"label, bar and {metadata.source} tag agree")
        elif field_width is not None and _agrees(field_width[0] / width, meta_nm, tolerance):
            nm_per_px, source, confidence = meta_nm, metadata.source, "medium"
            reasons.append(f"bar gives {measured:.4g} nm/px, the {metadata.source} tag {meta_nm:.4g}; the field "
                           f"width printed in the band ({field_width[1]!r}) agrees with the tag: the tag is kept")
        elif field_width is not None and _agrees(field_width[0] / width, measured, tolerance):
            nm_per_px, source, confidence = measured, "ocr", "medium"
            reasons.append(f"bar gives {measured:.4g} nm/px, the {metadata.source} tag {meta_nm:.4g}; the field "
                           f"width printed in the band ({field_width[1]!r}) agrees with the bar: the tag is stale")
        elif metadata.frame_width and not metadata.note:
            nm_per_px, source, confidence = meta_nm, metadata.source, "low"
            reasons.append(f"bar gives {measured:.4g} nm/px, the {metadata.source} tag {meta_nm:.4g} for this "
                           f"{width}-px frame: the tag is kept, the bar taken as mis-measured")
        else:
            nm_per_px, source, confidence = measured, "ocr", "low"
            reasons.append(f"bar gives {measured:.4g} nm/px, the {metadata.source} tag {meta_nm:.4g} and names no "
                           "frame to check: the printed bar is kept, the tag may be stale")
    elif meta_nm is not None:
        nm_per_px, source = meta_nm, metadata.source
        confidence = "medium" if value is not None else "low"
        reasons.append(f"{metadata.source} tag only" + ("; label read, no bar measured" if value is not None
                                                        else "; no label read: bin from the field of view"))
    elif measured is not None:
        nm_per_px, source, confidence = measured, "ocr", "medium"
        reasons.append("label and bar, no tag to check them against")
    else:
        nm_per_px, source = None, "none"
        confidence = "low" if value is not None else "none"
        reasons.append("label read, no bar measured and no tag" if value is not None
                       else "no vendor tag and no label read from a databar")

    if value is not None and unit is not None:
        scale_bin = format_bin(value, unit)
    elif nm_per_px is not None:
        scale_bin = nominal_bin(nm_per_px * width / 10.0)
    else:
        scale_bin = UNKNOWN_BIN
    return ScaleReading(scale_value=value, scale_unit=unit, scale_bar_px=bar_px, nm_per_px=nm_per_px,
                        scale_source=source, scale_bin=scale_bin, scale_mismatch=mismatch,
                        metadata_nm_per_px=meta_nm, scale_label_text=label_text,
                        scale_confidence=confidence, scale_reason="; ".join(reasons) or None)


def _agrees(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * b


def nominal_bin(length_nm: float) -> str:
    """The 1-2-5 series bar length nearest (in log scale) to ``length_nm``, as a bin label."""
    exponent = math.floor(math.log10(length_nm))
    options = [m * 10.0 ** e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)]
    best = min(options, key=lambda v: abs(math.log(v / length_nm)))
    for unit, factor in (("mm", 1e6), ("um", 1e3), ("nm", 1.0)):
        if best >= factor:
            return format_bin(round(best / factor, 6), unit)
    return format_bin(round(best, 6), "nm")


def corrected(metadata: MetadataScale | None, measured_bar_px: float | None, width: int, tolerance: float,
              value: float, unit: str, bar_px: float | None, source: str) -> ScaleReading:
    """The scale with a person's correction: their label always; their bar length when they give one
    (then nm_per_px is theirs), else the bar measured in the image, weighed against the tag as usual."""
    from dataclasses import replace

    label = LabelReading(value, unit, f"{value:g} {unit} (correction)")
    reading = combine(metadata, label, bar_px or measured_bar_px, width, tolerance)
    why = f"corrected from {source}"
    if bar_px:
        nm_per_px = value * unit_to_nm(unit) / bar_px
        return replace(reading, nm_per_px=nm_per_px, scale_source="correction", scale_confidence="high",
                       scale_bar_px=bar_px, scale_reason=f"{why}: label and bar length given; {reading.scale_reason}")
    source_name = "correction" if reading.scale_source == "ocr" else reading.scale_source
    confidence = reading.scale_confidence if reading.scale_mismatch else "high"
    return replace(reading, scale_source=source_name, scale_confidence=confidence,
                   scale_reason=f"{why}: label given; {reading.scale_reason}")
