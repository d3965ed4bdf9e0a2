"""Tiny self-describing synthetic data for tests and doctests (public API).

Pixels encode where they came from, so an origin, flip or padding bug reads straight
off the numbers:

* ``coordinate_image(h, w)``: channel 0 = row, channel 1 = column, channel 2 = row +
  column, channel k >= 3 = k (exact in uint8 for sizes up to 256, in float32 always).
* ``stripe_label(h, w, widths)``: vertical stripes; class ``k`` covers ``widths[k]``
  columns, so class ``k`` has exactly ``h * widths[k]`` pixels.

Sizes default to odd, non-square ones (37×53) on purpose.

Example:
  >>> img = coordinate_image(37, 53)
  >>> img.shape, int(img[5, 7, 0]), int(img[5, 7, 1])
  (TensorShape([37, 53, 3]), 5, 7)
  >>> stripe_counts(37, [10, 40, 3])
  [370, 1480, 111]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from fcndata import elements as E

#: Odd, non-square sizes used across the test suite.
ODD_SIZES = ((37, 53), (29, 41), (64, 31), (17, 17))


def coordinate_image(height: int, width: int, channels: int = 3, dtype="uint8") -> tf.Tensor:
    """An image whose pixel values encode their own row and column.

    Args:
      height, width: size in pixels.
      channels: number of channels (1 gives the row only).
      dtype: ``"uint8"``, ``"uint16"`` or ``"float32"``; uint8 wraps above 255.

    Returns:
      A ``[height, width, channels]`` tensor.
    """
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    planes = [rows, cols, rows + cols] + [np.full_like(rows, k) for k in range(3, channels)]
    arr = np.stack(planes[:channels], axis=-1)
    if dtype in ("uint8", tf.uint8):
        arr = arr % 256
    return tf.constant(arr.astype(tf.as_dtype(dtype).as_numpy_dtype))


def equal_widths(width: int, num_classes: int) -> list[int]:
    """Splits ``width`` columns into ``num_classes`` stripes as evenly as possible.

    >>> equal_widths(53, 3)
    [18, 18, 17]
    """
    base, extra = divmod(width, num_classes)
    return [base + (1 if k < extra else 0) for k in range(num_classes)]


def stripe_label(height: int, width: int, widths: Sequence[int] | int = 3, dtype="uint8") -> tf.Tensor:
    """A ``[height, width]`` label of vertical stripes, class k covering ``widths[k]`` columns.

    Args:
      height, width: size in pixels.
      widths: columns per class (must sum to ``width``), or a class count for equal stripes.
      dtype: ``"uint8"`` or ``"int32"``.

    Raises:
      ValueError: the widths do not add up to ``width``.
    """
    if isinstance(widths, int):
        widths = equal_widths(width, widths)
    if sum(widths) != width:
        raise ValueError(f"stripe widths must add up to width={width}. Received: widths={list(widths)}")
    row = np.repeat(np.arange(len(widths)), widths)
    return tf.constant(np.broadcast_to(row, (height, width)).astype(tf.as_dtype(dtype).as_numpy_dtype))


def stripe_counts(height: int, widths: Sequence[int]) -> list[int]:
    """Pixel count per class of ``stripe_label(height, sum(widths), widths)``."""
    return [height * w for w in widths]


def element(
    height: int = 37,
    width: int = 53,
    channels: int = 3,
    num_classes: int = 3,
    source_index: int = 0,
    dtype="uint8",
    widths: Sequence[int] | None = None,
) -> dict[str, tf.Tensor]:
    """One contract element: coordinate image, stripe label, roi of ones.

    >>> e = element(5, 7)
    >>> sorted(e), e["path"].numpy()
    (['image', 'label', 'origin', 'path', 'roi', 'source_index', 'source_shape'], b'testing/5x7#0')
    """
    label = stripe_label(height, width, widths if widths is not None else num_classes)
    return E.make_element(
        coordinate_image(height, width, channels, dtype),
        label,
        source_index=source_index,
        path=f"testing/{height}x{width}#{source_index}",
    )


def dataset(
    sizes: Sequence[tuple[int, int]] = ODD_SIZES,
    channels: int = 3,
    num_classes: int = 3,
    dtype="uint8",
) -> tf.data.Dataset:
    """A dataset of ``element(h, w)`` for each size, with ``source_index`` 0, 1, …

    >>> ds = dataset([(5, 7), (3, 4)])
    >>> [tuple(e["image"].shape) for e in ds]
    [(5, 7, 3), (3, 4, 3)]
    """
    # Concatenated constants rather than a Python generator: graph-only, so it runs
    # with parallel map and serialises like any other source.
    ds = None
    for i, (h, w) in enumerate(sizes):
        one = tf.data.Dataset.from_tensors(element(h, w, channels, num_classes, i, dtype))
        ds = one if ds is None else ds.concatenate(one)
    return ds


def random_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Random uint8 pixels (for benchmarks and codecs), deterministic in ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def slow_down(microseconds: int):
    """A stage that waits ``microseconds`` before each element: a stand-in for slow storage.

    Graph-only (tf.data's own sleep), so it runs on tf.data service workers too; used by
    the scale-out tests and benchmarks to make a pipeline latency-bound rather than CPU-bound.

    >>> import time
    >>> start = time.perf_counter(); _ = list(tf.data.Dataset.range(3).apply(slow_down(20_000)))
    >>> time.perf_counter() - start >= 0.06
    True
    """

    def apply(ds: tf.data.Dataset) -> tf.data.Dataset:
        specs = tf.nest.flatten(ds.element_spec)
        variant = tf.raw_ops.SleepDataset(
            input_dataset=tf.data.experimental.to_variant(ds),
            sleep_microseconds=tf.constant(microseconds, tf.int64),
            output_types=[s.dtype for s in specs],
            output_shapes=[s.shape for s in specs],
        )
        return tf.data.experimental.from_variant(variant, ds.element_spec)

    return apply


def sum_rtol(terms: int, extra_ops: int = 2) -> float:
    """The float32 relative error bound of a weighted mean of ``terms`` products.

    Summing m terms in float32 errs by at most (m - 1) units of rounding u = 2**-24
    relative to the sum of magnitudes (positive terms: relative to the sum); a weighted mean
    has two such sums (values, weights) and ``extra_ops`` roundings more (the division, a
    scaling). Stitching tests compare against it instead of a constant.

    >>> sum_rtol(1) == 2 * 2.0**-24
    True
    """
    u = 2.0**-24
    return (2 * (terms - 1) + extra_ops) * u
