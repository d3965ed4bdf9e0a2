"""Synthetic micrograph-like scenes: large RGB images where texture, shape and context decide.

Five classes on images of ``min_size`` .. ``max_size`` pixels a side (``pipelines/scenes.yaml``:
512-640, too large for a modest batch of whole images, so a planner should pick patches):

====  ==========  =====================================================================
id    name        what it looks like
====  ==========  =====================================================================
0     background  smooth colour gradients plus fine noise
1     cell        ellipses of radius 5-30 px with a dark rim and a darker nucleus
2     vessel      smooth winding lines 2-6 px wide, darker or brighter, a little redder
3     rock        irregular polygons of 15-70 px with oriented stripes
4     moss        large irregular regions of the background's colour with a coarse grain
====  ==========  =====================================================================

Every object's colour is drawn from a range that overlaps the background's and the other
classes' (and pixel noise is added on top), so no per-pixel threshold segments a class:
moss differs from background only by its grain, a cell interior only by its rim. Object
sizes are absolute (pixels), so they need a receptive field of ~60 px, not of the image.
Object counts scale with the image area. Drawing order (later on top): moss, rocks,
vessels, cells.

Example:
  >>> from fcndata.config import DataConfig
  >>> data = DataConfig(source="scenes", num_classes=5, num_images=2, min_size=64, max_size=80)
  >>> e = next(iter(load(data)))
  >>> e["image"].dtype.name, e["image"].shape[-1], e["path"].numpy().decode()
  ('uint8', 3, 'scenes/train/0000')
"""

from __future__ import annotations

import numpy as np

from fcndata.datasets import procedural

CLASS_NAMES = ("background", "cell", "vessel", "rock", "moss")
#: objects per class on a 512 x 512 image (scaled by area, at least one)
PER_512 = {"cell": 28, "vessel": 6, "rock": 7}


def smooth_field(rng, h: int, w: int, period: float, channels: int = 1) -> np.ndarray:
    """Unit-variance-ish noise with features ``period`` pixels wide: [h, w, channels] float32."""
    import cv2

    gh, gw = max(2, round(h / period) + 2), max(2, round(w / period) + 2)
    small = rng.standard_normal((gh, gw, channels), dtype=np.float32)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def blob_polygon(rng, cy: float, cx: float, ry: float, rx: float, wobble: float, points: int = 24) -> np.ndarray:
    """An irregular star-shaped polygon around (cy, cx): int32 [points, 2] of (x, y) for OpenCV."""
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    r = np.ones(points)
    for k in (2, 3, 5):
        r += wobble / k * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.3, None)
    angle = rng.uniform(0, np.pi)
    y, x = ry * r * np.sin(theta), rx * r * np.cos(theta)
    ys = cy + y * np.cos(angle) + x * np.sin(angle)
    xs = cx - y * np.sin(angle) + x * np.cos(angle)
    return np.round(np.stack([xs, ys], -1)).astype(np.int32)


def _count(name: str, h: int, w: int, rng) -> int:
    mean = PER_512[name] * h * w / 512**2
    return max(1, int(rng.poisson(mean)))


def _window_mask(points: np.ndarray, h: int, w: int, margin: int = 1):
    """The bounding box (y0, y1, x0, x1) of OpenCV (x, y) points inside the image, and a zero
    uint8 mask of its size (None where the box is empty)."""
    x0, y0 = np.maximum(points.min(0) - margin - 1, 0)
    x1, y1 = np.minimum(points.max(0) + margin + 2, [w, h])
    box = tuple(int(v) for v in (y0, y1, x0, x1))
    if box[1] <= box[0] or box[3] <= box[2]:
        return box, None
    return box, np.zeros((box[1] - box[0], box[3] - box[2]), np.uint8)


def scene(rng, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 [h, w, 3], label uint8 [h, w])."""
    import cv2

    label = np.zeros((h, w), np.uint8)
    base = rng.uniform(90, 170, 3).astype(np.float32)
    image = base + 28 * smooth_field(rng, h, w, 160, 3) + 10 * smooth_field(rng, h, w, 24, 3)

    # moss: a thresholded low-frequency field; the same colour as the background around it, a coarse grain
    moss = smooth_field(rng, h, w, 110)[..., 0] > rng.uniform(0.9, 1.4)
    grain = smooth_field(rng, h, w, 3.5)
    image[moss] += (30 * grain[moss]) + rng.normal(0, 8, 3).astype(np.float32) + np.float32([-6, 6, -6])
    label[moss] = 4

    # Each object is drawn in its bounding box only (a window of the image, label and coordinates).
    # rocks: irregular polygons with stripes in their own direction and period
    for _ in range(_count("rock", h, w, rng)):
        r = rng.uniform(15, 70)
        poly = blob_polygon(rng, rng.uniform(0, h), rng.uniform(0, w), r, r * rng.uniform(0.5, 1.0), 0.5)
        (y0, y1, x0, x1), mask = _window_mask(poly, h, w)
        if mask is None:
            continue
        cv2.fillPoly(mask, [poly - np.int32([x0, y0])], 1)
        m = mask.astype(bool)
        yy, xx = np.nonzero(m)
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 11)
        stripes = np.sin(((yy + y0) * np.sin(angle) + (xx + x0) * np.cos(angle)) * 2 * np.pi / period)
        grey = rng.uniform(85, 175) + rng.normal(0, 10, 3)
        image[y0:y1, x0:x1][m] = (grey + 24 * stripes[:, None]).astype(np.float32)
        label[y0:y1, x0:x1][m] = 3

    # vessels: smooth random walks, drawn as polylines 2-6 px wide
    for _ in range(_count("vessel", h, w, rng)):
        n = int(rng.integers(40, 160))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, n))
        step = 4.0
        ys = rng.uniform(0, h) + np.cumsum(step * np.sin(heading))
        xs = rng.uniform(0, w) + np.cumsum(step * np.cos(heading))
        points = np.round(np.stack([xs, ys], -1)).astype(np.int32)
        thickness = int(rng.integers(2, 7))
        (y0, y1, x0, x1), mask = _window_mask(points, h, w, thickness)
        if mask is None:
            continue
        cv2.polylines(mask, [points - np.int32([x0, y0])], False, 1, thickness=thickness)
        m = mask.astype(bool)
        window = image[y0:y1, x0:x1]
        if m.any():
            # darker or brighter than what it crosses, a little redder: a line, not a brightness
            colour = window[m].mean(0) + rng.choice([-1, 1]) * rng.uniform(15, 35) + np.float32([14, -7, -7])
            window[m] = colour + rng.normal(0, 6, 3).astype(np.float32)
            label[y0:y1, x0:x1][m] = 2

    # cells: filled ellipses with a dark rim and a darker nucleus, of the same brightness range inside
    for _ in range(_count("cell", h, w, rng)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry = rng.uniform(5, 30)
        rx = ry * rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, 180)
        box = np.int32([[cx - ry - 2, cy - ry - 2], [cx + ry + 2, cy + ry + 2]])
        (y0, y1, x0, x1), mask = _window_mask(box, h, w)
        if mask is None:
            continue
        centre, axes = (int(round(cx)) - x0, int(round(cy)) - y0), (int(round(rx)), int(round(ry)))
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 2, max(1, int(ry // 8)))  # the rim
        nucleus = (max(1, int(rx * 0.35)), max(1, int(ry * 0.35)))
        offset = (centre[0] + int(round(rng.uniform(-0.2, 0.2) * rx)), centre[1] + int(round(rng.uniform(-0.2, 0.2) * ry)))
        cv2.ellipse(mask, offset, nucleus, angle, 0, 360, 3, -1)
        fill = rng.uniform(100, 200) + rng.normal(0, 10, 3) + np.float32([8, -4, 6])
        window = image[y0:y1, x0:x1]
        window[mask > 0] = fill.astype(np.float32)
        window[mask == 2] -= 45
        window[mask == 3] -= 30
        label[y0:y1, x0:x1][mask > 0] = 1

    image += rng.standard_normal((h, w, 3), dtype=np.float32) * 12
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


generate, arrays, load = procedural("scenes", CLASS_NAMES, scene, 5_24)
