"""Decoding image files, the same way for training and prediction.

One path from a file to pixels: :func:`read_header` (format, declared size and dtype from
the first bytes, nothing decoded), :func:`decode_file` (PNG 8/16-bit, JPEG, BMP, GIF with
``tf.io``; TIFF through OpenCV) and :func:`convert_channels` (gray→RGB, RGBA→RGB,
RGB→gray). The folder source decodes with them in its tf.data graph, :func:`read_image`
with them for ``python -m fcndata.predict``, so the model sees the same pixels in training
and serving, and a bad file gets the same message in both: :func:`message` and
:func:`graph_message` fill the same templates (:data:`MESSAGES`).

Size limit: a file whose header declares more than ``max_pixels`` (height × width,
default :data:`DEFAULT_MAX_PIXELS`) is never decoded — not by TensorFlow, and not by the
OpenCV fallback that explains a failure. The folder source and :func:`read_image` read the
headers in Python first (PNG, JPEG, BMP, GIF, TIFF); :func:`decode_file` checks PNG, GIF
and BMP headers again in the graph, and the OpenCV functions check before decoding.
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass

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
TOO_LARGE = 11
LOSSY_MASK = 12

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
    TOO_LARGE: "larger than data.max_pixels",
    LOSSY_MASK: "mask in a lossy format (JPEG)",
}

#: Largest height × width decoded by default: 20000 × 20000 (1.2 GB as 8-bit RGB).
DEFAULT_MAX_PIXELS = 20000 * 20000

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_TF8, _PNG16, _CV2 = 0, 1, 2  # codecs: tf.io.decode_image, tf.io.decode_png(uint16), OpenCV

_FIX = " Re-export or remove the file{skip}. Received: path={path}"

#: Message templates of the file-level errors, shared by the folder source (filled in the
#: graph by :func:`graph_message`) and :func:`read_image` (filled by :func:`message`).
#: ``{where}`` is the source or command, ``{what}`` "image" or "mask", ``{skip}`` the
#: ", or set data.on_error=skip ..." hint where a source can skip (:data:`SKIP_HINT`).
MESSAGES = {
    UNREADABLE: ("{where}: could not read or decode {what} {path} (unreadable, corrupt, not a PNG/JPEG/BMP/GIF/TIFF "
                 "file, or a TIFF with more than 4 channels)." + _FIX),
    EMPTY: "{where}: {what} {path} is an empty file (0 bytes)." + _FIX,
    TRUNCATED: ("{where}: {what} {path} is truncated (the PNG IEND chunk or JPEG end marker is missing); the download "
                "or copy was probably interrupted." + _FIX),
    BIT_DEPTH: ("{where}: {what} {path} does not decode to {dtype}, the dtype of the other {what}s of this source; "
                "convert the files to one bit depth (e.g. all 8-bit PNG) or set data.image_dtype to convert them "
                "when read{skip}. Received: path={path}"),
    TOO_LARGE: ("{where}: {what} {path} is {size} pixels (height x width, from its header), more than "
                "data.max_pixels={limit}, so it was not decoded (a decompression bomb, or a scan too large for "
                "memory). Raise data.max_pixels if the image is real and fits in memory, or tile it{skip}. "
                "Received: size={size}"),
    LOSSY_MASK: ("{where}: mask {path} is a JPEG file; JPEG is lossy and blurs class ids at every edge (values "
                 "between and around the classes), so the mask would train on wrong classes. Export masks as PNG "
                 "(lossless){skip}. Received: mask={path}"),
    NON_FINITE: ("{where}: image {path} has NaN or inf pixels; replace them (e.g. np.nan_to_num) or drop the "
                 "image{skip}. Received: non_finite_pixels={count}"),
    CHANNELS: ("{where}: image {path} has {have} channels, which cannot be converted to channels={channels} "
               "(supported inputs: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA). Re-export it as gray/RGB/RGBA or change "
               "data.channels{skip}. Received: channels={have}"),
}

#: The ``{skip}`` field where the caller can skip a file (training sources).
SKIP_HINT = ", or set data.on_error=skip to skip it"

_FIELD = re.compile(r"\{(\w+)\}")


def message(code: int, **fields) -> str:
    """The message of error ``code`` with its fields filled (Python strings; ``skip`` defaults to
    :data:`SKIP_HINT`).

    Example:
      >>> message(EMPTY, where="predict", what="image", path="a.png", skip="")
      'predict: image a.png is an empty file (0 bytes). Re-export or remove the file. Received: path=a.png'
    """
    fields.setdefault("skip", SKIP_HINT)
    return _FIELD.sub(lambda m: str(fields[m.group(1)]), MESSAGES[code])


def graph_message(code: int, **fields) -> tf.Tensor:
    """:func:`message` in the graph: fields may be string tensors (a file's path)."""
    fields.setdefault("skip", SKIP_HINT)
    parts = _FIELD.split(MESSAGES[code])
    # split() alternates literal text and field names
    return tf.strings.join([p if i % 2 == 0 else fields[p] for i, p in enumerate(parts) if p != "" or i % 2])


# ---------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class Header:
    """What a file's first bytes say: ``format`` (png, jpeg, gif, bmp, tiff, empty or
    unknown), ``height`` / ``width`` (None if not found) and ``dtype`` the decoded pixels
    will have (``uint8``, ``uint16``, ``float32``, another numpy name for unsupported
    TIFFs, or None if unknown)."""

    format: str
    height: int | None = None
    width: int | None = None
    dtype: str | None = None

    @property
    def pixels(self) -> int | None:
        return None if self.height is None or self.width is None else self.height * self.width

    @property
    def codec(self) -> int:
        if self.format == "tiff":
            return _CV2
        return _PNG16 if self.format == "png" and self.dtype == "uint16" else _TF8


def _tiff_header(f, head: bytes) -> Header:
    endian = "<" if head[:2] == b"II" else ">"
    if struct.unpack(endian + "H", head[2:4])[0] != 42:
        return Header("tiff")  # BigTIFF and others: OpenCV decides
    f.seek(struct.unpack(endian + "I", head[4:8])[0])
    (count,) = struct.unpack(endian + "H", f.read(2))
    sizes = {1: 1, 3: 2, 4: 4, 16: 8}
    fields = {}
    for _ in range(min(count, 512)):
        entry = f.read(12)
        if len(entry) < 12:
            break
        tag, typ, n = struct.unpack(endian + "HHI", entry[:8])
        if tag not in (256, 257, 258, 339) or typ not in (3, 4):
            continue
        fmt = endian + ("H" if typ == 3 else "I")
        if n * sizes[typ] <= 4:
            value = struct.unpack(fmt, entry[8 : 8 + sizes[typ]])[0]
        else:  # several values stored elsewhere: the first is enough (one depth per file)
            here = f.tell()
            f.seek(struct.unpack(endian + "I", entry[8:12])[0])
            value = struct.unpack(fmt, f.read(sizes[typ]))[0]
            f.seek(here)
        fields[tag] = value
    bits, sample_format = fields.get(258, 1), fields.get(339, 1)
    kind = {1: "uint", 2: "int", 3: "float"}.get(sample_format, "uint")
    dtype = {("uint", 8): "uint8", ("uint", 16): "uint16", ("float", 32): "float32", ("float", 64): "float32"}.get(
        (kind, bits), f"{kind}{bits}")
    return Header("tiff", fields.get(257), fields.get(256), dtype)


def _jpeg_header(f) -> Header:
    f.seek(2)
    while True:
        if f.read(1) != b"\xff":
            return Header("jpeg", dtype="uint8")  # not a marker: give up, the decoder decides
        m = f.read(1)
        while m == b"\xff":  # fill bytes
            m = f.read(1)
        if not m:
            return Header("jpeg", dtype="uint8")
        m = m[0]
        if m == 0x01 or 0xD0 <= m <= 0xD7:  # markers without a length
            continue
        length = int.from_bytes(f.read(2), "big")
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):  # start of frame
            sof = f.read(5)
            if len(sof) < 5:
                return Header("jpeg", dtype="uint8")
            return Header("jpeg", int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), "uint8")
        if length < 2:
            return Header("jpeg", dtype="uint8")
        f.seek(length - 2, 1)


def _header(f) -> Header:
    head = f.read(32)
    if not head:
        return Header("empty")
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 26:
        depth, colour = head[24], head[25]
        dtype = "uint16" if depth == 16 and colour != 3 else "uint8"
        return Header("png", int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big"), dtype)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return Header("gif", int.from_bytes(head[8:10], "little"), int.from_bytes(head[6:8], "little"), "uint8")
    if head[:2] == b"BM" and len(head) >= 26:
        return Header("bmp", abs(int.from_bytes(head[22:26], "little", signed=True)),
                      int.from_bytes(head[18:22], "little", signed=True), "uint8")
    if head[:2] == b"\xff\xd8":
        return _jpeg_header(f)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_header(f, head)
    return Header("unknown")


def read_header(source) -> Header:
    """The :class:`Header` of a file (a path) or of encoded bytes; nothing is decoded.

    Example:
      >>> import tempfile, cv2, numpy as np
      >>> d = tempfile.mkdtemp(); _ = cv2.imwrite(f"{d}/a.png", np.zeros((5, 7), np.uint16))
      >>> read_header(f"{d}/a.png")
      Header(format='png', height=5, width=7, dtype='uint16')
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _header(io.BytesIO(bytes(source)))
        with open(source, "rb") as f:
            return _header(f)
    except (OSError, struct.error, ValueError):
        return Header("unknown")


def image_size(path: str) -> tuple[int, int] | None:
    """(height, width) of a PNG, JPEG, BMP, GIF or TIFF from its header alone; None if unknown.

    A pre-scan of headers, so a step count needs no decoding pass over the data.

    Example:
      >>> import tempfile, cv2, numpy as np
      >>> d = tempfile.mkdtemp(); _ = cv2.imwrite(f"{d}/a.png", np.zeros((5, 7), np.uint8))
      >>> _ = cv2.imwrite(f"{d}/a.jpg", np.zeros((9, 4, 3), np.uint8)); image_size(f"{d}/a.png"), image_size(f"{d}/a.jpg")
      ((5, 7), (9, 4))
    """
    h = read_header(path)
    return None if h.pixels is None else (h.height, h.width)


def too_large(header: Header, max_pixels: int | None) -> bool:
    """Whether ``header`` declares more than ``max_pixels`` pixels (None: no limit)."""
    return max_pixels is not None and header.pixels is not None and header.pixels > max_pixels


# ---------------------------------------------------------------------------- decoding


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


def declared_pixels(contents: tf.Tensor) -> tf.Tensor:
    """Height × width (int64) that a PNG, GIF or BMP header declares, in the graph; 0 for other formats.

    Example:
      >>> int(declared_pixels(tf.io.encode_png(tf.zeros([5, 7, 1], tf.uint8))))
      35
    """
    head = tf.strings.substr(contents, 0, 32)  # fewer bytes if the file is shorter
    padded = tf.strings.substr(tf.strings.join([head, b"\0" * 32]), 0, 32)
    b = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)

    def be32(i):
        return ((b[i] * 256 + b[i + 1]) * 256 + b[i + 2]) * 256 + b[i + 3]

    def le(i, n):
        return sum(b[i + k] * 256**k for k in range(n))

    bmp_h = le(22, 4)
    bmp_h = tf.where(bmp_h >= 2**31, 2**32 - bmp_h, bmp_h)
    png = tf.equal(tf.strings.substr(padded, 0, 8), b"\x89PNG\r\n\x1a\n")
    gif = tf.equal(tf.strings.substr(padded, 0, 4), b"GIF8")
    bmp = tf.equal(tf.strings.substr(padded, 0, 2), b"BM")
    return tf.where(png, be32(16) * be32(20), tf.where(gif, le(6, 2) * le(8, 2), tf.where(bmp, le(18, 4) * bmp_h, 0)))


def precheck(contents: tf.Tensor, max_pixels: int | None = None) -> tf.Tensor:
    """Error code for an encoded file before decoding: EMPTY, TRUNCATED (PNG/JPEG), TOO_LARGE or OK.

    TOO_LARGE only where the graph reads the size (:func:`declared_pixels`: PNG, GIF, BMP).
    """
    n = tf.strings.length(contents)
    head = tf.strings.substr(contents, 0, 4)
    is_png = tf.equal(head, b"\x89PNG")
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8")
    truncated = (is_png & ~_end_bytes_ok(contents, b"IEND\xaeB`\x82")) | (is_jpeg & ~_jpeg_end_ok(contents))
    large = tf.constant(False) if max_pixels is None else declared_pixels(contents) > max_pixels
    return tf.where(tf.equal(n, 0), EMPTY, tf.where(large, TOO_LARGE, tf.where(truncated, TRUNCATED, OK)))


def _bytes(value) -> bytes:
    """A string argument of a numpy_function: bytes in a graph, a 0-d array when run eagerly."""
    value = value if isinstance(value, bytes) else np.asarray(value).item()
    return value.encode() if isinstance(value, str) else value


def _text(value) -> str:
    return _bytes(value).decode()


def _limit(max_pixels) -> int | None:
    value = int(np.asarray(max_pixels))
    return None if value <= 0 else value


def convert_dtype(arr: np.ndarray, want: np.dtype, convert: str) -> np.ndarray | None:
    """``arr`` as ``want`` under the ``convert`` rule, or None if that rule does not allow it.

    ``"scale"`` (images): uint8 → uint16 × 257, uint16 → uint8 rounded ÷ 257 (full range to
    full range); ``"cast"`` (masks: class ids) keeps the values; ``"none"`` converts nothing.
    """
    if arr.dtype == want:
        return arr
    if arr.dtype == np.float64 and want == np.float32:
        return arr.astype(np.float32)
    pair = (arr.dtype.name, want.name)
    if convert == "scale" and pair == ("uint8", "uint16"):
        return arr.astype(np.uint16) * np.uint16(257)
    if convert == "scale" and pair == ("uint16", "uint8"):
        return np.round(arr / 257.0).astype(np.uint8)
    if convert == "cast" and pair in (("uint8", "uint16"), ("uint8", "int32"), ("uint16", "int32")):
        return arr.astype(want)
    return None


def _cv2_decode(contents: bytes, dtype_name: bytes, convert: bytes = b"none", max_pixels=0) -> np.ndarray:
    import cv2  # only TIFF needs OpenCV

    data = _bytes(contents)
    if too_large(read_header(data), _limit(max_pixels)):
        raise ValueError("declared size above data.max_pixels: not decoded")
    want = np.dtype(_text(dtype_name))
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("OpenCV could not decode the file")
    converted = convert_dtype(arr, want, _text(convert))
    if converted is None:
        raise ValueError(f"bit depth {arr.dtype} is not {want}")
    arr = converted
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[-1] in (3, 4):  # OpenCV is BGR(A)
        arr = arr[..., [2, 1, 0, 3][: arr.shape[-1]]]
    return np.ascontiguousarray(arr)


def _scale(image: tf.Tensor, dtype: tf.DType, convert: str) -> tf.Tensor | None:
    """The graph twin of :func:`convert_dtype` for uint8 / uint16 tensors."""
    if image.dtype == dtype:
        return image
    if convert == "scale" and (image.dtype, dtype) == (tf.uint8, tf.uint16):
        return tf.cast(image, tf.uint16) * 257
    if convert == "scale" and (image.dtype, dtype) == (tf.uint16, tf.uint8):
        return tf.cast(tf.round(tf.cast(image, tf.float32) / 257.0), tf.uint8)
    if convert == "cast" and dtype in (tf.uint16, tf.int32) and image.dtype.size < dtype.size:
        return tf.cast(image, dtype)
    return None


def _decode_one(contents: tf.Tensor, codec: int, dtype: tf.DType, convert: str = "none",
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    if codec == _CV2:
        return tf.numpy_function(_cv2_decode, [contents, dtype.name, convert, max_pixels or 0], dtype, stateful=False)
    natural = tf.uint8 if codec == _TF8 else tf.uint16
    if _scale(tf.zeros([0], natural), dtype, convert) is None:
        # e.g. a 16-bit PNG among 8-bit ones: fail, and file_error() says why. The condition
        # is dynamic (never true) so the assertion fires when run, not when traced.
        failed = tf.debugging.Assert(tf.strings.length(contents) < 0, ["bit depth differs"])
        with tf.control_dependencies([failed]):
            return tf.zeros([0, 0, 1], dtype)
    checks = []
    if max_pixels is not None:  # the header's size, before the decoder allocates it
        checks.append(tf.debugging.Assert(declared_pixels(contents) <= max_pixels, ["declared size above max_pixels"]))
    with tf.control_dependencies(checks):
        if codec == _TF8:
            image = tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
        else:
            image = tf.io.decode_png(contents, channels=0, dtype=tf.uint16)
    return _scale(image, dtype, convert)


def decode_file(path: tf.Tensor, codec: tf.Tensor, dtype: tf.DType, codecs=(0, 1, 2), *, convert: str = "none",
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Reads and decodes one image file in the graph: ``image [H, W, C]`` of ``dtype``.

    ``codec`` (chosen per file from its header when the source is built,
    :attr:`Header.codec`) is 0 for ``tf.io.decode_image`` (8-bit PNG, JPEG, BMP, GIF first
    frame), 1 for ``tf.io.decode_png(dtype=uint16)`` and 2 for OpenCV (TIFF); ``codecs``
    lists those that occur (one: no switch). ``convert`` says how a file of another bit
    depth becomes ``dtype`` (:func:`convert_dtype`: ``none``, ``scale`` or ``cast``). A
    header that declares more than ``max_pixels`` pixels is not decoded.
    Raises (in the graph) on undecodable data, a bit depth it may not convert, or a file
    above the size limit; :func:`file_error` then says why.
    """
    contents = tf.io.read_file(path)
    codecs = sorted(set(codecs))
    if len(codecs) == 1:
        image = _decode_one(contents, codecs[0], dtype, convert, max_pixels)
    else:
        branch = tf.argmax(tf.cast(tf.equal(tf.constant(codecs), tf.cast(codec, tf.int32)), tf.int32), output_type=tf.int32)
        image = tf.switch_case(branch, [lambda k=k: _decode_one(contents, k, dtype, convert, max_pixels) for k in codecs])
    image = tf.reshape(image, tf.concat([tf.shape(image)[:2], [-1]], 0))
    image.set_shape([None, None, None])
    return image


def _cv2_error(contents: bytes, dtype_name: bytes, convert: bytes = b"none", max_pixels=0) -> np.int32:
    import cv2

    data = _bytes(contents)
    if too_large(read_header(data), _limit(max_pixels)):
        return np.int32(TOO_LARGE)  # never decode a bomb to explain an error
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        arr = None
    if arr is None:
        return np.int32(UNREADABLE)
    ok = convert_dtype(arr[:1, :1], np.dtype(_text(dtype_name)), _text(convert)) is not None
    return np.int32(UNREADABLE if ok else BIT_DEPTH)


def file_error(path: tf.Tensor, codec: tf.Tensor, dtype: tf.DType, codecs=(0, 1, 2), *, convert: str = "none",
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Why :func:`decode_file` failed: EMPTY, TOO_LARGE, TRUNCATED, BIT_DEPTH or UNREADABLE (runs only on failure).

    OpenCV is asked only when ``codecs`` (those present in the source) include TIFF, so a
    source without TIFF files has no Python function in its graph (tf.data service); it
    reads the header first and never decodes a file above ``max_pixels``.
    """
    contents = tf.io.read_file(path)
    code = precheck(contents, max_pixels)
    allowed = [c for c, natural in ((_TF8, tf.uint8), (_PNG16, tf.uint16))
               if _scale(tf.zeros([0], natural), dtype, convert) is not None]
    depth = tf.where(tf.reduce_any(tf.equal(tf.cast(codec, tf.int32), allowed + [-1])), UNREADABLE, BIT_DEPTH)
    if _CV2 in codecs:
        cv2_code = tf.numpy_function(_cv2_error, [contents, dtype.name, convert, max_pixels or 0], tf.int32,
                                     stateful=False)
        depth = tf.where(tf.equal(codec, _CV2), tf.reshape(cv2_code, []), depth)
    return tf.where(code != OK, code, depth)


def read_image(path, channels: int, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, where: str = "predict") -> np.ndarray:
    """Reads one image file as training does, with training's checks and messages.

    The header first (size limit, dtype), then :func:`decode_file`, :func:`convert_channels`
    and the NaN/inf check: the same functions, order and message templates as the folder source.

    Returns ``[H, W, channels]`` in the file's dtype (uint8, uint16 or float32).

    Raises:
      ValueError: the file is missing, empty, truncated, above ``max_pixels``, cannot be
        decoded, has NaN/inf pixels, or its channel count cannot be converted; the message
        names the file.

    Example:
      >>> import tempfile, cv2, numpy as np
      >>> d = tempfile.mkdtemp(); _ = cv2.imwrite(f"{d}/g.png", np.full((2, 3), 7, np.uint8))
      >>> image = read_image(f"{d}/g.png", 3); image.shape, image.dtype.name, int(image[0, 0, 2])
      ((2, 3, 3), 'uint8', 7)
    """
    path = str(path)
    fields = {"where": where, "what": "image", "path": path, "skip": ""}
    if not os.path.isfile(path):
        raise ValueError(f"{where}: image {path} not found (no such file). Check the path. Received: path={path!r}")
    header = read_header(path)
    if too_large(header, max_pixels):
        raise ValueError(message(TOO_LARGE, size=f"{header.height}x{header.width}", limit=max_pixels, **fields))
    if header.format == "empty":
        raise ValueError(message(EMPTY, **fields))
    dtype = header.dtype or "uint8"
    if dtype not in ("uint8", "uint16", "float32"):
        raise ValueError(
            f"{where}: image {path} has pixel dtype {dtype}; supported are uint8, uint16 and float32. Convert the "
            f"file. Received: dtype={dtype}"
        )
    codec = header.codec
    try:
        image = decode_file(tf.constant(path), tf.constant(codec), tf.as_dtype(dtype), (codec,), max_pixels=max_pixels)
    except (tf.errors.OpError, TypeError, ValueError) as e:
        code = int(file_error(tf.constant(path), tf.constant(codec), tf.as_dtype(dtype), (codec,), max_pixels=max_pixels))
        raise ValueError(message(code if code in (EMPTY, TRUNCATED) else UNREADABLE, **fields)) from e
    have = int(image.shape[-1])
    converted, ok = convert_channels(image, channels)
    if not bool(ok):
        raise ValueError(message(CHANNELS, have=have, channels=channels, **fields))
    if converted.dtype.is_floating:  # counted after conversion, as the folder source counts
        bad = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(converted), tf.int64)))
        if bad:
            raise ValueError(message(NON_FINITE, count=bad, **fields))
    return converted.numpy()
