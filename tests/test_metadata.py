"""Vendor metadata: each format with a hand-computed pixel size, and the real Zeiss tag."""
import numpy as np
import pytest
import tifffile

from semspark.ingest.metadata import scale_from_sidecar, scale_from_tiff
from semspark.storage import decode_text

from .conftest import REAL_SAMPLES

IMAGE = np.full((20, 30), 128, np.uint8)


def write_tiff(tmp_path, **kwargs):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, IMAGE, **kwargs)
    return path.read_bytes()


def test_fei_pixel_width_in_metres(tmp_path):
    text = "[User]\nDate=01/02/2024\n[Scan]\nPixelWidth=2.5e-08\nPixelHeight=2.5e-08\n"
    found = scale_from_tiff(write_tiff(tmp_path, extratags=[(34682, "s", 0, text, True)]))
    assert found.source == "FEI" and found.nm_per_px == pytest.approx(25.0)


def test_tescan_pixel_size_in_metres(tmp_path):
    text = b"[MAIN]\r\nDevice=VEGA3\r\nPixelSizeX=7.8125e-009\r\nPixelSizeY=7.8125e-009\r\n"
    found = scale_from_tiff(write_tiff(tmp_path, extratags=[(50431, "B", 0, text, True)]))
    assert found.source == "Tescan" and found.nm_per_px == pytest.approx(7.8125)


@pytest.mark.parametrize("unit, px_per_unit, nm", [("um", 2.0, 500.0), ("nm", 0.1, 10.0), ("mm", 400.0, 2500.0)])
def test_imagej_calibration(tmp_path, unit, px_per_unit, nm):
    data = write_tiff(tmp_path, imagej=True, resolution=(px_per_unit, px_per_unit), metadata={"unit": unit})
    found = scale_from_tiff(data)
    assert found.source == "ImageJ" and found.nm_per_px == pytest.approx(nm)


def test_plain_tiff_resolution_is_not_a_scale(tmp_path):
    # 187 dpi (like tabletop_300um_b.tif) says nothing about the specimen.
    assert scale_from_tiff(write_tiff(tmp_path, resolution=(187, 187), resolutionunit="INCH")) is None


def test_real_zeiss_cz_sem_tag():
    found = scale_from_tiff((REAL_SAMPLES / "zeiss_auriga_2um_tagged.tif").read_bytes())
    assert found.source == "CZ_SEM" and found.nm_per_px == pytest.approx(22.33)


def test_hitachi_sidecar_pixel_size_in_nm():
    found = scale_from_sidecar("[SemImageFile]\nInstructName=S-4800\nPixelSize=12.5\nMagnification=10000\n")
    assert found.source == "Hitachi" and found.nm_per_px == pytest.approx(12.5)


def test_jeol_sidecar_bar_and_marker_also_give_the_label():
    found = scale_from_sidecar("$CM_FORMAT JEOL/SEM\n$$SM_MICRON_BAR 160\n$$SM_MICRON_MARKER 5um\n")
    assert found.source == "JEOL" and found.nm_per_px == pytest.approx(5000 / 160)
    assert (found.label_value, found.label_unit, found.bar_px) == (5.0, "um", 160.0)


def test_jeol_sidecar_in_latin_1_with_a_micro_sign():
    text = decode_text("$$SM_MICRON_BAR 100\n$$SM_MICRON_MARKER 2\xb5m\n".encode("latin-1"))
    found = scale_from_sidecar(text)
    assert found.nm_per_px == pytest.approx(20.0) and found.label_unit == "um"


def test_unrelated_text_is_no_scale():
    assert scale_from_sidecar("hello\nthis is a lab note\n") is None


def test_ome_physical_size_as_tifffile_writes_it(tmp_path):
    """tifffile's OME-XML: 25 nm per pixel, SizeX 30 = the file's width (no rescale)."""
    data = write_tiff(tmp_path, ome=True, metadata={"PhysicalSizeX": 25, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 25})
    found = scale_from_tiff(data)
    assert (found.source, found.nm_per_px, found.frame_width) == ("OME", 25.0, 30)


@pytest.mark.parametrize("unit_attribute, nm", [(' PhysicalSizeXUnit="µm"', 2000.0), ("", 2000.0),
                                                 (' PhysicalSizeXUnit="nm"', 2.0)])
def test_ome_written_by_bio_formats(tmp_path, unit_attribute, nm):
    """Bio-Formats writes the Pixels attributes in alphabetical order: PhysicalSizeX="2" comes before
    SizeX="30"; the frame is SizeX, and the unit defaults to the micrometre (OME's schema)."""
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels BigEndian="false" DimensionOrder="XYCZT" ID="Pixels:0" '
           f'PhysicalSizeX="2"{unit_attribute} PhysicalSizeY="2" SizeC="1" SizeT="1" SizeX="30" SizeY="20" '
           'SizeZ="1" Type="uint8"><TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>')
    found = scale_from_tiff(write_tiff(tmp_path, description=xml.encode(), metadata=None))  # UTF-8, as Bio-Formats
    assert (found.source, found.nm_per_px, found.frame_width) == ("OME", nm, 30)


def _olympus_sis_tiff(tmp_path, length_exponent: int, calibration: float) -> bytes:
    """A TIFF with an Olympus SIS block (tag 33560) laid out byte by byte as the format is known
    (header 'SIS0' with date and name, an index of (type, count, offset) entries, and the type-1
    'general data' entry: a power of ten and the x and y calibration as doubles). The index entry
    points to the general data by its offset in the file, known only once the block is placed."""
    import struct

    header = struct.pack("<4s6xhhhhh6x32sH", b"SIS0", 30, 14, 17, 2, 124, b"sample".ljust(32, b"\0"), 1)
    general_at = len(header) + 8
    general = struct.pack("<10xhdd8xd2x34s32s", length_exponent, calibration, calibration, 5000.0,
                          b"camera".ljust(34, b"\0"), b"SEM".ljust(32, b"\0"))

    def block(file_offset):
        return header + struct.pack("<hhI", 1, 1, file_offset + general_at) + general

    path = tmp_path / "sis.tif"
    tifffile.imwrite(path, IMAGE, extratags=[(33560, "B", len(block(0)), block(0), True)])
    with tifffile.TiffFile(path) as tif:
        where = tif.pages.first.tags[33560].valueoffset
    data = bytearray(path.read_bytes())
    data[where:where + len(block(0))] = block(where)
    return bytes(data)


@pytest.mark.parametrize("length_exponent, calibration", [(-9, 12.5), (-6, 0.0125)])
def test_olympus_sis_calibration(tmp_path, length_exponent, calibration):
    """12.5 nm per pixel, written as 12.5 x 10^-9 m (what Bio-Formats' SISReader calls nanometres
    per pixel) or as 0.0125 x 10^-6 m: the same pixel size."""
    found = scale_from_tiff(_olympus_sis_tiff(tmp_path, length_exponent, calibration))
    assert found.source == "Olympus" and found.nm_per_px == pytest.approx(12.5)
