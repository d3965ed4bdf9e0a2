"""Synthetic shapes: seeded, varying sizes, textured backgrounds, chosen class imbalance.

Class 0 is background; class k >= 1 is a shape kind (circle, rectangle, triangle,
repeating) with its own colour. Backgrounds are smooth colour textures plus pixel noise
spanning the same brightness range as the shapes, so a threshold does not segment them
but colour and shape do. Foreground classes are drawn with probability proportional to
``class_imbalance ** (-(k - 1) / (num_classes - 2))``: class 1 is the most frequent,
class ``num_classes - 1`` about ``class_imbalance`` times rarer.

Example:
  >>> from fcndata.config import DataConfig
  >>> ds = load(DataConfig(source="shapes", num_classes=4, num_images=3, min_size=30, max_size=40))
  >>> [e["image"].shape[-1] for e in ds], next(iter(ds))["path"].numpy()
  ([3, 3, 3], b'shapes/train/0000')
"""

from __future__ import annotations

import colorsys
import functools

import numpy as np
import tensorflow as tf

from fcndata.datasets import check_split, to_channels
from fcndata.sources.arrays import from_arrays

KINDS = ("circle", "rectangle", "triangle")


def class_colours(num_classes: int) -> np.ndarray:
    """A distinct RGB colour per foreground class (row k-1 for class k)."""
    hues = np.arange(max(num_classes - 1, 1)) / max(num_classes - 1, 1)
    return np.array([colorsys.hsv_to_rgb(h, 0.75, 0.8) for h in hues]) * 255


def class_probabilities(num_classes: int, class_imbalance: float) -> np.ndarray:
    """Probability of each foreground class 1..num_classes-1 for a new shape.

    >>> class_probabilities(4, 4.0).round(3).tolist()
    [0.571, 0.286, 0.143]
    """
    k = np.arange(num_classes - 1)
    w = class_imbalance ** (-k / max(num_classes - 2, 1))
    return w / w.sum()


def _background(rng, h, w) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = np.zeros((h, w, 3), np.float32)
    for _ in range(3):  # a few random low-frequency waves per channel
        fy, fx = rng.uniform(0.02, 0.15, 2)
        phase = rng.uniform(0, 2 * np.pi, 3)
        amp = rng.uniform(15, 45, 3)
        wave = np.sin(yy[..., None] * fy + xx[..., None] * fx + phase)
        tex += amp * wave
    base = rng.uniform(70, 180, 3)
    return base + tex + rng.normal(0, 18, (h, w, 3))


def _shape_mask(rng, kind, h, w) -> np.ndarray:
    size = rng.uniform(0.1, 0.25) * min(h, w)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
    if kind == "rectangle":
        ry, rx = size * rng.uniform(0.5, 1.3, 2)
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
    py, px = cy + 1.4 * size * np.sin(angles), cx + 1.4 * size * np.cos(angles)
    signs = []
    for i in range(3):
        j = (i + 1) % 3
        signs.append((px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i]))
    s = np.stack(signs)
    return np.all(s >= 0, 0) | np.all(s <= 0, 0)


@functools.lru_cache(maxsize=16)
def generate(seed, split, num_images, min_size, max_size, num_classes, class_imbalance, channels):
    """(images, labels): lists of uint8 arrays, cached so repeated loads are cheap."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 20_17])
    colours = class_colours(num_classes)
    probs = class_probabilities(num_classes, class_imbalance) if num_classes > 1 else None
    images, labels = [], []
    for _ in range(num_images):
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        image = _background(rng, h, w)
        label = np.zeros((h, w), np.uint8)
        if probs is not None:
            for _ in range(int(rng.integers(2, 3 + h * w // 1500))):
                k = int(rng.choice(len(probs), p=probs)) + 1
                mask = _shape_mask(rng, KINDS[(k - 1) % len(KINDS)], h, w)
                colour = colours[k - 1] + rng.normal(0, 12, 3)
                image[mask] = colour + rng.normal(0, 18, (int(mask.sum()), 3))
                label[mask] = k
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        images.append(to_channels(image, channels))
        labels.append(label)
    return images, labels


def arrays(data, split: str = "train"):
    """The shapes dataset of ``data`` (a DataConfig) for ``split``.

    Uses ``num_images`` / ``val_num_images``, ``min_size`` .. ``max_size`` (height and width
    drawn independently), ``num_classes``, ``class_imbalance``, ``channels`` and ``seed``;
    the validation split uses a different stream of the same seed.
    """
    check_split(split, "shapes")
    if not 1 <= data.min_size <= data.max_size:
        raise ValueError(
            "shapes dataset: need 1 <= data.min_size <= data.max_size. "
            f"Received: min_size={data.min_size}, max_size={data.max_size}"
        )
    if data.class_imbalance < 1.0:
        raise ValueError(
            "shapes dataset: data.class_imbalance is the ratio of the most to the least frequent foreground "
            f"class and must be >= 1. Received: class_imbalance={data.class_imbalance}"
        )
    n = data.num_images if split == "train" else data.val_num_images
    images, labels = generate(
        data.seed, split, n, data.min_size, data.max_size, data.num_classes, float(data.class_imbalance), data.channels
    )
    paths = [f"shapes/{split}/{i:04d}" for i in range(n)]
    return images, labels, paths


def load(data, split: str = "train") -> tf.data.Dataset:
    """The shapes dataset of ``data`` (a DataConfig) for ``split``, as contract elements."""
    images, labels, paths = arrays(data, split)
    return from_arrays(images, labels, data.num_classes, data.ignore_label, paths=paths)
