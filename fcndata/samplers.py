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


def _dims(x) -> tuple:
    """Height and width of ``x``: Python ints when static (no graph nodes), else scalars."""
    h, w = x.shape[:2]
    if h is not None and w is not None:
        return int(h), int(w)
    shape = tf.shape(x, out_type=tf.int32)
    return shape[0], shape[1]


#: Side of the square tiles :func:`balanced_origins` counts classes in: a patch centre is
#: drawn as a tile (weighted by its count of the chosen class), then a pixel inside it.
TILE = 64
#: Pixels per band of whole tile rows that the class counting reads at a time.
BAND_PIXELS = 1 << 20


def class_tile_counts(label, roi, num_classes: int, ignore_label: int = E.IGNORE_LABEL, tile: int = TILE) -> tf.Tensor:
    """Per-tile class counts of a label: ``[ceil(H / tile) * ceil(W / tile), num_classes]`` int32.

    Tiles are row-major; edge tiles are partial. Pixels with ``ignore_label``, a class id
    >= ``num_classes`` or ``roi == 0`` are not counted. The label is read in bands of
    whole tile rows (about :data:`BAND_PIXELS` pixels each), so memory is the counts plus
    one band's temporaries, whatever the image size. uint8 labels of up to
    :data:`BYTE_CLASSES` classes are counted in bytes, one compare and one row sum per
    class (an 8192² label in ~0.07 s on 2 cores); others by a ``bincount`` of int32 ids.

    Example:
      >>> import fcndata.testing as t
      >>> label = t.stripe_label(3, 130, [64, 1, 65])
      >>> class_tile_counts(label, tf.ones_like(label), 3).numpy().tolist()
      [[192, 0, 0], [0, 3, 189], [0, 0, 6]]
    """
    k, T = int(num_classes), int(tile)
    label, roi = tf.convert_to_tensor(label), tf.convert_to_tensor(roi)
    height, width = _dims(label)
    tiles_x = (width + T - 1) // T
    tiles_y = (height + T - 1) // T
    in_bytes = label.dtype == tf.uint8 and k <= BYTE_CLASSES and T <= 255
    counts_of = _byte_band_counts if in_bytes else _id_band_counts
    band_pixels = BAND_PIXELS * (4 if in_bytes else 1)  # byte temporaries are 4x smaller
    h, w = label.shape[:2]
    if h is not None and w is not None and h * w <= band_pixels * STATIC_BANDS:
        # Static size, a few bands: planned here, no loop (fewer graph nodes to build and start).
        tile_rows, bands = -(-h // T), max(1, -(-h * w // band_pixels))
        rows = max(1, -(-tile_rows // bands)) * T  # whole tiles per band
        if rows >= h:  # one band: the whole label, no slices
            parts = [counts_of(label, roi, k, T, ignore_label)]
        else:
            parts = [counts_of(label[y : y + rows], roi[y : y + rows], k, T, ignore_label) for y in range(0, h, rows)]
        counts = tf.concat(parts, 0) if len(parts) > 1 else parts[0] if parts else tf.zeros([0, k], tf.int32)
        return tf.ensure_shape(counts, [-(-h // T) * -(-w // T), k])
    band = T * tf.maximum(1, band_pixels // tf.maximum(width * T, 1))  # rows per band, whole tiles
    bands = (height + band - 1) // band
    parts = tf.TensorArray(tf.int32, size=bands, infer_shape=False, element_shape=tf.TensorShape([None, k]))

    def step(i, ta):
        rows = slice(i * band, tf.minimum(height, (i + 1) * band))
        return i + 1, ta.write(i, counts_of(label[rows], roi[rows], k, T, ignore_label))

    parts = tf.while_loop(lambda i, ta: i < bands, step, (tf.constant(0), parts), parallel_iterations=1)[1]
    counts = tf.cond(bands > 0, parts.concat, lambda: tf.zeros([0, k], tf.int32))
    return tf.ensure_shape(tf.reshape(counts, [tiles_y * tiles_x, k]), [None, k])


#: A label of a static size and at most this many bands is counted without a loop.
STATIC_BANDS = 4
#: uint8 labels of at most this many classes are counted in bytes (one pass per class).
BYTE_CLASSES = 16


def _byte_band_counts(lab, roi, k: int, T: int, ignore_label: int) -> tf.Tensor:
    """Tile counts of one band of whole tile rows: per class, a uint8 compare and a uint8
    sum over each tile's row of T pixels (at most T <= 255), then int32 sums over T rows."""
    # Codes: class + 1 where roi > 0, else 0; label 255 wraps to 0 too, and k <= BYTE_CLASSES
    # keeps every class code below 255. (Two plain uint8 ops: 1.6 ms per 4M pixels against
    # 2.1 ms for a select of a broadcast scalar.)
    never = 0
    v = (lab + 1) * tf.minimum(roi, 1)
    rows, width = _dims(lab)
    if isinstance(rows, int) and isinstance(width, int) and not rows % T and not width % T:
        v = tf.reshape(v, [rows, width // T, T])
    else:
        v = tf.pad(v, [[0, -rows % T], [0, -width % T]], constant_values=never)
        v = tf.reshape(v, [(rows + T - 1) // T * T, -1, T])
    per_class = [tf.reduce_sum(tf.cast(tf.equal(v, c + 1), tf.uint8), axis=2) for c in range(k) if c != ignore_label]
    if 0 <= ignore_label < k:  # not allowed by the sources; kept exact anyway
        per_class.insert(ignore_label, tf.zeros_like(per_class[0]))
    s = tf.cast(tf.stack(per_class, axis=-1), tf.int32)  # [rows, tiles_x, k]
    s = tf.reduce_sum(tf.reshape(s, [-1, T, (width + T - 1) // T, k]), axis=1)
    return tf.reshape(s, [-1, k])


def _id_band_counts(lab, roi, k: int, T: int, ignore_label: int) -> tf.Tensor:
    """Tile counts of one band of whole tile rows by a ``bincount`` of (tile, class) ids."""
    rows, width = tf.shape(lab)[0], tf.shape(lab)[1]
    tiles_x = (width + T - 1) // T
    lab = tf.cast(lab, tf.int32)
    valid = (lab >= 0) & (lab < k) & (lab != ignore_label) & (roi > 0)
    bucket = tf.where(valid, lab, k)  # bucket k collects the never-centres
    tile_row = tf.range(rows) // T
    ids = (tile_row[:, None] * tiles_x + (tf.range(width) // T)[None, :]) * (k + 1) + bucket
    n = ((rows + T - 1) // T) * tiles_x * (k + 1)
    c = tf.math.bincount(tf.reshape(ids, [-1]), minlength=n, maxlength=n, dtype=tf.int32)
    return tf.reshape(c, [-1, k + 1])[:, :k]


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
    """Class-balanced patch origins, drawn through a coarse class-presence grid.

    For each of ``num`` patches: choose a class among those present (probabilities
    renormalised over present classes), then a uniform pixel of that class as the
    patch centre, and clamp the patch inside the image. Pixels with ``ignore_label``,
    a class id >= ``num_classes`` or ``roi == 0`` are never centres. Patches flagged in
    ``foreground`` choose among present classes other than 0 when there are any. An
    image without any valid pixel gets uniform centres.

    The uniform pixel of class c is drawn in two exact steps, without a list of the
    class's pixels: :func:`class_tile_counts` counts each class per :data:`TILE`²
    tile; one uniform ``u`` picks the ``r = floor(u · total_c)``-th pixel of class c in
    tile order, i.e. the tile whose running count passes r (a ``searchsorted``), then
    the remaining rank inside that tile's :data:`TILE`² pixels (a cumulative sum).
    Each pixel of class c is thus chosen with probability 1 / total_c. Memory: the
    counts, one band of the label while counting, and ``num`` tiles (an 8192² label is
    never copied, cast or partitioned whole).

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
    k, T = int(num_classes), TILE
    n = pair(patch_size, "patch_size", "balanced_origins")
    label, roi = tf.convert_to_tensor(label), tf.convert_to_tensor(roi)
    height, width = _dims(label)
    static = isinstance(height, int) and isinstance(width, int)  # Python ints: no graph nodes for the sizes
    tiles_x = (width + T - 1) // T
    tile_counts = class_tile_counts(label, roi, k, ignore_label)  # [tiles, k]
    counts = tf.reduce_sum(tile_counts, axis=0)
    present = counts > 0
    any_valid = tf.reduce_any(present)

    # Class choice: logits over the classes present (-inf elsewhere); one categorical draw
    # per patch, from a second row of logits for the patches flagged foreground.
    minus_inf = tf.fill([k], -np.inf)
    uniform_present = tf.where(present, 0.0, minus_inf)
    if isinstance(class_probabilities, str) and class_probabilities == "inverse_frequency":
        logits = tf.where(present, -tf.math.log(tf.maximum(tf.cast(counts, tf.float32), 1.0)), minus_inf)
    elif isinstance(class_probabilities, str):
        logits = uniform_present
    else:
        logits = tf.where(present, tf.math.log(tf.constant(class_probabilities, tf.float32)), minus_inf)
        # Present classes all given probability 0: fall back to uniform over present ones.
        logits = tf.where(tf.reduce_any(tf.math.is_finite(logits)), logits, uniform_present)
    logits = tf.where(any_valid, logits, tf.zeros([k]))  # keeps categorical well-defined

    keys = tf.random.experimental.stateless_split(key, 2)
    if foreground is not None and any(foreground):
        is_fg = tf.range(k) > 0
        fg_logits = tf.where(is_fg, logits, minus_inf)
        fg_logits = tf.where(tf.reduce_any(tf.math.is_finite(fg_logits)), fg_logits, tf.where(is_fg, uniform_present, minus_inf))
        fg_logits = tf.where(tf.reduce_any(present[1:]), fg_logits, logits)  # no foreground: any class
        both = tf.random.stateless_categorical(tf.stack([logits, fg_logits]), num, seed=keys[0], dtype=tf.int32)
        chosen = tf.where(tf.constant(list(foreground)), both[1], both[0])
    else:
        chosen = tf.random.stateless_categorical(logits[None], num, seed=keys[0], dtype=tf.int32)[0]
    u = tf.random.stateless_uniform([num], seed=keys[1])
    total = tf.gather(counts, chosen)
    # floor(u * total) by truncation (non-negative), below total even where float rounds up.
    rank = tf.minimum(tf.cast(u * tf.cast(total, tf.float32), tf.int32), tf.maximum(total - 1, 0))
    # The tile holding the rank-th pixel of the chosen class, then the rank inside it.
    per_class = tf.transpose(tile_counts)  # [k, tiles]
    running = tf.cumsum(per_class, axis=1)
    tiles = tf.searchsorted(running, tf.broadcast_to(rank, [k, num]), side="right")  # [k, num]
    tile = tf.gather(tf.transpose(tiles), chosen, batch_dims=1)  # [num]
    last_tile = max(tiles_x * -(-height // T) - 1, 0) if static else tf.maximum(tf.shape(tile_counts)[0] - 1, 0)
    tile = tf.minimum(tile, last_tile)
    at = tf.stack([chosen, tile], 1)
    inside = rank - tf.gather_nd(running - per_class, at)  # rank among the class's pixels of this tile
    y0, x0 = (tile // tiles_x) * T, (tile % tiles_x) * T
    # chosen < num_classes; ignore_label and ids >= num_classes are never counted, so never chosen.
    if static and not height % T and not width % T:
        # Whole tiles only: a tile's pixels are its corner's flat index plus constant offsets.
        offsets = (np.arange(T)[:, None] * width + np.arange(T)[None, :]).reshape(1, T * T).astype(np.int32)
        flat = tf.expand_dims(y0 * width + x0, 1) + offsets  # [num, T*T]
        ok = tf.gather(tf.reshape(label, [-1]), flat)
        ok = tf.cast(ok, tf.int32) == tf.expand_dims(chosen, 1)
    else:
        ys = y0[:, None, None] + tf.range(T)[None, :, None]
        xs = x0[:, None, None] + tf.range(T)[None, None, :]
        in_image = (ys < height) & (xs < width)
        flat = tf.reshape(tf.minimum(ys, height - 1) * width + tf.minimum(xs, width - 1), [num, T * T])
        lab = tf.gather(tf.reshape(label, [-1]), flat)
        ok = tf.reshape(in_image, [num, T * T]) & (tf.cast(lab, tf.int32) == chosen[:, None])
    ok &= tf.gather(tf.reshape(roi, [-1]), flat) > 0
    seen = tf.cumsum(tf.cast(ok, tf.int32), axis=1)
    local = tf.argmax(tf.cast(seen > inside[:, None], tf.int32), axis=1, output_type=tf.int32)
    centre = tf.gather(flat, local, batch_dims=1)  # flat index of the chosen pixel
    # An image without any valid pixel: a uniform pixel anywhere.
    anywhere = tf.minimum(tf.cast(u * tf.cast(height * width, tf.float32), tf.int32), height * width - 1)
    centre = tf.where(any_valid, centre, anywhere)
    centre = tf.stack([centre // width, centre % width], axis=1)
    if static:
        low = [min(0, height - n[0]), min(0, width - n[1])]
        high = [max(0, height - n[0]), max(0, width - n[1])]
    else:
        low = tf.stack([tf.minimum(0, height - n[0]), tf.minimum(0, width - n[1])])
        high = tf.stack([tf.maximum(0, height - n[0]), tf.maximum(0, width - n[1])])
    origins = tf.clip_by_value(centre - [n[0] // 2, n[1] // 2], low, high)
    if return_classes:
        return origins, tf.where(any_valid, chosen, -1)
    return origins
