"""Where random and class-balanced patches go: stateless origin samplers.

* :func:`random_origins`: uniform origins with the patch inside the image;
* :func:`balanced_origins`: choose a class among those present (uniform, given
  probabilities or inverse frequency), then a random pixel of that class as the patch
  centre, clamped inside the image; :func:`foreground_mask` marks the share of a batch's
  patches that must be centred on a foreground class (nnU-Net's 0.33).

The grid's origins are in :mod:`fcndata.grid`; the stages that cut patches at these
origins are in :mod:`fcndata.patches`.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.common import pair
from fcndata.grid import Pair

CLASS_PROBABILITIES = ("uniform", "inverse_frequency")


def random_origins(shape, patch_size: Pair, num: int, key) -> tf.Tensor:
    """``num`` uniform (y, x) origins with the patch inside the image: ``[num, 2]`` int32.

    On an axis shorter than the patch the patch covers the whole axis and the image
    lands at a uniform offset inside it (origins in ``[L - n, 0]``, padded both sides).
    ``key`` is a stateless seed (see :func:`fcndata.elements.element_seed`).

    Example:
      >>> o = random_origins([37, 53], 16, 1000, tf.constant([1, 2], tf.int64)).numpy()
      >>> int(o.min()), int(o[:, 0].max()), int(o[:, 1].max())
      (0, 21, 37)
    """
    n = tf.constant(pair(patch_size, "patch_size", "random_origins"), tf.int32)
    shape = tf.cast(shape, tf.int32)[:2]
    low = tf.minimum(0, shape - n)
    high = tf.maximum(0, shape - n)
    u = tf.random.stateless_uniform([num, 2], seed=key)
    span = tf.cast(high - low + 1, tf.float32)
    return tf.minimum(low + tf.cast(tf.floor(u * span), tf.int32), high)


def foreground_mask(num: int, fraction: float) -> list[bool]:
    """Which of ``num`` patches must be centred on foreground: ``ceil(num * fraction)``
    of them, spread evenly so any run of patches keeps about that share.

    >>> foreground_mask(6, 0.33), sum(foreground_mask(16, 0.33))
    ([True, False, False, True, False, False], 6)
    """
    def up(x):
        return math.ceil(round(x, 9))

    return [up((i + 1) * fraction) > up(i * fraction) for i in range(num)]


def balanced_origins(
    label,
    roi,
    patch_size: Pair,
    num: int,
    num_classes: int,
    key,
    class_probabilities: Union[str, Sequence[float]] = "uniform",
    foreground: Sequence[bool] | None = None,
    ignore_label: int = E.IGNORE_LABEL,
    return_classes: bool = False,
):
    """Class-balanced patch origins from one pass over the label.

    For each of ``num`` patches: choose a class among those present (probabilities
    renormalised over present classes), then a uniform pixel of that class as the
    patch centre, and clamp the patch inside the image. Pixels with ``ignore_label``,
    a class id >= ``num_classes`` or ``roi == 0`` are never centres. Patches flagged in
    ``foreground`` choose among present classes other than 0 when there are any. An
    image without any valid pixel gets uniform centres.

    One ``tf.dynamic_partition`` of the pixel indices by class does the work for all
    patches: the r-th pixel of class c is ``pixels[offset[c] + r]``.

    Args:
      label: ``[H, W]`` class ids.
      roi: ``[H, W]`` uint8, 1 = real labeled pixel.
      patch_size: patch (height, width).
      num: patches to draw.
      num_classes: number of real classes.
      key: stateless seed, shape [2].
      class_probabilities: ``"uniform"``, ``"inverse_frequency"`` (of this image's
        class counts) or one probability per class.
      foreground: ``num`` flags, True = centre on a non-background class.
      ignore_label: label value that is never a centre.
      return_classes: also return the chosen class per patch (-1 for none).

    Returns:
      ``[num, 2]`` int32 origins (and ``[num]`` int32 classes with ``return_classes``).

    Example:
      >>> import fcndata.testing as t
      >>> label = t.stripe_label(9, 20, [18, 2])
      >>> o, c = balanced_origins(label, tf.ones_like(label), 5, 4, 2, tf.constant([0, 1], tf.int64),
      ...                         class_probabilities=[0.0, 1.0], return_classes=True)
      >>> c.numpy().tolist(), bool(tf.reduce_all(o[:, 1] == 15))
      ([1, 1, 1, 1], True)
    """
    k = int(num_classes)
    n = tf.constant(pair(patch_size, "patch_size", "balanced_origins"), tf.int32)
    label = tf.cast(label, tf.int32)
    shape = tf.shape(label, out_type=tf.int32)
    width = shape[1]
    valid = (label >= 0) & (label < k) & (label != ignore_label) & (tf.cast(roi, tf.int32) > 0)
    bucket = tf.reshape(tf.where(valid, label, k), [-1])  # bucket k collects the never-centres
    parts = tf.dynamic_partition(tf.range(tf.size(bucket)), bucket, k + 1)
    counts = tf.stack([tf.size(p) for p in parts[:k]])
    pixels = tf.concat(parts[:k] + [tf.zeros([1], tf.int32)], axis=0)  # + 1 so gathers never hit empty
    offsets = tf.cumsum(counts, exclusive=True)
    present = counts > 0
    any_valid = tf.reduce_any(present)
    has_foreground = tf.reduce_any(present[1:])

    if isinstance(class_probabilities, str) and class_probabilities == "inverse_frequency":
        log_p = -tf.math.log(tf.maximum(tf.cast(counts, tf.float32), 1.0))
    elif isinstance(class_probabilities, str):
        log_p = tf.zeros([k], tf.float32)
    else:
        log_p = tf.math.log(tf.constant(class_probabilities, tf.float32))
    minus_inf = tf.fill([k], -np.inf)
    uniform_present = tf.where(present, 0.0, minus_inf)
    logits = tf.where(present, log_p, minus_inf)
    # Present classes all given probability 0: fall back to uniform over present ones.
    logits = tf.where(tf.reduce_any(tf.math.is_finite(logits)), logits, uniform_present)
    logits = tf.where(any_valid, logits, tf.zeros([k]))  # keeps categorical well-defined
    is_fg = tf.range(k) > 0
    fg_logits = tf.where(is_fg, logits, minus_inf)
    fg_logits = tf.where(tf.reduce_any(tf.math.is_finite(fg_logits)), fg_logits, tf.where(is_fg, uniform_present, minus_inf))
    fg_logits = tf.where(has_foreground, fg_logits, logits)

    keys = tf.random.experimental.stateless_split(key, 3)
    chosen = tf.random.stateless_categorical(logits[None], num, seed=keys[0], dtype=tf.int32)[0]
    if foreground is not None and any(foreground):
        fg_chosen = tf.random.stateless_categorical(fg_logits[None], num, seed=keys[1], dtype=tf.int32)[0]
        chosen = tf.where(tf.constant(list(foreground)), fg_chosen, chosen)
    u = tf.random.stateless_uniform([num], seed=keys[2])
    count = tf.gather(counts, chosen)
    rank = tf.minimum(tf.cast(tf.floor(u * tf.cast(count, tf.float32)), tf.int32), tf.maximum(count - 1, 0))
    flat = tf.gather(pixels, tf.gather(offsets, chosen) + rank)
    anywhere = tf.minimum(tf.cast(tf.floor(u * tf.cast(tf.size(label), tf.float32)), tf.int32), tf.size(label) - 1)
    flat = tf.where(any_valid, flat, anywhere)
    centre = tf.stack([flat // width, flat % width], axis=1)
    low = tf.minimum(0, shape - n)
    high = tf.maximum(0, shape - n)
    origins = tf.clip_by_value(centre - n // 2, low, high)
    if return_classes:
        return origins, tf.where(any_valid, chosen, -1)
    return origins
