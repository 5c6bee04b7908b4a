"""A scale bar and its label laid over the image itself, too faint for a fixed level (JEOL resampled).

An instrument draws its overlay saturated (white, or black) straight onto the image. A frame
resampled afterwards (a JPEG halved for a report, a figure scaled to a page) mixes every thin
stroke with the image under it: a 2-px white bar over a grey of 200 becomes a row of 228, text
strokes the same, and no fixed level tells them from the image's own bright pixels. What still
holds is the shape:

- the bar is a long horizontal line brighter than the rows on *both* sides of it (the edge of a
  bright particle is not a line). Its step over those rows, as a share of ink over the image's own
  level there, is the same all along the bar over dark and bright parts alike; summed over three
  rows (a resampled 2-px bar spreads over two or three) and averaged along a run of columns, a bar
  stands many times over the image's noise, which averages out. Its ends are where that share
  falls to half the bar's own level just inside the end, to a fraction of a pixel; a few columns
  under half with the bar going on after them are a bright stroke of the image crossing it.
- the label is text in the same colour next to the bar, on the line just below it (JEOL) or just
  above it: the ink's strength is the bar's own (drawn alike, resampled alike), the line's rows
  are where that ink is dense, and strokes of the image crossing the line are cut to it.

semspark/ingest/reader.py makes this reading for every image whose bands give no label, beside the
reading of saturated overlay pixels, and keeps a label only when the two do not contradict each
other. A faint label must also be physically plausible, since a stroke of the image read as a digit
is the one way it can be wrong (``implausible``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import cv2
import numpy as np

from semspark.ingest import databar as db
from semspark.ingest.metadata import unit_to_nm
from semspark.ingest.ocr import DIGIT_LOOKALIKES, LABEL_PATTERN, LabelReading

LINE_SIGMAS = 6.0            # a bar's averaged response stands this far above the image's noise
BAR_ROWS = 3                 # a resampled bar spreads over up to this many rows
BAR_GAP = 3                  # columns under half that a bright stroke crossing the bar may take
MAX_LINES_TRIED = 3
TEXT_HEIGHT_GUESS = 0.02     # of the image width: instruments draw 1.5 to 2.5%; only a first guess
SHARE_FLOOR = 64.0          # grey levels: over a nearly white image the share of ink is mostly noise
MIN_GLYPHS = 3               # "1µm" at the least
MIN_TEXT_ROWS = 7            # the text line's rows: smaller text (under ~10 px) is not read reliably
# Faint text is read at three magnifications: a misread of small blurred glyphs (1 as 2, n as m)
# rarely repeats at every size, so a label is taken only when all readings agree.
READINGS = (1.0, 1.25, 1.5)
# a scale bar's physical range in an SEM: the whole field from 20 nm to 30 mm
FIELD_NM = (20.0, 3e7)


@dataclass(frozen=True)
class FaintLine:
    x0: float               # the bar's left and right edges, image columns (sub-pixel)
    x1: float
    row: int                # its centre row in the searched region
    strength: float         # its averaged response over the image's

    @property
    def length_px(self) -> float:
        return self.x1 - self.x0


def faint_lines(level: np.ndarray, width: int) -> list[FaintLine]:
    """Long horizontal lines brighter than the rows around them, the most salient first, one per bar."""
    # A line is brighter than the rows on *both* sides of it (the edge of a bright region is not):
    # its step over the brighter of two and three rows above and below it ...
    values = level.astype(np.float32)
    padded = np.pad(values, ((3, 3), (0, 0)), mode="edge")
    around = np.maximum((padded[:-6] + padded[1:-5]) / 2, (padded[5:-1] + padded[6:]) / 2)
    step = np.maximum(values - around, 0.0)
    # ... as a share of ink over the image's own level there: a bar keeps the same share all along,
    # over dark and bright parts of the image alike
    share = step / np.maximum(255.0 - around, 16.0)
    rows = cv2.boxFilter(share, -1, (1, BAR_ROWS), normalize=False, borderType=cv2.BORDER_CONSTANT)
    # ... but over a nearly white part of the image the share is mostly noise: the bar must also
    # stand out in grey levels there (two noise sigmas of the three rows' sum)
    step_rows = cv2.boxFilter(step, -1, (1, BAR_ROWS), normalize=False, borderType=cv2.BORDER_CONSTANT)
    step_base = float(np.median(step_rows))
    step_floor = step_base + 2 * 1.4826 * float(np.median(np.abs(step_rows - step_base)))
    window = max(9, int(width * 0.01)) | 1
    response = cv2.blur(rows, (window, 1), borderType=cv2.BORDER_REPLICATE)
    base = float(np.median(response))
    noise = 1.4826 * float(np.median(np.abs(response - base))) + 1e-3
    min_len = max(10, int(0.03 * width))
    strong = response > base + LINE_SIGMAS * noise
    found = []
    for y in np.flatnonzero(strong.sum(axis=1) >= min_len):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], strong[y].astype(np.int8), [0]))))
        for start, end in zip(edges[0::2], edges[1::2]):
            if end - start < min_len:
                continue
            # the ends, measured on the bar's own rows only (a line of the image running on beside
            # it in the next row is not the bar)
            near = share[max(0, y - 1):y + 2]
            inside = near[:, start + window // 2:max(start + window // 2 + 1, end - window // 2)]
            typical = np.median(inside, axis=1)
            profile = near[typical >= 0.6 * typical.max()].sum(axis=0)
            visible = step_rows[y] > step_floor
            base_profile = float(np.median(profile))
            left = _bar_end(profile, visible, int(start), +1, window, base_profile)
            right = _bar_end(profile, visible, int(end) - 1, -1, window, base_profile)
            found.append(FaintLine(left + 0.5, right + 0.5, int(y),
                                   (float(np.median(response[y, start:end])) - base) / noise))
    kept: list[FaintLine] = []
    for line in sorted(found, key=lambda f: -f.strength):   # a bar's neighbouring rows respond too
        if not any(abs(line.row - k.row) <= BAR_ROWS and min(line.x1, k.x1) > max(line.x0, k.x0) for k in kept):
            kept.append(line)
    return kept


def _bar_end(response: np.ndarray, visible: np.ndarray, start: int, inward: int, window: int, base: float) -> float:
    """The sub-pixel end (a pixel-centre coordinate) of the bar found running to column ``start``:
    where the response crosses half the bar's level just inside that end; only over columns where
    the bar is ``visible`` (above the image's noise in grey levels)."""
    n = len(response)
    smooth = np.convolve(response, np.ones(3) / 3, mode="same") * visible   # symmetric: keeps the half crossing
    a, b = sorted((start + inward * window, start + inward * 3 * window))
    inner = smooth[max(0, a):min(n, b + 1)]
    level = float(np.median(inner)) if inner.size else float(smooth[start])
    half = base + (level - base) / 2
    x = min(max(start + inward * window, 0), n - 1)
    # from inside the bar: the averaged run can begin a little before it (a stroke of the image)
    while 0 <= x + inward < n and smooth[x] <= half and abs(x - start) < 3 * window:
        x += inward
    last = x
    while 0 <= x - inward < n:
        outer = x - inward
        if smooth[outer] > half:
            last = x = outer
            continue
        ahead = (outer - inward * k for k in range(1, BAR_GAP + 1))
        if any(0 <= c < n and smooth[c] > half for c in ahead):
            x = outer                    # a stroke of the image crossing the bar
            continue
        break
    outer = last - inward
    if not 0 <= outer < n or smooth[last] == smooth[outer]:
        return last - inward * 0.5
    return outer + inward * (half - smooth[outer]) / (smooth[last] - smooth[outer])


@dataclass
class OverlayRegion:
    """The image's bottom rows as ink levels (white ink: the darkest channel; black ink: 255 - the
    brightest), with their faint lines found once and shared by both uses of them."""
    top: int                                    # the region's first row in the image
    width: int
    levels: tuple[np.ndarray, np.ndarray]
    _lines: dict = field(default_factory=dict)

    def lines(self, k: int) -> list[FaintLine]:
        if k not in self._lines:
            self._lines[k] = faint_lines(self.levels[k], self.width)
        return self._lines[k]


def overlay_region(planes: np.ndarray) -> OverlayRegion:
    top = int(planes.shape[0] * (1 - db.OVERLAY_ROWS))
    region = planes[top:]
    if region.shape[2] > 1:
        lowest, highest = region.min(axis=2), region.max(axis=2)
    else:
        lowest = highest = region[..., 0]
    return OverlayRegion(top, planes.shape[1], (np.ascontiguousarray(lowest), np.ascontiguousarray(255 - highest)))


def faint_label_crops(region: OverlayRegion) -> Iterator[tuple[db.ScaleBar, Callable[[float], db.LabelCrop]]]:
    """For each faint bar in the image's bottom rows (white ink, then black), the text line below
    it and the one above it: a function that cuts it at a magnification (``READINGS``), black on
    white for Tesseract, the image's own strokes cut away. Crops are cut only when asked for: most
    are read at one magnification only (no label there)."""
    width, top = region.width, region.top
    guess = max(8.0, TEXT_HEIGHT_GUESS * width)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (max(5, int(guess * 0.5) | 1),) * 2)
    for k, level in enumerate(region.levels):
        lines = [line for line in region.lines(k) if 0.03 * width <= line.length_px <= 0.85 * width]
        if not lines:
            continue
        # thin bright strokes (text, the bar, the image's own edges) as their share of ink over the
        # image around them (text over a bright particle keeps its strength), lightly smoothed
        opened = cv2.morphologyEx(level, cv2.MORPH_OPEN, kernel).astype(np.float32)
        share = (level.astype(np.float32) - opened) / np.maximum(255.0 - opened, SHARE_FLOOR)
        strokes = cv2.GaussianBlur(share, (3, 3), 0.7)
        for line in sorted(lines, key=lambda f: -f.length_px)[:MAX_LINES_TRIED]:
            y, x0, x1 = line.row, line.x0, line.x1
            across = strokes[max(0, y - 1):y + BAR_ROWS + 1, int(x0) + 2:int(x1) - 1]
            if not across.size:
                continue
            ink_level = float(np.median(across.max(axis=0)))   # the bar's strength is the ink's
            if ink_level <= 0:
                continue
            ink = strokes >= 0.5 * ink_level
            bar = db.ScaleBar(x0=x0, x1=x1, top=top + y - 1, bottom=top + y + 1, kind="plain",
                              box=(int(x0), top + y - 1, int(round(x1 - x0)), 3))
            c0, c1 = int(max(0, x0 - 1.2 * line.length_px)), int(min(width, x1 + 1.2 * line.length_px))
            for below in (True, False):
                line_rows = _text_line_rows(ink, y, (c0, c1), guess, below)
                if line_rows is None:
                    continue

                def cut(magnification: float, line_rows=line_rows, ink=ink, ink_level=ink_level, strokes=strokes,
                        columns=(c0, c1), bar=bar, y=y) -> db.LabelCrop:
                    image, (m0, scale, pad) = _text_line_crop(strokes, ink, ink_level, line_rows, columns,
                                                              magnification)
                    left = columns[0]
                    return db.LabelCrop(image=image, bar_span=((bar.x0 - left) * scale + pad, (bar.x1 - left) * scale + pad),
                                        bar_y=(y + 0.5 - m0) * scale + pad, origin=(left, top + m0), scale=scale,
                                        pad=pad, one_line=True)
                yield bar, cut


def continuing_line(region: OverlayRegion, bar: db.ScaleBar) -> db.ScaleBar | None:
    """The whole bar, when ``bar`` (found on saturated overlay pixels) is only a piece of a longer
    line: a resampled bar loses its saturated pixels where it crosses brighter parts of the image,
    and a piece of it next to the label must not be taken for the bar."""
    for k in range(len(region.levels)):
        for line in region.lines(k):
            row = region.top + line.row
            if not bar.top - BAR_ROWS <= row <= bar.bottom + BAR_ROWS:
                continue
            if line.x0 <= bar.x0 + 2 and line.x1 >= bar.x1 - 2 and line.length_px > 1.1 * bar.length_px:
                return db.ScaleBar(x0=line.x0, x1=line.x1, top=row - 1, bottom=row + 1, kind="plain",
                                   box=(int(line.x0), row - 1, int(round(line.length_px)), 3))
    return None


def _text_line_rows(ink, bar_row, columns, guess, below) -> tuple[int, int] | None:
    """The rows of the line of text just below (or above) the bar: where the ink is dense, over
    the strokes of the image crossing every row; None when there is no such line."""
    rows_total = ink.shape[0]
    c0, c1 = columns
    if below:
        r0, r1 = bar_row + 3, int(min(rows_total, bar_row + 3 + 2.5 * guess))
    else:
        r0, r1 = int(max(0, bar_row - 1 - 2.5 * guess)), bar_row - 1
    if r1 - r0 < MIN_TEXT_ROWS:
        return None
    per_row = ink[r0:r1, c0:c1].sum(axis=1)
    floor = float(np.percentile(per_row, 20))
    if per_row.max() <= floor:
        return None
    dense = np.flatnonzero(per_row >= floor + 0.3 * (per_row.max() - floor))
    runs = np.split(dense, np.flatnonzero(np.diff(dense) > 1) + 1)
    run = runs[0] if below else runs[-1]              # the line next to the bar
    t0, t1 = r0 + int(run[0]), r0 + int(run[-1])
    text_h = t1 - t0 + 1
    if text_h < MIN_TEXT_ROWS:
        return None
    # a label is a few glyphs of about the line's height: texture of the image is not worth a read
    count, _, stats, _ = cv2.connectedComponentsWithStats(ink[t0:t1 + 1, c0:c1].astype(np.uint8), connectivity=8)
    glyphs = np.count_nonzero((stats[1:, cv2.CC_STAT_HEIGHT] >= 0.5 * text_h)
                              & (stats[1:, cv2.CC_STAT_WIDTH] <= 1.5 * text_h))
    return (t0, t1) if glyphs >= MIN_GLYPHS else None


def _text_line_crop(strokes, ink, ink_level, line_rows, columns, magnification):
    """The text line cut to its rows (a stroke of the image crossing it is cut, not kept whole),
    specks dropped, black on white, upscaled to Tesseract's size times ``magnification``."""
    rows_total = ink.shape[0]
    c0, c1 = columns
    t0, t1 = line_rows
    text_h = t1 - t0 + 1
    m0, m1 = max(0, t0 - int(0.35 * text_h)), min(rows_total, t1 + 1 + int(0.5 * text_h))
    part = ink[m0:m1, c0:c1].astype(np.uint8)
    part[:max(0, t0 - int(0.15 * text_h) - m0)] = 0           # above the glyphs' tops
    part[t1 + 1 + int(0.45 * text_h) - m0:] = 0               # below the micro sign's tail
    count, labels, stats, _ = cv2.connectedComponentsWithStats(part, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= max(3, 0.015 * text_h * text_h)
    keep[0] = False
    strength = np.clip(strokes[m0:m1, c0:c1] / ink_level, 0, 1) * keep[labels]
    scale = min(5.0, max(1.0, db.LABEL_TEXT_HEIGHT / text_h)) * magnification
    image = cv2.resize((255 - strength * 255).astype(np.uint8), None, fx=scale, fy=scale,
                       interpolation=cv2.INTER_CUBIC)
    image = cv2.threshold(image, 60, 255, cv2.THRESH_BINARY)[1]
    pad = db.LABEL_TEXT_HEIGHT // 2
    image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=255)
    return image, (m0, scale, pad)


def implausible(label: LabelReading, bar_px: float, width: int) -> str | None:
    """Why a label read from faint overlay text cannot be right, or None.

    A stroke of the image beside the number reads as a 1 or a 0 ("l10 µm" for "10 µm"): digit
    look-alikes are taken only as a number of their own ("lum" is 1 µm). And the whole field the
    label implies (value / bar * width) must be one an SEM can image."""
    found = LABEL_PATTERN.match(label.text)          # the text the label was parsed from
    number = found.group(1) if found else ""
    lookalikes = set(DIGIT_LOOKALIKES) - {ord(",")}
    if len(number) > 1 and any(ord(c) in lookalikes for c in number):
        return f"{label.text!r}: a digit look-alike beside other characters (a stroke of the image?)"
    field = label.value * unit_to_nm(label.unit) / max(bar_px, 1e-6) * width
    if not FIELD_NM[0] <= field <= FIELD_NM[1]:
        return f"{label.text!r} over {bar_px:.0f} px makes a field of {field / 1e6:.3g} mm, beyond an SEM's"
    return None
