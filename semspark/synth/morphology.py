"""SEM-like content for the ten categories of the published SEM data set (Aversa et al. 2018).

Each category has its own morphology, and every image draws its own sizes, densities, orientations,
contrast, noise and charging artefacts, so that a CNN has something real to learn and the
clustering stage finds structure inside categories too. Images are float32 in [0, 1].
"""
from __future__ import annotations

import cv2
import numpy as np

CATEGORIES = (
    "Biological", "Fibres", "Films_Coated_Surface", "MEMS_devices_and_electrodes", "Nanowires",
    "Particles", "Patterned_surface", "Porous_Sponge", "Powder", "Tips",
)

AA = cv2.LINE_AA


def render(category: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    painter = _PAINTERS[category]
    canvas = _background(rng, height, width)
    canvas = painter(canvas, rng)
    return _acquire(canvas, rng)


def _background(rng, h, w) -> np.ndarray:
    level = rng.uniform(0.15, 0.45)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * gx / w + np.sin(angle) * gy / h) * rng.uniform(0, 0.12)
    return (level + ramp).astype(np.float32)


def _smooth_noise(rng, h, w, scale: float) -> np.ndarray:
    small = rng.standard_normal((max(2, int(h / scale)), max(2, int(w / scale)))).astype(np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _edge_glow(mask: np.ndarray, strength: float) -> np.ndarray:
    """SEM edge effect: secondary electrons escape more at edges, which glow."""
    m = mask.astype(np.float32)
    inner = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=2)
    return cv2.GaussianBlur(m - inner, (0, 0), 1.2) * strength


def _paste(canvas, mask, value, glow=0.35):
    m = mask.astype(np.float32)
    return canvas * (1 - m) + value * m + _edge_glow(mask, glow)


def _particles(canvas, rng):
    h, w = canvas.shape
    radius = rng.uniform(0.02, 0.07) * min(h, w)
    count = int(rng.uniform(0.15, 0.6) * h * w / (np.pi * radius ** 2))
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(count):
        r = max(2.0, rng.normal(radius, radius * 0.12))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        d2 = ((gx - cx) ** 2 + (gy - cy) ** 2) / r ** 2
        inside = d2 <= 1
        shade = 0.55 + 0.4 * d2 + rng.uniform(-0.05, 0.05)  # bright rim, like a sphere in SE
        canvas = np.where(inside, shade, canvas)
    return canvas


def _powder(canvas, rng):
    h, w = canvas.shape
    clusters = rng.integers(2, 6)
    centres = rng.uniform([0, 0], [w, h], size=(clusters, 2))
    count = int(rng.uniform(25, 90))
    for _ in range(count):
        cx, cy = centres[rng.integers(clusters)] + rng.normal(0, min(h, w) * 0.15, 2)
        size = np.exp(rng.normal(np.log(min(h, w) * 0.04), 0.6))
        k = rng.integers(4, 8)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = size * rng.uniform(0.5, 1.3, k)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [pts], 1, AA)
        facet = rng.uniform(0.45, 0.85)
        canvas = _paste(canvas, mask, facet, glow=0.4)
    return canvas


def _nanowires(canvas, rng):
    h, w = canvas.shape
    layer = np.zeros((h, w), np.float32)
    count = int(rng.uniform(60, 220))
    length = rng.uniform(0.08, 0.3) * min(h, w)
    thickness = int(rng.integers(1, 3))
    main_angle = rng.uniform(0, np.pi)
    spread = rng.uniform(0.2, np.pi)  # some grow aligned, some at random
    for _ in range(count):
        a = main_angle + rng.uniform(-spread, spread) / 2
        L = length * rng.uniform(0.5, 1.5)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        p1 = (int(x), int(y))
        p2 = (int(x + L * np.cos(a)), int(y + L * np.sin(a)))
        cv2.line(layer, p1, p2, float(rng.uniform(0.6, 1.0)), thickness, AA)
    return np.maximum(canvas * 0.8, layer)


def _fibres(canvas, rng):
    h, w = canvas.shape
    count = int(rng.integers(4, 16))
    for _ in range(count):
        thickness = int(rng.uniform(0.015, 0.05) * min(h, w)) + 2
        a = rng.uniform(0, np.pi)
        t = np.linspace(-1, 1, 60)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        bend = rng.uniform(-0.3, 0.3) * min(h, w)
        xs = cx + t * w * np.cos(a) - bend * t ** 2 * np.sin(a)
        ys = cy + t * w * np.sin(a) + bend * t ** 2 * np.cos(a)
        pts = np.stack([xs, ys], 1).astype(np.int32)
        mask = np.zeros((h, w), np.uint8)
        cv2.polylines(mask, [pts], False, 1, thickness, AA)
        body = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), thickness / 3)  # cylinder shading
        canvas = canvas * (1 - mask) + mask * (0.35 + 0.55 * body / (body.max() + 1e-6))
    return canvas


def _film(canvas, rng):
    h, w = canvas.shape
    grain = _smooth_noise(rng, h, w, rng.uniform(2, 6)) * rng.uniform(0.03, 0.08)
    canvas = canvas + 0.2 + grain
    for _ in range(int(rng.integers(0, 6))):  # cracks in the coating
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        pts = [(int(x), int(y))]
        a = rng.uniform(0, 2 * np.pi)
        for _ in range(40):
            a += rng.normal(0, 0.35)
            x += 6 * np.cos(a)
            y += 6 * np.sin(a)
            pts.append((int(x), int(y)))
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, 0.05, int(rng.integers(1, 3)), AA)
    if rng.random() < 0.5:  # a coating edge: a step in brightness
        edge = int(rng.uniform(0.2, 0.8) * w)
        canvas[:, edge:] -= rng.uniform(0.08, 0.2)
    return canvas


def _porous(canvas, rng):
    h, w = canvas.shape
    field = _smooth_noise(rng, h, w, rng.uniform(5, 16))
    threshold = rng.uniform(0.2, 0.9)
    pores = (field > threshold).astype(np.uint8)
    depth = cv2.GaussianBlur(pores.astype(np.float32), (0, 0), 3)
    canvas = canvas + 0.3 - 0.5 * depth + _edge_glow(pores, 0.5)
    return canvas


def _patterned(canvas, rng):
    h, w = canvas.shape
    period = rng.uniform(0.05, 0.14) * min(h, w)
    angle = rng.uniform(-0.25, 0.25)
    kind = rng.integers(3)
    mask = np.zeros((h, w), np.uint8)
    c, s = np.cos(angle), np.sin(angle)
    n = int(max(h, w) / period) + 4
    for i in range(-n, n):
        for j in range(-n, n):
            x = w / 2 + (i * c - j * s) * period
            y = h / 2 + (i * s + j * c) * period
            if not (-period < x < w + period and -period < y < h + period):
                continue
            if kind == 0:
                cv2.circle(mask, (int(x), int(y)), int(period * 0.28), 1, -1, AA)
            elif kind == 1:
                half = period * 0.25
                box = cv2.boxPoints(((x, y), (2 * half, 2 * half), np.degrees(angle))).astype(np.int32)
                cv2.fillPoly(mask, [box], 1, AA)
    if kind == 2:  # lines and spaces
        for i in range(-n, n):
            x = w / 2 + i * period
            p1 = (int(x - h * s), int(h / 2 - h * c))
            p2 = (int(x + h * s), int(h / 2 + h * c))
            cv2.line(mask, p1, p2, 1, max(1, int(period * 0.4)), AA)
    return _paste(canvas, mask, rng.uniform(0.55, 0.8), glow=0.3)


def _mems(canvas, rng):
    h, w = canvas.shape
    mask = np.zeros((h, w), np.uint8)
    fingers = int(rng.integers(4, 12))
    pitch = w / (fingers * 2 + 1)
    finger_w = max(2, int(pitch * rng.uniform(0.4, 0.7)))
    top_pad, bottom_pad = int(h * rng.uniform(0.08, 0.2)), int(h * rng.uniform(0.8, 0.92))
    cv2.rectangle(mask, (0, 0), (w, top_pad), 1, -1)
    cv2.rectangle(mask, (0, bottom_pad), (w, h), 1, -1)
    gap = int(h * rng.uniform(0.04, 0.1))
    for k in range(fingers):  # interdigitated comb electrodes
        x = int((2 * k + 1) * pitch)
        cv2.rectangle(mask, (x, top_pad), (x + finger_w, bottom_pad - gap), 1, -1)
        x2 = int((2 * k + 2) * pitch)
        cv2.rectangle(mask, (x2, top_pad + gap), (x2 + finger_w, bottom_pad), 1, -1)
    if rng.random() < 0.5:
        mask = cv2.flip(mask, 1) if rng.random() < 0.5 else mask.T.copy() if h == w else mask
    return _paste(canvas, mask, rng.uniform(0.6, 0.85), glow=0.45)


def _biological(canvas, rng):
    h, w = canvas.shape
    texture = _smooth_noise(rng, h, w, rng.uniform(8, 20)) * 0.05
    canvas = canvas + texture
    count = int(rng.integers(3, 25))
    size = rng.uniform(0.05, 0.16) * min(h, w)
    rods = rng.random() < 0.5
    for _ in range(count):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        a = rng.uniform(0, 180)
        axes = (int(size * (rng.uniform(1.8, 3.0) if rods else rng.uniform(0.8, 1.3))),
                int(size * rng.uniform(0.5, 0.9)))
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (int(cx), int(cy)), axes, a, 0, 360, 1, -1, AA)
        body = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), size / 3)  # soft, rounded cells
        canvas = canvas * (1 - mask) + mask * (0.3 + 0.5 * body / (body.max() + 1e-6)) + _edge_glow(mask, 0.15)
    return canvas


def _tips(canvas, rng):
    h, w = canvas.shape
    canvas = canvas * 0.5
    apex = (rng.uniform(0.3, 0.7) * w, rng.uniform(0.1, 0.45) * h)
    half_base = rng.uniform(0.12, 0.4) * w
    base_y = h * 1.05
    mask = np.zeros((h, w), np.uint8)
    pts = np.array([apex, (apex[0] - half_base, base_y), (apex[0] + half_base, base_y)], np.int32)
    cv2.fillPoly(mask, [pts], 1, AA)
    gx = np.arange(w, dtype=np.float32)[None, :]
    shade = 0.4 + 0.4 * np.clip((gx - apex[0]) / half_base, -1, 1) * rng.choice([-1, 1])
    canvas = canvas * (1 - mask) + mask * (shade + 0.15) + _edge_glow(mask, 0.5)
    if rng.random() < 0.5:
        canvas = cv2.flip(canvas, 0)  # some tips point down
    return canvas


_PAINTERS = {
    "Biological": _biological, "Fibres": _fibres, "Films_Coated_Surface": _film,
    "MEMS_devices_and_electrodes": _mems, "Nanowires": _nanowires, "Particles": _particles,
    "Patterned_surface": _patterned, "Porous_Sponge": _porous, "Powder": _powder, "Tips": _tips,
}


def _acquire(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the microscope adds: blur, contrast, shot noise, scan lines and charging."""
    h, w = image.shape
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.3, 1.2))
    image = (image - 0.5) * rng.uniform(0.8, 1.3) + 0.5 + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:  # charging: a bright, saturated bloom
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = rng.uniform(0.05, 0.2) * min(h, w)
        image += rng.uniform(0.3, 0.7) * np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * r ** 2))
    if rng.random() < 0.25:  # charging: bright, shifted scan lines
        for _ in range(int(rng.integers(1, 6))):
            row = int(rng.integers(0, h))
            span = int(rng.integers(1, 4))
            image[row:row + span] = np.roll(image[row:row + span], int(rng.integers(-8, 8)), axis=1) + 0.2
    image = image + rng.normal(0, rng.uniform(0.02, 0.07), image.shape).astype(np.float32)
    # Keep content off pure black and white, as real detectors rarely clip whole rows.
    return np.clip(image, 0.03, 0.93).astype(np.float32)
