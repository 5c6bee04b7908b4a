"""Find the databar of an SEM image, measure its scale bar and cut out the bar's label (OpenCV).

The databar is the strip of instrument graphics at the bottom of the image (Zeiss' white box, the
black FEI/JEOL strip, a tabletop ruler). Its rows are made of saturated pixels (pure white and
pure black), which SEM signal rows almost never are; the strip nearest the bottom that is tall
enough and holds ink is the databar. Annotation boxes drawn inside the image (a scale bar added
later in an editor) are not databars: the image above the strip is what semspark keeps.

The scale bar is the longest thin horizontal stroke in the databar that is not its frame. Its
length is measured between the centres of its end ticks when it has ticks (Zeiss, tabletop rulers),
otherwise over its whole extent: this matches the instruments' own pixel sizes to within 1% on the
real samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Pixels at or beyond these values count as "saturated" graphics. The loose pair finds the band
# through JPEG ringing around text; the strict pair finds its first row, which is a frame line or a
# clean margin, so that dark, noisy content right above a black databar is not taken for it.
DARK, LIGHT = 12, 243
STRICT_DARK, STRICT_LIGHT = 4, 251
SATURATED_ROW = 0.8        # share of saturated pixels that starts a databar run
CONTINUE_ROW = 0.5         # share that keeps a run going (rows of text)
PURE_ROW = 0.97
SEARCH_FROM = 0.5          # databars live in the bottom half
MIN_BAND = 0.025           # of the image height
MAX_GAP_ROWS = 3
LABEL_TEXT_HEIGHT = 40     # Tesseract reads best around this glyph height (measured on real labels)


@dataclass(frozen=True)
class Databar:
    top: int                # first row of the databar: the image kept is rows [0, top)
    bottom: int             # last row of the databar (inclusive)
    bright: bool            # white background, dark ink (Zeiss, tabletop) or the reverse (FEI)


@dataclass(frozen=True)
class ScaleBar:
    x0: float               # start and end of the measured length, image coordinates
    x1: float
    top: int                # rows of the bar's horizontal stroke
    bottom: int
    ticks: bool

    @property
    def length_px(self) -> float:
        return self.x1 - self.x0


@dataclass(frozen=True)
class LabelCrop:
    """The text around the scale bar, ready for Tesseract: black on white, upscaled, padded."""
    image: np.ndarray
    bar_x: float            # centre of the bar in the crop's coordinates, to pick the nearest label
    bar_y: float


def find_databar(gray: np.ndarray) -> Databar | None:
    height = gray.shape[0]
    start = int(height * SEARCH_FROM)
    rows = gray[start:]
    share = ((rows <= DARK) | (rows >= LIGHT)).mean(axis=1)
    # Hysteresis: a run starts on a clearly graphic row and goes on through rows dense with text
    # (anti-aliased glyphs lower the share), bridging a few rows below even that.
    runs: list[list[int]] = []
    in_run, gap = False, 0
    for index, value in enumerate(share):
        if not in_run:
            if value >= SATURATED_ROW:
                runs.append([index, index])
                in_run, gap = True, 0
        elif value >= CONTINUE_ROW:
            runs[-1][1] = index
            gap = 0
        else:
            gap += 1
            if gap > MAX_GAP_ROWS:
                in_run = False
    min_rows = max(6, int(MIN_BAND * height))
    for first, last in reversed(runs):
        top, bottom = first + start, last + start
        pure = ((gray[top:bottom + 1] <= STRICT_DARK) | (gray[top:bottom + 1] >= STRICT_LIGHT)).mean(axis=1)
        top += int(np.argmax(pure >= PURE_ROW)) if (pure >= PURE_ROW).any() else 0
        if bottom - top + 1 < min_rows or bottom < 0.85 * height:
            continue
        band = gray[top:bottom + 1]
        bright = bool(np.median(band) > 127)
        ink = (band < 128) if bright else (band > 127)
        # A strip of plain black or white (a dark sample edge, a blank margin) holds no ink.
        if 0.002 <= ink.mean() <= 0.6:
            return Databar(top=top, bottom=bottom, bright=bright)
    return None


def _ink_mask(gray: np.ndarray, bar: Databar) -> np.ndarray:
    band = gray[bar.top:bar.bottom + 1]
    return ((band < 128) if bar.bright else (band > 127)).astype(np.uint8)


def find_scale_bar(gray: np.ndarray, databar: Databar) -> ScaleBar | None:
    width = gray.shape[1]
    ink = _ink_mask(gray, databar)
    min_len = max(12, int(width * 0.02)) | 1  # odd: an even kernel shifts the opened stroke by a pixel
    strokes = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (min_len, 1)))
    count, _, stats, _ = cv2.connectedComponentsWithStats(strokes, connectivity=8)
    best = None
    for x, y, w, h, _ in stats[1:count]:
        if w >= 0.9 * width or w < 8 * h:  # the databar's frame, or a blob (a logo's letter)
            continue
        if best is None or w > best[2]:
            best = (int(x), int(y), int(w), int(h))
    if best is None:
        return None
    x, y, w, h = best
    x, w = _extend_stroke(ink, x, y, w, h)
    left, right = _tick_centre(ink, x, y, h, side=-1), _tick_centre(ink, x + w - 1, y, h, side=+1)
    ticks = left is not None and right is not None
    x0, x1 = (left, right) if ticks else (float(x), float(x + w))
    return ScaleBar(x0=x0, x1=x1, top=databar.top + y, bottom=databar.top + y + h - 1, ticks=ticks)


def _extend_stroke(ink: np.ndarray, x: int, y: int, w: int, h: int) -> tuple[int, int]:
    """The stroke's true ends on the ink mask (opening can trim a pixel at either end)."""
    row = ink[y + h // 2]
    left, right = x, x + w - 1
    while left > 0 and row[left - 1]:
        left -= 1
    while right < len(row) - 1 and row[right + 1]:
        right += 1
    return left, right - left + 1


def _tick_centre(ink: np.ndarray, end_col: int, top: int, thickness: int, side: int) -> float | None:
    """Centre column of a vertical tick at one end of the bar, or None when the end is plain."""
    rows = ink.shape[0]
    reach = 2   # a tick sticks out of the stroke by at least this many rows
    columns = []
    for offset in range(0, 6):
        col = end_col - side * offset
        if not 0 <= col < ink.shape[1]:
            break
        above = ink[max(0, top - reach):top, col]
        below = ink[top + thickness:min(rows, top + thickness + reach), col]
        if (above.size and above.all()) or (below.size and below.all()):
            columns.append(col)
        elif columns:
            break
    return float(np.mean(columns)) if columns else None


def label_crop(gray: np.ndarray, databar: Databar, bar: ScaleBar) -> LabelCrop | None:
    """The text next to the bar (above, below, or on its line), without the bar itself."""
    band = gray[databar.top:databar.bottom + 1].copy()
    ink = _ink_mask(gray, databar)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    stroke_row = bar.top - databar.top
    bar_label = labels[stroke_row, int(round((bar.x0 + bar.x1) / 2))]
    band[labels == bar_label] = 255 if databar.bright else 0  # the bar is not text
    # Distances count from the whole bar, ticks included: Zeiss puts the label on the tick tops.
    bar_top = int(stats[bar_label][1])
    bar_bottom = bar_top + int(stats[bar_label][3]) - 1
    glyphs = [tuple(int(v) for v in stats[i][:4]) for i in range(1, count)
              if i != bar_label and 3 <= stats[i][3] <= 0.7 * band.shape[0] and stats[i][2] <= 0.3 * gray.shape[1]]
    if not glyphs:
        return None
    text_height = float(np.median([g[3] for g in glyphs]))
    chosen = []
    for x, y, w, h in glyphs:
        vertical_gap = max(bar_top - (y + h), y - (bar_bottom + 1), 0)
        same_line = vertical_gap == 0
        reach = 6 * text_height if same_line else 1.5 * text_height
        if vertical_gap <= 1.5 * text_height and x + w >= bar.x0 - reach and x <= bar.x1 + reach:
            chosen.append((x, y, w, h))
    if not chosen:
        return None
    x0 = min(g[0] for g in chosen)
    y0 = min(g[1] for g in chosen)
    x1 = max(g[0] + g[2] for g in chosen)
    y1 = max(g[1] + g[3] for g in chosen)
    crop = band[y0:y1, x0:x1]
    if not databar.bright:
        crop = 255 - crop
    scale = LABEL_TEXT_HEIGHT / max(text_height, 1.0)
    crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    crop = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    pad = LABEL_TEXT_HEIGHT // 2
    crop = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=255)
    bar_x = ((bar.x0 + bar.x1) / 2 - x0) * scale + pad
    bar_y = (stroke_row - y0) * scale + pad
    return LabelCrop(image=crop, bar_x=bar_x, bar_y=bar_y)
