"""The scale reader: label parsing, the metadata/bar rules, real SEM files and synthetic ones."""
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from semspark.ingest.databar import LabelCrop
from semspark.ingest.metadata import MetadataScale
from semspark.ingest.ocr import LabelReading, _Word, parse_label, read_labels
from semspark.ingest.process import read_scale_files
from semspark.ingest.scale import UNKNOWN_BIN, combine, format_bin, nominal_bin
from semspark.synth.databars import _font

from .conftest import REAL_SAMPLES

BLANK = LabelCrop(image=np.full((60, 400), 255, np.uint8), bar_x=40.0, bar_y=30.0)


def words(*texts, y=20):
    out, x = [], 10
    for text in texts:
        out.append(_Word(text, x, y, 12 * len(text), 20, (1, 1, 1)))
        x += 12 * len(text) + 10
    return out


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
])
def test_label_parsing(texts, expected):
    reading = parse_label(words(*texts), BLANK)
    assert (reading.value, reading.unit) == expected


@pytest.mark.parametrize("texts", [["x300"], ["EHT", "=", "5.00", "kV"], ["MMD7.5"], ["Im"], []])
def test_no_label_is_invented(texts):
    assert parse_label(words(*texts), BLANK) is None


def test_the_label_nearest_the_bar_wins():
    near = _Word("10um", 20, 20, 50, 20, (1, 1, 1))
    far = _Word("20.00um", 330, 20, 80, 20, (1, 1, 1))
    assert parse_label([far, near], BLANK).value == 10.0


def rendered_label(text: str) -> LabelCrop:
    image = Image.new("L", (240, 70), 255)
    ImageDraw.Draw(image).text((20, 12), text, fill=0, font=_font(40))
    return LabelCrop(image=np.asarray(image), bar_x=60.0, bar_y=60.0)


def test_real_tesseract_reads_labels_in_one_batch():
    crops = [rendered_label("2 µm"), None, rendered_label("500 nm"), rendered_label("1 mm")]
    got = read_labels(crops, batch_size=48)
    assert got[1] is None
    assert [(r.value, r.unit) for r in (got[0], got[2], got[3])] == [(2.0, "um"), (500.0, "nm"), (1.0, "mm")]


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


def test_a_failing_tesseract_batch_costs_only_the_bad_label(tmp_path, caplog):
    """A Tesseract that dies on one crop: the batch is read again one by one."""
    import stat

    import pytesseract

    real = shutil.which("tesseract")
    wrapper = tmp_path / "tesseract"
    # Fails on any page taller than one crop: the batch fails, single crops succeed.
    wrapper.write_text(f"""#!/bin/sh
h=$(python3 -c "import sys,struct; d=open(sys.argv[1],'rb').read(); print(struct.unpack('>I', d[20:24])[0])" "$1" 2>/dev/null || echo 0)
if [ "$h" -gt 100 ]; then echo "simulated crash" >&2; exit 1; fi
exec {real} "$@"
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    crops = [rendered_label("2 µm"), rendered_label("500 nm")]
    got = read_labels(crops, tesseract_cmd=str(wrapper), batch_size=48)
    assert [(r.value, r.unit) for r in got] == [(2.0, "um"), (500.0, "nm")]
    assert "reading them one by one" in caplog.text  # the batch did fail and was retried
    with pytest.raises(pytesseract.TesseractNotFoundError):
        read_labels(crops, tesseract_cmd=str(tmp_path / "no-such-tesseract"))
