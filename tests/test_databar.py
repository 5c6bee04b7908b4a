"""The databar reader's fast statistics against the numpy and scipy functions they stand in for."""
import numpy as np
import pytest
from scipy.ndimage import median_filter

from semspark.ingest import databar as db


@pytest.mark.parametrize("n", [1, 2, 17, 1000, 4097])
def test_median_from_a_histogram_is_numpys(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        values = rng.integers(0, 256, n)
        assert db._median_of_levels(values) == np.median(values)


def test_rank_from_a_histogram_is_numpys_partition():
    rng = np.random.default_rng(1)
    for n in (5, 300, 12345):
        doubled = rng.integers(0, 511, n)          # whole and half levels, doubled
        k = int(0.997 * (n - 1))
        assert db._rank_of_histogram(np.bincount(doubled, minlength=511), 0.997) == np.partition(doubled, k)[k]


def test_band_ink_on_grey_matches_the_direct_computation():
    """The grey path's background, contrast and distances, from one histogram, against the same
    quantities computed pixel by pixel with numpy."""
    rng = np.random.default_rng(2)
    band_rows = np.full((40, 300), 200, np.uint8)
    band_rows += rng.integers(0, 3, band_rows.shape).astype(np.uint8)   # a slightly uneven background
    band_rows[10:30, 20:200:7] = 15                                      # text-like ink
    band = db.Band(top=0, bottom=39, background=(201.0,))
    inked = db.band_ink(band_rows[..., None], band)
    region = band_rows.astype(np.float64)
    near = np.abs(region - 201.0) <= 12
    background = np.median(region[near])
    distance = np.abs(region - background)
    k = int(0.997 * (distance.size - 1))
    assert inked.band.background == (background,)
    assert inked.contrast == np.partition(distance.ravel(), k)[k]
    assert np.array_equal(inked.distance, distance.astype(np.float32))


def test_the_running_median_of_a_stroke_is_scipys():
    rng = np.random.default_rng(3)
    for w in (9, 10, 31, 200):
        for _ in range(30):
            profile = rng.integers(0, 80, w).astype(np.float32)
            padded = np.concatenate((profile[3::-1], profile, profile[:-5:-1]))
            ours = np.partition(padded[db._NINE_WIDE[:w]], 4, axis=1)[:, 4]
            assert np.array_equal(ours, median_filter(profile, size=9, mode="reflect"))


def test_a_dimmer_continuation_of_a_bar_is_cut_off():
    """Hand-made: a bar at full strength (columns 10-59) continued by a line at half strength
    (60-119) with two tick spikes on it; the bar is the 50 full-strength columns."""
    distance = np.zeros((5, 140), np.float32)
    distance[2, 10:60] = 200
    distance[2, 60:120] = 90
    distance[2, [75, 100]] = 200
    x, w = db._evenly_drawn_part(distance, 10, 2, 110, 1)
    assert (x, w) == (10, 50)


@pytest.mark.parametrize("side, end_col, expected", [(-1, 10, 11.0), (+1, 49, 48.5), (-1, 30, None)])
def test_tick_centres_by_hand(side, end_col, expected):
    """A bar on row 5 from column 10 to 49: the left tick covers columns 10-12 above the bar
    (centre 11.0), the right one 48-49 below it (centre 48.5); the bar's middle has no tick."""
    ink = np.zeros((12, 60), np.uint8)
    ink[5, 10:50] = 1
    ink[2:5, 10:13] = 1            # left tick above, columns 10, 11, 12
    ink[6:9, 48:50] = 1            # right tick below, columns 48, 49
    assert db._tick_centre(ink, end_col, 5, 1, side) == expected
