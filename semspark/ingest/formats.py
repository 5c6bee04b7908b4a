"""Recognise, size-check and decode raw image files to grayscale.

Formats are recognised by their bytes, not their names. Dimensions are read from the header before
any pixel is decoded, so an oversized image (a decompression bomb) is refused without allocating it.
Truncation is detected explicitly: libjpeg and friends happily return half-grey images otherwise.
"""
from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass

import numpy as np


class BadImage(Exception):
    """A file that cannot become an image row; ``stage`` and ``reason`` go to sem.quarantine."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    gray: np.ndarray          # uint8, 2-D: what every later step works on
    format: str               # tiff | png | jpeg | bmp
    width: int
    height: int
    bit_depth: int            # bits per sample as stored (8, 16, ...)
    color: str                # gray | rgb | palette
    rgb: np.ndarray | None = None   # uint8 H x W x 3 for colour images: the databar reader needs hue


def sniff_format(data: bytes) -> str | None:
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:2] == b"BM" and len(data) >= 26:
        return "bmp"
    return None


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) from the header alone."""
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadImage("decode", "PNG without an IHDR header")
        return struct.unpack(">II", data[16:24])
    if fmt == "bmp":
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if fmt == "jpeg":
        return _jpeg_size(data)
    if fmt == "tiff":
        page = _tiff_first_page(data)
        return int(page.imagewidth), int(page.imagelength)
    raise BadImage("decode", f"unsupported format {fmt}")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    sof_markers = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            raise BadImage("decode", "JPEG with a corrupt marker stream")
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in sof_markers:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise BadImage("decode", "JPEG without a frame header (truncated or not a JPEG)")


def _tiff_first_page(data: bytes):
    import tifffile

    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
        if not tif.pages:
            raise BadImage("decode", "TIFF without any image")
        return tif.pages.first
    except BadImage:
        raise
    except Exception as exc:  # tifffile raises many kinds on corrupt headers
        raise BadImage("decode", f"unreadable TIFF header: {exc}") from exc


def check_complete(data: bytes, fmt: str) -> None:
    """Raise BadImage('decode', 'truncated ...') when the file ends before its image data does."""
    if fmt == "jpeg":
        if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            raise BadImage("decode", "truncated JPEG: no end-of-image marker")
    elif fmt == "png":
        if b"IEND" not in data[-16:]:
            raise BadImage("decode", "truncated PNG: no IEND chunk")
    elif fmt == "tiff":
        page = _tiff_first_page(data)
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
        if not ends or max(ends) > len(data):
            raise BadImage("decode", "truncated TIFF: image data runs past the end of the file")
    elif fmt == "bmp":
        (declared,) = struct.unpack("<I", data[2:6])
        if declared and declared > len(data):
            raise BadImage("decode", "truncated BMP: file shorter than its header says")


def decode_gray(data: bytes, fmt: str, max_pixels: int) -> DecodedImage:
    """Decode to an 8-bit grayscale array after the size and completeness checks."""
    width, height = header_size(data, fmt)
    if width <= 0 or height <= 0:
        raise BadImage("decode", f"image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise BadImage("limits", f"{width}x{height} = {width * height} pixels is over the limit of "
                                 f"{max_pixels} (ingest.max_pixels)")
    check_complete(data, fmt)
    try:
        if fmt == "tiff":
            gray, bit_depth, color, rgb = _decode_tiff(data)
        else:
            gray, bit_depth, color, rgb = _decode_cv2(data, fmt)
    except BadImage:
        raise
    except Exception as exc:
        raise BadImage("decode", f"{fmt} decoder failed: {exc}") from exc
    return DecodedImage(gray=gray, format=fmt, width=gray.shape[1], height=gray.shape[0],
                        bit_depth=bit_depth, color=color, rgb=rgb)


def _decode_tiff(data: bytes) -> tuple[np.ndarray, int, str, np.ndarray | None]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        pixels = page.asarray()
        bits = int(page.bitspersample)
        photometric = int(page.photometric)
        if photometric == 3:  # PALETTE: the array holds indices into the colour map
            # convert the map's entries once, then look every pixel up (no per-pixel float work)
            cmap = np.asarray(page.colormap, dtype=np.float64).T / 65535.0  # (2**bits, 3), 16-bit entries
            gray_of_entry = _to_uint8_unit(_luminance(cmap))
            rgb_of_entry = _to_uint8_unit(cmap)
            return gray_of_entry[pixels], bits, "palette", rgb_of_entry[pixels]
        color = "gray"
        if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
            pixels = pixels[..., :3]
            color = "rgb"
        elif pixels.ndim == 3:  # planar or multi-sample: first plane is the SEM signal
            pixels = pixels[0] if pixels.shape[0] < pixels.shape[-1] else pixels[..., 0]
        if pixels.dtype == np.uint16 and photometric != 0:  # 16-bit SEM: integer rescale, no floats
            pixels = _uint16_to_uint8(pixels, bits)
        if pixels.dtype == np.uint8 and photometric != 0:   # already what we keep: no float round trip
            if color == "rgb":
                return _gray_of_rgb8(pixels), bits, color, np.ascontiguousarray(pixels)
            return np.ascontiguousarray(pixels), bits, color, None
        unit = _to_unit(pixels, bits)
        rgb = None
        if color == "rgb":
            rgb = _to_uint8_unit(unit)
            unit = _luminance(unit)
        if photometric == 0:  # MINISWHITE
            unit = 1.0 - unit
        return _to_uint8_unit(unit), bits, color, rgb


def _decode_cv2(data: bytes, fmt: str) -> tuple[np.ndarray, int, str, np.ndarray | None]:
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise BadImage("decode", f"{fmt} data could not be decoded")
    bits = 16 if pixels.dtype == np.uint16 else 8
    color = "gray"
    if fmt == "png" and data[25] == 3:
        color = "palette"
    elif fmt == "bmp" and struct.unpack("<H", data[28:30])[0] <= 8 and not _bmp_gray_table(data):
        color = "palette"
    if pixels.dtype == np.uint8:                         # already what we keep: no float round trip
        if pixels.ndim == 2:
            return pixels, bits, color, None
        if color == "gray":
            color = "rgb"
        rgb = np.ascontiguousarray(pixels[..., :3][..., ::-1])
        return _gray_of_rgb8(rgb), bits, color, rgb
    rgb = None
    if pixels.ndim == 3:
        if color == "gray":
            color = "rgb"
        pixels = pixels[..., :3][..., ::-1]  # BGR(A) to RGB
        rgb_unit = _to_unit(pixels, bits)
        rgb = _to_uint8_unit(rgb_unit)
        unit = _luminance(rgb_unit)
    else:
        unit = _to_unit(pixels, bits)
    return _to_uint8_unit(unit), bits, color, rgb


def _bmp_gray_table(data: bytes) -> bool:
    """8-bit BMPs always carry a colour table; one whose entries all have B == G == R is gray."""
    header_size, = struct.unpack("<I", data[14:18])
    bits, = struct.unpack("<H", data[28:30])
    used, = struct.unpack("<I", data[46:50]) if header_size >= 40 else (0,)
    entries = used or (1 << bits)
    table = np.frombuffer(data[14 + header_size:14 + header_size + 4 * entries], dtype=np.uint8)
    table = table[: len(table) // 4 * 4].reshape(-1, 4)
    return bool(len(table)) and bool((table[:, 0] == table[:, 1]).all() and (table[:, 1] == table[:, 2]).all())


def _to_unit(pixels: np.ndarray, bits: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if np.issubdtype(pixels.dtype, np.integer):
        top = float((1 << min(bits, 16)) - 1) if bits < 16 else float(np.iinfo(pixels.dtype).max)
        return pixels.astype(np.float32) / top
    finite = pixels[np.isfinite(pixels)]  # float TIFF: stretch what is there
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return (np.nan_to_num(pixels.astype(np.float32), nan=lo) - lo) / max(hi - lo, 1e-12)


def _uint16_to_uint8(pixels: np.ndarray, bits: int) -> np.ndarray:
    """round(value / top * 255) in integers, top being the largest value of ``bits`` bits."""
    return _uint16_lookup(min(bits, 16))[pixels]


@functools.lru_cache(maxsize=17)
def _uint16_lookup(bits: int) -> np.ndarray:
    """The 8-bit value of every 16-bit value, for images of ``bits`` bits."""
    top = (1 << bits) - 1 if bits < 16 else 65535
    wide = np.minimum(np.arange(65536, dtype=np.uint32), top)
    lookup = ((wide * 255 + top // 2) // top).astype(np.uint8)
    lookup.flags.writeable = False
    return lookup


def _gray_of_rgb8(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luminance of 8-bit RGB, rounded: the float path's result, at integer speed."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _to_uint8_unit(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
