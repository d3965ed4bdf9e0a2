"""Synthetic CT-like abdominal slices: 16-bit, a large offset, 12 classes, several tiny ones.

Each image is one axial slice through a procedurally drawn torso at a random level
(upper slices: lungs, liver dome, stomach; lower ones: kidneys, no lungs), in Hounsfield
units stored as CT stores them, ``HU + 1024`` in uint16: air is near 0, fat ~920, soft
tissue 1050-1090, bone 1300-2200. Image left is the patient's right (radiological view).

====  ===========  =========================  ===================================
id    name         HU (before noise)          shape / where
====  ===========  =========================  ===================================
0     background   air -1000, fat -100,       outside the body, body wall, fat,
                   muscle 50, bowel 20-40      bowel loops, the scanner table
1     lung         -850 (+ vessel dots)       two lobes, upper slices
2     liver        60                         large lobed region, patient right
3     spleen       50                         crescent, patient left, posterior
4     kidney       35                         two beans beside the spine, lower slices
5     stomach      15 + an air pocket         patient left, anterior, upper slices
6     aorta        45                         small disc in front of the spine
7     spine        250 inside, 700 cortex     vertebral body, posterior midline
8     rib          600                        short thin arcs under the body wall
9     gallbladder  10                         small ellipse in the liver
10    adrenal      35                         thin sliver above a kidney
11    lesion       20                         0-3 small discs inside the liver
====  ===========  =========================  ===================================

Soft-tissue classes overlap in HU (liver 60, spleen 50, muscle 50, aorta 45, kidney 35,
adrenal 35, bowel 20-40, lesion 20, stomach 15, gallbladder 10) under the noise (sigma 18
HU after a slight blur), so position, shape and context tell them apart; a 16-bit image
scaled to [0, 1] puts all of them within 0.002 of each other, which is what a planner's
intensity clip must fix. Aorta, gallbladder, adrenal and lesion each cover well under
0.5 % of the pixels. Sizes are ``min_size`` .. ``max_size`` (height and width drawn
independently; ``pipelines/phantom.yaml``: 160-256).

Example:
  >>> from fcndata.config import DataConfig
  >>> data = DataConfig(source="phantom", num_classes=12, channels=1, num_images=2, min_size=64, max_size=72)
  >>> e = next(iter(load(data)))
  >>> e["image"].dtype.name, e["image"].shape[-1], e["path"].numpy().decode()
  ('uint16', 1, 'phantom/train/0000')
"""

from __future__ import annotations

import numpy as np

from fcndata.datasets import procedural
from fcndata.datasets.scenes import blob_polygon, smooth_field

CLASS_NAMES = ("background", "lung", "liver", "spleen", "kidney", "stomach", "aorta", "spine", "rib",
               "gallbladder", "adrenal", "lesion")
#: CT stores HU + 1024 so that air (-1000 HU) and everything above it are non-negative
OFFSET = 1024
HU = {"air": -1000, "fat": -100, "muscle": 50, "visceral_fat": -80, "lung": -850, "liver": 60, "spleen": 50,
      "kidney": 35, "stomach": 15, "aorta": 45, "cancellous": 250, "cortical": 700, "rib": 600,
      "gallbladder": 10, "adrenal": 35, "lesion": 20, "table": 150}
NOISE_HU = 18.0


def _ellipse(mask, cy, cx, ry, rx, angle=0.0, value=1, thickness=-1, start=0, end=360):
    import cv2

    cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (max(1, int(round(rx))), max(1, int(round(ry)))),
                angle, start, end, value, thickness)
    return mask


def phantom(rng, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (image uint16 [h, w], HU + 1024; label uint8 [h, w])."""
    import cv2

    hu = np.full((h, w), HU["air"], np.float32)
    label = np.zeros((h, w), np.uint8)
    z = rng.uniform(0, 1)  # 0: lower thorax, 1: lower abdomen
    cy, cx = h * rng.uniform(0.46, 0.54), w * rng.uniform(0.47, 0.53)
    by, bx = h * rng.uniform(0.30, 0.38), w * rng.uniform(0.38, 0.45)  # the body's semi-axes
    tilt = rng.uniform(-4, 4)

    def at(dy, dx):  # body coordinates (-1..1, dy > 0 posterior, dx > 0 the patient's left) to pixels
        return cy + dy * by, cx + dx * bx

    def paint(mask, k, value, jitter=8.0):
        m = mask.astype(bool)
        hu[m] = value + rng.normal(0, jitter)
        if k is not None:
            label[m] = k
        return m

    def new():
        return np.zeros((h, w), np.uint8)

    # the scanner table, the body (fat), its muscle wall and the visceral fat inside
    table_y = cy + by * 1.12
    cv2.rectangle(hu, (0, int(table_y)), (w - 1, int(table_y + max(2, h * 0.02))), HU["table"], -1)
    paint(_ellipse(new(), cy, cx, by, bx, tilt), None, HU["fat"])
    paint(_ellipse(new(), cy, cx, by * 0.9, bx * 0.9, tilt), None, HU["muscle"])
    paint(_ellipse(new(), cy, cx, by * 0.8, bx * 0.82, tilt), None, HU["visceral_fat"])
    # paraspinal muscles behind the spine
    for side in (-1, 1):
        paint(_ellipse(new(), *at(0.62, side * 0.17), by * 0.2, bx * 0.13), None, HU["muscle"])
    # bowel loops: soft tissue with air bubbles, background (a confounder of stomach and gallbladder)
    for _ in range(int(rng.integers(4, 9))):
        y, x = at(rng.uniform(-0.5, 0.3), rng.uniform(-0.6, 0.6))
        r = rng.uniform(0.07, 0.14) * bx
        m = paint(_ellipse(new(), y, x, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, 180)), None,
                  rng.uniform(20, 40), 4)
        if rng.random() < 0.5:
            paint(_ellipse(new(), y, x, r * 0.4, r * 0.4) & m, None, HU["air"] + 100, 50)

    lungs = max(0.0, 0.55 - z) / 0.55  # 1 at the top, 0 from the middle down
    if lungs > 0.05:
        for side in (-1, 1):
            y, x = at(0.15, side * 0.5)
            poly = blob_polygon(rng, y, x, by * 0.6 * lungs ** 0.5, bx * 0.3 * lungs ** 0.5, 0.15)
            m = new()
            cv2.fillPoly(m, [poly], 1)
            paint(m & _ellipse(new(), cy, cx, by * 0.8, bx * 0.82, tilt), 1, HU["lung"], 20)
    liver_size = 1.0 - 0.8 * abs(z - 0.4)
    y, x = at(-0.05, -0.4)
    liver = new()
    cv2.fillPoly(liver, [blob_polygon(rng, y, x, by * 0.55 * liver_size, bx * 0.42 * liver_size, 0.35)], 1)
    liver &= _ellipse(new(), cy, cx, by * 0.8, bx * 0.82, tilt)
    liver_mask = paint(liver, 2, HU["liver"], 6)
    if 0.3 < z < 0.7 and rng.random() < 0.8:
        paint(_ellipse(new(), *at(0.15, -0.3), by * 0.1, bx * 0.06, rng.uniform(0, 180)) & liver, 9,
              HU["gallbladder"], 4)
    inside = np.argwhere(liver_mask & (label == 2))
    for _ in range(int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))):
        if len(inside):
            y, x = inside[rng.integers(len(inside))]
            r = rng.uniform(0.02, 0.05) * bx
            paint(_ellipse(new(), y, x, r, r), 11, HU["lesion"], 4)
    if 0.15 < z < 0.75:
        y, x = at(0.35, 0.55)
        paint(_ellipse(new(), y, x, by * 0.28, bx * 0.14, rng.uniform(-30, 10)) &
              _ellipse(new(), cy, cx, by * 0.8, bx * 0.82, tilt), 3, HU["spleen"], 6)
    if z < 0.65:
        y, x = at(-0.35, 0.3)
        r = (0.65 - z) / 0.65
        m = paint(_ellipse(new(), y, x, by * 0.3 * r ** 0.5 + 2, bx * 0.25 * r ** 0.5 + 2, rng.uniform(0, 180)), 5,
                  HU["stomach"], 6)
        air = _ellipse(new(), y - by * 0.12 * r ** 0.5, x, by * 0.08, bx * 0.12) & m
        hu[air.astype(bool)] = HU["air"] + 50
    if z > 0.4:
        for side in (-1, 1):
            y, x = at(0.4, side * 0.38)
            s = min(1.0, (z - 0.4) / 0.2)
            paint(_ellipse(new(), y, x, by * 0.2 * s, bx * 0.11 * s, side * rng.uniform(10, 30)), 4, HU["kidney"], 6)
    if 0.3 < z < 0.7:
        for side in (-1, 1):
            y, x = at(0.12, side * 0.3)
            paint(_ellipse(new(), y, x, by * 0.08, max(1.0, bx * 0.015), side * 35 + rng.uniform(-10, 10)), 10,
                  HU["adrenal"], 4)
    paint(_ellipse(new(), *at(0.28, 0.1), by * 0.07, by * 0.07), 6, HU["aorta"], 4)
    # the vertebra: cancellous bone in a cortical shell, and a spinous process behind it
    y, x = at(0.52, 0.0)
    paint(_ellipse(new(), y, x, by * 0.14, bx * 0.12), 7, HU["cortical"], 40)
    paint(_ellipse(new(), y, x, by * 0.11, bx * 0.09) & (label == 7), 7, HU["cancellous"], 30)
    paint(_ellipse(new(), y + by * 0.22, x, by * 0.1, bx * 0.025), 7, HU["cortical"], 40)
    # ribs: short arcs under the muscle wall, more of them higher up
    for _ in range(int(rng.integers(2, 5 + int(6 * (1 - z))))):
        start = rng.uniform(0, 360)
        arc = _ellipse(new(), cy, cx, by * 0.86, bx * 0.86, tilt, 1, max(1, int(round(min(h, w) * 0.012))),
                       start, start + rng.uniform(10, 22))
        paint(arc, 8, HU["rib"], 40)
    # lung vessels: bright dots inside the lungs, still lung
    lung = label == 1
    if lung.any():
        dots = np.argwhere(lung)[rng.integers(lung.sum(), size=int(lung.sum() // 150) + 1)]
        for y, x in dots:
            hu[max(0, y - 1):y + 1, max(0, x - 1):x + 1][lung[max(0, y - 1):y + 1, max(0, x - 1):x + 1]] = 40

    hu += 12 * smooth_field(rng, h, w, max(8.0, min(h, w) / 6))[..., 0] * (hu > -500)  # slow inhomogeneity
    hu = cv2.GaussianBlur(hu, (0, 0), 0.7)  # partial volume at the edges
    hu += rng.standard_normal((h, w), dtype=np.float32) * NOISE_HU
    return np.clip(np.round(hu + OFFSET), 0, 4095).astype(np.uint16), label


generate, arrays, load = procedural("phantom", CLASS_NAMES, phantom, 12_24)
