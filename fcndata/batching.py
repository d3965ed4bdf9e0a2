"""Dynamic padding with roi masks, pad-to-stride, size bucketing and Keras inputs.

Whole images of different sizes are batched by padding each batch at the bottom and
right to its largest height and width, rounded up to ``pad_to_multiple`` (the network's
output stride, 32 for FCN-8s/16s/32s)::

    batch of a 3x5 and a 2x2 element, pad_to_multiple=4      roi of the batch
    +-----+--+                +--+------+                   1 1 1 1 1 0 0 0
    | 3x5 |  |                |2x2      |                   1 1 1 1 1 0 0 0
    |     |  |  -> [2, 4, 8]  +--+      |                   1 1 1 1 1 0 0 0
    +-----+  |                |         |                   0 0 0 0 0 0 0 0
    +--------+                +---------+

Padding is written so that it can never become a class: image 0, label
``ignore_label``, roi 0 and weight 0. ``origin``, ``source_shape``, ``source_index``,
``path`` (and ``epoch``) pass through, so a prediction can be cropped back to the real
pixels: the element's own extent is its top-left corner ``[:h, :w]``.

:class:`BucketBySize` groups elements of similar size before padding, so less compute
goes to padding and the number of distinct batch shapes (retracing, XLA compiles) stays
small. :func:`padded_fraction` measures what is left. :func:`to_keras` ends a pipeline
with Keras ``(inputs, label, sample_weight)`` triplets.

Which Keras reduction makes padding harmless: ``to_keras`` puts ``roi × weight`` into
``sample_weight``, and Keras multiplies it into the per-pixel loss, so padding and
ignored pixels add exactly 0 to the sum. The divisor depends on the loss'
``reduction`` (Keras 3.15, ``keras.src.losses.loss.reduce_values``):

* ``"mean_with_sample_weight"``: sum / sum(sample_weight). Padding changes neither, so
  the loss of an image is the same alone or padded inside any batch. Use this one.
* ``"sum"``: padding-invariant too, but grows with the batch size and image size.
* ``"sum_over_batch_size"`` (the Keras default) and ``"mean"``: sum / (B·H·W), which
  counts padding pixels in the divisor — a padded batch's loss (and gradient) shrinks
  with the amount of padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.common import PIXEL_MAX, positive_int
from fcndata.config import BatchingConfig, DataConfig

#: Keys that carry pixels, with the rank of their unbatched tensor.
_SPATIAL = {E.IMAGE: 3, E.LABEL: 2, E.ROI: 2, E.WEIGHT: 2}
_BUCKET_BY = ("area", "aspect", "shape")

# ---------------------------------------------------------------------------- element functions


def padding_values(spec: Mapping[str, tf.TensorSpec], ignore_label: int = E.IGNORE_LABEL) -> dict:
    """Per-key padding values: image 0, label ``ignore_label``, roi 0, weight 0, others 0/"".

    Example:
      >>> import fcndata.testing as t
      >>> values = padding_values(t.dataset([(3, 4)]).element_spec)
      >>> int(values["label"]), int(values["roi"]), int(values["image"])
      (255, 0, 0)
    """
    values = {}
    for key, value in spec.items():
        if key == E.LABEL:
            values[key] = tf.constant(ignore_label, value.dtype)
        elif value.dtype == tf.string:
            values[key] = tf.constant("", tf.string)
        else:
            values[key] = tf.zeros([], value.dtype)
    return values


def _round_up(size, multiple: int):
    if isinstance(size, int):
        return -(-size // multiple) * multiple
    return (size + multiple - 1) // multiple * multiple


def pad_to_multiple(
    element: Mapping[str, tf.Tensor], multiple: int, ignore_label: int = E.IGNORE_LABEL
) -> dict[str, tf.Tensor]:
    """Pads the pixel keys at the bottom and right so height and width are multiples of ``multiple``.

    Works on an element or a batch (a leading batch axis is kept). Static sizes stay
    static, so patch pipelines keep fully defined shapes. Pure and graph-safe.

    Args:
      element: a contract element or batch.
      multiple: the network's output stride.
      ignore_label: label value written into the padding.

    Returns:
      A new dict; non-pixel keys are passed through unchanged.

    Example:
      >>> import fcndata.testing as t
      >>> out = pad_to_multiple(t.element(5, 7), 4)
      >>> out["image"].shape.as_list(), int(out["label"][7, 7]), int(out["roi"][4, 6])
      ([8, 8, 3], 255, 1)
    """
    out = dict(element)
    rank = element[E.LABEL].shape.rank
    batched = rank == 3
    shape = tf.shape(element[E.LABEL])
    sizes = []
    for axis in (-2, -1):
        static = element[E.LABEL].shape[axis]
        size = static if static is not None else shape[axis]
        sizes.append(_round_up(size, multiple) - size)
    values = padding_values({k: tf.TensorSpec(None, v.dtype) for k, v in element.items()}, ignore_label)
    for key, base_rank in _SPATIAL.items():
        if key not in element:
            continue
        paddings = [[0, 0]] * (1 if batched else 0) + [[0, sizes[0]], [0, sizes[1]]]
        paddings += [[0, 0]] * (base_rank - 2)
        padded = tf.pad(element[key], paddings, constant_values=values[key])
        # tf.pad forgets every static dim when some paddings are dynamic; keep the batch
        # and channel dims (and static spatial sizes) so element_spec stays informative.
        static = element[key].shape.as_list()
        spatial = [s if isinstance(s, int) and isinstance(p, int) else None
                   for s, p in zip(static[-base_rank:][:2], sizes)]
        static[len(static) - base_rank:len(static) - base_rank + 2] = [
            None if s is None else s + p for s, p in zip(spatial, sizes)
        ]
        padded.set_shape(static)
        out[key] = padded
    return out


def size_key(element: Mapping[str, tf.Tensor], by: str = "area", multiple: int = 32) -> tf.Tensor:
    """The float32 scalar an element is bucketed on.

    ``area`` = H·W, ``aspect`` = W / H, ``shape`` = the padded shape as one number,
    ``ceil(H / multiple) * 4096 + ceil(W / multiple)`` (equal iff the padded shapes are).

    Example:
      >>> import fcndata.testing as t
      >>> float(size_key(t.element(5, 8), "area")), float(size_key(t.element(5, 8), "aspect"))
      (40.0, 1.6)
    """
    hw = tf.cast(tf.shape(element[E.LABEL])[-2:], tf.float32)
    if by == "area":
        return hw[0] * hw[1]
    if by == "aspect":
        return hw[1] / tf.maximum(hw[0], 1.0)
    cells = tf.math.ceil(hw / float(multiple))
    return cells[0] * 4096.0 + cells[1]


def bucket_index(key: tf.Tensor, boundaries) -> tf.Tensor:
    """Bucket of ``key``: the number of boundaries ``<= key`` (int64, 0..len(boundaries)).

    >>> int(bucket_index(tf.constant(5.0), (2.0, 5.0, 9.0)))
    2
    """
    if not boundaries:
        return tf.constant(0, tf.int64)
    return tf.reduce_sum(tf.cast(key >= tf.constant(boundaries, tf.float32), tf.int64))


def scale_image(image: tf.Tensor) -> tf.Tensor:
    """The float32 model input of an image: uint8 / 255, uint16 / 65535, float32 as is.

    The one scaling rule of training (:func:`keras_inputs`) and prediction
    (``python -m fcndata.predict``), so both feed the model the same numbers.

    Example:
      >>> scale_image(tf.constant([[[255]]], tf.uint8)).numpy().tolist()
      [[[1.0]]]
    """
    image = tf.convert_to_tensor(image)
    top = PIXEL_MAX[image.dtype.name]
    image = tf.cast(image, tf.float32)
    # a true division, as prediction's (fcndata.infer.to_model_input): the same float32 numbers
    return image if top == 1.0 else image / top


def keras_inputs(
    batch: Mapping[str, tf.Tensor], masked_input: bool = False, ignore_label: int = E.IGNORE_LABEL
):
    """Turns a batched element into Keras ``(inputs, label, sample_weight)``.

    * inputs: image as float32 in [0, 1] (uint8 / 255, uint16 / 65535, float32 as is);
      with ``masked_input`` a dict ``{"image": ..., "roi": float32 [B, H, W, 1]}``.
    * label: int32 [B, H, W]; pixels that are ignored or outside the roi become 0
      (a valid class id, so sparse Keras losses accept them) — their weight is 0.
    * sample_weight: float32 [B, H, W] = roi × weight (weight 1 if absent), and 0
      wherever the label is ``ignore_label``.

    Example:
      >>> import fcndata.testing as t
      >>> batch = pad_to_multiple(t.element(5, 7), 4)
      >>> x, y, w = keras_inputs({k: v[None] for k, v in batch.items()})
      >>> x.dtype.name, int(y[0, 7, 7]), float(w[0, 7, 7]), float(w[0, 4, 6])
      ('float32', 0, 0.0, 1.0)
    """
    image = scale_image(batch[E.IMAGE])
    label = tf.cast(batch[E.LABEL], tf.int32)
    keep = tf.logical_and(batch[E.ROI] > 0, tf.not_equal(label, ignore_label))
    sample_weight = tf.cast(keep, tf.float32)
    if E.WEIGHT in batch:
        sample_weight = sample_weight * batch[E.WEIGHT]
    label = tf.where(keep, label, tf.zeros_like(label))
    if masked_input:
        inputs = {E.IMAGE: image, E.ROI: tf.cast(batch[E.ROI], tf.float32)[..., None]}
    else:
        inputs = image
    return inputs, label, sample_weight


def _element_extent(batch: Mapping[str, tf.Tensor], ignore_label: int) -> tf.Tensor:
    """[B, 2] int32: rows and columns up to the last pixel that does not look like padding."""
    real = tf.logical_or(batch[E.ROI] > 0, tf.not_equal(tf.cast(batch[E.LABEL], tf.int32), ignore_label))
    real = tf.logical_or(real, tf.reduce_any(tf.not_equal(batch[E.IMAGE], tf.zeros([], batch[E.IMAGE].dtype)), axis=-1))
    if E.WEIGHT in batch:
        real = tf.logical_or(real, tf.not_equal(batch[E.WEIGHT], 0.0))

    def last(any_along):  # [B, N] bool -> index of the last True + 1, 0 if none
        n = tf.shape(any_along)[1]
        idx = tf.range(1, n + 1)[None, :] * tf.cast(any_along, tf.int32)
        return tf.reduce_max(idx, axis=1)

    return tf.stack([last(tf.reduce_any(real, axis=2)), last(tf.reduce_any(real, axis=1))], axis=1)


# ---------------------------------------------------------------------------- stages


def _check_ignore_label(spec, ignore_label: int, where: str) -> None:
    dtype = spec[E.LABEL].dtype
    if not dtype.min <= ignore_label <= dtype.max:
        raise ValueError(
            f"{where}: ignore_label={ignore_label} does not fit the label dtype {dtype.name}, so padding "
            f"could not be marked as ignored. Use an ignore_label in [{dtype.min}, {dtype.max}] or cast "
            f"labels to int32. Received: ignore_label={ignore_label}, label.dtype={dtype.name}"
        )


_check_positive_int = positive_int


def _round_batches_up(ds: tf.data.Dataset, multiple: int, ignore_label: int) -> tf.data.Dataset:
    """Pads every batch of ``ds`` up to a multiple of ``multiple`` (one pad per batch)."""
    if multiple <= 1:
        return ds
    return ds.map(E.no_autograph(lambda b: pad_to_multiple(b, multiple, ignore_label)), num_parallel_calls=tf.data.AUTOTUNE)


@dataclass(frozen=True)
class PadAndBatch:
    """Batches elements of different sizes, padding to the batch max rounded up to ``pad_to_multiple``.

    Padding goes to the bottom and right: image 0, label ``ignore_label``, roi 0,
    weight 0; the real pixels of element ``i`` are ``[i, :h, :w]``.

    Args:
      batch_size: elements per batch.
      pad_to_multiple: batch height and width are rounded up to a multiple of this
        (the network's output stride); 1 pads to the batch max only.
      drop_remainder: drop a last, smaller batch (gives a static batch dimension).
      ignore_label: label value of padding pixels; must fit the label dtype.

    Input element:
      the contract element (see :mod:`fcndata.elements`), any H, W.
    Output element:
      the same keys with a leading batch axis: image [B, H', W', C], label [B, H', W'],
      roi [B, H', W'], weight [B, H', W'] (if present), origin [B, 2], source_shape
      [B, 2], source_index [B], path [B] (epoch [B]); H', W' multiples of
      ``pad_to_multiple``.

    Example:
      >>> import fcndata.testing as t
      >>> ds = t.dataset([(37, 53), (29, 41)]).apply(PadAndBatch(2))
      >>> batch = next(iter(ds))
      >>> batch["image"].shape.as_list(), int(tf.reduce_sum(tf.cast(batch["roi"], tf.int32)))
      ([2, 64, 64, 3], 3150)
    """

    batch_size: int
    pad_to_multiple: int = 32
    drop_remainder: bool = False
    ignore_label: int = E.IGNORE_LABEL

    def __post_init__(self):
        _check_positive_int(self.batch_size, "batch_size", "PadAndBatch")
        _check_positive_int(self.pad_to_multiple, "pad_to_multiple", "PadAndBatch")

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(ds, where="PadAndBatch")
        _check_ignore_label(ds.element_spec, self.ignore_label, "PadAndBatch")
        # padded_batch pads to the batch max; rounding that max up afterwards is one pad
        # per batch instead of one per element, with the same padding values.
        ds = ds.padded_batch(
            self.batch_size,
            padding_values=padding_values(ds.element_spec, self.ignore_label),
            drop_remainder=self.drop_remainder,
        )
        return _round_batches_up(ds, self.pad_to_multiple, self.ignore_label)


def derive_boundaries(
    dataset: tf.data.Dataset, by: str = "area", num_buckets: int = 4, max_elements: int | None = None, multiple: int = 32
) -> tuple[float, ...]:
    """Bucket boundaries from one pass over (the first ``max_elements`` of) a dataset.

    ``by="area"`` or ``"aspect"``: the ``k / num_buckets`` quantiles (k = 1 …
    num_buckets − 1) of the element areas or aspect ratios, without duplicates and
    without values at or below the minimum (which would only make empty buckets).
    ``by="shape"``: one boundary per distinct padded shape (``num_buckets`` is ignored).

    Raises:
      ValueError: ``by`` is unknown, or the dataset is infinite and ``max_elements`` is None.

    Example:
      >>> import fcndata.testing as t
      >>> derive_boundaries(t.dataset([(10, 10), (10, 20), (20, 20), (20, 40)]), "area", 2)
      (400.0,)
    """
    if by not in _BUCKET_BY:
        raise ValueError(f"derive_boundaries: by must be one of {list(_BUCKET_BY)}. Received: by={by!r}")
    if max_elements is not None:
        dataset = dataset.take(max_elements)
    elif dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "derive_boundaries: the dataset is infinite, so its sizes cannot all be read. Pass "
            "max_elements (e.g. 1024) or give the boundaries explicitly. Received: max_elements=None"
        )
    keys_ds = dataset.map(lambda e: size_key(e, by, multiple), num_parallel_calls=tf.data.AUTOTUNE)
    keys = np.concatenate([np.atleast_1d(k) for k in keys_ds.batch(1024).as_numpy_iterator()] or [np.zeros([0])])
    if keys.size == 0:
        return ()
    if by == "shape":
        return tuple(float(k) for k in np.unique(keys)[1:])
    quantiles = np.quantile(keys, [k / num_buckets for k in range(1, num_buckets)], method="higher")
    return tuple(float(q) for q in np.unique(quantiles) if q > keys.min())


@dataclass(frozen=True)
class BucketBySize:
    """Groups elements of similar size, then pads and batches each group (:class:`PadAndBatch`).

    Uses ``tf.data.Dataset.group_by_window`` on the bucket of :func:`size_key`: a batch
    is emitted as soon as one bucket holds ``batch_size`` elements, so at most
    ``(len(boundaries) + 1) × batch_size`` elements wait in memory, and the output
    order is deterministic. Buckets are not mixed, so batch shapes stay few.

    Args:
      batch_size: elements per batch.
      by: ``"area"`` (H·W), ``"aspect"`` (W / H) or ``"shape"`` (the padded shape
        itself: only elements with identical padded shapes share a batch — no padding
        beyond ``pad_to_multiple``, one bucket per distinct padded shape).
      boundaries: sorted bucket boundaries on that key; None derives them with
        :func:`derive_boundaries` from the first ``sample_size`` elements when the stage
        is applied (which reads those elements once).
      num_buckets: number of quantile buckets when deriving boundaries.
      pad_to_multiple, ignore_label, drop_remainder: as in :class:`PadAndBatch`.
      sample_size: elements read to derive boundaries.

    Input element:
      the contract element, any H, W.
    Output element:
      as :class:`PadAndBatch`.

    Example:
      >>> import fcndata.testing as t
      >>> sizes = [(30, 30), (90, 90), (31, 29), (95, 93)]
      >>> ds = t.dataset(sizes).apply(BucketBySize(2, "area", boundaries=(2000.0,)))
      >>> [b["image"].shape.as_list()[1:3] for b in ds]
      [[32, 32], [96, 96]]
    """

    batch_size: int
    by: str = "area"
    boundaries: tuple[float, ...] | None = None
    num_buckets: int = 4
    pad_to_multiple: int = 32
    ignore_label: int = E.IGNORE_LABEL
    drop_remainder: bool = False
    sample_size: int = 256

    def __post_init__(self):
        _check_positive_int(self.batch_size, "batch_size", "BucketBySize")
        _check_positive_int(self.pad_to_multiple, "pad_to_multiple", "BucketBySize")
        _check_positive_int(self.num_buckets, "num_buckets", "BucketBySize")
        _check_positive_int(self.sample_size, "sample_size", "BucketBySize")
        if self.by not in _BUCKET_BY:
            raise ValueError(
                f"BucketBySize: by must be one of {list(_BUCKET_BY)} (batching.bucket_by). Received: by={self.by!r}"
            )
        if self.boundaries is not None:
            bounds = tuple(float(b) for b in self.boundaries)
            if list(bounds) != sorted(set(bounds)):
                raise ValueError(
                    "BucketBySize: boundaries must be strictly increasing (batching.bucket_boundaries). "
                    f"Sort them and remove duplicates. Received: boundaries={list(self.boundaries)}"
                )
            object.__setattr__(self, "boundaries", bounds)

    def derive(self, dataset: tf.data.Dataset) -> BucketBySize:
        """A copy whose boundaries are derived from ``dataset`` now (eagerly).

        Use it when the stage is applied inside a tf.data function (e.g. per epoch in a
        ``flat_map``), where the data cannot be read: derive from the finite source once.
        """
        if self.boundaries is not None:
            return self
        bounds = derive_boundaries(dataset, self.by, self.num_buckets, self.sample_size, self.pad_to_multiple)
        return dataclasses.replace(self, boundaries=bounds)

    def batcher(self) -> PadAndBatch:
        """The :class:`PadAndBatch` applied to each bucket's window."""
        return PadAndBatch(self.batch_size, self.pad_to_multiple, self.drop_remainder, self.ignore_label)

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(ds, where="BucketBySize")
        boundaries = self.boundaries
        if boundaries is None:
            if not tf.executing_eagerly():
                raise ValueError(
                    "BucketBySize: boundaries=None must be derived from the data, which cannot be read "
                    "while a tf.data function (flat_map, interleave, ...) is being traced. Derive them "
                    "beforehand with stage.derive(finite_dataset), pass dataset= to batching_from_config, "
                    "or set batching.bucket_boundaries. Received: boundaries=None"
                )
            boundaries = derive_boundaries(ds, self.by, self.num_buckets, self.sample_size, self.pad_to_multiple)
        if not boundaries:
            return ds.apply(self.batcher())
        _check_ignore_label(ds.element_spec, self.ignore_label, "BucketBySize")
        values = padding_values(ds.element_spec, self.ignore_label)
        # reduce_func builds a dataset per window, so keep it to padded_batch alone and
        # round up to the multiple once, in one parallel map over the whole stream.
        ds = ds.group_by_window(
            key_func=E.no_autograph(lambda e: bucket_index(size_key(e, self.by, self.pad_to_multiple), boundaries)),
            reduce_func=E.no_autograph(lambda _, window: window.padded_batch(
                self.batch_size, padding_values=values, drop_remainder=self.drop_remainder
            )),
            window_size=self.batch_size,
        )
        return _round_batches_up(ds, self.pad_to_multiple, self.ignore_label)


@dataclass(frozen=True)
class Shuffle:
    """``Dataset.shuffle`` with a fixed seed (same seed, same order), as a stage."""

    buffer_size: int
    seed: int = 0

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.shuffle(self.buffer_size, seed=self.seed)


@dataclass(frozen=True)
class ToKeras:
    """Ends a pipeline: batched element dicts -> Keras ``(inputs, label, sample_weight)``.

    See :func:`keras_inputs` for the exact tensors, and the module docstring for the
    reduction (``"mean_with_sample_weight"``) under which padding changes nothing.

    Input element:
      a batched contract element (after :class:`PadAndBatch` or :class:`BucketBySize`).
    Output element:
      ``(inputs, label, sample_weight)``: inputs float32 [B, H, W, C] (or with
      ``masked_input`` ``{"image": float32 [B, H, W, C], "roi": float32 [B, H, W, 1]}``),
      label int32 [B, H, W], sample_weight float32 [B, H, W].

    Example:
      >>> import fcndata.testing as t
      >>> ds = t.dataset([(37, 53), (29, 41)]).apply(PadAndBatch(2)).apply(to_keras())
      >>> x, y, w = next(iter(ds))
      >>> x.shape.as_list(), y.dtype.name, float(tf.reduce_sum(w))
      ([2, 64, 64, 3], 'int32', 3150.0)
    """

    masked_input: bool = False
    ignore_label: int = E.IGNORE_LABEL

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(ds, batched=True, where="to_keras")
        return ds.map(
            E.no_autograph(lambda b: keras_inputs(b, self.masked_input, self.ignore_label)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )


def to_keras(masked_input: bool = False, ignore_label: int = E.IGNORE_LABEL) -> ToKeras:
    """The :class:`ToKeras` stage (``masked_input``: the model also takes the roi)."""
    return ToKeras(masked_input, ignore_label)


# ---------------------------------------------------------------------------- measuring


def padded_fraction(
    dataset: tf.data.Dataset,
    num_batches: int | None = None,
    *,
    stage=None,
    ignore_label: int = E.IGNORE_LABEL,
) -> float:
    """Fraction of batch pixels that are padding ("x % of the pixels in your batches are padding").

    Padding is every pixel outside its element's own extent ``[:h, :w]``. Two ways:

    * ``stage`` given (exact): ``dataset`` holds unbatched elements; their roi is set to
      1 everywhere, ``stage`` (e.g. a :class:`BucketBySize`) batches them, and padding
      is exactly ``roi == 0``. Use this to compare batching strategies.
    * ``stage`` None: ``dataset`` holds batches (dicts, as built). ``roi == 0`` alone
      would also count ignored real pixels, so the extent of each element is recovered
      as the rows and columns up to its last pixel that does not look like padding
      (roi 1, label not ignore, image not 0 or weight not 0). This is exact unless an
      element's bottom rows or right columns are black, unlabeled and outside the roi —
      those count as padding (they carry no loss either).

    Args:
      dataset: batches, or elements when ``stage`` is given.
      num_batches: read only this many batches (needed for an infinite dataset).
      stage: the batching stage to measure, or None.
      ignore_label: the label value of padding.

    Returns:
      Padding pixels / all pixels of the batches read, in [0, 1].

    Raises:
      ValueError: the dataset is infinite and ``num_batches`` is None.

    Example:
      >>> import fcndata.testing as t
      >>> elements = t.dataset([(32, 32), (16, 32)])
      >>> padded_fraction(elements.apply(PadAndBatch(2)))
      0.25
      >>> padded_fraction(elements, stage=PadAndBatch(2))
      0.25
    """
    if stage is not None:
        dataset = dataset.map(lambda e: {**e, E.ROI: tf.ones_like(e[E.ROI])}).apply(stage)
    if num_batches is not None:
        dataset = dataset.take(num_batches)
    elif dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "padded_fraction: the dataset is infinite. Pass num_batches (e.g. 100). Received: num_batches=None"
        )
    E.check_spec(dataset, batched=True, where="padded_fraction")

    def count(batch):
        shape = tf.shape(batch[E.ROI], out_type=tf.int64)
        total = shape[0] * shape[1] * shape[2]
        if stage is not None:
            real = tf.reduce_sum(tf.cast(batch[E.ROI] > 0, tf.int64))
        else:
            extent = tf.cast(_element_extent(batch, ignore_label), tf.int64)
            real = tf.reduce_sum(extent[:, 0] * extent[:, 1])
        return tf.stack([total - real, total])

    pad, total = dataset.map(count, num_parallel_calls=tf.data.AUTOTUNE).reduce(
        tf.zeros([2], tf.int64), lambda acc, x: acc + x
    ).numpy()
    return float(pad / total) if total else 0.0


# ---------------------------------------------------------------------------- config


_MODES = ("train", "eval", "predict")


def batching_from_config(
    cfg: BatchingConfig,
    data: DataConfig,
    mode: str,
    *,
    shuffle: bool = True,
    dataset: tf.data.Dataset | None = None,
):
    """The batching stage of a recipe's ``batching:`` section.

    * train: shuffle ``cfg.shuffle_buffer`` elements (seeded with ``data.seed``; skipped
      when ``shuffle`` is False — e.g. when the caller already shuffles per epoch — or
      the buffer is < 2), then bucket (``cfg.bucket_by``) or plain :class:`PadAndBatch`;
      ``drop_remainder`` as configured.
    * eval: bucketing as configured, never shuffled, never drops the last batch (every
      image must be scored).
    * predict: plain :class:`PadAndBatch` in source order, last batch kept.

    Bucketing without ``cfg.bucket_boundaries`` derives them from ``dataset`` (e.g. the
    finite, cached source) right here when given, else from the first elements the
    stage sees when it is applied — which must then happen eagerly, not inside a
    ``flat_map`` function.

    Patchwise pipelines feed same-sized patches: :class:`PadAndBatch` then only rounds
    up to ``pad_to_multiple`` (nothing when the patch size is already a multiple).

    Raises:
      ValueError: ``mode`` is not train, eval or predict.

    Example:
      >>> stage = batching_from_config(BatchingConfig(batch_size=2, shuffle_buffer=0), DataConfig(), "train")
      >>> stage
      PadAndBatch(batch_size=2, pad_to_multiple=32, drop_remainder=False, ignore_label=255)
    """
    if mode not in _MODES:
        raise ValueError(f"batching_from_config: mode must be one of {list(_MODES)}. Received: mode={mode!r}")
    training = mode == "train"
    drop = cfg.drop_remainder and training
    if cfg.bucket_by != "none" and mode != "predict":
        batcher = BucketBySize(
            cfg.batch_size,
            cfg.bucket_by,
            cfg.bucket_boundaries,
            cfg.num_buckets,
            cfg.pad_to_multiple,
            data.ignore_label,
            drop,
        )
        if dataset is not None:
            batcher = batcher.derive(dataset)
    else:
        batcher = PadAndBatch(cfg.batch_size, cfg.pad_to_multiple, drop, data.ignore_label)
    if training and shuffle and cfg.shuffle_buffer > 1:
        return E.Chain((Shuffle(cfg.shuffle_buffer, data.seed), batcher))
    return batcher
