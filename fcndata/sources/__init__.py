"""Sources: folders of images and masks, numpy arrays, TFRecords, prepared TFDS, built-ins.

Every source yields contract elements (see :mod:`fcndata.elements`) with
``source_index`` 0, 1, … in source order, ``origin`` (0, 0), ``source_shape`` the image
size and ``roi`` = 1 where ``label != ignore_label``.

One module per kind of source, and one for what they share:

* :mod:`~fcndata.sources.checks`: the in-graph data checks, ``on_error`` (raise, or skip
  and list the file in a :class:`SkipReport`) and the :class:`Validate` stage;
* :mod:`~fcndata.sources.folder`: :func:`from_folder` (pairing images with masks by stem,
  decoding in the graph);
* :mod:`~fcndata.sources.arrays`: :func:`from_arrays` (numpy arrays of any sizes);
* :mod:`~fcndata.sources.records`: :func:`write_tfrecords`, :func:`from_tfrecords`,
  :func:`from_tfds`.

This module maps a recipe's ``data.source`` to them through one table, :data:`LOADERS`,
that :func:`load_source`, :func:`source_shapes` and :func:`has_split` all read; the
built-in datasets (:mod:`fcndata.datasets`) are rows of it too, imported on first use.

Errors. Problems visible from file names or headers are found in Python when the source
is built; problems inside a file per element in the graph, with a message naming the
file. With ``on_error="raise"`` (default) the first bad element stops the pass with a
``tf.errors.InvalidArgumentError`` carrying that message; with ``on_error="skip"`` bad
elements are filtered out and recorded in a :class:`SkipReport`, logged when the pass
ends — never a silent drop.

Example:
  >>> import fcndata.testing as t
  >>> ds = from_arrays([t.coordinate_image(5, 7).numpy()], [t.stripe_label(5, 7).numpy()], num_classes=3)
  >>> e = next(iter(ds))
  >>> e["image"].shape, e["path"].numpy(), int(e["source_index"])
  (TensorShape([5, 7, 3]), b'arrays/0', 0)
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from fcndata.decode import DEFAULT_MAX_PIXELS, image_size
from fcndata.sections import BUILTIN_SOURCES
from fcndata.sources.arrays import from_arrays
from fcndata.sources.checks import SkipReport, Validate, collect_skips, skipped_files
from fcndata.sources.folder import from_folder, mask_path, pair_files, resolve
from fcndata.sources.records import from_tfds, from_tfrecords, shard_paths, write_tfrecords

__all__ = [
    "LOADERS", "Loader", "SkipReport", "Validate", "collect_skips", "from_arrays", "from_folder", "from_tfds",
    "from_tfrecords", "has_split", "load_source", "mask_path", "shard_paths", "skipped_files", "source_shapes",
    "write_tfrecords",
]


@dataclass(frozen=True)
class Loader:
    """How one ``data.source`` is read: one row of :data:`LOADERS`.

    Attributes:
      load: ``(data, split, report, indices) -> tf.data.Dataset``, uncached.
      shapes: ``(data, split) -> (count, [(height, width), ...] or None)``, from metadata.
      has_validation: ``data -> bool``: whether the recipe names validation data.
      by_position: whether ``indices`` can pick images (a record is found only by reading
        the ones before it).
      cache: whether ``data.cache`` caches the elements (decoded files, not arrays that
        are in memory already).
    """

    load: Callable[..., tf.data.Dataset]
    shapes: Callable[..., tuple]
    has_validation: Callable[..., bool]
    by_position: bool
    cache: bool


# ---------------------------------------------------------------------------- the rows: data -> source calls


def _load_builtin(data, split, report, indices):
    from fcndata import datasets  # on first use: the datasets import fcndata.sources.arrays

    if indices is None:
        return datasets.load(data, split)
    images, labels, paths = datasets.arrays(data, split)
    return from_arrays(images, labels, data.num_classes, data.ignore_label, paths=paths, indices=indices)


def _builtin_shapes(data, split):
    from fcndata import datasets

    images, _, _ = datasets.arrays(data, split)
    return len(images), [tuple(int(v) for v in a.shape[:2]) for a in images]


def _folder_globs(data, split):
    return (data.val_images, data.val_masks) if split == "validation" else (data.images, data.masks)


def _load_folder(data, split, report, indices):
    images, masks = _folder_globs(data, split)
    prefix = "val_" if split == "validation" else ""
    if images is None or masks is None:
        raise ValueError(
            f"folder source: data.{prefix}images and data.{prefix}masks must both be set for split={split!r}, "
            f"e.g. {prefix}images: images/*.png and {prefix}masks: masks/{{stem}}.png. "
            f"Received: {prefix}images={images!r}, {prefix}masks={masks!r}"
        )
    return from_folder(
        images, masks, channels=data.channels, num_classes=data.num_classes, palette=data.palette,
        ignore_color=getattr(data, "ignore_color", None), ignore_label=data.ignore_label,
        on_error=data.on_error, root=data.root, report=report, indices=indices,
        image_dtype=getattr(data, "image_dtype", "auto"), max_pixels=getattr(data, "max_pixels", DEFAULT_MAX_PIXELS),
    )


def _folder_shapes(data, split):
    images, masks = _folder_globs(data, split)
    pairs = pair_files(images, masks, data.root, data.on_error, SkipReport("folder source"), "folder source")
    sizes = [image_size(p) for p, _ in pairs]
    return len(pairs), (None if any(s is None for s in sizes) else sizes)


def _load_tfrecords(data, split, report, indices):
    val = split == "validation"
    pattern = data.val_tfrecords if val else data.tfrecords
    if pattern is None:
        raise ValueError(
            f"tfrecord source: data.{'val_' if val else ''}tfrecords must be set for split={split!r}, e.g. "
            f"tfrecords: data/train-*.tfrecord. Received: None"
        )
    ds = from_tfrecords(pattern, root=data.root)
    return ds.apply(Validate(data.num_classes, data.ignore_label, data.on_error, "tfrecord source", report, data.channels))


def _tfrecord_shapes(data, split):
    pattern = data.val_tfrecords if split == "validation" else data.tfrecords
    files = sorted(globlib.glob(resolve(pattern, data.root)))
    count = tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1)  # counted, not parsed
    return int(count), None


def _tfds(data, split):
    data_dir = resolve(data.tfds_data_dir, data.root) if data.tfds_data_dir else None
    return from_tfds(
        data.tfds_name, data.tfds_val_split if split == "validation" else data.tfds_train_split, data_dir,
        data.tfds_image_key, data.tfds_label_key, ignore_label=data.ignore_label,
    )


def _load_tfds(data, split, report, indices):
    if data.tfds_name is None:
        raise ValueError("tfds source: set data.tfds_name (e.g. oxford_iiit_pet). Received: tfds_name=None")
    return _tfds(data, split).apply(
        Validate(data.num_classes, data.ignore_label, data.on_error, "tfds source", report, data.channels)
    )


def _tfds_shapes(data, split):
    return int(_tfds(data, split).cardinality()), None  # from the split sizes TFDS prepared


def _python_api_only(where):
    def refuse(data, *_):
        raise ValueError(
            f"{where}: data.source=arrays is for the Python API only: build the dataset with "
            "fcndata.sources.from_arrays(images, labels, num_classes). Received: data.source='arrays'"
        )

    return refuse


#: ``data.source`` -> its :class:`Loader`; the one place that dispatches on the source.
LOADERS: dict[str, Loader] = {
    # built-in datasets: arrays generated in memory (fcndata.datasets.MODULES), never cached again
    **{
        name: Loader(_load_builtin, _builtin_shapes, lambda data: True, by_position=True, cache=False)
        for name in BUILTIN_SOURCES
    },
    "folder": Loader(
        _load_folder, _folder_shapes, lambda data: data.val_images is not None, by_position=True, cache=True
    ),
    "tfrecord": Loader(
        _load_tfrecords, _tfrecord_shapes, lambda data: data.val_tfrecords is not None, by_position=False, cache=True
    ),
    # an empty split name ("") means no validation split, for train and every command alike
    "tfds": Loader(_load_tfds, _tfds_shapes, lambda data: bool(data.tfds_val_split), by_position=False, cache=True),
    "arrays": Loader(
        _python_api_only("load_source"), _python_api_only("source_shapes"), lambda data: False,
        by_position=True, cache=False,
    ),
}


# ---------------------------------------------------------------------------- the API


def has_split(data, split: str) -> bool:
    """Whether ``load_source(data, split)`` has data (a folder, TFRecord or TFDS source may lack validation).

    The one answer to "is there validation data?": ``train``, ``inspect --split
    validation`` and ``preview --mode eval`` all ask it (``DataConfig.has_validation`` too).

    Example:
      >>> from fcndata.config import DataConfig
      >>> has_split(DataConfig(source="tfds", tfds_name="oxford_iiit_pet", tfds_val_split=""), "validation")
      False
    """
    loader = LOADERS.get(data.source)
    return split == "train" or (loader is not None and loader.has_validation(data))


def source_shapes(data, split: str = "train") -> tuple[int, list[tuple[int, int]] | None]:
    """How many elements a source holds and their (height, width), from metadata only.

    Nothing is decoded: built-in datasets know their arrays, a folder pairs file names and
    reads image headers, TFDS knows its split sizes, TFRecord files are counted record by
    record (no parsing). Shapes are None where headers do not tell them (TFRecord, TFDS,
    TIFF). Files that ``on_error=skip`` will drop when decoded are still counted.

    Example:
      >>> from fcndata.config import DataConfig
      >>> n, shapes = source_shapes(DataConfig(source="shapes", num_images=2, min_size=20, max_size=30))
      >>> n, len(shapes), all(20 <= h <= 30 for h, w in shapes)
      (2, 2, True)
    """
    loader = LOADERS.get(data.source)
    if loader is None:
        raise ValueError(f"source_shapes: unknown data.source. Received: data.source={data.source!r}")
    return loader.shapes(data, split)


def load_source(
    data, split: str = "train", *, report: SkipReport | None = None, indices: tf.data.Dataset | None = None
) -> tf.data.Dataset:
    """The dataset of contract elements that ``data:`` (a DataConfig) describes.

    Args:
      data: a :class:`fcndata.config.DataConfig`.
      split: ``"train"`` or ``"validation"``.
      report: a :class:`SkipReport` filled under ``data.on_error=skip``.
      indices: a dataset of int64 positions (in source order) of the images to read, in
        that order, uncached (None: the whole source in order). Built-in and folder sources
        only: TFRecord and TFDS cannot be read by position.

    Raises:
      ValueError: unknown split, missing files or fields (the message names the field);
        ``indices`` with a TFRecord or TFDS source.

    Example:
      >>> from fcndata.config import DataConfig
      >>> ds = load_source(DataConfig(source="shapes", num_images=2, min_size=20, max_size=30))
      >>> [int(e["source_index"]) for e in ds]
      [0, 1]
    """
    if split not in ("train", "validation"):
        raise ValueError(f"load_source: split must be 'train' or 'validation'. Received: split={split!r}")
    report = report if report is not None else SkipReport(f"{data.source} source ({split})")
    loader = LOADERS.get(data.source)
    if loader is None:  # DataConfig validates the choice; kept for dataclasses built by hand
        raise ValueError(f"load_source: unknown data.source. Received: data.source={data.source!r}")
    if indices is not None and not loader.by_position:
        raise ValueError(
            f"{data.source} source: images cannot be read by position (a record is found by reading the ones "
            "before it), which the tf.data service's dynamic sharding of a training stream needs; convert the "
            "data to a folder of PNG files, or use service.sharding: off. Received: data.source="
            f"{data.source!r}"
        )
    ds = loader.load(data, split, report, indices)
    # Images read by position are a different subset each time: nothing to cache.
    return ds.cache() if loader.cache and data.cache and indices is None else ds
