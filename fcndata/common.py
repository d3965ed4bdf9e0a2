"""Small shared helpers and constants, one copy each (no TensorFlow import: cheap everywhere).

``IGNORE_LABEL``, the class colours, the luminance weights and the argument checks every
stage's ``__post_init__`` uses. Messages follow the house style: what, where, ``Received:``.

Example:
  >>> pair(8, "patch_size", "ExtractPatches"), IGNORE_LABEL
  ((8, 8), 255)
"""

from __future__ import annotations

import numpy as np

#: Default label value for unlabeled pixels (VOC convention).
IGNORE_LABEL = 255

#: ITU-R 601 luminance weights of R, G, B (RGB -> gray, the same in decoding and previews).
LUMA = (0.299, 0.587, 0.114)

#: Qualitative colours for class ids 1, 2, … (tab10 then tab20's light shades, greys
#: removed so they never look like ignored pixels). Class 0 (background) is left clear.
CLASS_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5",
)  # fmt: skip


def class_rgb(labels) -> np.ndarray:
    """uint8 RGB of :data:`CLASS_COLOURS` for class ids (0 = background: black).

    >>> class_rgb(np.array([0, 1, 19])).tolist()
    [[0, 0, 0], [31, 119, 180], [31, 119, 180]]
    """
    table = np.array([[0, 0, 0]] + [[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in CLASS_COLOURS], np.uint8)
    labels = np.asarray(labels)
    return table[np.where(labels > 0, (labels - 1) % len(CLASS_COLOURS) + 1, 0)]


def pair(value, name: str, where: str, minimum: int = 1) -> tuple[int, int]:
    """An int or (height, width) as a tuple of two ints >= ``minimum``.

    Raises:
      TypeError: not an int or a pair of ints.
      ValueError: not two values, or a value < ``minimum``.

    >>> pair([4, 6], "stride", "ExtractPatches")
    (4, 6)
    >>> pair(0, "stride", "ExtractPatches")
    Traceback (most recent call last):
    ...
    ValueError: ExtractPatches: stride must be an int or a (height, width) pair of ints >= 1. Received: stride=(0, 0)
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        raise TypeError(
            f"{where}: {name} must be an int or a (height, width) pair of ints. Received: {name}={value!r}"
        )
    if len(value) != 2 or min(value) < minimum:
        raise ValueError(
            f"{where}: {name} must be an int or a (height, width) pair of ints >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return (int(value[0]), int(value[1]))


def choice(value, name: str, where: str, choices, hint: str = "") -> None:
    """Raises a ValueError unless ``value`` is one of ``choices``.

    >>> choice("pad", "border", "ExtractPatches", ("shift", "pad", "drop"))
    """
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {list(choices)}{hint}. Received: {name}={value!r}")


def in_range(value, name: str, low=None, high=None, why: str = "", *, low_open=False, high_open=False,
             error: type[Exception] = ValueError) -> None:
    """Raises ``error`` unless ``low <= value <= high`` (open ends where asked); None bounds and a None
    value are unchecked. ``name`` is the key as the recipe spells it.

    >>> in_range(0.5, "augment.probability", 0, 1)
    >>> in_range(2, "augment.probability", 0, 1, "it is a chance")
    Traceback (most recent call last):
    ...
    ValueError: augment.probability must be in [0, 1]; it is a chance. Received: augment.probability=2
    """
    if value is None:
        return
    ok = (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high)
    )
    if not ok:
        if high is None:
            interval = f"{'>' if low_open else '>='} {low}"
        else:
            interval = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise error(f"{name} must be {interval}{'; ' + why if why else ''}. Received: {name}={value!r}")


def positive_int(value, name: str, where: str) -> None:
    """Raises TypeError for a non-int (bools excluded), ValueError for an int < 1.

    >>> positive_int(3, "batch_size", "PadAndBatch")
    """
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be an int. Received: {name}={value!r}")
    if value < 1:
        raise ValueError(f"{where}: {name} must be >= 1. Received: {name}={value!r}")


def non_negative_ints(where: str, **values) -> None:
    """Raises TypeError for a non-int (bools excluded), ValueError for an int < 0, naming the key.

    >>> non_negative_ints("Augment", seed=1, ignore_label=255)
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{where}: {name} must be an integer. Received: {name}={value!r}")
        if value < 0:
            raise ValueError(f"{where}: {name} must be >= 0. Received: {name}={value!r}")


#: Raw pixel maximum of each image dtype (by name): the one rule that scales pixels for the model,
#: in training (fcndata.batching.scale_image), prediction (fcndata.infer) and augmentation.
PIXEL_MAX = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}


#: Byte alignment TensorFlow's CPU kernels require of a buffer they adopt (Eigen's largest).
ALIGN = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose buffer starts on an :data:`ALIGN`-byte boundary.

    TensorFlow can adopt such a buffer without copying it
    (``tf.experimental.dlpack.from_dlpack(a.__dlpack__())``); numpy's own large arrays
    start 16 bytes past a page and cannot be adopted. (``tf.constant`` of a numpy array
    holds two copies of it.)

    Example:
      >>> a = aligned_empty((3, 5), np.uint16)
      >>> a.shape, a.dtype.name, a.ctypes.data % ALIGN, a.flags.c_contiguous
      ((3, 5), 'uint16', 0, True)
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)
