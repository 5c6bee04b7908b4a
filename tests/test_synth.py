"""The synthetic SEM data: deterministic, covering the spec, and learnable by category."""
import hashlib

import numpy as np
import pytest

from semspark.ingest.formats import decode_gray, sniff_format
from semspark.synth.generate import generate, read_manifest
from semspark.synth.morphology import CATEGORIES, render


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    generate(tmp_path / "a", 12, seed=5, width=256, height=192)
    generate(tmp_path / "b", 12, seed=5, width=256, height=192)
    generate(tmp_path / "c", 12, seed=6, width=256, height=192)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    images = [k for k in a if not k.endswith((".csv", ".txt"))]  # sidecars come and go with the seed
    assert len(images) == 12 and all(k in c for k in images)
    assert sum(a[k] != c[k] for k in images) == 12


def test_the_manifest_covers_what_the_spec_asks(synthetic_set):
    folder, records = synthetic_set
    rows = read_manifest(folder)
    assert len(rows) == 27 == len(records)
    assert {r["category"] for r in rows} == set(CATEGORIES)
    assert {r["layout"] for r in rows} == {"zeiss", "fei", "tabletop"}
    scales = {r["scale_bin"] for r in rows}
    assert len(scales) >= 6 and {"1um", "2um"} <= scales
    assert {r["format"] for r in rows} == {"tiff8", "tiff16", "png", "jpeg"}
    for row in rows:  # the files are what the manifest says
        data = (folder / row["file"]).read_bytes()
        decoded = decode_gray(data, sniff_format(data), 10 ** 8)
        assert decoded.bit_depth == int(row["bit_depth"]), row["file"]
        assert (decoded.width, decoded.height) == (int(row["width"]), int(row["height"]))
        assert float(row["nm_per_px"]) == pytest.approx(
            float(row["scale_value"]) * {"nm": 1, "um": 1e3, "mm": 1e6}[row["scale_unit"]] / int(row["bar_px"]))


def test_categories_are_learnable_and_vary_within(tmp_path):
    """A plain linear model on simple texture features tells the categories apart far above chance,
    so a CNN has something real to learn; images of one category still differ."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels, per_category = [], [], {}
    for k, category in enumerate(CATEGORIES):
        for i in range(12):
            image = render(category, np.random.default_rng([99, k, i]), 96, 128)
            spectrum = np.abs(np.fft.fft2(image - image.mean()))[:12, :12].ravel()
            gy, gx = np.gradient(image)
            hist = np.histogram(image, bins=12, range=(0, 1))[0] / image.size
            features.append(np.concatenate([np.log1p(spectrum), hist, [np.abs(gx).mean(), np.abs(gy).mean()]]))
            labels.append(category)
            per_category.setdefault(category, []).append(image)
    accuracy = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                               np.array(features), labels, cv=3).mean()
    assert accuracy > 0.5, accuracy  # chance is 0.1
    for category, images in per_category.items():
        spread = np.std([im.mean() for im in images]) + np.std([im.std() for im in images])
        assert spread > 0.005, category
