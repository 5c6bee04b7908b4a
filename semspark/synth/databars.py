"""Instrument databars drawn under synthetic content, with the truth of what was drawn.

Three vendor layouts:
- ``zeiss``: a white box with a black frame; the scale bar with end ticks at the left, its label
  above it, and the usual fields (EHT, WD, Mag, Signal) to the right;
- ``fei``: a black strip with white text (HV, mag, WD, HFW, det), the plain bar at the right with
  its label under it;
- ``tabletop``: a white strip under a black ruler with ticks and ten divisions, the label
  right-aligned under the ruler's end among the other fields (Hitachi TM style).

Distractors with units (``WD = 6.3 mm``, ``HFW 25.6 µm``) are there on purpose. The bar length is
the distance between end-tick centres for bars with ticks and the outer length for plain ones, the
convention semspark measures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LAYOUTS = ("zeiss", "fei", "tabletop")


@dataclass(frozen=True)
class DrawnDatabar:
    image: np.ndarray      # uint8, content with the databar below it
    databar_px: int        # rows of databar at the bottom


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib  # ships DejaVu Sans, which has the micro sign

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    return ImageFont.truetype(path, size)


def draw(layout: str, content: np.ndarray, label: str, bar_px: int, rng: np.random.Generator,
         micro: str = "µ") -> DrawnDatabar:
    height, width = content.shape
    font_px = max(16, int(round(width * 0.03)))  # instruments draw 14-20 px text; OCR needs >= 15
    painter = {"zeiss": _zeiss, "fei": _fei, "tabletop": _tabletop}[layout]
    return painter(content, label.replace("µ", micro), bar_px, font_px, rng)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _canvas(content: np.ndarray, strip_px: int, background: int):
    """The content with an empty strip of ``strip_px`` rows below it, and a pen to draw the strip."""
    h, w = content.shape
    canvas = Image.new("L", (w, h + strip_px), background)
    canvas.paste(Image.fromarray(content), (0, 0))
    return canvas, ImageDraw.Draw(canvas)


def _mag(rng) -> str:
    return f"{rng.choice([1.0, 2.5, 5.0, 10.0, 25.0, 50.0]):.2f} K X"


def _zeiss(content, label, bar_px, font_px, rng) -> DrawnDatabar:
    h, w = content.shape
    bar_h = int(font_px * 4.2)
    canvas, d = _canvas(content, bar_h, 0)
    top = h
    d.rectangle([0, top, w - 1, top + bar_h - 1], fill=255, outline=0)
    font = _font(font_px)
    x0 = int(font_px * 1.2)
    bar_y = top + int(bar_h * 0.62)
    d.text((x0, top + int(font_px * 0.5)), label, fill=0, font=font)
    d.rectangle([x0, bar_y, x0 + bar_px + 1, bar_y + 1], fill=0)           # the stroke
    tick = int(font_px * 0.6)
    for x in (x0, x0 + bar_px):                                              # 2-px end ticks
        d.rectangle([x, bar_y - tick, x + 1, bar_y + tick // 2], fill=0)
    fields = [f"EHT = {rng.choice([2.0, 5.0, 10.0, 15.0]):.2f} kV", f"WD = {rng.uniform(3, 12):.1f} mm",
              f"Mag = {_mag(rng)}", f"Signal A = {rng.choice(['SE2', 'InLens'])}"]
    column = max(x0 + bar_px + font_px * 3, int(w * 0.38))
    for k, text in enumerate(fields):
        cx = column + (k // 2) * int(w * 0.3)
        if cx + _text_size(d, text, font)[0] >= w - 4:
            continue
        d.text((cx, top + int(font_px * 0.5) + (k % 2) * int(font_px * 1.7)), text, fill=0, font=font)
    return DrawnDatabar(np.asarray(canvas), bar_h)


def _fei(content, label, bar_px, font_px, rng) -> DrawnDatabar:
    h, w = content.shape
    bar_h = int(font_px * 3.6)
    canvas, d = _canvas(content, bar_h, 0)
    top = h
    font = _font(font_px)
    label_w, _ = _text_size(d, label, font)
    right_box = max(bar_px, label_w) + font_px * 2
    x_bar = w - right_box + (right_box - bar_px) // 2
    y_bar = top + int(font_px * 0.8)
    d.rectangle([x_bar, y_bar, x_bar + bar_px - 1, y_bar + max(2, font_px // 5) - 1], fill=255)
    d.text((x_bar + (bar_px - label_w) // 2, y_bar + int(font_px * 0.7)), label, fill=255, font=font)
    d.line([w - right_box - font_px // 2, top + 3, w - right_box - font_px // 2, top + bar_h - 4], fill=255)
    hfw = f"HFW {rng.uniform(2, 80):.1f} µm"
    fields = [f"HV {rng.choice([5.0, 10.0, 20.0]):.2f} kV", f"WD {rng.uniform(3, 12):.1f} mm", hfw,
              f"det {rng.choice(['ETD', 'TLD', 'CBS'])}"]
    x = font_px // 2
    for text in fields:
        tw, _ = _text_size(d, text, font)
        if x + tw >= w - right_box - font_px:
            break
        d.text((x, top + int(bar_h * 0.3)), text, fill=255, font=font)
        x += tw + font_px * 2
    return DrawnDatabar(np.asarray(canvas), bar_h)


def _tabletop(content, label, bar_px, font_px, rng) -> DrawnDatabar:
    h, w = content.shape
    bar_h = int(font_px * 4.0)
    canvas, d = _canvas(content, bar_h, 255)
    top = h
    font = _font(font_px)
    x_end = w - font_px
    x_start = x_end - bar_px
    tick = max(3, font_px // 4)
    ruler_top = top + tick + 2
    thick = max(4, font_px // 2)
    d.rectangle([x_start, ruler_top, x_end + 1, ruler_top + thick - 1], fill=0)
    for k in range(11):                                     # ten divisions, ticks above the ruler
        x = x_start + round(k * bar_px / 10)
        d.rectangle([x, ruler_top - tick, x + 1, ruler_top - 1], fill=0)
    label_w, _ = _text_size(d, label, font)
    y_text = ruler_top + thick + int(font_px * 0.6)
    d.text((x_end - label_w, y_text), label, fill=0, font=font)
    fields = [f"x{rng.choice([100, 300, 1000, 3000])}", f"MMD{rng.uniform(5, 9):.1f}"]
    x = x_end - label_w - font_px * 2
    for text in fields:
        tw, _ = _text_size(d, text, font)
        x -= tw
        if x < font_px:
            break
        d.text((x, y_text), text, fill=0, font=font)
        x -= font_px * 2
    d.text((font_px // 2, y_text), f"IMG{rng.integers(1000, 9999)}", fill=0, font=font)
    return DrawnDatabar(np.asarray(canvas), bar_h)
