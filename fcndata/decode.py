"""Decoding image files, the same way for training and prediction.

One path from a file to pixels: :func:`decode_file` (PNG 8/16-bit, JPEG, BMP, GIF with
``tf.io``; TIFF through OpenCV) and :func:`convert_channels` (gray→RGB, RGBA→RGB, RGB→gray).
The folder source decodes with them in its tf.data graph, :func:`read_image` with them for
``python -m fcndata.predict``, so the model sees the same pixels in training and serving.
The error codes here name why a file failed; :mod:`fcndata.sources` turns them into
messages naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fcndata.common import LUMA

# ---------------------------------------------------------------------------- error codes

OK = 0
UNREADABLE = 1
EMPTY = 2
TRUNCATED = 3
BIT_DEPTH = 4
CHANNELS = 5
MASK_CHANNELS = 6
PALETTE = 7
SIZE = 8
LABEL_RANGE = 9
NON_FINITE = 10

#: Short reason per error code (the full message names the files and the fix).
REASONS = {
    UNREADABLE: "unreadable",
    EMPTY: "empty file",
    TRUNCATED: "truncated file",
    BIT_DEPTH: "bit depth differs",
    CHANNELS: "channel count cannot be converted",
    MASK_CHANNELS: "mask channels",
    PALETTE: "colour not in palette",
    SIZE: "image and mask sizes differ",
    LABEL_RANGE: "label out of range",
    NON_FINITE: "NaN or inf pixels",
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_TF8, _PNG16, _CV2 = 0, 1, 2  # codecs: tf.io.decode_image, tf.io.decode_png(uint16), OpenCV



def convert_channels(image: tf.Tensor, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Brings a gray / gray+alpha / RGB / RGBA image to ``channels`` (graph-safe).

    Gray -> RGB repeats the plane, RGBA -> RGB drops alpha, RGB -> gray is the ITU-R 601
    luminance (0.299 R + 0.587 G + 0.114 B, rounded for integer images), a missing alpha
    is opaque (the dtype's maximum, 1.0 for float32). Built from gathers, not
    ``tf.cond``: the input channel count is only known per element.

    Returns:
      ``(image [H, W, channels], ok)``; ``ok`` is False (and the image meaningless) when
      the input channel count is not 1, 2, 3 or 4.

    Example:
      >>> rgb, ok = convert_channels(tf.constant([[[10, 20, 30]]], tf.uint8), 1)
      >>> rgb.numpy().tolist(), bool(ok)
      ([[[18]]], True)
    """
    dtype = image.dtype
    c = tf.shape(image)[-1]
    ok = (c >= 1) & (c <= 4)
    row = tf.clip_by_value(c - 1, 0, 3)
    opaque = tf.fill(tf.concat([tf.shape(image)[:2], [1]], 0), tf.cast(tf.constant(1.0 if dtype.is_floating else dtype.max), dtype))
    # Channel c of `padded` is the opaque alpha plane (used when the input has none).
    padded = tf.concat([image, opaque], -1)
    rgb_index = tf.gather(tf.constant([[0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 1, 2]]), row)
    rgb = tf.gather(padded, rgb_index, axis=-1)
    if channels == 3:
        out = rgb
    elif channels == 4:
        alpha_index = tf.gather(tf.stack([c, 1, c, 3]), row)
        out = tf.concat([rgb, tf.gather(padded, alpha_index[None], axis=-1)], -1)
    else:
        lum = tf.tensordot(tf.cast(rgb, tf.float32), tf.constant(LUMA), axes=1)
        if dtype.is_integer:
            lum = tf.clip_by_value(tf.round(lum), 0.0, float(dtype.max))
        out = tf.where(c <= 2, padded[..., :1], tf.cast(lum, dtype)[..., None])
    out.set_shape([None, None, channels])
    return out, ok


def _end_bytes_ok(contents: tf.Tensor, tail: bytes) -> tf.Tensor:
    n = tf.strings.length(contents)
    k = len(tail)
    return tf.equal(tf.strings.substr(contents, tf.maximum(n - k, 0), k), tail)


def _jpeg_end_ok(contents: tf.Tensor) -> tf.Tensor:
    # Some writers append padding after the EOI marker: look for FF D9 in the last 64 bytes.
    n = tf.strings.length(contents)
    tail = tf.io.decode_raw(tf.strings.substr(contents, tf.maximum(n - 64, 0), 64), tf.uint8)
    return tf.reduce_any((tail[:-1] == 255) & (tail[1:] == 217))


def precheck(contents: tf.Tensor) -> tf.Tensor:
    """Error code for an encoded file before decoding: EMPTY, TRUNCATED (PNG/JPEG) or OK."""
    n = tf.strings.length(contents)
    head = tf.strings.substr(contents, 0, 4)
    is_png = tf.equal(head, b"\x89PNG")
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8")
    truncated = (is_png & ~_end_bytes_ok(contents, b"IEND\xaeB`\x82")) | (is_jpeg & ~_jpeg_end_ok(contents))
    return tf.where(tf.equal(n, 0), EMPTY, tf.where(truncated, TRUNCATED, OK))


def _bytes(value) -> bytes:
    """A string argument of a numpy_function: bytes in a graph, a 0-d array when run eagerly."""
    value = value if isinstance(value, bytes) else np.asarray(value).item()
    return value.encode() if isinstance(value, str) else value


def _text(value) -> str:
    return _bytes(value).decode()


def _cv2_decode(contents: bytes, dtype_name: bytes) -> np.ndarray:
    import cv2  # only TIFF needs OpenCV

    want = np.dtype(_text(dtype_name))
    arr = cv2.imdecode(np.frombuffer(_bytes(contents), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("OpenCV could not decode the file")
    if arr.dtype == np.float64 and want == np.float32:
        arr = arr.astype(np.float32)
    if arr.dtype != want:
        raise ValueError(f"bit depth {arr.dtype} is not {want}")
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[-1] in (3, 4):  # OpenCV is BGR(A)
        arr = arr[..., [2, 1, 0, 3][: arr.shape[-1]]]
    return np.ascontiguousarray(arr)


def _decode_one(contents: tf.Tensor, codec: int, dtype: tf.DType) -> tf.Tensor:
    natural = {_TF8: tf.uint8, _PNG16: tf.uint16}.get(codec, dtype)
    if natural != dtype:
        # e.g. a 16-bit PNG among 8-bit ones: fail, and file_error() says why. The condition
        # is dynamic (never true) so the assertion fires when run, not when traced.
        failed = tf.debugging.Assert(tf.strings.length(contents) < 0, ["bit depth differs"])
        with tf.control_dependencies([failed]):
            return tf.zeros([0, 0, 1], dtype)
    if codec == _TF8:
        return tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
    if codec == _PNG16:
        return tf.io.decode_png(contents, channels=0, dtype=tf.uint16)
    return tf.numpy_function(_cv2_decode, [contents, dtype.name], dtype, stateful=False)


def decode_file(path: tf.Tensor, codec: tf.Tensor, dtype: tf.DType, codecs=(0, 1, 2)) -> tf.Tensor:
    """Reads and decodes one image file in the graph: ``image [H, W, C]`` of ``dtype``.

    ``codec`` (chosen per file when the source is built) is 0 for ``tf.io.decode_image``
    (8-bit PNG, JPEG, BMP, GIF first frame), 1 for ``tf.io.decode_png(dtype=uint16)``
    and 2 for OpenCV (TIFF); ``codecs`` lists those that occur (one: no switch).
    Raises (in the graph) on undecodable data or a bit depth other than ``dtype``;
    :func:`file_error` then says why.
    """
    contents = tf.io.read_file(path)
    codecs = sorted(set(codecs))
    if len(codecs) == 1:
        image = _decode_one(contents, codecs[0], dtype)
    else:
        branch = tf.argmax(tf.cast(tf.equal(tf.constant(codecs), tf.cast(codec, tf.int32)), tf.int32), output_type=tf.int32)
        image = tf.switch_case(branch, [lambda k=k: _decode_one(contents, k, dtype) for k in codecs])
    image = tf.reshape(image, tf.concat([tf.shape(image)[:2], [-1]], 0))
    image.set_shape([None, None, None])
    return image


def _cv2_error(contents: bytes, dtype_name: bytes) -> np.int32:
    import cv2

    try:
        arr = cv2.imdecode(np.frombuffer(_bytes(contents), np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        arr = None
    if arr is None:
        return np.int32(UNREADABLE)
    want = _text(dtype_name)
    ok = arr.dtype.name == want or (arr.dtype == np.float64 and want == "float32")
    return np.int32(UNREADABLE if ok else BIT_DEPTH)


def file_error(path: tf.Tensor, codec: tf.Tensor, dtype: tf.DType, codecs=(0, 1, 2)) -> tf.Tensor:
    """Why :func:`decode_file` failed: EMPTY, TRUNCATED, BIT_DEPTH or UNREADABLE (runs only on failure).

    OpenCV is asked only when ``codecs`` (those present in the source) include TIFF, so a
    source without TIFF files has no Python function in its graph (tf.data service).
    """
    contents = tf.io.read_file(path)
    code = precheck(contents)
    expected = {tf.uint8: _TF8, tf.uint16: _PNG16}.get(dtype, -1)
    depth = tf.where(tf.not_equal(codec, expected), BIT_DEPTH, UNREADABLE)
    if _CV2 in codecs:
        cv2_code = tf.numpy_function(_cv2_error, [contents, dtype.name], tf.int32, stateful=False)
        depth = tf.where(tf.equal(codec, _CV2), tf.reshape(cv2_code, []), depth)
    return tf.where(code != OK, code, depth)


def _probe(path: str) -> tuple[int, tf.DType | None]:
    """(codec, dtype) of a file from its extension and, for PNG, its header (cheap)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".tif", ".tiff"):
        return _CV2, None
    if ext == ".png":
        try:
            with open(path, "rb") as f:
                head = f.read(25)
            if head[:4] == b"\x89PNG" and len(head) == 25 and head[24] == 16:
                return _PNG16, tf.uint16
        except OSError:
            pass  # unreadable: the in-graph decode reports it with the file name
    return _TF8, tf.uint8


def _first_dtype(paths: Sequence[str]) -> tf.DType:
    """The dtype of a source: that of its first file (TIFF decoded once with OpenCV)."""
    _codec, dtype = _probe(paths[0])
    if dtype is not None:
        return dtype
    import cv2

    arr = cv2.imread(paths[0], cv2.IMREAD_UNCHANGED)
    if arr is None:
        return tf.uint8  # unreadable: the in-graph decode reports it with the file name
    if arr.dtype == np.float64:
        return tf.float32
    if arr.dtype.name not in ("uint8", "uint16", "float32"):
        raise TypeError(
            f"folder source: {paths[0]} has pixel dtype {arr.dtype.name}; supported are uint8, uint16 and "
            f"float32. Convert the files. Received: dtype={arr.dtype.name}"
        )
    return tf.as_dtype(arr.dtype)


def image_size(path: str) -> tuple[int, int] | None:
    """(height, width) of a PNG, JPEG, BMP or GIF from its header alone; None if unknown (e.g. TIFF).

    A pre-scan of headers, so a step count needs no decoding pass over the data.

    Example:
      >>> import tempfile, cv2, numpy as np
      >>> d = tempfile.mkdtemp(); _ = cv2.imwrite(f"{d}/a.png", np.zeros((5, 7), np.uint8))
      >>> _ = cv2.imwrite(f"{d}/a.jpg", np.zeros((9, 4, 3), np.uint8)); image_size(f"{d}/a.png"), image_size(f"{d}/a.jpg")
      ((5, 7), (9, 4))
    """
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n":
                return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
            if head[:6] in (b"GIF87a", b"GIF89a"):
                return int.from_bytes(head[8:10], "little"), int.from_bytes(head[6:8], "little")
            if head[:2] == b"BM":
                return abs(int.from_bytes(head[22:26], "little", signed=True)), int.from_bytes(head[18:22], "little", signed=True)
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                while True:
                    marker = f.read(2)
                    if len(marker) < 2 or marker[0] != 0xFF:
                        return None
                    length = int.from_bytes(f.read(2), "big")
                    if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
                        sof = f.read(5)
                        return int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big")
                    f.seek(length - 2, 1)
    except OSError:
        return None
    return None


def read_image(path, channels: int) -> np.ndarray:
    """Reads one image file as training does: :func:`decode_file`, then :func:`convert_channels`.

    Returns ``[H, W, channels]`` in the file's dtype (uint8, uint16 or float32).

    Raises:
      ValueError: the file cannot be read or decoded, or its channel count cannot be
        converted; the message names the file.

    Example:
      >>> import tempfile, cv2, numpy as np
      >>> d = tempfile.mkdtemp(); _ = cv2.imwrite(f"{d}/g.png", np.full((2, 3), 7, np.uint8))
      >>> image = read_image(f"{d}/g.png", 3); image.shape, image.dtype.name, int(image[0, 0, 2])
      ((2, 3, 3), 'uint8', 7)
    """
    path = str(path)
    codec, dtype = _probe(path)
    try:
        dtype = dtype or _first_dtype([path])
        image = decode_file(tf.constant(path), tf.constant(codec), dtype, (codec,))
    except (tf.errors.OpError, TypeError, ValueError) as e:
        code = int(file_error(tf.constant(path), tf.constant(codec), dtype or tf.uint8, (codec,))) if os.path.isfile(path) else UNREADABLE
        reason = {EMPTY: "it is an empty file (0 bytes)", TRUNCATED: "it is truncated"}.get(
            code, "missing, corrupt, or not a PNG/JPEG/BMP/GIF/TIFF file")
        raise ValueError(
            f"{path}: cannot read this file as an image ({reason}). Pass a PNG, JPEG, BMP or TIFF file. "
            f"Received: path={path!r}"
        ) from e
    have = int(image.shape[-1])
    converted, ok = convert_channels(image, channels)
    if not bool(ok):
        raise ValueError(
            f"{path}: has {have} channels, which cannot be converted to channels={channels} (supported inputs: "
            f"1 gray, 2 gray+alpha, 3 RGB, 4 RGBA). Re-export it as gray/RGB/RGBA. Received: channels={have}"
        )
    return converted.numpy()


