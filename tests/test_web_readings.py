"""The image page's databar reading, made again from the original file: against the real samples'
manifest (the label printed, the pixel size the instrument recorded), and for files that moved or
changed since the ingest."""
from __future__ import annotations

import hashlib
import shutil

import cv2
import numpy as np
import pytest

from semspark.config import IngestConfig
from semspark.ingest.debug import BAR, LABEL
from semspark.web.readings import ScaleReadings

from .conftest import REAL_SAMPLES


@pytest.fixture()
def sample(real_manifest, tmp_path):
    """A Tescan file with its sidecar-free truth: a 50 µm ruler at 275 nm/px (the instrument's tag)."""
    row = next(r for r in real_manifest if r["file"] == "tescan_vega3_50um.tif")
    path = tmp_path / row["file"]
    shutil.copy(REAL_SAMPLES / row["file"], path)
    return row, path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_reading_of_a_real_file_is_drawn_and_kept(sample, tmp_path):
    row, path, image_id = sample
    readings = ScaleReadings(IngestConfig(), tmp_path / "cache")
    found = readings.reading(image_id, [{"path": str(path), "role": "image"}])
    assert found["ok"], found
    assert found["scale"]["scale_value"] == float(row["scale_label_value"])
    assert found["scale"]["scale_unit"] == row["scale_label_unit"]
    assert found["scale"]["nm_per_px"] == pytest.approx(float(row["nm_per_px_reference"]), rel=0.03)
    bar = found["reading"]["bar"]
    assert bar["length_px"] == pytest.approx(50_000 / float(row["nm_per_px_reference"]), rel=0.03)
    picture = cv2.imdecode(np.frombuffer(readings.picture(image_id), np.uint8), cv2.IMREAD_COLOR)
    for colour in (BAR, LABEL):   # the bar's and the label's boxes are drawn
        assert np.all(picture == np.array(colour, np.uint8), axis=2).sum() > 20, colour
    # made once: the file gone, the page still has its reading
    path.unlink()
    assert readings.reading(image_id, [{"path": str(path), "role": "image"}]) == found


def test_a_file_gone_or_changed_is_said_so_and_asked_again_later(sample, tmp_path):
    row, path, image_id = sample
    readings = ScaleReadings(IngestConfig(), tmp_path / "cache")
    gone = tmp_path / "moved-away.tif"
    found = readings.reading(image_id, [{"path": str(gone), "role": "image"}])
    assert not found["ok"] and "cannot be read" in found["reason"] and str(gone) in found["reason"]
    other = tmp_path / "replaced.tif"
    data = path.read_bytes()
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))     # one byte changed
    found = readings.reading(image_id, [{"path": str(other), "role": "image"}])
    assert not found["ok"] and "changed since it was ingested" in found["reason"]
    assert readings.picture(image_id) is None
    # the file is back (a share mounted again): now it is read
    found = readings.reading(image_id, [{"path": str(gone), "role": "image"}, {"path": str(path), "role": "image"}])
    assert found["ok"] and found["file"] == str(path)
