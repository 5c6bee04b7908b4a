"""Read the scale bar's label with Tesseract, one small crop per image, through its C API.

Each Python worker keeps one Tesseract engine (tesserocr, loaded once: ~150 ms) and reads each
label crop on its own (~4 ms for a 40-px-high crop). A reading depends on its own image only:
crops are never stacked with other images' crops, so the order of files and their grouping
into Spark tasks cannot change a result.

Tesseract spells the micro sign of a scale bar in many ways (µ, μ, u, y, yu, j, or drops it, and
sometimes reads "µm" as "mm"). µ is the one unit glyph that descends below the digits' baseline, so
a descender in the unit's word settles micro whatever the letters say.

A number with a unit is the label only when it is not a field of the databar: a value after
``=`` or ``:`` (``WD = 6.3 mm``, ``View field: 21.1 µm``) or after a field's name (``HFW``,
``WD``, ``Mag``, ``EHT``, ``Det``, ``Z``, ...) is a field, whatever its position.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

# A number, then nm, mm, or micro in one of its OCR spellings (µ, μ, u, y, yu, j, p, H, w, e, or lost).
# The number may carry digit look-alikes (l, I, i, | for 1; O, o for 0), which Tesseract produces
# when a "1" sits next to the µ ("1 µm" -> "lum"). A number glued to a letter ("x300", "MMD7.6")
# is another field, never a scale label.
UNIT_SPELLINGS = r"nm|mm|[uµμyjpHwe]{1,2}m|m"
LABEL_PATTERN = re.compile(
    r"(?<![\w.,])([\dlIi|Oo]+(?:[.,][\dOo]+)?)\s?[-–—~]?\s?(" + UNIT_SPELLINGS + r")(?![A-Za-z])")
DIGIT_LOOKALIKES = str.maketrans({"l": "1", "I": "1", "i": "1", "|": "1", "O": "0", "o": "0", ",": "."})
# Names of databar fields whose values carry a length unit; a number after one is never the label.
FIELD_NAMES = re.compile(
    r"(?:^|[^A-Za-z])(WD|HFW|VFW|FOV|HV|EHT|Mag|MAG|Det|DET|Width|Height|field|Field|Stage|Z|T|X|Y|"
    r"Aperture|Spot|spot|curr|Curr|Pressure|pressure|Dwell|dwell|Date|Time|Tilt|tilt|Probe)\s*[=:]?\s*$")
DEFAULT_TESSDATA = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata",
                    "/usr/share/tessdata", "/usr/local/share/tessdata", "/opt/homebrew/share/tessdata")


class OcrUnavailable(RuntimeError):
    """Tesseract's engine or its English model cannot be loaded: nothing can be read, fail the job."""


@dataclass(frozen=True)
class LabelReading:
    value: float
    unit: str               # nm | um | mm
    text: str               # what Tesseract read for the label, for auditing
    box: tuple[int, int, int, int] | None = None  # x, y, w, h in the crop's coordinates


@dataclass(frozen=True)
class Word:
    text: str
    left: int
    top: int
    width: int
    height: int
    line: tuple[int, int, int]


def find_tessdata(configured: str = "") -> str:
    """The folder holding eng.traineddata: the configured one, $TESSDATA_PREFIX, or Debian's."""
    candidates = [configured] if configured else [os.environ.get("TESSDATA_PREFIX", ""), *DEFAULT_TESSDATA]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "eng.traineddata")):
            return folder
    where = configured or ", ".join(c for c in candidates if c)
    raise OcrUnavailable(f"Tesseract's English model (eng.traineddata) is not in {where}: install Debian's "
                         "tesseract-ocr-eng (deploy/bootstrap.sh does) or set ingest.tessdata_dir")


_engines = threading.local()


def _engine(tessdata: str):
    """This thread's Tesseract engine, made on first use and kept for the worker's life."""
    api = getattr(_engines, "api", None)
    if api is not None and _engines.tessdata == tessdata:
        return api
    # One thread per engine: a Spark task owns one core, and Tesseract's OpenMP threads spin
    # against each other (5x slower on 2 cores).
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        import tesserocr
    except ImportError as exc:
        raise OcrUnavailable("the tesserocr package is missing: run deploy/bootstrap.sh") from exc
    try:
        api = tesserocr.PyTessBaseAPI(path=tessdata, lang="eng", psm=tesserocr.PSM.SINGLE_BLOCK)
    except RuntimeError as exc:
        raise OcrUnavailable(f"Tesseract could not load eng from {tessdata}: {exc}") from exc
    _engines.api, _engines.tessdata = api, tessdata
    return api


# Readings of the crops a worker read last, by their pixels: an instrument draws its databar as a
# flat graphic, so every image it takes at one magnification has the same label crop, pixel for
# pixel, and Tesseract (its LSTM keeps no state from one image to the next) reads it the same way.
# A repeated crop costs a hash (~20 µs) instead of a recognition (4-7 ms, most of an image's time).
READINGS_KEPT = 4096
_readings: OrderedDict[tuple, tuple[Word, ...]] = OrderedDict()
_readings_lock = threading.Lock()
recognitions = 0   # crops Tesseract read in this process (the rest came from _readings)


def recognise(image: np.ndarray, tessdata: str, one_line: bool = False) -> list[Word]:
    """Tesseract's words on a black-on-white uint8 image, with their boxes and line ids.

    ``one_line``: the image holds one line of text, so Tesseract need not look for lines (it
    cannot then split one line into two)."""
    global recognitions
    image = np.ascontiguousarray(image, dtype=np.uint8)
    key = (hashlib.blake2b(image.data, digest_size=16).digest(), image.shape, one_line, tessdata)
    with _readings_lock:
        if key in _readings:
            _readings.move_to_end(key)
            return list(_readings[key])
    words = _tesseract_words(image, tessdata, one_line)
    with _readings_lock:
        recognitions += 1
        _readings[key] = tuple(words)
        while len(_readings) > READINGS_KEPT:
            _readings.popitem(last=False)
    return words


def _tesseract_words(image: np.ndarray, tessdata: str, one_line: bool) -> list[Word]:
    import tesserocr

    api = _engine(tessdata)
    api.SetPageSegMode(tesserocr.PSM.SINGLE_LINE if one_line else tesserocr.PSM.SINGLE_BLOCK)
    api.SetImageBytes(image.tobytes(), image.shape[1], image.shape[0], 1, image.shape[1])
    tsv = api.GetTSVText(0)
    words = []
    for row in tsv.splitlines():
        cells = row.split("\t")
        if len(cells) < 12 or cells[0] != "5":
            continue
        text = cells[11].strip()
        if text:
            block, par, line = int(cells[2]), int(cells[3]), int(cells[4])
            words.append(Word(text, int(cells[6]), int(cells[7]), int(cells[8]), int(cells[9]), (block, par, line)))
    return words


def parse_label(words: list[Word], image: np.ndarray, bar_span: tuple[float, float], bar_y: float) -> LabelReading | None:
    """The value and unit nearest the bar (columns ``bar_span`` at row ``bar_y``) that is not a field."""
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
            if FIELD_NAMES.search(text[:match.start()]) or re.search(r"[=:]\s*$", text[:match.start()]):
                continue
            try:
                value = float(number.translate(DIGIT_LOOKALIKES))
            except ValueError:
                continue
            used = [w for a, b, w in spans if a < match.end() and b > match.start()]
            unit_words = [w for a, b, w in spans if a < match.end(2) and b > match.start(2)]
            unit = _unit(match.group(2), image, unit_words)
            if value <= 0 or unit is None:
                continue
            x0 = min(w.left for w in used)
            y0 = min(w.top for w in used)
            x1 = max(w.left + w.width for w in used)
            y1 = max(w.top + w.height for w in used)
            dx = max(x0 - bar_span[1], bar_span[0] - x1, 0.0)
            dy = max(y0 - bar_y, bar_y - y1, 0.0)
            distance = float(np.hypot(dx, dy))
            candidates.append((distance, LabelReading(value, unit, match.group(0), (x0, y0, x1 - x0, y1 - y0))))
    if not candidates:
        return None
    return min(candidates, key=lambda c: c[0])[1]


def _unit(spelling: str, image: np.ndarray, unit_words: list[Word]) -> str | None:
    if any(_has_descender(image, w) for w in unit_words):
        return "um"
    letters = spelling.lower()
    if letters == "nm":
        return "nm"
    if letters == "mm":
        return "mm"
    # µ read as u, y, j, p, H, yu, ... or dropped ("1m"): a 1 m or 1 pm bar is not SEM.
    return "um"


def _has_descender(image: np.ndarray, word: Word) -> bool:
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
