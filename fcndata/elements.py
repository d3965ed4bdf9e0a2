"""The element contract: key names, dtypes and spec checks shared by every stage.

Every stage maps a ``tf.data.Dataset`` of dicts to another one. Until batching an
element is::

    image         [H, W, C]  uint8 / uint16 / float32  pixels, as decoded
    label         [H, W]     uint8 or int32             class ids; ignore_label = unlabeled
    roi           [H, W]     uint8                      1 = real, labeled pixel; 0 = padding/ignored
    origin        [2]        int32                      (y, x) of the top-left corner in the source image
    source_shape  [2]        int32                      (H, W) of the source image
    source_index  []         int64                      position of the source image in the source order
    path          []         string                     source file or synthetic name
    weight        [H, W]     float32 (optional)         per-pixel loss weight
    epoch         []         int64   (optional)         training epoch (build_pipeline, Epochs), or a
                                                        per-iteration random key (with_epoch); random
                                                        stages key on it

Batched elements add a leading batch axis. Sizes are always (height, width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import tensorflow as tf

from fcndata.common import IGNORE_LABEL  # one copy, re-exported here

#: Every stage function is plain TF ops (gathers, where, cond; no Python branching on
#: tensors), so AutoGraph's source conversion is skipped: it took ~1.5 s of the ~1.8 s
#: spent building ``ExtractPatches`` on a 2-core machine.
no_autograph = tf.autograph.experimental.do_not_convert

IMAGE = "image"
LABEL = "label"
ROI = "roi"
ORIGIN = "origin"
SOURCE_SHAPE = "source_shape"
SOURCE_INDEX = "source_index"
PATH = "path"
WEIGHT = "weight"
EPOCH = "epoch"

#: Keys every element carries, in order.
REQUIRED_KEYS = (IMAGE, LABEL, ROI, ORIGIN, SOURCE_SHAPE, SOURCE_INDEX, PATH)
#: Keys an element may carry in addition.
OPTIONAL_KEYS = (WEIGHT, EPOCH)

IMAGE_DTYPES = (tf.uint8, tf.uint16, tf.float32)
LABEL_DTYPES = (tf.uint8, tf.int32)

_FIXED = {
    ROI: (tf.uint8, 2),
    ORIGIN: (tf.int32, 1),
    SOURCE_SHAPE: (tf.int32, 1),
    SOURCE_INDEX: (tf.int64, 0),
    PATH: (tf.string, 0),
    WEIGHT: (tf.float32, 2),
    EPOCH: (tf.int64, 0),
}


def element_spec(
    channels: int | None = None,
    image_dtype: tf.DType = tf.uint8,
    label_dtype: tf.DType = tf.uint8,
    with_weight: bool = False,
) -> dict[str, tf.TensorSpec]:
    """Returns the unbatched ``element_spec`` of the contract.

    Args:
      channels: static channel count, or None if unknown.
      image_dtype: one of uint8, uint16, float32.
      label_dtype: uint8 or int32.
      with_weight: include the optional ``weight`` key.

    Example:
      >>> spec = element_spec(channels=3)
      >>> spec["image"]
      TensorSpec(shape=(None, None, 3), dtype=tf.uint8, name=None)
    """
    spec = {
        IMAGE: tf.TensorSpec([None, None, channels], image_dtype),
        LABEL: tf.TensorSpec([None, None], label_dtype),
        ROI: tf.TensorSpec([None, None], tf.uint8),
        ORIGIN: tf.TensorSpec([2], tf.int32),
        SOURCE_SHAPE: tf.TensorSpec([2], tf.int32),
        SOURCE_INDEX: tf.TensorSpec([], tf.int64),
        PATH: tf.TensorSpec([], tf.string),
    }
    if with_weight:
        spec[WEIGHT] = tf.TensorSpec([None, None], tf.float32)
    return spec


def check_spec(spec_or_dataset, *, batched: bool = False, where: str = "dataset") -> None:
    """Checks that a dataset (or its ``element_spec``) follows the element contract.

    Args:
      spec_or_dataset: a ``tf.data.Dataset`` or its ``element_spec`` dict.
      batched: expect a leading batch axis on every key.
      where: name used in error messages (a stage or source name).

    Raises:
      TypeError: the element is not a dict, or a key has the wrong dtype.
      ValueError: a required key is missing, a key is unknown, or a rank is wrong.

    Example:
      >>> import fcndata.testing as t
      >>> check_spec(t.dataset([(5, 7)]))
      >>> check_spec({"image": tf.TensorSpec([None, None, 3], tf.uint8)}, where="my_stage")
      Traceback (most recent call last):
      ...
      ValueError: my_stage: element is missing required keys ['label', 'roi', ...
    """
    spec = spec_or_dataset.element_spec if isinstance(spec_or_dataset, tf.data.Dataset) else spec_or_dataset
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"{where}: elements must be dicts with keys {list(REQUIRED_KEYS)}. "
            f"Received: element_spec={spec!r}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(
            f"{where}: element is missing required keys {missing}; every stage needs "
            f"{list(REQUIRED_KEYS)}. Received: keys={sorted(spec)}"
        )
    unknown = [k for k in spec if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:
        raise ValueError(
            f"{where}: element has unknown keys {unknown}; allowed keys are "
            f"{list(REQUIRED_KEYS + OPTIONAL_KEYS)}. Received: keys={sorted(spec)}"
        )
    extra = 1 if batched else 0
    for key, value in spec.items():
        if not isinstance(value, tf.TensorSpec):
            raise TypeError(f"{where}: element key '{key}' should be a tf.TensorSpec. Received: {key}={value!r}")
        if key == IMAGE:
            dtypes, rank = IMAGE_DTYPES, 3
        elif key == LABEL:
            dtypes, rank = LABEL_DTYPES, 2
        else:
            dtype, rank = _FIXED[key]
            dtypes = (dtype,)
        if value.dtype not in dtypes:
            raise TypeError(
                f"{where}: element key '{key}' must have dtype "
                f"{' or '.join(d.name for d in dtypes)}. Received: {key}.dtype={value.dtype.name}"
            )
        if value.shape.rank is not None and value.shape.rank != rank + extra:
            raise ValueError(
                f"{where}: element key '{key}' must have rank {rank + extra}"
                f"{' (batched)' if batched else ''}. Received: {key}.shape={value.shape}"
            )


def make_element(
    image: tf.Tensor,
    label: tf.Tensor,
    roi: tf.Tensor | None = None,
    source_index=0,
    path="",
    origin=(0, 0),
    source_shape=None,
    ignore_label: int = IGNORE_LABEL,
) -> dict[str, tf.Tensor]:
    """Builds a contract element from an image and a label (pure, graph-safe).

    ``roi`` defaults to 1 where the label is not ``ignore_label`` (so ignored pixels
    never count); ``source_shape`` defaults to the image's size.

    Example:
      >>> e = make_element(tf.zeros([4, 6, 1], tf.uint8), tf.zeros([4, 6], tf.uint8), path="a.png")
      >>> e["source_shape"].numpy().tolist(), int(tf.reduce_sum(tf.cast(e["roi"], tf.int32)))
      ([4, 6], 24)
    """
    image = tf.convert_to_tensor(image)
    label = tf.convert_to_tensor(label)
    if roi is None:
        roi = tf.cast(tf.not_equal(label, tf.cast(ignore_label, label.dtype)), tf.uint8)
    if source_shape is None:
        source_shape = tf.shape(image, out_type=tf.int32)[:2]
    return {
        IMAGE: image,
        LABEL: label,
        ROI: tf.cast(roi, tf.uint8),
        ORIGIN: tf.cast(tf.convert_to_tensor(origin), tf.int32),
        SOURCE_SHAPE: tf.cast(tf.convert_to_tensor(source_shape), tf.int32),
        SOURCE_INDEX: tf.cast(tf.convert_to_tensor(source_index), tf.int64),
        PATH: tf.convert_to_tensor(path, tf.string),
    }


def element_seed(seed: int, element: Mapping[str, tf.Tensor], *salt) -> tf.Tensor:
    """A stateless random key for one element: a function of (seed, epoch, source_index, *salt).

    Every random stage draws with ``tf.random.stateless_*`` from this key, so results do
    not depend on which parallel worker handles which element, nor on autotune. ``salt``
    separates draws inside one element (patch index, a stage's own name, ...).

    Args:
      seed: the stage's integer seed.
      element: an unbatched element (uses ``epoch`` if present, else 0, and ``source_index``).
      *salt: further ints or int tensors folded into the key.

    Returns:
      An int64 tensor of shape [2], usable as ``seed=`` of any ``tf.random.stateless_*`` op.

    Example:
      >>> import fcndata.testing as t
      >>> e = t.element(5, 7)
      >>> bool(tf.reduce_all(element_seed(1, e, 3) == element_seed(1, e, 3)))
      True
      >>> bool(tf.reduce_all(element_seed(1, e, 3) == element_seed(1, e, 4)))
      False
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.constant(0x5EED, tf.int64)])
    epoch = element.get(EPOCH, tf.constant(0, tf.int64))
    for value in (epoch, element[SOURCE_INDEX], *salt):
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


def with_epoch(dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Makes every iteration of ``dataset`` draw fresh randomness: the one line a random stage starts with.

    Random stages key their draws on ``(seed, epoch, source_index, ...)`` (see
    :func:`element_seed`). :func:`fcndata.pipeline.build_pipeline` and :class:`Epochs` number
    the epochs, so a run is reproducible and resumable epoch by epoch. A pipeline composed by
    hand has no ``epoch`` key; without one, ``.repeat()`` or a second Keras epoch would replay
    identical augmentations, patches and loss masks. So when the key is missing this zips in
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` as the ``epoch`` key:
    a fresh key per element and per iteration (each ``iter()``, each ``repeat()`` pass),
    and the same sequence again from a freshly built pipeline with the same seed. When the
    key is present the dataset is returned unchanged, so stages later in the pipeline share
    the first stage's keys.

    Args:
      dataset: a dataset of contract elements.
      seed: the calling stage's seed.

    Returns:
      ``dataset``, with an ``epoch`` key added if it had none.

    Example:
      >>> import fcndata.testing as t
      >>> ds = with_epoch(t.dataset([(5, 7)]), seed=1)
      >>> first, second = [int(e["epoch"]) for e in ds], [int(e["epoch"]) for e in ds]
      >>> first != second, first == [int(e["epoch"]) for e in with_epoch(t.dataset([(5, 7)]), seed=1)]
      (True, True)
    """
    if EPOCH in dataset.element_spec:
        return dataset
    keys = tf.data.Dataset.random(seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(dataset, keys).map(
        no_autograph(lambda element, key: {**element, EPOCH: key}), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def stateless_block_shuffle(dataset: tf.data.Dataset, buffer_size: int, seed: int, epoch) -> tf.data.Dataset:
    """Shuffles ``buffer_size`` consecutive elements at a time, by a permutation keyed by ``(seed, epoch)``.

    ``Dataset.shuffle`` refuses a tensor seed once a global seed is set
    (``keras.utils.set_random_seed`` sets one), so an epoch number that is a tensor cannot
    seed it. This groups the stream into blocks (``ragged_batch``: images of any size),
    permutes each block with ``tf.random.experimental.stateless_shuffle`` keyed by
    ``(seed, epoch, block)``, and ungroups it: a pure function of its arguments.

    Args:
      dataset: a finite dataset of contract elements.
      buffer_size: elements per block (1 or less: no shuffle).
      seed: an int.
      epoch: an int or a scalar int tensor.

    Example:
      >>> import fcndata.testing as t
      >>> ds = t.dataset([(3, 4)] * 6)
      >>> order = lambda epoch: [int(e["source_index"]) for e in stateless_block_shuffle(ds, 6, 0, epoch)]
      >>> sorted(order(0)), order(0) == order(0), order(0) != order(1)
      ([0, 1, 2, 3, 4, 5], True, True)
    """
    if buffer_size <= 1:
        return dataset
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0x5F1E], tf.int64), tf.cast(epoch, tf.int64)
    )

    def permute(block_index, block):
        n = tf.shape(block[SOURCE_INDEX])[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.random.experimental.stateless_fold_in(key, block_index)
        )
        return tf.nest.map_structure(lambda x: tf.gather(x, order), block)

    def dense(element):
        return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in element.items()}

    shuffled = dataset.ragged_batch(buffer_size).enumerate().map(no_autograph(permute)).unbatch()
    return shuffled.map(no_autograph(dense), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@dataclass(frozen=True)
class Epochs:
    """Numbers the epochs of a finite dataset: ``count`` passes, each element tagged with its ``epoch``.

    The stream is built once (``Dataset.range(...).flat_map``), whatever ``count`` is. Random
    stages applied after it key their draws on the epoch number, so each epoch differs, the
    same seed gives the same stream, and ``Epochs(count, initial_epoch=e)`` resumes exactly
    where an uninterrupted run would be at epoch ``e``. With ``shuffle_buffer`` > 1 each
    epoch's order is a stateless block shuffle keyed by ``(seed, epoch)``.

    Args:
      count: number of epochs (an int >= 1).
      initial_epoch: number of the first epoch (resuming).
      shuffle_buffer: elements shuffled together per epoch (0 or 1: source order).
      seed: seed of the per-epoch order.

    Example:
      >>> import fcndata.testing as t
      >>> ds = t.dataset([(3, 4), (5, 6)]).apply(Epochs(2, initial_epoch=3))
      >>> [(int(e["epoch"]), int(e["source_index"])) for e in ds]
      [(3, 0), (3, 1), (4, 0), (4, 1)]
    """

    count: int
    initial_epoch: int = 0
    shuffle_buffer: int = 0
    seed: int = 0

    def __post_init__(self):
        for name, low in (("count", 1), ("initial_epoch", 0), ("shuffle_buffer", 0), ("seed", None)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Epochs: {name} must be an int. Received: {name}={value!r}")
            if low is not None and value < low:
                raise ValueError(f"Epochs: {name} must be >= {low}. Received: {name}={value!r}")

    def one_epoch(self, dataset: tf.data.Dataset, epoch) -> tf.data.Dataset:
        """Epoch ``epoch`` (an int or a scalar int64 tensor) of ``dataset``: tagged and shuffled."""
        epoch = tf.cast(epoch, tf.int64)
        ds = dataset.map(no_autograph(lambda e: {**e, EPOCH: epoch}), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return stateless_block_shuffle(ds, self.shuffle_buffer, self.seed, epoch)

    def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        check_spec(dataset, where="Epochs")
        epochs = tf.data.Dataset.range(self.initial_epoch, self.initial_epoch + self.count)
        return epochs.flat_map(no_autograph(lambda epoch: self.one_epoch(dataset, epoch)))


@dataclass(frozen=True)
class Chain:
    """Applies stages in order (one stage made of several); its repr lists them (one log line).

    Example:
      >>> ds = tf.data.Dataset.range(3).apply(Chain((lambda d: d.map(lambda x: x + 1), lambda d: d.take(2))))
      >>> [int(x) for x in ds]
      [1, 2]
    """

    stages: tuple

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        for stage in self.stages:
            ds = ds.apply(stage)
        return ds
