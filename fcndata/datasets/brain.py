"""Brain MRI slices from nilearn's bundled MNI152 template (no network).

nilearn ships the ICBM152 2009 T1, grey-matter and white-matter maps inside its package
(``nilearn/datasets/data/*.nii.gz``); ``load_mni152_template(resolution=2)`` and friends
read those files and resample them to 2 mm (99 x 117 x 95 voxels). Labels:

====  ============  ==============================================================
id    name          rule
====  ============  ==============================================================
0     background    outside ``load_mni152_brain_mask`` (T1 > 0.2)
1     csf           inside the mask, argmax of (csf = 1 - gm - wm, gm, wm) is csf
2     grey_matter   ... is gm
3     white_matter  ... is wm
====  ============  ==============================================================

Slices are taken along each of ``data.axes`` every ``data.slice_step`` voxels, rotated
so the head is up, as uint8 (T1 scaled to 0..255); slices with less than 3 % brain are
dropped. Shapes differ per axis: axis 0 -> 95 x 117, axis 1 -> 95 x 99, axis 2 -> 117 x 99.
Train and validation are split per axis by a contiguous slab of slices (``val_fraction``
of the kept slices, at a position drawn from ``data.seed``), never by random slice.
Slices of different axes intersect along a voxel line, so a 3D-disjoint split would need
one axis only (``axes: [2]``).

Example:
  >>> from fcndata.config import DataConfig
  >>> data = DataConfig(source="brain", num_classes=4, channels=1, axes=(2,), slice_step=8)
  >>> e = next(iter(load(data, "validation")))
  >>> e["image"].shape, e["path"].numpy().decode()[:12]
  (TensorShape([117, 99, 1]), 'brain/axis2/')
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from fcndata.datasets import check_classes, check_split, to_channels
from fcndata.sources.arrays import from_arrays

CLASS_NAMES = ("background", "csf", "grey_matter", "white_matter")
MIN_BRAIN_FRACTION = 0.03


@functools.lru_cache(maxsize=1)
def volumes() -> tuple[np.ndarray, np.ndarray]:
    """(t1 uint8, labels uint8), both [99, 117, 95]; read once per process."""
    from nilearn import datasets  # local files shipped with nilearn; these loaders never download

    t1 = np.asarray(datasets.load_mni152_template(resolution=2).dataobj, np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).dataobj, np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).dataobj, np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    csf = np.clip(1.0 - gm - wm, 0, 1)
    tissue = np.argmax(np.stack([csf, gm, wm]), 0).astype(np.uint8) + 1
    labels = np.where(mask, tissue, 0).astype(np.uint8)
    image = np.clip(np.round(t1 / max(float(t1.max()), 1e-6) * 255), 0, 255).astype(np.uint8)
    return image, labels


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(np.take(volume, index, axis=axis)))


@functools.lru_cache(maxsize=16)
def slices(axes: tuple[int, ...], slice_step: int, val_fraction: float, seed: int, split: str, channels: int):
    """(images, labels, paths) of one split; cached."""
    image, labels = volumes()
    out_images, out_labels, out_paths = [], [], []
    for axis in axes:
        kept = [
            i for i in range(0, image.shape[axis], slice_step)
            if (np.take(labels, i, axis=axis) > 0).mean() >= MIN_BRAIN_FRACTION
        ]
        n_val = round(val_fraction * len(kept))
        start = int(np.random.default_rng([seed, axis]).integers(0, len(kept) - n_val + 1))
        val = set(kept[start:start + n_val])
        chosen = [i for i in kept if (i in val) == (split == "validation")]
        for i in chosen:
            out_images.append(to_channels(_slice(image, axis, i)[..., None], channels))
            out_labels.append(_slice(labels, axis, i))
            out_paths.append(f"brain/axis{axis}/slice{i:03d}")
    return out_images, out_labels, out_paths


def arrays(data, split: str = "train"):
    """Brain slices for ``split`` (uses axes, slice_step, val_fraction, seed, channels)."""
    check_split(split, "brain")
    check_classes(data, "brain", 4)
    axes = tuple(data.axes)
    if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"brain dataset: data.axes must be distinct values of 0, 1, 2. Received: axes={list(axes)}")
    if data.slice_step < 1:
        raise ValueError(f"brain dataset: data.slice_step must be >= 1. Received: slice_step={data.slice_step}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise ValueError(f"brain dataset: data.val_fraction must be in [0, 1). Received: val_fraction={data.val_fraction}")
    images, labels, paths = slices(axes, data.slice_step, float(data.val_fraction), data.seed, split, data.channels)
    if not images:
        raise ValueError(
            f"brain dataset: the {split} split is empty; lower data.slice_step or change data.val_fraction. "
            f"Received: slice_step={data.slice_step}, val_fraction={data.val_fraction}"
        )
    return images, labels, paths


def load(data, split: str = "train") -> tf.data.Dataset:
    """The brain dataset of ``data`` (a DataConfig) for ``split``, as contract elements."""
    images, labels, paths = arrays(data, split)
    return from_arrays(images, labels, 4, data.ignore_label, paths=paths)
