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
    (["imm"], (1.0, "mm")),           # a 1 with a serif (a stroke of the image crossing it) read as i
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


def test_reading_does_not_depend_on_order_or_grouping(real_manifest, monkeypatch):
    """The same files read together, one by one in reverse, and in small groups: identical readings,
    Tesseract asked every time (no readings kept: what makes keeping them safe is shown here)."""
    from semspark.ingest import ocr

    monkeypatch.setattr(ocr, "READINGS_KEPT", 0)
    ocr._readings.clear()
    paths = [str(REAL_SAMPLES / row["file"]) for row in real_manifest]
    together = {o.path: (o.scale.as_dict(), o.databar_px) for o in read_scale_files(paths)}
    alone = {o.path: (o.scale.as_dict(), o.databar_px) for p in reversed(paths) for o in read_scale_files([p])}
    grouped = {o.path: (o.scale.as_dict(), o.databar_px)
               for start in range(0, len(paths), 5) for o in read_scale_files(paths[::-1][start:start + 5])}
    assert together == alone == grouped


def test_a_crop_read_before_is_not_read_again(real_manifest):
    """Readings are kept by the crop's pixels: a second pass over the real samples asks Tesseract
    nothing and reads what the first read; a crop that differs by one pixel is read afresh."""
    from semspark.ingest import ocr

    ocr._readings.clear()
    paths = [str(REAL_SAMPLES / row["file"]) for row in real_manifest]
    first = [(o.scale.as_dict(), o.databar_px) for o in read_scale_files(paths)]
    asked = ocr.recognitions
    again = [(o.scale.as_dict(), o.databar_px) for o in read_scale_files(paths)]
    assert ocr.recognitions == asked and again == first
    label = rendered_label("2 µm")
    tessdata = find_tessdata()
    recognise(label, tessdata)
    touched = label.copy()
    touched[0, 0] = 254
    before = ocr.recognitions
    assert [w.text for w in recognise(touched, tessdata)] == [w.text for w in recognise(label, tessdata)]
    assert ocr.recognitions == before + 1


# (layout, width, variant) the reader does not read yet, each with its reason. Only shrinks.
VENDOR_NOT_YET_READ: dict = {}
VENDOR_SCALES = [(200, "nm"), (1, "µm"), (2, "µm"), (10, "µm"), (50, "µm"), (500, "nm"), (1, "mm")]
VENDOR_VARIANTS = [(1024, "png"), (768, "jpeg60"), (1024, "half"), (1024, "three_quarter"), (640, "png")]


@pytest.fixture(scope="module")
def vendor_images(tmp_path_factory):
    """Every vendor layout of synth/vendor_databars.py at several sizes, JPEG quality 60, and
    resized to half and three quarters after the databar was drawn, with the truth of what was drawn."""
    import cv2

    from semspark.synth.morphology import CATEGORIES, render
    from semspark.synth.vendor_databars import VENDOR_LAYOUTS, draw_vendor

    folder = tmp_path_factory.mktemp("vendor")
    cases, i = [], 0
    for layout in VENDOR_LAYOUTS:
        for width, variant in VENDOR_VARIANTS:
            rng = np.random.default_rng([7, i])
            i += 1
            value, unit = VENDOR_SCALES[i % len(VENDOR_SCALES)]
            content = (render(CATEGORIES[i % 10], rng, width * 3 // 4, width) * 255).astype(np.uint8)
            bar_px = int(rng.integers(int(width * 0.1), int(width * 0.25)))
            drawn = draw_vendor(layout, content, f"{value:g} {unit}", bar_px, rng)
            factor = {"half": 0.5, "three_quarter": 0.75}.get(variant, 1.0)
            image = drawn.image[..., ::-1]
            if factor != 1.0:
                image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            path = folder / f"{layout}_{width}_{variant}.{'jpg' if variant == 'jpeg60' else 'png'}"
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 60] if variant == "jpeg60" else [])
            cases.append(((layout, width, variant), path, value, {"µm": "um"}.get(unit, unit),
                          drawn.bar_px * factor, drawn.band_top * factor))
    return cases


def test_generated_vendor_layouts(vendor_images):
    outcomes = read_scale_files([str(case[1]) for case in vendor_images])
    unread, wrong = [], []
    for (key, path, value, unit, bar_px, band_top), outcome in zip(vendor_images, outcomes):
        s = outcome.scale
        if s.scale_value is not None and (s.scale_value, s.scale_unit) != (value, unit):
            wrong.append((path.name, value, unit, s.scale_label_text))
        elif s.scale_value is None:
            unread.append(key)
        else:
            assert abs(s.scale_bar_px - bar_px) <= max(1.5, 0.01 * bar_px), (path.name, s.scale_bar_px, bar_px)
            # the stored image ends where the band starts (resampling blurs a row or two, JPEG three)
            assert abs(outcome.height - outcome.databar_px - band_top) <= (3 if key[2] == "jpeg60" else 2), path.name
    assert not wrong, f"labels read as a wrong value: {wrong}"
    assert set(unread) == set(VENDOR_NOT_YET_READ), f"unread: {sorted(set(unread))}"


@pytest.mark.parametrize("factor", [0.5, 0.75])
def test_a_zeiss_file_resized_after_acquisition_has_its_tag_rescaled(tmp_path, factor):
    """A real Zeiss file (CZ_SEM 74.43 nm/px at 1024 px) resized with its tag kept: the tag names the
    1024-px frame, so the pixel size is 74.43 / factor, and label, bar and tag agree."""
    import cv2
    import tifffile

    source = REAL_SAMPLES / "zeiss_auriga_black_a.tif"
    data = source.read_bytes()
    with tifffile.TiffFile(source) as tif:
        tag = tif.pages.first.tags[34118]
        raw = data[tag.valueoffset:tag.valueoffset + tag.count]
        pixels = tif.pages.first.asarray()
    small = cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    path = tmp_path / "resized.tif"
    tifffile.imwrite(path, small, photometric="minisblack", extratags=[(34118, 1, len(raw), raw, True)])
    scale = read_scale_files([str(path)])[0].scale
    assert scale.nm_per_px == pytest.approx(74.43 / factor, rel=0.03)
    assert (scale.scale_value, scale.scale_unit, scale.scale_confidence) == (10.0, "um", "high")
    assert "rescaled" in scale.scale_reason


def test_a_utf16_hitachi_sidecar_gives_the_pixel_size(tmp_path):
    """Hitachi TM software writes its sidecar in UTF-16 with a byte-order mark."""
    import cv2

    image = np.random.default_rng(3).integers(60, 200, (300, 400), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "tm4000.png"), image)
    text = "[SemImageFile]\r\nInstructName=TM4000\r\nImageName=other_name.tif\r\nDataSize=400x300\r\nPixelSize=252.3\r\n"
    (tmp_path / "tm4000.txt").write_bytes(text.encode("utf-16"))
    scale = read_scale_files([str(tmp_path / "tm4000.png")])[0].scale
    assert (scale.nm_per_px, scale.scale_source) == (252.3, "Hitachi")
    # the sidecar names a 400-px frame; a file halved later is rescaled, not taken at its word
    cv2.imwrite(str(tmp_path / "tm4000.png"), image[:150, :200])
    assert read_scale_files([str(tmp_path / "tm4000.png")])[0].scale.nm_per_px == pytest.approx(504.6)


def _fei_tiff(path, image, tag_nm_per_px, frame=None):
    import tifffile

    text = f"[Scan]\nPixelWidth={tag_nm_per_px * 1e-9:.6e}\n" + (f"[Image]\nResolutionX={frame}\n" if frame else "")
    tifffile.imwrite(path, image, photometric="minisblack", extratags=[(34682, "s", 0, text, True)])


@pytest.mark.parametrize("hfw, tag_nm, frame, expected_nm, source, wins", [
    # 10 µm over a 200-px bar is 50 nm/px; a tag says 65 (for this 1024-px frame or none)
    ("51.2 µm", 65.0, 1024, 50.0, "ocr", "agrees with the bar"),    # HFW / 1024 = 50 nm/px
    ("51.2 µm", 65.0, None, 50.0, "ocr", "agrees with the bar"),
    ("66.6 µm", 65.0, None, 65.0, "FEI", "agrees with the tag"),    # HFW / 1024 = 65.04 nm/px
    (None, 65.0, 1024, 65.0, "FEI", "the tag is kept"),             # no field: the frame decides
])
def test_when_tag_and_bar_disagree_a_third_witness_decides(tmp_path, hfw, tag_nm, frame, expected_nm, source, wins):
    from semspark.synth.morphology import render
    from semspark.synth.vendor_databars import draw_vendor

    rng = np.random.default_rng(5)
    content = (render("Particles", rng, 768, 1024) * 255).astype(np.uint8)
    layout = "fei_cells" if hfw else "tasc"           # the TASC band prints no field width
    drawn = draw_vendor(layout, content, "10 µm", 200, rng, **({"field_width": hfw} if hfw else {}))
    path = tmp_path / "fei.tif"
    _fei_tiff(path, drawn.image[..., 0] if hfw else drawn.image.mean(axis=2).astype(np.uint8), tag_nm, frame)
    scale = read_scale_files([str(path)])[0].scale
    assert scale.scale_mismatch and (scale.scale_value, scale.scale_unit) == (10.0, "um")
    assert scale.nm_per_px == pytest.approx(expected_nm, rel=0.01) and scale.scale_source == source
    assert wins in scale.scale_reason


# Generated JEOL frames (text over the image, no band) that are read as a wrong value, each with its
# reason. Only shrinks.
JEOL_READ_WRONG: dict = {}


@pytest.fixture(scope="module")
def jeol_frames(tmp_path_factory):
    from semspark.synth.vendor_databars import write_jeol_frames

    return write_jeol_frames(tmp_path_factory.mktemp("jeol"))


def test_jeol_overlays_as_written_and_resampled(jeol_frames):
    """Text laid over the image: read whether saturated (as written) or faint (resampled), the
    bar measured to 1%; what is not read stays unknown rather than wrong."""
    outcomes = read_scale_files([frame.path for frame in jeol_frames])
    read, wrong = [], {}
    for frame, outcome in zip(jeol_frames, outcomes):
        s = outcome.scale
        if s.scale_value is None:
            continue
        bar_px = frame.bar_px
        bar_right = abs(s.scale_bar_px - bar_px) <= max(1.5, 0.01 * bar_px)
        if (s.scale_value, s.scale_unit) != (frame.value, frame.unit) or not bar_right:
            wrong[frame.name] = (frame.value, frame.unit, round(bar_px, 1), s.scale_value, s.scale_unit,
                                 round(s.scale_bar_px, 1))
        else:
            read.append(frame)
    assert set(wrong) == set(JEOL_READ_WRONG), wrong
    resampled = [frame.name for frame in read if frame.resampled]
    assert len(read) >= 20 and len(resampled) >= 12, (len(read), len(resampled), sorted(f.name for f in read))
