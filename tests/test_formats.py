"""Decoding: every supported kind of file to the grayscale the paper works on, and bad files refused."""
import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
import tifffile

from semspark.ingest.formats import BadImage, decode_gray, header_size, sniff_format

from .conftest import REAL_SAMPLES

LIMIT = 10_000_000


def encode(ext, image, *params):
    ok, buffer = cv2.imencode(ext, image, list(params))
    assert ok
    return buffer.tobytes()


def ramp(h=40, w=60):
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def tiff_bytes(tmp_path, array, **kwargs):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, array, **kwargs)
    return path.read_bytes()


def test_formats_are_recognised_by_content():
    assert sniff_format(encode(".png", ramp())) == "png"
    assert sniff_format(encode(".jpg", ramp())) == "jpeg"
    assert sniff_format(encode(".bmp", ramp())) == "bmp"
    assert sniff_format(b"II*\x00rest") == "tiff"
    assert sniff_format(b"%PDF-1.4") is None
    assert sniff_format(b"") is None


def test_header_size_without_decoding(tmp_path):
    image = ramp(37, 53)
    for data, fmt in [(encode(".png", image), "png"), (encode(".jpg", image), "jpeg"),
                      (encode(".bmp", image), "bmp"), (tiff_bytes(tmp_path, image), "tiff")]:
        assert header_size(data, fmt) == (53, 37)


def test_8_bit_gray_round_trips_exactly(tmp_path):
    image = ramp()
    for data in (encode(".png", image), encode(".bmp", image), tiff_bytes(tmp_path, image)):
        decoded = decode_gray(data, sniff_format(data), LIMIT)
        assert decoded.bit_depth == 8 and decoded.color == "gray"
        np.testing.assert_array_equal(decoded.gray, image)


def test_16_bit_is_scaled_to_8_bits(tmp_path):
    image = ramp()
    sixteen = image.astype(np.uint16) * 257  # 255 -> 65535
    for data in (tiff_bytes(tmp_path, sixteen), encode(".png", sixteen)):
        decoded = decode_gray(data, sniff_format(data), LIMIT)
        assert decoded.bit_depth == 16
        np.testing.assert_array_equal(decoded.gray, image)


def test_palette_tiff_goes_through_its_colour_map(tmp_path):
    index = ramp()
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:] = (255 - np.arange(256)) * 257  # an inverted gray palette
    data = tiff_bytes(tmp_path, index, photometric="palette", colormap=cmap)
    decoded = decode_gray(data, "tiff", LIMIT)
    assert decoded.color == "palette"
    np.testing.assert_array_equal(decoded.gray, 255 - index)


def test_16_bit_values_round_to_the_nearest_8_bit_level(tmp_path):
    """Each value v to round(v / 65535 * 255), computed by hand around the rounding edges."""
    values = np.array([[0, 128, 129, 257, 32767, 32768, 65535]], np.uint16)
    decoded = decode_gray(tiff_bytes(tmp_path, values), "tiff", LIMIT)
    np.testing.assert_array_equal(decoded.gray, [[0, 0, 1, 1, 127, 128, 255]])


def test_colour_palette_tiff_keeps_its_colours(tmp_path):
    """Index 1 is pure red, 2 pure green: RGB kept, grey by Rec. 601 (0.299 and 0.587 of 255)."""
    index = np.array([[0, 1, 2, 1]], np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0, 1] = 65535
    cmap[1, 2] = 65535
    decoded = decode_gray(tiff_bytes(tmp_path, index, photometric="palette", colormap=cmap), "tiff", LIMIT)
    np.testing.assert_array_equal(decoded.gray, [[0, 76, 150, 76]])
    np.testing.assert_array_equal(decoded.rgb[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(decoded.rgb[0, 2], [0, 255, 0])


def test_rgb_becomes_luminance(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: 0.299 * 255 = 76.2
    decoded = decode_gray(tiff_bytes(tmp_path, rgb, photometric="rgb"), "tiff", LIMIT)
    assert decoded.color == "rgb" and int(decoded.gray[0, 0]) == 76
    decoded = decode_gray(encode(".png", rgb[..., ::-1]), "png", LIMIT)  # OpenCV writes BGR
    assert decoded.color == "rgb" and int(decoded.gray[0, 0]) == 76


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff"])
def test_truncated_files_are_refused(tmp_path, fmt):
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    data = {"jpeg": encode(".jpg", image), "png": encode(".png", image),
            "tiff": tiff_bytes(tmp_path, image)}[fmt]
    with pytest.raises(BadImage) as info:
        decode_gray(data[: len(data) // 2], fmt, LIMIT)
    assert info.value.stage == "decode" and "truncated" in info.value.reason


def png_header_only(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_decompression_bomb_is_refused_before_any_pixel_is_allocated():
    bomb = png_header_only(60_000, 60_000)  # 3.6 gigapixels declared in a 33-byte file
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(BadImage) as info:
        decode_gray(bomb, "png", LIMIT)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.stage == "limits" and "3600000000 pixels" in info.value.reason
    assert peak < 5_000_000 and elapsed < 1.0


def test_a_bug_in_semspark_fails_loudly_with_the_file_named_and_bad_input_is_quarantined(monkeypatch):
    """A file the decoders refuse is bad input: a quarantine outcome with its reason. An exception
    in semspark's own code (here the databar reader made to fail) is a bug: it is raised with the
    file named, never turned into a quarantine row."""
    from semspark.config import IngestConfig
    from semspark.ingest import process
    from semspark.ingest.process import RawFile, SemsparkBug, process_files

    bad = process_files([RawFile("bad.tif", b"II*\x00garbage")], IngestConfig(), store=False)[0]
    assert not bad.ok and bad.stage == "decode" and "TIFF" in bad.reason

    good = RawFile("good.tif", (REAL_SAMPLES / "zeiss_auriga_2um_tagged.tif").read_bytes())

    def broken_reader(*args, **kwargs):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(process, "read_databar", broken_reader)
    with pytest.raises(SemsparkBug, match="semspark failed on good.tif: ZeroDivisionError"):
        process_files([good], IngestConfig(), store=False)
