"""Perceptual hash of an image's content area, computed at ingest and used to keep near-duplicate
images on one side of the train/validation/test split (semspark.train.split)."""
from __future__ import annotations

import cv2
import numpy as np

HASH_BITS = 64


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT hash (pHash): the signs of the 8x8 lowest frequencies of a 32x32 thumbnail
    against their median. Stable under re-saving, rescaling and small brightness changes."""
    small = cv2.resize(image.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term says nothing about structure
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hash_hex(value: int) -> str:
    return f"{value:016x}"


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
