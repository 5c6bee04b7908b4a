"""Leakage-aware split: perceptual hashes, near-duplicate groups, stratified sides."""
from collections import Counter

import cv2
import numpy as np
import pytest

from semspark.phash import hamming, perceptual_hash
from semspark.synth.morphology import CATEGORIES, render
from semspark.train.split import group_near_duplicates, split_images


def sem(category, seed):
    return (render(category, np.random.default_rng(seed), 192, 256) * 255).astype(np.uint8)


def test_hash_survives_resaving_and_rescaling_but_tells_images_apart():
    image = sem("Particles", 1)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    resaved = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    rescaled = cv2.resize(image, (128, 96), interpolation=cv2.INTER_AREA)
    brighter = np.clip(image.astype(int) + 12, 0, 255).astype(np.uint8)
    h = perceptual_hash(image)
    assert max(hamming(h, perceptual_hash(x)) for x in (resaved, rescaled, brighter)) <= 6
    others = [perceptual_hash(sem(c, 2)) for c in CATEGORIES]
    assert min(hamming(a, b) for i, a in enumerate(others) for b in others[i + 1:]) > 6


def test_groups_are_transitive_by_hand():
    # 0b000 - 0b001 differ by one bit, 0b001 - 0b011 by one bit, 0b000 - 0b011 by two.
    far = (1 << 64) - 1
    assert group_near_duplicates([0b000, 0b001, 0b011, far], max_distance=1) == [0, 0, 0, 3]
    assert group_near_duplicates([0b000, 0b011], max_distance=1) == [0, 1]
    assert group_near_duplicates([None, None, 0, 0], max_distance=1) == [0, 1, 2, 2]  # unknown: alone


def test_split_is_deterministic_stratified_and_keeps_near_duplicates_together():
    ids, labels, hashes = [], [], []
    rng = np.random.default_rng(0)
    for c, category in enumerate(CATEGORIES):
        for i in range(20):
            ids.append(f"{c:02d}{i:02d}" + "0" * 60)
            labels.append(category)
            hashes.append(int(rng.integers(0, 2 ** 63)))
    # Five near-duplicate pairs: the second of each differs from the first by two bits.
    for k in range(5):
        ids.append(f"dup{k}" + "0" * 60)
        labels.append(labels[k * 20])
        hashes.append(hashes[k * 20] ^ 0b101)
    split = split_images(ids, labels, hashes, seed=7, validation=0.1, test=0.2)
    assert split == split_images(ids, labels, hashes, seed=7, validation=0.1, test=0.2)
    assert split.groups_merged == 5 and split.images_in_merged_groups == 10
    for k in range(5):
        assert split.side[f"dup{k}" + "0" * 60] == split.side[ids[k * 20]]
    for category in CATEGORIES:
        sides = Counter(split.side[i] for i, l in zip(ids, labels) if l == category)
        total = sum(sides.values())
        assert abs(sides["test"] - 0.2 * total) <= 2 and abs(sides["validation"] - 0.1 * total) <= 2
    other = split_images(ids, labels, hashes, seed=8)
    assert other.side != split.side


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError):
        split_images(["a"], ["x"], [0], seed=0, validation=0.5, test=0.5)
