"""Read scale-bar labels with Tesseract, many labels per call.

Starting Tesseract and loading its model costs ~90 ms, reading one small label ~20 ms, so the label
crops of a whole Spark task are stacked into one tall page and read with a single call per
``ocr_batch_size`` labels; each recognised word goes back to the crop its box lies in.

Tesseract spells the micro sign of a scale bar in many ways (µ, μ, u, y, yu, j, or drops it, and
sometimes reads "µm" as "mm"). µ is the one unit glyph that descends below the digits' baseline, so
a descender in the unit's word settles micro whatever the letters say.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import cv2
import numpy as np

from semspark.ingest.databar import LabelCrop

log = logging.getLogger(__name__)

GAP = 24  # white rows between stacked crops

# A number, then nm, mm, or micro in one of its OCR spellings (µ, μ, u, y, yu, j, p, H, w, e, or lost).
# The number may carry digit look-alikes (l, I, | for 1; O, o for 0), which Tesseract produces
# when a "1" sits next to the µ ("1 µm" -> "lum"). A number glued to a letter ("x300", "MMD7.6")
# is another field, never a scale label.
UNIT_SPELLINGS = r"nm|mm|[uµμyjpHwe]{1,2}m|m"
LABEL_PATTERN = re.compile(
    r"(?<![\w.,])([\dlI|Oo]+(?:[.,][\dOo]+)?)\s?[-–—~]?\s?(" + UNIT_SPELLINGS + r")(?![A-Za-z])")
DIGIT_LOOKALIKES = str.maketrans({"l": "1", "I": "1", "|": "1", "O": "0", "o": "0", ",": "."})


@dataclass(frozen=True)
class LabelReading:
    value: float
    unit: str               # nm | um | mm
    text: str               # what Tesseract read for the label, for auditing


@dataclass(frozen=True)
class _Word:
    text: str
    left: int
    top: int
    width: int
    height: int
    line: tuple[int, int, int]


def read_labels(crops: list[LabelCrop | None], tesseract_cmd: str = "tesseract",
                batch_size: int = 48, timeout_s: float = 120.0) -> list[LabelReading | None]:
    """One LabelReading (or None) per crop, in order, with one Tesseract call per batch.

    A batch that Tesseract fails on (or that runs past ``timeout_s``) is read again one crop at a
    time, so one bad crop costs only its own label. A missing Tesseract is raised: nothing works.
    """
    import pytesseract

    results: list[LabelReading | None] = [None] * len(crops)
    present = [i for i, crop in enumerate(crops) if crop is not None]
    for start in range(0, len(present), batch_size):
        chunk = present[start:start + batch_size]
        try:
            readings = _read_batch([crops[i] for i in chunk], tesseract_cmd, timeout_s)
        except pytesseract.TesseractNotFoundError:
            raise
        except (pytesseract.TesseractError, RuntimeError, OSError) as exc:
            log.warning("Tesseract failed on a batch of %d labels (%s); reading them one by one", len(chunk), exc)
            readings = [_read_one(crops[i], tesseract_cmd, timeout_s) for i in chunk]
        for index, reading in zip(chunk, readings):
            results[index] = reading
    return results


def _read_one(crop: LabelCrop, tesseract_cmd: str, timeout_s: float) -> LabelReading | None:
    import pytesseract

    try:
        return _read_batch([crop], tesseract_cmd, timeout_s)[0]
    except pytesseract.TesseractNotFoundError:
        raise
    except (pytesseract.TesseractError, RuntimeError, OSError) as exc:
        log.warning("Tesseract failed on one label (%s); its scale stays unread", exc)
        return None


def _read_batch(crops: list[LabelCrop], tesseract_cmd: str, timeout_s: float = 120.0) -> list[LabelReading | None]:
    import pytesseract

    # One thread per Tesseract: a Spark task owns one core, and Tesseract's OpenMP threads spin
    # against each other (5x slower on 2 cores, measured by bench/ingest_bench.py).
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    pytesseract.pytesseract.tesseract_cmd = tesseract_cmd
    width = max(crop.image.shape[1] for crop in crops)
    offsets, pages = [], []
    y = 0
    for crop in crops:
        offsets.append(y)
        h, w = crop.image.shape
        pages.append(np.pad(crop.image, ((0, GAP), (0, width - w)), constant_values=255))
        y += h + GAP
    page = np.vstack(pages)
    data = pytesseract.image_to_data(page, config="--psm 6", output_type=pytesseract.Output.DICT,
                                     timeout=timeout_s)
    per_crop: list[list[_Word]] = [[] for _ in crops]
    bounds = offsets + [y]
    for i, text in enumerate(data["text"]):
        text = text.strip()
        if not text:
            continue
        centre = data["top"][i] + data["height"][i] / 2
        k = int(np.searchsorted(bounds, centre, side="right")) - 1
        if 0 <= k < len(crops):
            per_crop[k].append(_Word(text, data["left"][i], data["top"][i] - offsets[k], data["width"][i],
                                     data["height"][i], (data["block_num"][i], data["par_num"][i], data["line_num"][i])))
    return [parse_label(words, crop) for words, crop in zip(per_crop, crops)]


def parse_label(words: list[_Word], crop: LabelCrop) -> LabelReading | None:
    """The value and unit nearest the scale bar among what was read around it."""
    candidates = []
    for line in sorted({w.line for w in words}):
        line_words = sorted((w for w in words if w.line == line), key=lambda w: w.left)
        text, spans = "", []
        for word in line_words:
            if text:
                text += " "
            spans.append((len(text), len(text) + len(word.text), word))
            text += word.text
        for match in LABEL_PATTERN.finditer(text):
            number = match.group(1)
            if not any(c.isdigit() for c in number) and match.group(2) == "m":
                continue  # "Im", "lm": too little evidence that this is a number at all
            try:
                value = float(number.translate(DIGIT_LOOKALIKES))
            except ValueError:
                continue
            used = [w for a, b, w in spans if a < match.end() and b > match.start()]
            unit_words = [w for a, b, w in spans if a < match.end(2) and b > match.start(2)]
            unit = _unit(match.group(2), crop, unit_words)
            if value <= 0 or unit is None:
                continue
            cx = np.mean([w.left + w.width / 2 for w in used])
            cy = np.mean([w.top + w.height / 2 for w in used])
            distance = float(np.hypot(cx - crop.bar_x, cy - crop.bar_y))
            candidates.append((distance, LabelReading(value, unit, match.group(0))))
    if not candidates:
        return None
    return min(candidates, key=lambda c: c[0])[1]


def _unit(spelling: str, crop: LabelCrop, unit_words: list[_Word]) -> str | None:
    if any(_has_descender(crop.image, w) for w in unit_words):
        return "um"
    letters = spelling.lower()
    if letters == "nm":
        return "nm"
    if letters == "mm":
        return "mm"
    # µ read as u, y, j, p, H, yu, ... or dropped ("1m"): a 1 m or 1 pm bar is not SEM.
    return "um"


def _has_descender(image: np.ndarray, word: _Word) -> bool:
    """Does any glyph in the word reach clearly below the baseline of the others?"""
    pad = 4
    y0, y1 = max(0, word.top - pad), min(image.shape[0], word.top + word.height + pad * 3)
    x0, x1 = max(0, word.left - pad), min(image.shape[1], word.left + word.width + pad)
    ink = (image[y0:y1, x0:x1] < 128).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    glyphs = [s for s in stats[1:count] if s[3] >= 0.3 * word.height and s[4] >= 4]
    if len(glyphs) < 2:
        return False
    bottoms = np.array([s[1] + s[3] for s in glyphs])
    heights = np.array([s[3] for s in glyphs])
    baseline = float(np.median(bottoms))
    return bool((bottoms > baseline + 0.2 * np.median(heights)).any())
