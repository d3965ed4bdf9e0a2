"""Record sources: TFRecord shards written by fcndata, and TFDS datasets prepared locally.

:func:`write_tfrecords` and :func:`from_tfrecords` round-trip contract elements bit for bit;
:func:`from_tfds` reads a TensorFlow Datasets dataset already prepared in a ``data_dir``
(fcndata never downloads). Neither checks the data while reading (``load_source`` applies
:class:`fcndata.sources.checks.Validate`), and neither can be read by position: a record
is found only by reading the ones before it.
"""

from __future__ import annotations

import os

import tensorflow as tf

from fcndata import elements as E
from fcndata.sources.checks import int_str, no_autograph
from fcndata.sources.folder import resolve

# ---------------------------------------------------------------------------- TFRecord


def shard_paths(path: str, num_shards: int) -> list[str]:
    """File names ``write_tfrecords`` uses: ``train.tfrecord`` -> ``train-00000-of-00002.tfrecord``.

    >>> shard_paths("out/train.tfrecord", 2)
    ['out/train-00000-of-00002.tfrecord', 'out/train-00001-of-00002.tfrecord']
    """
    if num_shards == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}-{i:05d}-of-{num_shards:05d}{ext}" for i in range(num_shards)]


def write_tfrecords(dataset: tf.data.Dataset, path: str, num_shards: int = 1) -> list[str]:
    """Writes contract elements to TFRecord shards that :func:`from_tfrecords` reads back exactly.

    Each key is stored with ``tf.io.serialize_tensor`` (dtype and shape included, bit for
    bit). Element ``i`` goes to shard ``i % num_shards``, so reading the shards round-robin
    restores the order.

    Returns:
      The shard file names.

    Example:
      >>> import tempfile, fcndata.testing as t
      >>> files = write_tfrecords(t.dataset(), tempfile.mkdtemp() + "/x.tfrecord", num_shards=2)
      >>> [tuple(e["image"].shape) for e in from_tfrecords(files[0].replace("-00000-", "-*-"))]
      [(37, 53, 3), (29, 41, 3), (64, 31, 3), (17, 17, 3)]
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"write_tfrecords: num_shards must be a positive int. Received: num_shards={num_shards!r}")
    E.check_spec(dataset, where="write_tfrecords")
    files = shard_paths(path, num_shards)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    keys = list(dataset.element_spec)
    serialize = dataset.map(
        lambda e: {k: tf.io.serialize_tensor(e[k]) for k in keys}, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    writers = [tf.io.TFRecordWriter(f) for f in files]
    try:
        for i, element in enumerate(serialize.as_numpy_iterator()):
            feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[element[k]])) for k in keys}
            writers[i % num_shards].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    finally:
        for w in writers:
            w.close()
    return files


def from_tfrecords(pattern: str, root: str | None = None) -> tf.data.Dataset:
    """Reads shards written by :func:`write_tfrecords` (a glob, sorted), in the written order.

    Dtypes and channel count come from the first record, so uint16 / float32 images and
    int32 labels come back as written.

    Raises:
      ValueError: no file matches, or the files were not written by write_tfrecords.
    """
    where = "tfrecord source"
    resolved = resolve(pattern, root)
    files = sorted(tf.io.gfile.glob(resolved))
    if not files:
        raise ValueError(
            f"{where}: no files match {pattern!r} (resolved to {resolved!r}). Write them with "
            f"fcndata.sources.write_tfrecords or fix data.tfrecords / data.root. Received: pattern={pattern!r}"
        )
    first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
    if first is None:
        raise ValueError(f"{where}: {files[0]} holds no records. Received: file={files[0]!r}")
    example = tf.train.Example.FromString(first.numpy())
    keys = list(example.features.feature)
    missing = [k for k in E.REQUIRED_KEYS if k not in keys]
    if missing:
        raise ValueError(
            f"{where}: {files[0]} lacks the keys {missing}; it was not written by fcndata.sources.write_tfrecords. "
            f"Received: keys={sorted(keys)}"
        )
    from tensorflow.core.framework import tensor_pb2

    protos = {k: tensor_pb2.TensorProto.FromString(example.features.feature[k].bytes_list.value[0]) for k in keys}
    dtypes = {k: tf.as_dtype(p.dtype) for k, p in protos.items()}
    channels = protos[E.IMAGE].tensor_shape.dim[-1].size
    ranks = {E.IMAGE: 3, E.LABEL: 2, E.ROI: 2, E.WEIGHT: 2, E.ORIGIN: 1, E.SOURCE_SHAPE: 1}
    features = {k: tf.io.FixedLenFeature([], tf.string) for k in keys}

    def parse(record):
        raw = tf.io.parse_single_example(record, features)
        out = {}
        for k in keys:
            value = tf.io.parse_tensor(raw[k], dtypes[k])
            shape = [None] * ranks.get(k, 0)
            if k == E.IMAGE:
                shape[-1] = channels
            if k in (E.ORIGIN, E.SOURCE_SHAPE):
                shape = [2]
            value.set_shape(shape)
            out[k] = value
        return out

    files_ds = tf.data.Dataset.from_tensor_slices(files)
    # Round-robin over the sorted shards restores write_tfrecords' order (element i in shard i % n).
    parallel = {"num_parallel_calls": min(len(files), 4), "deterministic": True} if len(files) > 1 else {}
    ds = files_ds.interleave(tf.data.TFRecordDataset, cycle_length=len(files), block_length=1, **parallel)
    return ds.map(no_autograph(parse), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ---------------------------------------------------------------------------- TFDS


def from_tfds(
    name: str,
    split: str,
    data_dir: str | None,
    image_key: str = "image",
    label_key: str = "segmentation_mask",
    *,
    ignore_label: int = E.IGNORE_LABEL,
) -> tf.data.Dataset:
    """A TensorFlow Datasets dataset that is already prepared in ``data_dir`` (never downloads).

    Args:
      name: TFDS name (``"oxford_iiit_pet:4.*"`` style versions allowed).
      split: a TFDS split string (``"train"``, ``"train[:10%]"``).
      data_dir: where it was prepared (None: the TFDS default, ``~/tensorflow_datasets``).
      image_key, label_key: feature names of the image and the [H, W(, 1)] mask.
      ignore_label: class id of unlabeled pixels.

    Raises:
      ValueError: the dataset is not prepared there (the message says how to prepare it),
        or the keys do not exist.

    Output element:
      image [H, W, C], label [H, W] (uint8 if the mask is uint8, else int32), roi, origin,
      source_shape, source_index (order of the split), path ``tfds/<name>/<split>/<index>``.
    """
    import tensorflow_datasets as tfds

    where = "tfds source"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - TFDS raises several types for an unknown name
        raise ValueError(
            f"{where}: dataset {name!r} is neither registered nor prepared in data_dir={data_dir!r} ({e}). "
            f"On a machine with network run `tfds build {name} --data_dir {data_dir or '~/tensorflow_datasets'}` "
            f"and copy the folder here; fcndata never downloads. Received: tfds_name={name!r}"
        ) from None
    if not builder.is_prepared():
        raise ValueError(
            f"{where}: dataset {name!r} is not prepared in {builder.data_dir!r}, and fcndata never downloads. "
            f"On a machine with network run `tfds build {name} --data_dir {data_dir or '~/tensorflow_datasets'}` "
            f"(or tfds.builder(...).download_and_prepare()), then copy the data_dir here and set "
            f"data.tfds_data_dir. Received: tfds_name={name!r}, tfds_data_dir={data_dir!r}"
        )
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(
                f"{where}: {name!r} has no feature {key!r}; set data.tfds_image_key / data.tfds_label_key to one "
                f"of {sorted(features.keys())}. Received: {key!r}"
            )
    ds = builder.as_dataset(split=split, shuffle_files=False)
    prefix = f"tfds/{name}/{split}/"

    def element(i, x):
        image = x[image_key]
        if image.shape.rank == 2:
            image = image[..., None]
        label = x[label_key]
        if label.shape.rank == 3:
            label = label[..., 0]
        if label.dtype not in (tf.uint8, tf.int32):
            label = tf.cast(label, tf.int32)
        return E.make_element(
            image, label, source_index=i, path=tf.strings.join([prefix, int_str(i)]), ignore_label=ignore_label
        )

    return ds.enumerate().map(no_autograph(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
