"""The databar of one image, read: its band, its scale bar and the label that belongs to the bar.

Bands are tried from the lowest up and, in each, the most plausible bars first; the first bar whose
own label reads as a number with a unit wins. What was found and why is kept for ``semspark scale``
and its ``--debug`` pictures.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from semspark.ingest import databar as db
from semspark.ingest.ocr import DIGIT_LOOKALIKES, UNIT_SPELLINGS, LabelReading, parse_label, recognise
from semspark.ingest.overlay import (READINGS, OverlayRegion, continuing_line, faint_label_crops, implausible,
                                     overlay_region)


@dataclass
class DatabarReading:
    band: db.Band | None = None          # the databar cut off the stored image
    bar: db.ScaleBar | None = None
    label: LabelReading | None = None
    label_text: str = ""                 # everything Tesseract read around the bar
    label_box: tuple[int, int, int, int] | None = None   # the label in image coordinates
    notes: list[str] = field(default_factory=list)       # why, for people
    # faint overlay readings not taken (not the same at every magnification): (bar, label) each,
    # still witnesses against a saturated reading of the same bar
    tentative: list[tuple[db.ScaleBar, LabelReading]] = field(default_factory=list)
    inked: db.BandInk | None = None      # the band the label was read in, for a second look (fields)

    @property
    def databar_top(self) -> int | None:
        return self.band.top if self.band is not None else None


def read_databar(gray: np.ndarray, rgb: np.ndarray | None, tessdata: str) -> DatabarReading:
    height, width = gray.shape
    planes = db.colour_planes(gray, rgb)
    reading = DatabarReading()
    fallback_band = None
    bands = db.find_bands(gray)
    if not bands:
        reading.notes.append("no data band in the lower half (no flat rows with text)")
    inked_bands = []
    for band in bands:
        inked = db.band_ink(planes, band)
        if inked is not None:
            inked_bands.append(inked)
            if fallback_band is None and band.bottom >= height - 3:
                fallback_band = band
    if _read_bands(inked_bands, width, tessdata, reading):
        return reading
    # No band holds a bar with its label: text laid over the image itself (JEOL). It is read twice:
    # from its saturated pixels (as the instrument drew it), and from its strokes' share of ink over
    # the image around them (also when a resampled frame blurred it); two readings that disagree
    # leave the scale unknown rather than a guess.
    overlay = DatabarReading()
    saturated = _read_bands(db.overlay_bands(planes), width, tessdata, overlay)
    region = overlay_region(planes)
    faint = DatabarReading()
    faintly = _read_faint_overlay(region, tessdata, faint)
    contradiction = _faint_contradiction(overlay, faint) if saturated else None
    if contradiction:
        reading.notes += faint.notes + [f"text laid over the image reads {overlay.label.text!r} from its saturated "
                                        f"pixels but {contradiction!r} from its strokes: left unknown"]
    elif saturated:
        overlay.band = fallback_band   # the text lies on the image: cut only a band at its bottom, if any
        overlay.notes = reading.notes + ["label read from text laid over the image (no data band)"]
        whole = continuing_line(region, overlay.bar)
        if whole is not None:
            overlay.notes.append(f"the bar found ({overlay.bar.length_px:.1f} px) is a piece of a line "
                                 f"{whole.length_px:.1f} px long: that line is the bar")
            overlay.bar = whole
        return overlay
    elif faintly:
        faint.band = fallback_band
        faint.notes = reading.notes + faint.notes + ["label read from faint text laid over the image (no data band)"]
        return faint
    else:
        reading.notes += faint.notes
    if reading.band is None and fallback_band is not None:
        reading.band = fallback_band
    return reading


def _faint_contradiction(saturated: DatabarReading, faint: DatabarReading) -> str | None:
    """The text of a faint reading that contradicts the saturated one, or None. A faint label taken
    contradicts it whatever its bar; one not taken (illegible at some magnification) only when it
    belongs to the same bar and no faint reading of that bar agrees: a resampled frame loses part of
    its glyphs' saturated pixels (a 5 without its top reads as a 3), while its strokes keep them."""
    def same(label: LabelReading) -> bool:
        return (label.value, label.unit) == (saturated.label.value, saturated.label.unit)

    if faint.label is not None:
        return None if same(faint.label) else faint.label.text
    bar = saturated.bar
    witnesses = [label for other, label in faint.tentative
                 if abs((other.top + other.bottom) - (bar.top + bar.bottom)) / 2 <= 3
                 and min(other.x1, bar.x1) - max(other.x0, bar.x0) > 0.5 * min(other.length_px, bar.length_px)]
    if witnesses and not any(same(label) for label in witnesses):
        return witnesses[0].text
    return None


def _read_faint_overlay(region: OverlayRegion, tessdata: str, reading: DatabarReading) -> bool:
    """The first faint bar whose text line holds a plausible label that reads the same at every
    magnification of ``READINGS`` (semspark/ingest/overlay.py)."""
    for bar, cut in faint_label_crops(region):
        crop = cut(READINGS[0])
        words = recognise(crop.image, tessdata, one_line=True)
        label = parse_label(words, crop.image, crop.bar_span, crop.bar_y)
        if label is None:
            continue
        others = []
        for magnification in READINGS[1:]:
            other = cut(magnification)
            again = parse_label(recognise(other.image, tessdata, one_line=True), other.image, other.bar_span,
                                other.bar_y)
            others.append(again.text if again else None)
            if again is not None:
                reading.tentative.append((bar, again))
            if again is None or (again.value, again.unit) != (label.value, label.unit):
                break
        else:
            doubt = implausible(label, bar.length_px, region.width)
            if doubt:
                reading.notes.append(f"faint overlay bar {bar.length_px:.1f} px: {doubt}")
                continue
            reading.bar, reading.label = bar, label
            reading.label_text = " ".join(w.text for w in words)
            reading.label_box = _label_box(label, crop)
            return True
        reading.tentative.append((bar, label))
        reading.notes.append(f"faint overlay bar {bar.length_px:.1f} px: read {label.text!r}, then {others} at "
                             "other sizes: not legible enough")
    return False


def _read_bands(inked_bands: list[db.BandInk], width: int, tessdata: str, reading: DatabarReading) -> bool:
    """Try each band's bars until one's own label reads; fills ``reading``; True when a label was read."""
    for inked in inked_bands:
        band = inked.band
        bars = db.find_bars(inked, width)
        if not bars:
            reading.notes.append(f"band rows {band.top}-{band.bottom}: no scale bar")
            continue
        for bar in bars[:db.MAX_BARS_TRIED]:
            crop = db.label_crop(inked, bar, width)
            if crop is None:
                reading.notes.append(f"band rows {band.top}-{band.bottom}: {bar.kind} bar "
                                     f"{bar.length_px:.1f} px with no text around it")
                continue
            words = recognise(crop.image, tessdata, one_line=crop.one_line)
            text = " ".join(w.text for w in words)
            label = parse_label(words, crop.image, crop.bar_span, crop.bar_y)
            if label is None:
                reading.notes.append(f"band rows {band.top}-{band.bottom}: {bar.kind} bar "
                                     f"{bar.length_px:.1f} px, text {text!r} has no label")
                if reading.bar is None:
                    reading.band, reading.bar, reading.label_text = band, bar, text
                continue
            reading.band, reading.bar, reading.label, reading.label_text = band, bar, label, text
            reading.inked = inked
            reading.label_box = _label_box(label, crop)
            return True
    return False


def _label_box(label: LabelReading, crop: db.LabelCrop) -> tuple[int, int, int, int] | None:
    """The label's box in image coordinates, from its box in the crop."""
    if label.box is None:
        return None
    x, y, w, h = label.box
    ox, oy = crop.origin
    return (int(ox + (x - crop.pad) / crop.scale), int(oy + (y - crop.pad) / crop.scale),
            int(w / crop.scale), int(h / crop.scale))


FIELD_WIDTH = re.compile(r"(HFW|VFW|FOV|View\s*field|Width|Field\s*width)\s*[:=]?\s*([\dlIOo]+(?:[.,][\dOo]+)?)\s?(" +
                         UNIT_SPELLINGS + r")(?![A-Za-z])", re.IGNORECASE)


def read_field_width(reading: DatabarReading, tessdata: str) -> tuple[float, str] | None:
    """The horizontal field width printed in the band (FEI ``HFW``, Tescan ``View field``, Zeiss
    ``Width =``) in nm, with the text read, or None. It is physical, so it holds after a resize:
    over the image's width it is a pixel size that does not depend on the bar or the tag."""
    inked = reading.inked
    if inked is None:
        return None
    ink = inked.ink
    count, _, stats = inked.components
    heights = [int(s[3]) for s in stats[1:count] if 4 <= s[3] <= 0.8 * ink.shape[0] and s[2] <= 0.25 * ink.shape[1]]
    if not heights:
        return None
    scale = db.LABEL_TEXT_HEIGHT / max(float(np.median(heights)), 1.0)
    text = 255.0 - np.clip(inked.distance * (255.0 / max(inked.contrast, 1.0)), 0, 255)
    page = cv2.resize(text.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    page = cv2.threshold(page, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    page = cv2.copyMakeBorder(page, 16, 16, 16, 16, cv2.BORDER_CONSTANT, value=255)
    words = recognise(page, tessdata)
    lines: dict = {}
    for word in sorted(words, key=lambda w: w.left):
        lines.setdefault(word.line, []).append(word.text)
    for line in lines.values():
        found = FIELD_WIDTH.search(" ".join(line))
        if found:
            try:
                value = float(found.group(2).translate(DIGIT_LOOKALIKES))
            except ValueError:
                continue
            letters = found.group(3).lower()
            unit_nm = {"nm": 1.0, "mm": 1e6}.get(letters, 1e3)   # micro in any spelling
            return value * unit_nm, found.group(0)
    return None
