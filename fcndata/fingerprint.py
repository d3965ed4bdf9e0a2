"""A dataset's fingerprint: the measured facts :mod:`fcndata.plan` decides from.

One bounded read of a ``data:`` section (nnU-Net's fingerprint, for 2-D and in seconds):
image counts and sizes from headers (:func:`fcndata.sources.source_shapes`, nothing
decoded where the source allows), then a sample of at most ``max_images`` training images,
evenly spaced in source order, decoded once for the pixel dtype, intensity percentiles over
the labelled pixels and over the foreground (non-background) pixels, class pixel
frequencies over the labelled pixels and the share of ignored pixels. A big folder is read
once at most; the sample bounds the time (about a second for 100 small PNGs).

Example:
  >>> from fcndata.config import DataConfig
  >>> fp = fingerprint(DataConfig(source="shapes", num_images=6, val_num_images=2, min_size=40, max_size=48))
  >>> fp.num_train, fp.num_val, fp.channels, fp.dtype, len(fp.class_frequency)
  (6, 2, 3, 'uint8', 3)
  >>> 40 <= fp.height[0] <= fp.height[2] <= 48, round(sum(fp.class_frequency), 6)
  (True, 1.0)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np

#: pixels drawn per sampled image for the intensity percentiles (bounds memory and time)
PIXELS_PER_IMAGE = 20_000


@dataclass(frozen=True)
class Fingerprint:
    """Measured facts about a dataset (JSON-able: :meth:`to_json`).

    Sizes are ``(min, median, max)``; intensities are ``{"p0.5", "p99.5", "mean", "std"}``
    of raw pixel values (all channels pooled); frequencies are shares of labelled pixels.
    """

    source: str
    num_train: int
    num_val: int
    height: tuple[float, float, float]
    width: tuple[float, float, float]
    num_shapes: int  # distinct (height, width) among the training images
    channels: int
    dtype: str  # uint8 | uint16 | float32: the decoded pixels
    class_names: tuple[str, ...]
    class_frequency: tuple[float, ...]  # over the labelled pixels of the sample
    images_with_class: tuple[int, ...]  # sampled images where each class appears
    ignore_fraction: float  # ignored pixels / all pixels of the sample
    intensity: dict  # over labelled pixels
    foreground: dict  # over labelled pixels of classes other than 0 (empty without any)
    sampled_images: int
    train_bytes: int  # the decoded training split (images + labels), from the sizes
    seconds: float  # how long the fingerprint took

    @property
    def min_side(self) -> int:
        return int(min(self.height[0], self.width[0]))

    @property
    def max_shape(self) -> tuple[int, int]:
        return int(self.height[2]), int(self.width[2])

    @property
    def median_shape(self) -> tuple[int, int]:
        return int(round(self.height[1])), int(round(self.width[1]))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Fingerprint":
        raw = json.loads(text)
        for key in ("height", "width", "class_names", "class_frequency", "images_with_class"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {}
    p_low, p_high = np.percentile(values, [0.5, 99.5])
    return {"p0.5": float(p_low), "p99.5": float(p_high), "mean": float(values.mean()), "std": float(values.std())}


def _summary(v) -> tuple[float, float, float]:
    v = np.asarray(v)
    return (float(v.min()), float(np.median(v)), float(v.max())) if v.size else (0.0, 0.0, 0.0)


def _sample(data, n: int, max_images: int):
    """The decoded elements of an evenly spaced sample of the training split."""
    import tensorflow as tf

    from fcndata import sources

    if data.source == "folder" or data.source in sources.BUILTIN_SOURCES:
        picks = np.unique(np.linspace(0, max(n - 1, 0), min(n, max_images)).round().astype(np.int64))
        return sources.load_source(data, "train", indices=tf.data.Dataset.from_tensor_slices(picks))
    return sources.load_source(dataclasses.replace(data, cache=False), "train").take(max_images)


def fingerprint(data, max_images: int = 200, seed: int = 0) -> Fingerprint:
    """Measures a dataset: headers first, then a bounded sample of decoded training images.

    Args:
      data: a :class:`fcndata.config.DataConfig`.
      max_images: decode at most this many training images (evenly spaced) for the
        intensities and class frequencies.
      seed: draws the pixels used for the intensity percentiles.

    Returns:
      A :class:`Fingerprint`.

    Raises:
      ValueError: the source has no training images, or one named by the source errors
        (missing files, bad patterns: the message of :mod:`fcndata.sources`).
    """
    from fcndata import sources

    start = time.perf_counter()
    if max_images < 1:
        raise ValueError(f"fingerprint: max_images must be >= 1. Received: max_images={max_images!r}")
    n, shapes = sources.source_shapes(data, "train")
    n_val = sources.source_shapes(data, "validation")[0] if sources.has_split(data, "validation") else 0
    if n == 0:
        raise ValueError(f"fingerprint: the {data.source} source has no training images. Received: 0 images")
    k = data.num_classes
    rng = np.random.default_rng(seed)
    counts, present = np.zeros(k, np.int64), np.zeros(k, np.int64)
    ignored = total = 0
    labelled_px, fg_px, sampled_shapes, dtype, sampled = [], [], [], "uint8", 0
    for e in _sample(data, n, max_images).as_numpy_iterator():
        image, label = e["image"], e["label"].astype(np.int64)
        dtype = image.dtype.name
        sampled += 1
        sampled_shapes.append(label.shape)
        valid = (label >= 0) & (label < k) & (e["roi"] > 0)
        c = np.bincount(label[valid], minlength=k)[:k]
        counts += c
        present += c > 0
        ignored += int((~valid).sum())
        total += label.size
        for store, where in ((labelled_px, valid), (fg_px, valid & (label > 0))):
            px = image[where].reshape(-1)
            if px.size > PIXELS_PER_IMAGE:
                px = rng.choice(px, PIXELS_PER_IMAGE, replace=False)
            store.append(px.astype(np.float64))
    if shapes is None:  # headers could not tell (TFRecord, TFDS, TIFF): the sample's sizes stand in
        shapes = sampled_shapes
    hs, ws = [s[0] for s in shapes], [s[1] for s in shapes]
    itemsize = np.dtype(dtype).itemsize
    labelled = int(counts.sum())
    return Fingerprint(
        source=data.source,
        num_train=int(n),
        num_val=int(n_val),
        height=_summary(hs),
        width=_summary(ws),
        num_shapes=len(set(map(tuple, shapes))),
        channels=int(data.channels),
        dtype=dtype,
        class_names=tuple(data.names),
        class_frequency=tuple(float(v) for v in counts / max(labelled, 1)),
        images_with_class=tuple(int(v) for v in present),
        ignore_fraction=float(ignored / max(total, 1)),
        intensity=_stats(np.concatenate(labelled_px) if labelled_px else np.zeros(0)),
        foreground=_stats(np.concatenate(fg_px) if fg_px else np.zeros(0)),
        sampled_images=sampled,
        train_bytes=int(sum(h * w for h, w in zip(hs, ws)) * (data.channels * itemsize + 1)),
        seconds=round(time.perf_counter() - start, 3),
    )
