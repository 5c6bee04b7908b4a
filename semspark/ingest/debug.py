"""Pictures of a databar reading, for people: why a scale was read as it was (``semspark scale --debug``)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from semspark.ingest.formats import DecodedImage
from semspark.ingest.reader import DatabarReading

BAND, BAR, LENGTH, LABEL = (255, 160, 0), (0, 200, 0), (0, 0, 255), (255, 0, 255)   # BGR


def reading_summary(reading: DatabarReading) -> dict:
    """What the reader found, as JSON-ready values (image coordinates, rows inclusive)."""
    out: dict = {"band_rows": None, "bar": None, "label_box": None, "text_read": reading.label_text or None,
                 "notes": reading.notes or None}
    if reading.band is not None:
        out["band_rows"] = [reading.band.top, reading.band.bottom]
    if reading.bar is not None:
        bar = reading.bar
        out["bar"] = {"kind": bar.kind, "x0": round(bar.x0, 1), "x1": round(bar.x1, 1), "row": bar.top,
                      "length_px": round(bar.length_px, 1), "box": list(bar.box)}
    if reading.label_box is not None:
        out["label_box"] = list(reading.label_box)
    return out


def reading_caption(scale, reading: DatabarReading) -> str:
    """One line: the scale taken (value, nm/px, source, confidence) and the text Tesseract read."""
    value = f"{scale.scale_value:g} {scale.scale_unit}" if scale.scale_value is not None else "no label"
    per_px = f", {scale.nm_per_px:.4g} nm/px" if scale.nm_per_px else ""
    return f"{value}{per_px} ({scale.scale_source}, {scale.scale_confidence}); text read: {reading.label_text!r}"


def write_debug_picture(folder: str | Path, source: str, decoded: DecodedImage, reading: DatabarReading,
                        caption: str) -> Path:
    """The image's lower part with the band, the bar (and its measured length) and the label boxed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (Path(source).name + ".scale.png")
    cv2.imwrite(str(target), debug_picture(decoded, reading, caption))
    return target


def debug_picture(decoded: DecodedImage, reading: DatabarReading, caption: str) -> np.ndarray:
    """(BGR) the lower part of the image from a little above its databar, the reading drawn on it,
    under a caption strip saying what was read."""
    image = decoded.rgb[..., ::-1].copy() if decoded.rgb is not None else cv2.cvtColor(decoded.gray, cv2.COLOR_GRAY2BGR)
    height, width = decoded.gray.shape
    if reading.band is not None:
        cv2.rectangle(image, (0, reading.band.top), (width - 1, reading.band.bottom), BAND, 1)
    if reading.bar is not None:
        x, y, w, h = reading.bar.box
        cv2.rectangle(image, (x - 2, y - 2), (x + w + 1, y + h + 1), BAR, 1)
        row = int(round((reading.bar.top + reading.bar.bottom) / 2))
        cv2.line(image, (int(round(reading.bar.x0)), row + 3), (int(round(reading.bar.x1)), row + 3), LENGTH, 1)
    if reading.label_box is not None:
        x, y, w, h = reading.label_box
        cv2.rectangle(image, (x - 2, y - 2), (x + w + 1, y + h + 1), LABEL, 1)
    top = max(0, (reading.band.top if reading.band is not None else height // 2) - 40)
    part = image[top:]
    # a caption strip above, so the picture says what was read without opening the JSON
    strip = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(strip, caption[:160], (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    picture = np.vstack([strip, part])
    if width < 800:  # small images: twice the size, so the boxes can be seen
        picture = cv2.resize(picture, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    return picture
