"""Find an SEM image's data band, its scale bar and the bar's label, by general rules (OpenCV).

Instruments draw their data as flat graphics: a background of one colour with text, lines and a
bar in other colours, anti-aliased at most. SEM signal is never flat: neighbouring pixels differ
(shot noise), and its values spread. So a row of a data band is one where most neighbouring pixels
are equal *and* one value (the background) covers most of the row. Bands are the runs of such rows
in the image's lower half, wherever they are: at the very bottom, a band with image rows below it
(the paper's lab), a strip appended under the image, a box drawn over it; light or dark; any
colour. Rows sharing a background colour belong to one band; thin lines of another colour (frames)
go with the band below them.

Ink is what differs from the band's background in *any* colour channel, so red text and a green
bar on white are as dark as black ones (a grey conversion would turn them into mid-greys).

The scale bar is one of: a horizontal stroke (plain, with end ticks or arrows), two collinear
strokes with the label between them, or a ruler of equally spaced ticks with or without a
baseline. Its length is measured between the centres of its end ticks when it has them, otherwise
over its whole extent. The label is the text around the bar inside the bar's own cell (vertical
lines of the band separate cells): above, below, inside or beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SEARCH_FROM = 0.5          # data bands live in the image's lower half
FLAT_NEIGHBOURS = 2        # grey levels: neighbours this close count as "equal"
BAND_STRONG = 0.85         # a band starts on a row this flat (both measures) ...
BAND_WEAK = 0.5            # ... and goes on through rows of text down to this
MAX_GAP_ROWS = 2
BACKGROUND_SHARE = 0.25    # a row belongs to a band when the band's background covers this much
FRAME_ROWS = 3             # rows of another colour (frame lines) that go with the band below
MIN_BAND = 0.02            # of the image height
LABEL_TEXT_HEIGHT = 36     # Tesseract reads best around this glyph height (measured on real labels)
MAX_BARS_TRIED = 3         # candidate bars per band whose label is read


@dataclass(frozen=True)
class Band:
    top: int                # first row of the band: the image kept is rows [0, top)
    bottom: int             # last row (inclusive)
    background: tuple[float, ...]


@dataclass(frozen=True)
class ScaleBar:
    x0: float               # start and end of the measured length, image coordinates
    x1: float
    top: int                # rows of the bar's horizontal stroke (or tick feet), image coordinates
    bottom: int
    kind: str               # ticks | plain | split | ruler
    box: tuple[int, int, int, int] = (0, 0, 0, 0)   # the bar with its ticks: x, y, w, h (image)
    seeds: tuple[tuple[int, int], ...] = ()          # a pixel of each of the bar's parts (band coordinates)

    @property
    def length_px(self) -> float:
        return self.x1 - self.x0


@dataclass(frozen=True)
class LabelCrop:
    """The text around the scale bar, ready for Tesseract: black on white, upscaled, padded."""
    image: np.ndarray
    bar_span: tuple[float, float]   # the bar's columns in the crop's coordinates
    bar_y: float
    origin: tuple[int, int]         # image coordinates of the crop's (0, 0) before scaling
    scale: float                    # crop pixels per image pixel
    pad: int
    one_line: bool = False          # all its text on one line: Tesseract need not find lines


@dataclass
class BandInk:
    band: Band
    ink: np.ndarray                 # uint8 0/1, the band's rows
    distance: np.ndarray            # float32, how far each pixel is from the background
    contrast: float
    separators: list[tuple[int, int, int, int]] = field(default_factory=list)  # vertical cell lines
    _components: tuple | None = None

    @property
    def components(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(count, labels, stats) of the ink's 8-connected components, computed once per band."""
        if self._components is None:
            count, labels, stats, _ = cv2.connectedComponentsWithStats(self.ink, connectivity=8)
            self._components = (count, labels, stats)
        return self._components


def colour_planes(gray: np.ndarray, rgb: np.ndarray | None) -> np.ndarray:
    """H x W x C uint8 planes (a view, no copy): the RGB channels when the image has colour, else
    the grey one. Bands take their rows from it and widen only those."""
    if rgb is not None and rgb.ndim == 3 and not _is_grey(rgb):
        return rgb
    return gray[..., None]


def _is_grey(rgb: np.ndarray) -> bool:
    sample = rgb[::7, ::7].astype(np.int16)
    return bool(np.abs(sample - sample[..., :1]).max() <= 8)


def find_bands(gray: np.ndarray) -> list[Band]:
    """Candidate data bands in the lower half, the lowest first."""
    height, width = gray.shape
    start = int(height * SEARCH_FROM)
    rows = gray[start:].astype(np.int16)
    n = rows.shape[0]
    if n < 4 or width < 16:
        return []
    # Row statistics on pixel pairs (even column, the odd one beside it): half the work, the same
    # answer for bands that span more than a few pixels.
    even = rows[:, 0:width - 1:2]
    odd = rows[:, 1::2][:, :even.shape[1]]
    sampled = even.shape[1]
    flatness = np.count_nonzero(np.abs(even - odd) <= FLAT_NEIGHBOURS, axis=1) / sampled
    # Histograms only where a band can be: rows flat enough, and the gap rows a run may bridge
    # (SEM signal rows are never flat, so this skips most of the image).
    flat_enough = flatness >= BAND_WEAK
    for shift in range(1, MAX_GAP_ROWS + 1):
        flat_enough[shift:] |= flatness[:-shift] >= BAND_WEAK
        flat_enough[:-shift] |= flatness[shift:] >= BAND_WEAK
    chosen = np.flatnonzero(flat_enough)
    window = np.zeros((n, 64), dtype=np.int64)
    if chosen.size:
        quantised = (even[chosen] >> 2).astype(np.int64)        # 64 bins of 4 levels
        m = chosen.size
        hist = np.bincount((quantised + 64 * np.arange(m)[:, None]).ravel(), minlength=64 * m).reshape(m, 64)
        near_bins = hist.copy()                                # share within one bin either side
        near_bins[:, 1:] += hist[:, :-1]
        near_bins[:, :-1] += hist[:, 1:]
        window[chosen] = near_bins
    share = window.max(axis=1) / sampled
    strong = (flatness >= BAND_STRONG) & (share >= BAND_STRONG)
    weak = (flatness >= BAND_WEAK) & (share >= BAND_WEAK)
    # background candidates of each row: bins holding at least BACKGROUND_SHARE of it, as bit masks
    candidates = window / sampled >= BACKGROUND_SHARE

    runs: list[list[int]] = []
    i = 0
    while i < n:
        if not strong[i]:
            i += 1
            continue
        first = last = i
        gap = 0
        j = i + 1
        while j < n:
            if weak[j]:
                last, gap = j, 0
            else:
                gap += 1
                if gap > MAX_GAP_ROWS:
                    break
            j += 1
        runs.append([first, last])
        i = last + 1

    min_rows = max(8, int(MIN_BAND * height))
    bands = []
    for first, last in runs:
        for seg_first, seg_last, background_bin in _segments(candidates, window, first, last):
            if seg_last - seg_first + 1 < min_rows:
                continue
            top, bottom = seg_first + start, seg_last + start
            values = rows[seg_first:seg_last + 1]
            near = np.abs((values >> 2) - background_bin) <= 1
            background = _median_of_levels(values[near]) if near.any() else float(background_bin * 4 + 2)
            bands.append(Band(top=top, bottom=bottom, background=(background,)))
    return sorted(bands, key=lambda b: -b.bottom)


def _segments(candidates: np.ndarray, window: np.ndarray, first: int, last: int):
    """Split rows [first, last] where the background colour changes; short runs join the next."""
    # each row's candidate bins as one integer's bits: set operations on 64 bins cost one operation
    masks = (candidates[first:last + 1].astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(
        axis=1, dtype=np.uint64).tolist()
    segments: list[list] = []
    for r, bins in zip(range(first, last + 1), masks):
        if segments and segments[-1][2] & bins:
            segments[-1][1] = r
            segments[-1][2] &= bins
            segments[-1][3] |= bins
        else:
            segments.append([r, r, bins or 1 << int(window[r].argmax()), bins])
    # thin segments of another colour (frame lines) go with the band below (or above at the end)
    merged: list[list] = []
    pending_first = None
    for k, seg in enumerate(segments):
        if seg[1] - seg[0] + 1 <= FRAME_ROWS and k + 1 < len(segments):
            pending_first = seg[0] if pending_first is None else pending_first
            continue
        if pending_first is not None:
            seg = [pending_first, seg[1], seg[2], seg[3]]
            pending_first = None
        if seg[1] - seg[0] + 1 <= FRAME_ROWS and merged:
            merged[-1][1] = seg[1]
            continue
        merged.append(seg)
    for seg_first, seg_last, bins, _ in merged:
        totals = window[seg_first:seg_last + 1].sum(axis=0)
        allowed = [b for b in range(64) if bins >> b & 1] if bins else list(range(64))
        yield seg_first, seg_last, int(max(allowed, key=lambda b: totals[b]))


def band_ink(planes: np.ndarray, band: Band) -> BandInk | None:
    """The ink of a band: pixels far from its background colour in any channel."""
    grey_bg = band.background[0]
    if planes.shape[2] == 1:
        # grey: the background, the distances and their 99.7th percentile from one histogram
        region = planes[band.top:band.bottom + 1, :, 0]
        hist = np.bincount(region.ravel(), minlength=256)
        near = np.abs(_LEVELS - grey_bg) <= 12
        background = np.array([_median_of_histogram(hist * near if hist[near].sum() > 16 else hist)])
        doubled = (2 * np.abs(_LEVELS - background[0])).astype(np.int64)
        top = _rank_of_histogram(np.bincount(doubled, weights=hist, minlength=511), 0.997) / 2.0
        distance = cv2.absdiff(region.astype(np.float32), float(background[0]))
    else:
        region = planes[band.top:band.bottom + 1].astype(np.int16)
        flat = region.reshape(-1, region.shape[2])
        near = np.abs(region.mean(axis=2) - grey_bg).ravel() <= 12
        source = flat[near] if np.count_nonzero(near) > 16 else flat
        background = np.array([_median_of_levels(source[:, c]) for c in range(flat.shape[1])])
        distance = np.abs(region - background.astype(np.float32)[None, None, :]).max(axis=2)
        doubled = (distance.ravel() * 2).astype(np.int64)
        top = _rank_of_histogram(np.bincount(doubled, minlength=511), 0.997) / 2.0
    if top < 40:
        return None                                  # a blank strip: nothing is drawn on it
    threshold = max(32.0, 0.4 * top)
    ink = (distance >= threshold).astype(np.uint8)
    share = np.count_nonzero(ink) / ink.size
    if not 0.001 <= share <= 0.6:
        return None
    result = BandInk(band=Band(band.top, band.bottom, tuple(float(v) for v in background)), ink=ink,
                     distance=distance, contrast=top)
    result.separators = _separators(ink)
    return result


_LEVELS = np.arange(256, dtype=np.float64)


def _median_of_levels(values: np.ndarray) -> float:
    """np.median of integer grey levels 0-255, from their histogram (no sort)."""
    return _median_of_histogram(np.bincount(values.ravel(), minlength=256))


def _median_of_histogram(counts: np.ndarray) -> float:
    """np.median of the values whose histogram over levels 0, 1, 2, ... is ``counts``."""
    cumulative = np.cumsum(counts)
    n = int(round(cumulative[-1]))
    low = int(np.searchsorted(cumulative, (n - 1) // 2 + 1))     # the ((n-1)//2)-th smallest, 0-based
    high = int(np.searchsorted(cumulative, n // 2 + 1))
    return (low + high) / 2.0


def _rank_of_histogram(counts: np.ndarray, q: float) -> int:
    """The level at rank int(q * (n - 1)) (the element np.partition puts there), from a histogram."""
    cumulative = np.cumsum(counts)
    k = int(q * (int(round(cumulative[-1])) - 1))
    return int(np.searchsorted(cumulative, k + 1))


OVERLAY_ROWS = 0.15         # text laid over the image (JEOL) sits in its bottom rows


def overlay_bands(planes: np.ndarray) -> list[BandInk]:
    """Text laid over the image with no band (JEOL): the bottom rows, inked by saturated white (then
    black) in every channel, which the instrument draws and the signal below it rarely reaches."""
    height = planes.shape[0]
    top = int(height * (1 - OVERLAY_ROWS))
    region = planes[top:].astype(np.int16)
    out = []
    lowest = region.min(axis=2).astype(np.float32)
    highest = region.max(axis=2).astype(np.float32)
    for ink_value, ink, distance in ((255.0, lowest >= 230, np.clip(lowest - 128.0, 0, None) * 2.0),
                                     (0.0, highest <= 25, np.clip(128.0 - highest, 0, None) * 2.0)):
        share = float(ink.mean())
        if not 0.001 <= share <= 0.2:
            continue
        band = Band(top=top, bottom=height - 1, background=(255.0 - ink_value,))
        # the crop is cut from the grey levels, not the mask: a glyph's soft edges help Tesseract
        out.append(BandInk(band=band, ink=ink.astype(np.uint8), distance=distance, contrast=255.0))
    return out


def _separators(ink: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Vertical lines that divide a band into cells (FEI, Tescan): thin, most of the band tall."""
    height = ink.shape[0]
    tall = max(5, int(height * 0.6))
    if np.count_nonzero(ink, axis=0).max() < tall:
        return []                        # no column holds that much ink: no line can be there
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (1, tall))
    lines = cv2.morphologyEx(ink, cv2.MORPH_OPEN, kernel)
    count, _, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    return [tuple(int(v) for v in stats[i][:4]) for i in range(1, count) if stats[i][2] <= 4]


def find_bars(band: BandInk, width: int) -> list[ScaleBar]:
    """Candidate scale bars of a band, the most plausible first."""
    ink = band.ink
    rows = ink.shape[0]
    min_len = max(9, int(width * 0.015)) | 1  # odd: an even kernel shifts the opened stroke by a pixel
    strokes_mask = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (min_len, 1)))
    count, _, stats, _ = cv2.connectedComponentsWithStats(strokes_mask, connectivity=8)
    strokes = []
    for x, y, w, h, _ in stats[1:count]:
        if w >= 0.9 * width or w < 4 * h or h > max(3, 0.4 * rows):
            continue                     # the band's frame, or a blob (a logo, a filled box)
        if h <= 2 and (y <= 1 or y + h >= rows - 1):
            continue                     # a piece of the band's frame line
        x, w = _extend_stroke(ink, int(x), int(y), int(w), int(h))
        x, w = _evenly_drawn_part(band.distance, x, int(y), w, int(h))
        if w >= min_len:
            strokes.append((x, int(y), w, int(h)))
    count_all, labels, stats_all = band.components
    bars = []
    used = set()
    # two collinear strokes with text between them: one bar with its label inside (|-- 500 µm --|)
    for a in range(len(strokes)):
        for b in range(len(strokes)):
            xa, ya, wa, ha = strokes[a]
            xb, yb, wb, hb = strokes[b]
            gap = xb - (xa + wa)
            if a == b or gap <= 0 or abs(ya - yb) > 1 or abs(ha - hb) > 1 or abs(wa - wb) > 0.35 * max(wa, wb):
                continue
            if gap > 4 * max(wa, wb) or not _text_between(ink, xa + wa, xb, ya, ha):
                continue
            left = _tick_centre(ink, xa, ya, ha, side=-1)
            right = _tick_centre(ink, xb + wb - 1, yb, hb, side=+1)
            x0 = left if left is not None else float(xa)
            x1 = right if right is not None else float(xb + wb)
            bars.append(_bar(band, x0, x1, ya, ha, "split", labels, stats_all, [(xa, ya), (xb, yb)]))
            used.update((a, b))
    for k, (x, y, w, h) in enumerate(strokes):
        if k in used:
            continue
        left, right = _tick_centre(ink, x, y, h, side=-1), _tick_centre(ink, x + w - 1, y, h, side=+1)
        ticks = left is not None and right is not None
        x0, x1 = (left, right) if ticks else (float(x), float(x + w))
        bars.append(_bar(band, x0, x1, y, h, "ticks" if ticks else "plain", labels, stats_all, [(x, y)]))
    bars.extend(_tick_rulers(band, labels, stats_all, count_all, width))
    bars = [bar for bar in bars if bar.length_px >= max(10.0, 0.015 * width)]

    def plausibility(bar: ScaleBar) -> tuple:
        share = bar.length_px / width
        return (0.03 <= share <= 0.85, bar.kind in ("ticks", "ruler", "split"), bar.length_px)
    return sorted(bars, key=plausibility, reverse=True)


def _bar(band: BandInk, x0: float, x1: float, y: int, h: int, kind: str, labels, stats, seeds) -> ScaleBar:
    xs, ys, xe, ye = [], [], [], []
    for sx, sy in seeds:
        k = labels[sy + h // 2, min(labels.shape[1] - 1, sx + 1)]
        bx, by, bw, bh = (int(v) for v in stats[k][:4]) if k else (sx, sy, 1, h)
        xs.append(bx), ys.append(by), xe.append(bx + bw), ye.append(by + bh)
    box = (min(xs), band.band.top + min(ys), max(xe) - min(xs), max(ye) - min(ys))
    return ScaleBar(x0=float(x0), x1=float(x1), top=band.band.top + y, bottom=band.band.top + y + h - 1,
                    kind=kind, box=box, seeds=tuple((min(labels.shape[1] - 1, sx + 1), sy + h // 2) for sx, sy in seeds))


def _text_between(ink: np.ndarray, x0: int, x1: int, y: int, h: int) -> bool:
    """Is there text in the gap, astride the bar's line (the label written inside the bar)?"""
    reach = max(4, 3 * h)
    above = ink[max(0, y - reach):y, x0 + 1:x1 - 1]
    below = ink[y + h:y + h + reach, x0 + 1:x1 - 1]
    return above.size > 0 and below.size > 0 and above.mean() > 0.05 and below.mean() > 0.05


def _tick_rulers(band: BandInk, labels, stats, count: int, width: int) -> list[ScaleBar]:
    """Rulers made of ticks only (Hitachi): >= 5 thin vertical marks, feet aligned, evenly spaced."""
    ticks = [tuple(int(v) for v in stats[i][:4]) for i in range(1, count)
             if stats[i][3] >= 3 and stats[i][2] <= max(3, stats[i][3] // 2)]
    ticks.sort(key=lambda t: t[0])
    rulers = []
    seen = set()
    for i, first in enumerate(ticks):
        if i in seen:
            continue
        foot = first[1] + first[3]
        chain = [i]
        for j in range(i + 1, len(ticks)):
            if abs(ticks[j][1] + ticks[j][3] - foot) <= 1 and j not in seen:
                chain.append(j)
        if len(chain) < 5:
            continue
        centres = np.array([ticks[j][0] + ticks[j][2] / 2 for j in chain])
        steps = np.diff(centres)
        step = float(np.median(steps))
        if step < 3 or np.abs(steps - step).max() > max(1.5, 0.12 * step):
            continue
        seen.update(chain)
        top = min(ticks[j][1] for j in chain)
        bottom = foot - 1
        x0, x1 = float(centres[0]), float(centres[-1])
        box = (int(ticks[chain[0]][0]), band.band.top + top, int(x1 - x0) + 2, bottom - top + 1)
        seeds = []
        for j in chain:
            tx, ty, tw, th = ticks[j]
            column = labels[ty:ty + th, tx:tx + tw]
            found = np.argwhere(column > 0)
            seeds.append((tx + int(found[0][1]), ty + int(found[0][0])))
        rulers.append(ScaleBar(x0=x0, x1=x1, top=band.band.top + top, bottom=band.band.top + bottom,
                               kind="ruler", box=box, seeds=tuple(seeds)))
    return rulers


_NINE_WIDE = np.arange(4096)[:, None] + np.arange(9)   # column indices of running 9-column windows


def _evenly_drawn_part(distance: np.ndarray, x: int, y: int, w: int, h: int) -> tuple[int, int]:
    """The longest part of a stroke drawn at its full strength: a bar is drawn in one colour, and a
    dimmer line that continues it (Tescan's table rule on the ruler's baseline) is not the bar."""
    if w < 9:
        return x, w
    profile = distance[y:y + h, x:x + w].max(axis=0) if h > 1 else distance[y, x:x + w]
    low, high = cv2.minMaxLoc(profile)[:2]
    if low >= 0.7 * high:
        return x, w                      # drawn evenly all along (most strokes): nothing to cut
    # a running median over 9 columns (edges mirrored): tick marks on the stroke are spikes, not a
    # change of colour
    padded = np.concatenate((profile[3::-1], profile, profile[:-5:-1]))
    windows = _NINE_WIDE[:w] if w <= len(_NINE_WIDE) else np.arange(w)[:, None] + np.arange(9)
    smooth = np.partition(padded[windows], 4, axis=1)[:, 4]
    strong = np.concatenate(([False], smooth >= 0.7 * float(smooth.max()), [False]))
    edges = np.flatnonzero(strong[1:] != strong[:-1])       # starts and ends of the strong runs
    starts, lengths = edges[0::2], edges[1::2] - edges[0::2]
    best = (0, w)
    if starts.size:
        k = int(np.argmax(lengths))                            # the first longest, as max() picks
        best = (int(starts[k]), int(lengths[k]))
    return x + best[0], best[1]


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
    rows, cols = ink.shape
    reach = 2   # a tick sticks out of the stroke by at least this many rows
    # the six columns inward from the end, in that order
    stop = end_col - side * 6
    lo, hi = (max(0, stop + 1), end_col + 1) if side > 0 else (end_col, min(cols, stop))
    if hi <= lo:
        return None
    tick = np.zeros(hi - lo, dtype=bool)
    if top >= reach:
        tick |= ink[top - reach:top, lo:hi].all(axis=0)
    if top + thickness + reach <= rows:
        tick |= ink[top + thickness:top + thickness + reach, lo:hi].all(axis=0)
    order = tick.tolist()[::-1] if side > 0 else tick.tolist()
    first = end_col if side > 0 else lo   # column of order[0]
    columns = []
    for offset, is_tick in enumerate(order):
        if is_tick:
            columns.append(first - side * offset)
        elif columns:
            break
    return sum(columns) / len(columns) if columns else None


def label_crop(band: BandInk, bar: ScaleBar, width: int) -> LabelCrop | None:
    """The text around the bar inside its cell (above, below, inside or beside it), bar removed."""
    ink = band.ink
    top = band.band.top
    count, labels, stats = band.components
    bx, by, bw, bh = bar.box
    by -= top
    bar_ids = {int(labels[y, x]) for x, y in bar.seeds} - {0}
    boxes = stats[1:count, :4]
    fits = np.flatnonzero((boxes[:, 3] >= 2) & (boxes[:, 3] <= 0.8 * ink.shape[0]) & (boxes[:, 2] <= 0.25 * width)) + 1
    glyphs = [(k, tuple(box)) for k, box in zip(fits.tolist(), stats[fits, :4].tolist()) if k not in bar_ids]
    if not glyphs:
        return None
    text_height = float(np.median([g[3] for _, g in glyphs if g[3] >= 4] or [g[3] for _, g in glyphs]))
    # the bar's cell: between the nearest separators left and right of the bar
    left_wall, right_wall = 0, ink.shape[1]
    for sx, sy, sw, sh in band.separators:
        if sx + sw <= bar.x0 - 2:
            left_wall = max(left_wall, sx + sw)
        elif sx >= bar.x1 + 2:
            right_wall = min(right_wall, sx)
    bar_top, bar_bottom = by, by + bh - 1
    margin = 1.5 * text_height
    chosen, rest = [], []
    for k, (x, y, w, h) in glyphs:
        if x < left_wall or x + w > right_wall:
            continue
        gap = max(bar_top - (y + h), y - (bar_bottom + 1), 0)
        beside = gap == 0
        reach = 3.0 * text_height if beside else margin
        if gap <= 2.2 * text_height and x + w >= bar.x0 - reach and x <= bar.x1 + reach:
            chosen.append((x, y, w, h))
        else:
            rest.append((x, y, w, h))
    if not chosen:
        return None
    # whole words: glyphs on a chosen glyph's line, a letter's gap away, belong to the same text
    grown = True
    while grown and rest:
        grown = False
        lines_top = min(c[1] for c in chosen)
        lines_bottom = max(c[1] + c[3] for c in chosen)
        for g in list(rest):
            x, y, w, h = g
            if y >= lines_bottom or y + h <= lines_top:
                continue                 # on no chosen glyph's line
            for cx, cy, cw, ch in chosen:
                same_line = min(y + h, cy + ch) - max(y, cy) >= 0.5 * min(h, ch)
                if same_line and max(x - (cx + cw), cx - (x + w)) <= 0.8 * text_height:
                    chosen.append(g)
                    rest.remove(g)
                    grown = True
                    break
    x0 = max(0, min(g[0] for g in chosen) - 2)
    y0 = max(0, min(g[1] for g in chosen) - 2)
    x1 = min(ink.shape[1], max(g[0] + g[2] for g in chosen) + 2)
    y1 = min(ink.shape[0], max(g[1] + g[3] for g in chosen) + 2)
    distance = band.distance[y0:y1, x0:x1].copy()
    keep = np.zeros_like(distance, dtype=bool)
    sub_labels = labels[y0:y1, x0:x1]
    for x, y, w, h in chosen:
        keep[max(0, y - y0):y - y0 + h, max(0, x - x0):x - x0 + w] = True
    keep &= ~np.isin(sub_labels, list(bar_ids))
    # ... and only the ink with its soft edge (a pixel around it): the image behind text laid over it
    # (a bright particle inside a glyph's box) is not text, whatever its distance from the background
    keep &= cv2.dilate(ink[y0:y1, x0:x1], np.ones((3, 3), np.uint8)).astype(bool)
    # black text on white from the distance to the background: any colour, either polarity
    text = np.where(keep, 255.0 - np.clip(distance * (255.0 / max(band.contrast, 1.0)), 0, 255), 255.0)
    scale = LABEL_TEXT_HEIGHT / max(text_height, 1.0)
    crop = cv2.resize(text.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    crop = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    pad = LABEL_TEXT_HEIGHT // 2
    crop = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=255)
    span = ((bar.x0 - x0) * scale + pad, (bar.x1 - x0) * scale + pad)
    bar_y = ((bar.top + bar.bottom) / 2 - top - y0) * scale + pad
    one_line = max(g[1] for g in chosen) < min(g[1] + g[3] for g in chosen)
    return LabelCrop(image=crop, bar_span=span, bar_y=bar_y, origin=(x0, y0 + top), scale=scale, pad=pad,
                     one_line=one_line)
