"""The arrays source: numpy images and labels of any sizes, as one graph-only dataset.

:func:`from_arrays` checks the arrays in numpy when the source is built (errors raise at
once, naming the index or path), copies them once into one flat aligned buffer and slices
each element out of it by offset: no Python generator, so parallel map and serialisation
work. The built-in datasets (:mod:`fcndata.datasets`) are read through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.common import ALIGN, aligned_empty
from fcndata.sources.checks import check_arguments, label_dtype_for, no_autograph


def _as_list(arrays, name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray) or tf.is_tensor(arrays):
        return [np.asarray(a) for a in np.asarray(arrays)]
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"from_arrays: {name} must be a list of arrays or one stacked array. Received: {type(arrays).__name__}")
    return [np.asarray(a) for a in arrays]


#: Arrays of at least this many bytes turn tf.data's default graph optimizations off (see
#: :func:`from_arrays`).
LARGE_ARRAYS = 8 * 2**20


def _ragged_source(arrays: list[np.ndarray], dtype) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Every array in one flat buffer (the single copy ``from_arrays`` makes), the start
    offset of each array in it, and each array's shape.

    numpy copies each array straight into a 64-byte-aligned buffer (converting the
    dtype on the way) and TensorFlow adopts that buffer through DLPack, without another
    copy (``tf.constant`` of a numpy array holds two copies of it). Each array starts at
    a 64-byte boundary, so an element whose byte size is a multiple of 64 is a view of
    the buffer, not a copy.
    """

    dtype = np.dtype(dtype)
    shared = _shared_buffer(arrays, dtype)
    if shared is not None:
        sizes = np.array([a.size for a in arrays], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        tensor = tf.experimental.dlpack.from_dlpack(shared.__dlpack__())
        return tensor, tf.constant(offsets), tf.constant(np.array([a.shape for a in arrays], np.int64))
    step = ALIGN // dtype.itemsize
    sizes = np.array([a.size for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(-(-sizes // step) * step)]).astype(np.int64)
    flat = aligned_empty([int(offsets[-1])], dtype)
    for a, o in zip(arrays, offsets.tolist()):
        np.copyto(flat[o : o + a.size].reshape(a.shape), a, casting="unsafe")  # labels: range checked before
    tensor = tf.experimental.dlpack.from_dlpack(flat.__dlpack__()) if flat.size else tf.zeros([0], dtype)
    shapes = np.array([a.shape for a in arrays], np.int64)
    return tensor, tf.constant(offsets), tf.constant(shapes)


def _shared_buffer(arrays: list[np.ndarray], dtype) -> np.ndarray | None:
    """The arrays' own memory as one flat writable array that TensorFlow can adopt without
    a copy, or None: when they are of ``dtype``, C-contiguous, back to back in one buffer
    (one array, or the images of one stacked array) that starts on an :data:`ALIGN`-byte
    boundary.

    Example:
      >>> from fcndata.common import aligned_empty
      >>> stack = aligned_empty((2, 4, 8), np.uint8)
      >>> _shared_buffer(list(stack), np.uint8).shape, _shared_buffer(list(stack[:, :, 1:]), np.uint8)
      ((64,), None)
    """
    first = arrays[0]
    if first.ctypes.data % ALIGN or not all(a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable for a in arrays):
        return None
    position = first.ctypes.data
    for a in arrays:
        if a.ctypes.data != position:
            return None
        position += a.nbytes
    if len(arrays) == 1:
        return first.reshape(-1)
    owner = first.base  # numpy keeps the array that owns the memory here, not the view chain
    if not isinstance(owner, np.ndarray) or not owner.flags.c_contiguous or not owner.flags.writeable:
        return None
    offset = first.ctypes.data - owner.ctypes.data
    if offset < 0 or offset + (position - first.ctypes.data) > owner.nbytes:
        return None
    return owner.reshape(-1).view(np.uint8)[offset : offset + position - first.ctypes.data].view(dtype)


def _row_blocks(a: np.ndarray, max_items: int = 1 << 20):
    """Views of ``a`` in blocks of rows of about ``max_items`` values, so checks on a
    large image hold a few MiB of temporaries, not several image-sized boolean planes."""
    rows = max(1, max_items // max(1, a[0].size if len(a) else 1))
    for r in range(0, len(a), rows):
        yield a[r : r + rows]


def from_arrays(
    images,
    labels,
    num_classes: int,
    ignore_label: int = E.IGNORE_LABEL,
    paths: Sequence[str] | None = None,
    indices: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Numpy images and labels (of different sizes allowed) as a graph-only dataset.

    The arrays are checked in numpy when the source is built (so errors raise at once,
    naming the index or path), packed into one flat buffer, and sliced per element by
    offset: no Python generator, so parallel map and serialisation work.

    Memory: one copy of the images and one of the labels, made here (your arrays can be
    changed or freed afterwards); an element whose byte size is a multiple of 64 is a
    view of that copy, others are sliced out per element. When no label has an
    ``ignore_label`` pixel, every roi is a view of one shared plane of ones (the largest
    image's H x W bytes, made here); else each element computes its roi plane (H x W
    bytes). The copy exists because TensorFlow's kernels abort the
    process on buffers that are not 64-byte aligned, which numpy's large arrays usually
    are not. Arrays TensorFlow can read as they are are adopted instead, without a copy:
    a stacked ``[N, H, W, C]`` array or a single image (or label) that is C-contiguous,
    writable, of the dtype the source keeps (images: their own; labels: uint8 up to 255
    classes, else int32) and starts on a 64-byte boundary, e.g. made with
    :func:`fcndata.common.aligned_empty`. TensorFlow then reads your memory: do not
    change it while the dataset is in use. tf.data's default graph rewrites serialise
    the pipeline, arrays included, whenever an iterator is made (a transient second
    copy), so arrays of :data:`LARGE_ARRAYS` bytes or more turn them off
    (``ds.options()`` shows it). Cutting an 8192² RGB image + mask into 256² patches
    therefore adds the copy (256 MiB, none when adopted), the roi plane (64 MiB) and the
    patches in flight over your arrays (``make bench-peers``).

    Args:
      images: list of [H, W] or [H, W, C] arrays (one dtype: uint8, uint16 or float32;
        one channel count), or one stacked [N, H, W(, C)] array.
      labels: list of [H, W] integer arrays (or stacked [N, H, W]).
      num_classes: labels must be in [0, num_classes) or ``ignore_label``.
      ignore_label: class id of unlabeled pixels.
      paths: a name per element (default ``arrays/<index>``).
      indices: a dataset of int64 positions of the elements to yield, in that order
        (None: all, in order).

    Raises:
      ValueError: counts differ, an image and its label differ in size, a label is out of
        range, an image has NaN/inf, ranks or channel counts differ.
      TypeError: unsupported dtype.

    Output element:
      image [H, W, C] (input dtype), label [H, W] uint8 (int32 if ids exceed 255), roi,
      origin (0, 0), source_shape, source_index, path. When every image has one size,
      the element spec says it (H and W static), else they are None.

    Example:
      >>> import numpy as np
      >>> ds = from_arrays([np.zeros((3, 4), np.uint8), np.ones((5, 2), np.uint8)],
      ...                  [np.zeros((3, 4), np.uint8), np.ones((5, 2), np.uint8)], num_classes=2)
      >>> [tuple(e["image"].shape) for e in ds]
      [(3, 4, 1), (5, 2, 1)]
    """
    where = "from_arrays"
    check_arguments(num_classes, ignore_label, "raise", where)
    images, labels = _as_list(images, "images"), _as_list(labels, "labels")
    if len(images) != len(labels) or not images:
        raise ValueError(
            f"{where}: need the same (non-zero) number of images and labels. "
            f"Received: len(images)={len(images)}, len(labels)={len(labels)}"
        )
    paths = [f"arrays/{i}" for i in range(len(images))] if paths is None else [str(p) for p in paths]
    if len(paths) != len(images):
        raise ValueError(f"{where}: need one path per image. Received: len(paths)={len(paths)}, len(images)={len(images)}")
    images = [a[..., None] if a.ndim == 2 else a for a in images]
    dtypes = {a.dtype for a in images}
    if len(dtypes) != 1 or next(iter(dtypes)).name not in ("uint8", "uint16", "float32"):
        raise TypeError(
            f"{where}: images must all have one dtype, uint8, uint16 or float32; convert them with "
            f".astype(). Received: dtypes={sorted(d.name for d in dtypes)}"
        )
    all_labeled = True  # every label pixel a class id: every roi is all ones
    for i, (img, lab, path) in enumerate(zip(images, labels, paths)):
        if img.ndim != 3 or img.shape[-1] != images[0].shape[-1]:
            raise ValueError(
                f"{where}: image {path} (index {i}) must be [H, W] or [H, W, C] with the channel count of the first "
                f"image ({images[0].shape[-1]}). Received: shape={img.shape}"
            )
        if lab.ndim == 3 and lab.shape[-1] == 1:
            lab = labels[i] = lab[..., 0]
        if lab.shape != img.shape[:2]:
            raise ValueError(
                f"{where}: image {path} (index {i}) is {img.shape[0]}x{img.shape[1]} but its label is "
                f"{'x'.join(map(str, lab.shape))}; they must have the same height and width. "
                f"Received: image_shape={img.shape}, label_shape={lab.shape}"
            )
        if not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"{where}: label {path} (index {i}) must be an integer array. Received: dtype={lab.dtype}")
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):  # min/max hold no temporaries
            all_labeled = False  # some pixel may be ignore_label: the roi is computed per element
            for part in _row_blocks(lab):
                wrong = ((part < 0) | (part >= num_classes)) & (part != ignore_label)
                if wrong.any():
                    raise ValueError(
                        f"{where}: label {path} (index {i}) has values outside [0, {num_classes}) that are not "
                        f"ignore_label={ignore_label}; fix the label or raise num_classes. "
                        f"Received: label_value={part[wrong][0]}"
                    )
        # A float64 sum is finite exactly when every float32 pixel is (and holds no temporaries).
        if img.dtype == np.float32 and not np.isfinite(img.sum(dtype=np.float64)):
            bad = sum(int((~np.isfinite(part)).sum()) for part in _row_blocks(img))
            raise ValueError(
                f"{where}: image {path} (index {i}) has NaN or inf pixels; replace them (e.g. np.nan_to_num). "
                f"Received: non_finite_pixels={bad}"
            )
    label_dtype = label_dtype_for(num_classes, ignore_label)
    img_flat, img_off, img_shape = _ragged_source(images, images[0].dtype)
    lab_flat, lab_off, lab_shape = _ragged_source(labels, label_dtype.as_numpy_dtype)
    channels = images[0].shape[-1]
    path_t = tf.constant(paths)
    # One size for all: the element spec says it, so stages plan their geometry once, at
    # trace time (smaller graphs, cheaper to build and to start), and models see it.
    sizes = {a.shape[:2] for a in images}
    hw = list(next(iter(sizes))) if len(sizes) == 1 else [None, None]

    # Per element: a 1-D slice of the flat buffer at its offset (a view when aligned) and a
    # reshape, with scalar lookups by gather: few graph nodes, so cheap to build and start.
    img_size, lab_size = (tf.reduce_prod(t, axis=1) for t in (img_shape, lab_shape))
    static = hw[0] is not None
    origin = tf.zeros([2], tf.int32)

    def cut(flat, offsets, lengths, shapes, i, static_shape):
        at = tf.reshape(i, [1])  # gathers by [i] give the [1] begin and size of the slice
        part = tf.slice(flat, tf.gather(offsets, at), tf.gather(lengths, at))
        return tf.reshape(part, static_shape if static else tf.gather(shapes, i))

    ones = None
    if all_labeled:
        plane = aligned_empty([max(1, max(a.size for a in labels))], np.uint8)
        plane.fill(1)
        ones = tf.experimental.dlpack.from_dlpack(plane.__dlpack__())
        ones_offsets = tf.zeros_like(lab_off)  # every roi starts at the plane's start

    def element(i):
        image = cut(img_flat, img_off, img_size, img_shape, i, [*hw, channels])
        image.set_shape([*hw, channels])
        label = cut(lab_flat, lab_off, lab_size, lab_shape, i, hw)
        label.set_shape(hw)
        roi = None  # make_element's: label != ignore_label
        if ones is not None:  # every pixel labeled: a view of one shared plane of ones, no work per element
            roi = cut(ones, ones_offsets, lab_size, lab_shape, i, hw)
        elif label.dtype == tf.uint8:  # one H x W plane (the min runs in place), not a bool plane and its cast
            roi = tf.minimum(tf.bitwise.bitwise_xor(label, tf.constant(ignore_label, tf.uint8)), 1)
        source_shape = tf.constant(hw, tf.int32) if static else tf.cast(tf.gather(lab_shape, i), tf.int32)
        return E.make_element(image, label, roi=roi, source_index=i, path=tf.gather(path_t, i), origin=origin,
                              source_shape=source_shape, ignore_label=ignore_label)

    positions = tf.data.Dataset.range(len(images)) if indices is None else indices
    ds = positions.map(no_autograph(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if img_flat.dtype.size * int(img_flat.shape[0]) + lab_flat.dtype.size * int(lab_flat.shape[0]) >= LARGE_ARRAYS:
        # tf.data's default graph rewrites serialise the whole pipeline, arrays included,
        # each time an iterator is made: a transient second copy. fcndata's stages set their
        # parallelism themselves, so they do not need those rewrites.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        ds = ds.with_options(options)
    return ds
