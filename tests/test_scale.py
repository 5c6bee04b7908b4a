"""The scale reader: label parsing, the metadata/bar rules, real SEM files and synthetic ones."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from semspark.ingest.metadata import MetadataScale
from semspark.ingest.ocr import LabelReading, OcrUnavailable, Word, find_tessdata, parse_label, recognise
from semspark.ingest.process import read_scale_files
from semspark.ingest.scale import UNKNOWN_BIN, combine, format_bin, nominal_bin
from semspark.synth.databars import _font

from .conftest import REAL_SAMPLES

BLANK = np.full((60, 400), 255, np.uint8)
BAR_SPAN, BAR_Y = (30.0, 50.0), 30.0


def words(*texts, y=20):
    out, x = [], 10
    for text in texts:
        out.append(Word(text, x, y, 12 * len(text), 20, (1, 1, 1)))
        x += 12 * len(text) + 10
    return out


def parse(word_list):
    return parse_label(word_list, BLANK, BAR_SPAN, BAR_Y)


@pytest.mark.parametrize("texts, expected", [
    (["2", "µm"], (2.0, "um")),
    (["2yum"], (2.0, "um")),          # Tesseract's reading of the real Zeiss label
    (["1m"], (1.0, "um")),            # micro sign lost
    (["lum"], (1.0, "um")),           # "1 µm" read as one word with l for 1
    (["Imm"], (1.0, "mm")),
    (["200", "nm"], (200.0, "nm")),
    (["0,5", "μm"], (0.5, "um")),
    (["2—um"], (2.0, "um")),
    (["2017/03/17", "14:14h", "MMD8.1", "x300", "300um"], (300.0, "um")),  # tabletop line
    (["WD", "4.0", "mm", "500", "µm"], (500.0, "um")),   # an FEI cell's field before the label
])
def test_label_parsing(texts, expected):
    reading = parse(words(*texts))
    assert (reading.value, reading.unit) == expected


@pytest.mark.parametrize("texts", [
    ["x300"], ["EHT", "=", "5.00", "kV"], ["MMD7.5"], ["Im"], [],
    ["WD", "=", "6.3", "mm"], ["WD:", "10.92", "mm"], ["View", "field:", "21.1", "µm"], ["HFW", "25.6", "µm"],
    ["Stage", "at", "Z", "=", "46.835", "mm"], ["Aperture", "Size", "=", "30.00", "µm"],
])
def test_no_label_is_invented(texts):
    """Fields of the databar carry lengths too; none of them is ever the scale bar's label."""
    assert parse(words(*texts)) is None


def test_the_label_nearest_the_bar_wins():
    near = Word("10um", 20, 20, 50, 20, (1, 1, 1))
    far = Word("20.00um", 330, 20, 80, 20, (1, 1, 1))
    assert parse([far, near]).value == 10.0


def rendered_label(text: str) -> np.ndarray:
    image = Image.new("L", (240, 70), 255)
    ImageDraw.Draw(image).text((20, 12), text, fill=0, font=_font(40))
    return np.asarray(image)


def test_real_tesseract_reads_each_label_on_its_own():
    tessdata = find_tessdata()
    got = [parse_label(recognise(rendered_label(text), tessdata), rendered_label(text), (20.0, 200.0), 60.0)
           for text in ("2 µm", "500 nm", "1 mm")]
    assert [(r.value, r.unit) for r in got] == [(2.0, "um"), (500.0, "nm"), (1.0, "mm")]


def test_a_missing_tesseract_model_is_a_clear_error(tmp_path):
    with pytest.raises(OcrUnavailable, match="tessdata_dir"):
        find_tessdata(str(tmp_path))


def test_metadata_agreeing_with_the_bar_is_used():
    s = combine(MetadataScale(22.33, "CZ_SEM"), LabelReading(2.0, "um", "2 µm"), 89.5, 1024, 0.05)
    assert (s.nm_per_px, s.scale_source, s.scale_mismatch, s.scale_bin) == (22.33, "CZ_SEM", False, "2um")


def test_a_stale_tag_is_flagged_and_the_bar_wins():
    s = combine(MetadataScale(30.0, "FEI"), LabelReading(2.0, "um", "2 µm"), 89.5, 1024, 0.05)
    assert s.scale_mismatch and s.scale_source == "ocr"
    assert s.nm_per_px == pytest.approx(2000 / 89.5) and s.metadata_nm_per_px == 30.0


def test_metadata_alone_bins_by_field_of_view():
    # 25 nm/px x 1000 px = 25 um field; a tenth is 2.5 um; nearest 1-2-5 bar in log scale: 2 um.
    s = combine(MetadataScale(25.0, "Hitachi"), None, None, 1000, 0.05)
    assert (s.nm_per_px, s.scale_source, s.scale_bin, s.scale_value) == (25.0, "Hitachi", "2um", None)


def test_nothing_readable_is_unknown():
    s = combine(None, None, None, 1000, 0.05)
    assert (s.scale_bin, s.scale_source, s.nm_per_px) == (UNKNOWN_BIN, "none", None)


def test_bin_names():
    assert [format_bin(0.5, "um"), format_bin(200.0, "nm"), format_bin(1.0, "mm")] == ["0.5um", "200nm", "1mm"]
    assert [nominal_bin(900), nominal_bin(3000), nominal_bin(7.5e5)] == ["1um", "2um", "1mm"]


def test_real_samples_match_their_manifest(real_manifest):
    outcomes = read_scale_files([str(REAL_SAMPLES / row["file"]) for row in real_manifest])
    for row, outcome in zip(real_manifest, outcomes):
        assert outcome.ok, (row["file"], outcome.reason)
        scale = outcome.scale
        if row["scale_label_value"]:
            assert scale.scale_value == float(row["scale_label_value"]), row["file"]
            assert scale.scale_unit == row["scale_label_unit"], row["file"]
            assert scale.scale_bin == f"{float(row['scale_label_value']):g}{row['scale_label_unit']}"
        else:
            assert scale.scale_bin == UNKNOWN_BIN and scale.scale_value is None, row["file"]
            assert outcome.databar_px == 0
        if row["nm_per_px_reference"]:
            reference = float(row["nm_per_px_reference"])
            assert abs(scale.nm_per_px - reference) / reference < 0.03, row["file"]
            assert not scale.scale_mismatch


def test_synthetic_images_of_every_layout_and_scale(synthetic_set):
    folder, records = synthetic_set
    layouts_scales = {(r.layout, r.scale_bin) for r in records}
    assert len(layouts_scales) == 27  # 3 layouts x 9 scales, each once
    outcomes = read_scale_files([str(folder / r.file) for r in records])
    right, wrong_values = 0, []
    for record, outcome in zip(records, outcomes):
        assert outcome.ok, (record.file, outcome.reason)
        s = outcome.scale
        exact_rows = record.format != "jpeg"  # JPEG ringing may blur the databar's first rows
        assert abs(outcome.databar_px - record.databar_px) <= (0 if exact_rows else 3), record.file
        if s.scale_value is not None and (s.scale_value, s.scale_unit) != (record.scale_value, record.scale_unit):
            wrong_values.append((record.file, record.scale_label, s.scale_label_text))
        if (s.scale_value, s.scale_unit) == (record.scale_value, record.scale_unit):
            assert abs(s.nm_per_px - record.nm_per_px) / record.nm_per_px < 0.01, record.file
            assert s.scale_mismatch == record.stale_metadata, record.file
            right += 1
    assert not wrong_values, f"labels read as a wrong value: {wrong_values}"  # unknown is honest; wrong is not
    assert right >= 26, f"only {right}/27 labels read"
