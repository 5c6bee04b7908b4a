"""More vendors' databars, drawn as real instruments lay them out, to test the reader beyond the
three layouts of the demo generator (``databars.py``). Each painter takes uint8 grey content and
returns an RGB image, where the label's bar is, and how many rows below the content the band starts.

- ``tasc``: the paper's lab (Zeiss at TASC): a white band with red text and a green bar with end
  ticks, drawn *over* the image with image rows below it; label above the bar with an asterisk.
- ``zeiss_box``: a white box with a black frame drawn over the image's bottom, margins of image
  left and right of it and rows below it.
- ``tescan``: a grey strip appended under the image: a table of cells (SEM HV, WD, View field,
  SEM MAG, Det, Date) divided by lighter lines, and a ruler of ticks on a baseline whose label,
  below it, is the whole ruler.
- ``fei_cells``: a black strip of cells divided by vertical lines (HV, WD, HFW, mag, det); the bar
  in its own cell with the label above it.
- ``fei_split``: the older FEI/Philips bar with the label inside it: ``|---- 500 µm ----|``.
- ``hitachi``: a black strip with ``5.0kV 8.1mm x10.0k SE(U)`` and a ruler made only of eleven
  tick marks (no baseline), its total length printed after it.
- ``jeol``: no band at all: one line of white text over the image's bottom rows
  (``10kV  X500  50µm  0000  JSM-6360LV``), the bar drawn over the label.

Distractors with length units (WD, HFW, View field) are there on purpose.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from semspark.synth.databars import _font, _text_size

VENDOR_LAYOUTS = ("tasc", "zeiss_box", "tescan", "fei_cells", "fei_split", "hitachi", "jeol")


@dataclass(frozen=True)
class VendorDrawing:
    image: np.ndarray       # uint8 RGB
    band_top: int           # first row of the data band
    bar_px: float           # the bar's length as semspark measures it (tick centres or extent)


def draw_vendor(layout: str, content: np.ndarray, label: str, bar_px: int, rng: np.random.Generator,
                field_width: str | None = None) -> VendorDrawing:
    """``field_width``: the text of the field-width cell (``HFW`` for FEI, ``View field`` for Tescan),
    e.g. ``"51.2 µm"``; random when not given."""
    height, width = content.shape
    font_px = max(13, int(round(width * 0.022)))
    painter = {"tasc": _tasc, "zeiss_box": _zeiss_box, "tescan": _tescan, "fei_cells": _fei_cells,
               "fei_split": _fei_split, "hitachi": _hitachi, "jeol": _jeol}[layout]
    if layout in ("tescan", "fei_cells"):
        return painter(content, label, bar_px, font_px, rng, field_width)
    return painter(content, label, bar_px, font_px, rng)


def _rgb(content: np.ndarray, extra_rows: int = 0, fill=(0, 0, 0)) -> Image.Image:
    h, w = content.shape
    canvas = Image.new("RGB", (w, h + extra_rows), fill)
    canvas.paste(Image.fromarray(content).convert("RGB"), (0, 0))
    return canvas


WHITE = (255, 255, 255)


def _black_strip(content: np.ndarray, strip: int, font_px: int):
    """The content with a black strip of ``strip`` rows appended, a pen on it, and the font."""
    canvas = _rgb(content, strip, (0, 0, 0))
    return canvas, ImageDraw.Draw(canvas), _font(font_px)


def _tasc(content, label, bar_px, font_px, rng) -> VendorDrawing:
    h, w = content.shape
    canvas = _rgb(content)
    d = ImageDraw.Draw(canvas)
    band_h = int(font_px * 4.6)
    top = h - band_h - int(h * 0.09)          # image rows continue below the band
    d.rectangle([1, top, w - 2, top + band_h - 1], fill=(255, 255, 255), outline=(0, 0, 0))
    font = _font(font_px)
    red, green = (200, 20, 20), (40, 220, 40)
    x0 = int(font_px * 0.6)
    d.text((x0, top + int(font_px * 0.4)), label + "*", fill=red, font=font)
    bar_y = top + int(band_h * 0.66)
    d.rectangle([x0, bar_y, x0 + bar_px + 1, bar_y + 1], fill=green)
    tick = int(font_px * 0.55)
    for x in (x0, x0 + bar_px):
        d.rectangle([x, bar_y - tick, x + 1, bar_y + tick], fill=green)
    fields = [f"EHT = {rng.choice([5.0, 10.0, 20.0]):.2f} kV", f"WD = {rng.integers(3, 15)} mm",
              "Signal A = InLens", f"Stage at Z = {rng.uniform(20, 50):.3f} mm"]
    column = max(x0 + bar_px + font_px * 3, int(w * 0.3))
    for k, text in enumerate(fields):
        cx = column + (k // 2) * int(w * 0.33)
        if cx + _text_size(d, text, font)[0] < w - 6:
            d.text((cx, top + int(font_px * 0.7) + (k % 2) * int(font_px * 1.6)), text, fill=red, font=font)
    return VendorDrawing(np.asarray(canvas), top, float(bar_px))


def _zeiss_box(content, label, bar_px, font_px, rng) -> VendorDrawing:
    h, w = content.shape
    canvas = _rgb(content)
    d = ImageDraw.Draw(canvas)
    band_h = int(font_px * 4.2)
    margin = int(w * 0.01) + 2
    top = h - band_h - int(h * 0.05)
    d.rectangle([margin, top, w - margin, top + band_h - 1], fill=(255, 255, 255), outline=(0, 0, 0))
    font = _font(font_px)
    x0 = margin + int(font_px * 1.0)
    d.text((x0, top + int(font_px * 0.4)), label, fill=(0, 0, 0), font=font)
    bar_y = top + int(band_h * 0.66)
    d.rectangle([x0, bar_y, x0 + bar_px + 1, bar_y + 1], fill=(0, 0, 0))
    tick = int(font_px * 0.5)
    for x in (x0, x0 + bar_px):
        d.rectangle([x, bar_y - tick, x + 1, bar_y + tick], fill=(0, 0, 0))
    fields = [f"EHT = {rng.choice([2.0, 5.0]):.2f} kV", f"WD = {rng.uniform(3, 9):.1f} mm",
              f"Mag = {rng.choice([5, 20, 50])}.00 K X", "Signal A = SE2"]
    column = max(x0 + bar_px + font_px * 3, int(w * 0.3))
    for k, text in enumerate(fields):
        cx = column + (k // 2) * int(w * 0.33)
        if cx + _text_size(d, text, font)[0] < w - margin - 6:
            d.text((cx, top + int(font_px * 0.6) + (k % 2) * int(font_px * 1.7)), text, fill=(0, 0, 0), font=font)
    return VendorDrawing(np.asarray(canvas), top, float(bar_px))


def _tescan(content, label, bar_px, font_px, rng, field_width=None) -> VendorDrawing:
    h, w = content.shape
    row_h = int(font_px * 2.0)
    strip = row_h * 3
    grey, line, white = (96, 96, 96), (170, 170, 170), (255, 255, 255)
    canvas = _rgb(content, strip, grey)
    d = ImageDraw.Draw(canvas)
    font = _font(font_px)
    cells_w = w // 2
    col = cells_w // 2
    for r in range(1, 3):
        d.line([0, h + r * row_h, cells_w, h + r * row_h], fill=line)
    d.line([col, h, col, h + strip], fill=line)
    d.line([cells_w, h, cells_w, h + strip], fill=line)
    view = field_width or f"{rng.uniform(5, 900):.1f} µm"
    texts = [f"SEM HV: {rng.choice([10.0, 20.0]):.1f} kV", f"WD: {rng.uniform(5, 15):.2f} mm",
             f"SEM MAG: {rng.choice([200, 1000, 10000])} x", "Det: SE", f"View field: {view}",
             "Date(m/d/y): 03/08/24"]
    for k, text in enumerate(texts):
        cx = (k % 2) * col + 4
        if _text_size(d, text, font)[0] < col - 6:
            d.text((cx, h + (k // 2) * row_h + int(row_h * 0.2)), text, fill=white, font=font)
    x_start = cells_w + 2                       # the ruler starts on the cells' right border
    base = h + row_h - 3
    d.rectangle([x_start, base, x_start + bar_px + 1, base + 1], fill=white)
    for k in range(11):
        x = x_start + round(k * bar_px / 10)
        tip = h if k in (0, 10) else h + row_h // 2
        d.rectangle([x, tip, x + 1, base], fill=white)
    d.text((x_start + 8, h + row_h + int(row_h * 0.2)), label, fill=white, font=font)
    return VendorDrawing(np.asarray(canvas), h, float(bar_px))


def _fei_cells(content, label, bar_px, font_px, rng, field_width=None) -> VendorDrawing:
    h, w = content.shape
    strip = int(font_px * 3.2)
    canvas, d, font = _black_strip(content, strip, font_px)
    label_w, _ = _text_size(d, label, font)
    cell_w = max(bar_px, label_w) + font_px * 2
    bar_cell = w - cell_w - 2
    fields = [f"HV {rng.choice([5.0, 10.0, 20.0]):.1f} kV", f"WD {rng.uniform(3, 12):.1f} mm",
              f"HFW {field_width or f'{rng.uniform(2, 80):.1f} µm'}", f"mag {rng.choice([5000, 20000, 100000])} x",
              "det ETD"]
    x = 0
    for text in fields:
        tw, _ = _text_size(d, text, font)
        if x + tw + font_px > bar_cell:
            break
        d.text((x + font_px // 2, h + int(strip * 0.3)), text, fill=WHITE, font=font)
        x += tw + font_px
        d.line([x, h + 2, x, h + strip - 3], fill=WHITE)
    d.line([bar_cell, h + 2, bar_cell, h + strip - 3], fill=WHITE)
    x_bar = bar_cell + (cell_w - bar_px) // 2
    d.text((x_bar + (bar_px - label_w) // 2, h + int(font_px * 0.3)), label, fill=WHITE, font=font)
    y_bar = h + int(strip * 0.72)
    d.rectangle([x_bar, y_bar, x_bar + bar_px - 1, y_bar + max(2, font_px // 5) - 1], fill=WHITE)
    return VendorDrawing(np.asarray(canvas), h, float(bar_px))


def _fei_split(content, label, bar_px, font_px, rng) -> VendorDrawing:
    h, w = content.shape
    strip = int(font_px * 2.6)
    canvas, d, font = _black_strip(content, strip, font_px)
    label_w, label_h = _text_size(d, label, font)
    gap = label_w + font_px
    bar_px = max(bar_px, gap + 3 * font_px)   # the instrument leaves room for a stroke each side
    x0 = w - bar_px - font_px
    y = h + strip // 2
    left_end = x0 + (bar_px - gap) // 2
    d.rectangle([x0, y, left_end, y + 1], fill=WHITE)
    d.rectangle([left_end + gap, y, x0 + bar_px + 1, y + 1], fill=WHITE)
    tick = max(3, font_px // 2)
    for x in (x0, x0 + bar_px):
        d.rectangle([x, y - tick, x + 1, y + tick], fill=WHITE)
    left, top, right, bottom = d.textbbox((0, 0), label, font=font)
    d.text((left_end + font_px // 2 - left, y - (top + bottom) // 2), label, fill=WHITE, font=font)
    info = f"{rng.choice([10.0, 20.0, 30.0]):.1f}kV  WD{rng.integers(5, 15)}mm  SE"
    d.text((font_px // 2, h + int(strip * 0.25)), info, fill=WHITE, font=font)
    return VendorDrawing(np.asarray(canvas), h, float(bar_px))


def _hitachi(content, label, bar_px, font_px, rng) -> VendorDrawing:
    h, w = content.shape
    strip = int(font_px * 2.2)
    canvas, d, font = _black_strip(content, strip, font_px)
    info = f"{rng.choice([1.0, 5.0, 15.0]):.1f}kV {rng.uniform(3, 12):.1f}mm x{rng.choice([1.0, 10.0, 50.0]):.1f}k SE(U)"
    d.text((font_px // 2, h + int(strip * 0.25)), info, fill=WHITE, font=font)
    label_w, _ = _text_size(d, label, font)
    x_end = w - label_w - font_px * 2
    x_start = x_end - bar_px
    foot = h + int(strip * 0.75)
    tick = max(4, font_px // 2)
    for k in range(11):
        x = x_start + round(k * bar_px / 10)
        d.rectangle([x, foot - tick, x + 1, foot], fill=WHITE)
    d.text((x_end + font_px, h + int(strip * 0.25)), label, fill=WHITE, font=font)
    return VendorDrawing(np.asarray(canvas), h, float(bar_px))


def _jeol(content, label, bar_px, font_px, rng) -> VendorDrawing:
    h, w = content.shape
    # the instrument's overlay sits on the image; keep the image below full white so the text is the
    # only saturated thing there, as on a real JEOL frame
    canvas = _rgb(np.minimum(content, 220).astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    d.fontmode = "1"          # the overlay is a bitmap font: no anti-aliasing
    font = _font(font_px)
    white = (255, 255, 255)
    y_text = h - int(font_px * 1.6)
    texts = [f"{rng.choice([5, 10, 20])}kV", f"X{rng.choice([500, 2000, 10000])}", label.replace(" ", ""),
             f"{rng.integers(0, 9999):04d}", "JSM-6360LV"]
    x = font_px
    label_x = label_w = 0
    for text in texts:
        tw, _ = _text_size(d, text, font)
        if text == label.replace(" ", ""):
            label_x, label_w = x, tw
        d.text((x, y_text), text, fill=white, font=font)
        x += tw + font_px * 2
    x0 = label_x + label_w // 2 - bar_px // 2
    y_bar = y_text - int(font_px * 0.5)
    d.rectangle([x0, y_bar, x0 + bar_px - 1, y_bar + 1], fill=white)
    return VendorDrawing(np.asarray(canvas), h, float(bar_px))


# JEOL frames as the instrument wrote them (x1.00) and resampled afterwards, with text of 10 px and
# more (the reader's documented limit): the set of tests/test_scale.py and bench/ingest_bench.py.
JEOL_SIZES = ((800, 1.0), (800, 0.75), (800, 0.6), (1024, 1.0), (1024, 0.75), (1024, 0.5), (1280, 1.0),
              (1280, 0.6), (1280, 0.5))
JEOL_SCALES = ((200, "nm"), (1, "µm"), (2, "µm"), (10, "µm"), (50, "µm"), (500, "nm"), (1, "mm"))


@dataclass(frozen=True)
class JeolFrame:
    name: str               # jeol_<width>_x<factor>_s<seed>
    path: str
    value: float            # the label drawn, unit nm | um | mm
    unit: str
    bar_px: float           # the bar's length in the written file
    resampled: bool


def write_jeol_frames(folder, seeds=range(4), sizes=JEOL_SIZES) -> list[JeolFrame]:
    """JEOL frames over every morphology, resized with INTER_AREA where the factor is not 1, as PNG."""
    import cv2

    from semspark.synth.morphology import CATEGORIES, render

    Path(folder).mkdir(parents=True, exist_ok=True)
    frames = []
    for seed in seeds:
        for k, (width, factor) in enumerate(sizes):
            rng = np.random.default_rng([31, seed, k])
            value, unit = JEOL_SCALES[(seed * len(sizes) + k) % len(JEOL_SCALES)]
            content = (render(CATEGORIES[(seed * 3 + k) % 10], rng, width * 3 // 4, width) * 255).astype(np.uint8)
            drawn = draw_vendor("jeol", content, f"{value:g} {unit}", int(rng.integers(width // 10, width // 4)), rng)
            image = drawn.image[..., ::-1]
            if factor != 1.0:
                image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            name = f"jeol_{width}_x{factor:.2f}_s{seed}"
            path = Path(folder) / f"{name}.png"
            if not cv2.imwrite(str(path), image):
                raise OSError(f"could not write {path}")
            frames.append(JeolFrame(name, str(path), float(value), {"µm": "um"}.get(unit, unit),
                                    drawn.bar_px * factor, factor != 1.0))
    return frames
