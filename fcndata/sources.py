"""Sources: folders of images and masks, numpy arrays, TFRecords, prepared TFDS, built-ins.

Every source yields contract elements (see :mod:`fcndata.elements`) with
``source_index`` 0, 1, … in source order, ``origin`` (0, 0), ``source_shape`` the image
size and ``roi`` = 1 where ``label != ignore_label``.

Decoding happens inside the tf.data graph: PNG (8 and 16 bit), JPEG, BMP and GIF with
``tf.io``; only TIFF goes through OpenCV (``tf.numpy_function``), because TensorFlow has
no TIFF decoder. 16-bit PNG is decoded by ``tf.io.decode_png(dtype=uint16)`` rather than
OpenCV: same pixels, but it stays graph-only (serialisable for the tf.data service).

Errors. Problems visible from file names (empty glob, image without mask, mask without
image, unsupported extension) are found in Python when the source is built. Problems
inside a file (unreadable or truncated, image and mask of different sizes, labels out of
range, NaN/inf, an unconvertible channel count, a colour not in the palette) are found
per element in the graph: each element gets an error code and a message naming the
file(s). With ``on_error="raise"`` (default) the first bad element stops the pass with a
``tf.errors.InvalidArgumentError`` carrying that message. With ``on_error="skip"`` bad
elements are filtered out and recorded in a :class:`SkipReport`; when the pass ends the
report logs every skipped file and its reason (warning on logger ``fcndata``) — never a
silent drop. The recording hook is a ``tf.py_function`` in the filter predicate, so
``skip`` ties the pipeline to the Python process (the tf.data service needs ``raise``).

Example:
  >>> import fcndata.testing as t
  >>> ds = from_arrays([t.coordinate_image(5, 7).numpy()], [t.stripe_label(5, 7).numpy()], num_classes=3)
  >>> e = next(iter(ds))
  >>> e["image"].shape, e["path"].numpy(), int(e["source_index"])
  (TensorShape([5, 7, 3]), b'arrays/0', 0)
"""

from __future__ import annotations

import contextlib
import glob as globlib
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.common import ALIGN, aligned_empty
from fcndata.config import BUILTIN_SOURCES
from fcndata.decode import (  # noqa: F401  (decoding lives in fcndata.decode; re-exported here)
    _CV2,
    _PNG16,
    _TF8,
    BIT_DEPTH,
    CHANNELS,
    DEFAULT_MAX_PIXELS,
    EMPTY,
    IMAGE_EXTENSIONS,
    LABEL_RANGE,
    LOSSY_MASK,
    MASK_CHANNELS,
    NON_FINITE,
    OK,
    PALETTE,
    REASONS,
    SIZE,
    TOO_LARGE,
    TRUNCATED,
    UNREADABLE,
    Header,
    _cv2_decode,
    _cv2_error,
    _decode_one,
    convert_channels,
    declared_pixels,
    decode_file,
    file_error,
    graph_message,
    image_size,
    message,
    precheck,
    read_header,
    too_large,
)

logger = logging.getLogger("fcndata")

# The element functions below are plain TF ops (gathers, where, switch_case); skipping AutoGraph's
# source conversion saves seconds of tracing per dataset.
_graph = tf.autograph.experimental.do_not_convert

# ---------------------------------------------------------------------------- skip report


_COLLECTORS: list[list[SkipReport]] = []


@contextlib.contextmanager
def collect_skips():
    """Gathers the :class:`SkipReport` of every source built inside the block.

    The commands use it to print the skipped files once per run (and save them), instead
    of each report logging them at the end of each of its passes: inside the block the
    reports stay quiet. Yields the list the reports are appended to; see :func:`skipped_files`.

    Example:
      >>> with collect_skips() as reports:
      ...     r = SkipReport("folder"); r.record("a.png", "truncated file"); r.end_pass()
      >>> skipped_files(reports)
      [('a.png', 'truncated file')]
    """
    reports: list[SkipReport] = []
    _COLLECTORS.append(reports)
    try:
        yield reports
    finally:
        _COLLECTORS.remove(reports)


def skipped_files(reports) -> list[tuple[str, str]]:
    """The (path, reason) pairs of ``reports``, each file once, in the order first seen.

    A file is listed when any pass skipped it, also an unfinished pass (a run stopped
    early still says what it skipped).
    """
    seen: dict[str, str] = {}
    for report in reports:
        for path, reason in report.skipped + report.pending:
            seen.setdefault(path, reason)
    return list(seen.items())


class SkipReport:
    """Files skipped under ``on_error="skip"``, with the reason for each.

    ``skipped`` holds the (path, reason) pairs of the last completed pass (``pending``
    those of the pass in progress); ``passes`` counts completed passes. At the end of
    every pass that skipped something, the report is logged as a warning — unless it was
    made inside :func:`collect_skips`, whose owner prints the files once.

    Example:
      >>> r = SkipReport("folder")
      >>> r.record("a.png", "truncated file"); r.end_pass()
      >>> r.count, r.skipped
      (1, [('a.png', 'truncated file')])
    """

    def __init__(self, where: str = "source"):
        self.where = where
        self.static: list[tuple[str, str]] = []  # found at construction (pairing, extension)
        self.pending: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = list(self.static)
        self.passes = 0
        self.quiet = bool(_COLLECTORS)
        if _COLLECTORS:
            _COLLECTORS[-1].append(self)

    def add_static(self, path: str, reason: str) -> None:
        """Records a file skipped at construction; it is listed in every pass."""
        self.static.append((path, reason))
        self.skipped = list(self.static)

    def record(self, path: str, reason: str) -> None:
        self.pending.append((path, reason))

    def end_pass(self) -> None:
        self.skipped = self.static + self.pending
        self.pending = []
        self.passes += 1
        if self.skipped and not self.quiet:
            logger.warning(self.summary())

    @property
    def count(self) -> int:
        """Number of files skipped in the last completed pass."""
        return len(self.skipped)

    def summary(self) -> str:
        lines = [f"{self.where}: skipped {self.count} element(s) (data.on_error=skip):"]
        lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SkipReport(where={self.where!r}, count={self.count}, passes={self.passes})"


# ---------------------------------------------------------------------------- pure element functions


def palette_to_labels(mask: tf.Tensor, palette, ignore_color=None, ignore_label: int = E.IGNORE_LABEL):
    """Maps an RGB(A) colour mask to class ids: colour ``palette[k]`` -> ``k``.

    Pixels of ``ignore_color`` become ``ignore_label``. Alpha is ignored.

    Returns:
      ``(label int32 [H, W], unmatched int32 [], first_unmatched_colour int32 [3])``;
      unmatched pixels get ``ignore_label`` in ``label``.

    Example:
      >>> m = tf.constant([[[0, 0, 0], [128, 0, 0]], [[224, 224, 192], [1, 2, 3]]], tf.uint8)
      >>> lab, n, col = palette_to_labels(m, [(0, 0, 0), (128, 0, 0)], ignore_color=(224, 224, 192))
      >>> lab.numpy().tolist(), int(n), col.numpy().tolist()
      ([[0, 1], [255, 255]], 1, [1, 2, 3])
    """
    rgb = tf.cast(mask[..., :3], tf.int32)
    key = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    keys = tf.constant([r * 65536 + g * 256 + b for r, g, b in palette], tf.int32)
    hits = tf.equal(key[..., None], keys)
    matched = tf.reduce_any(hits, -1)
    label = tf.where(matched, tf.argmax(tf.cast(hits, tf.int8), -1, output_type=tf.int32), ignore_label)
    if ignore_color is not None:
        r, g, b = ignore_color
        matched = matched | tf.equal(key, r * 65536 + g * 256 + b)
    unmatched = tf.logical_not(matched)
    first = tf.where(unmatched)[:1]
    colour = tf.reshape(tf.concat([tf.gather_nd(rgb, first), tf.zeros([1, 3], tf.int32)], 0)[0], [3])
    return label, tf.reduce_sum(tf.cast(unmatched, tf.int32)), colour


#: A mask looks like JPEG ringing when its out-of-range values take at least this many
#: distinct values, nearly all (RINGING_SHARE) within RINGING_DISTANCE of a class id or
#: ignore_label: lossy compression smears every edge into values next to the true ones.
RINGING_VALUES, RINGING_DISTANCE, RINGING_SHARE = 3, 8, 0.9
#: The same for colour masks, per channel: JPEG's chroma subsampling smears colours further
#: (measured on a 3-colour VOC mask at quality 75-95: 99 % of off-palette pixels within 47).
PALETTE_RINGING_DISTANCE = 48


def palette_ringing(mask: tf.Tensor, palette, ignore_color=None):
    """``(looks_like_jpeg, distinct_unmatched_colours)`` of an RGB colour mask.

    JPEG ringing leaves many distinct colours off the palette, nearly all (RINGING_SHARE)
    within PALETTE_RINGING_DISTANCE of a palette colour in every channel; one stray colour
    (a class missing from the palette) is not it.

    Example:
      >>> m = tf.constant([[[0, 0, 0], [128, 0, 0], [3, 1, 0], [125, 2, 1], [0, 4, 2]]], tf.uint8)
      >>> [int(v) for v in palette_ringing(m, [(0, 0, 0), (128, 0, 0)])]
      [1, 3]
    """
    rgb = tf.reshape(tf.cast(mask[..., :3], tf.int32), [-1, 3])
    colours = list(palette) + ([tuple(ignore_color)] if ignore_color is not None else [])
    table = tf.constant(colours, tf.int32)
    distance = tf.reduce_min(tf.reduce_max(tf.abs(rgb[:, None, :] - table[None]), -1), -1)
    off = tf.boolean_mask(rgb, distance > 0)
    near = tf.reduce_sum(tf.cast(tf.boolean_mask(distance, distance > 0) <= PALETTE_RINGING_DISTANCE, tf.float32))
    distinct = tf.size(tf.unique(off[:, 0] * 65536 + off[:, 1] * 256 + off[:, 2]).y)
    looks = (distinct >= RINGING_VALUES) & (near >= RINGING_SHARE * tf.cast(tf.shape(off)[0], tf.float32))
    return looks, distinct


def _int_str(x) -> tf.Tensor:
    return tf.strings.as_string(tf.cast(x, tf.int64))


def _shape_str(hw) -> tf.Tensor:
    return tf.strings.join([_int_str(hw[0]), "x", _int_str(hw[1])])


def label_range_error(label: tf.Tensor, num_classes: int, ignore_label: int):
    """``(bad, example_value)``: any label outside [0, num_classes) that is not ignore_label."""
    lab = tf.cast(label, tf.int32)
    wrong = ((lab < 0) | (lab >= num_classes)) & tf.not_equal(lab, ignore_label)
    example = tf.concat([tf.boolean_mask(lab, wrong), [0]], 0)[0]
    return tf.reduce_any(wrong), example


def ringing(label: tf.Tensor, num_classes: int, ignore_label: int):
    """``(looks_like_jpeg, wrong_pixels, distinct_wrong_values)`` of a mask (see RINGING_*).

    Example:
      >>> m = tf.constant([[0, 1, 2, 3], [4, 1, 254, 0]])
      >>> [int(v) for v in ringing(m, 2, 255)]
      [1, 4, 4]
    """
    lab = tf.reshape(tf.cast(label, tf.int32), [-1])
    wrong = tf.boolean_mask(lab, ((lab < 0) | (lab >= num_classes)) & tf.not_equal(lab, ignore_label))
    to_class = tf.where(wrong < 0, -wrong, wrong - (num_classes - 1))
    distance = tf.minimum(to_class, tf.abs(wrong - ignore_label))
    near = tf.reduce_sum(tf.cast(distance <= RINGING_DISTANCE, tf.float32))
    n = tf.size(wrong)
    distinct = tf.size(tf.unique(wrong).y)
    looks = (distinct >= RINGING_VALUES) & (near >= RINGING_SHARE * tf.cast(n, tf.float32))
    return looks, n, distinct


def first_error(checks) -> tuple[tf.Tensor, tf.Tensor]:
    """``(code, message)`` of the first failing check, ``(0, "")`` if none fails.

    Args:
      checks: ``[(code, bad, make_message), ...]`` with ``bad`` a bool tensor and
        ``make_message()`` a string tensor. Every message is built (a few string ops per
        element) and one is gathered: cheaper to trace than nested ``tf.cond``.
    """
    if not checks:
        return tf.constant(OK), tf.constant("")
    bads = tf.stack([tf.convert_to_tensor(b) for _, b, _ in checks] + [tf.constant(True)])
    codes = tf.stack([tf.cast(c, tf.int32) for c, _, _ in checks] + [tf.constant(OK)])
    messages = tf.stack([m() for _, _, m in checks] + [tf.constant("")])
    first = tf.argmax(tf.cast(bads, tf.int32), output_type=tf.int32)
    return codes[first], messages[first]


def _range_message(where, label_file, label, example, num_classes: int, ignore_label: int) -> tf.Tensor:
    looks, n, distinct = ringing(label, num_classes, ignore_label)
    ringing_text = tf.strings.join([
        where, ": mask ", label_file, " has ", _int_str(n), " pixel(s) of ", _int_str(distinct), (f" distinct values "
        f"outside [0, {num_classes}), nearly all next to a class id or ignore_label={ignore_label}: this looks like "
        "JPEG compression ringing (the mask was saved as JPEG at some point), so its class ids are wrong along every "
        "edge. Re-export the mask losslessly (PNG) from the original labels, or set data.on_error=skip. "
        "Received: label_value="), _int_str(example),
    ])
    range_text = tf.strings.join([
        where, ": mask ", label_file, (f" has label values outside [0, {num_classes}) that are not "
        f"ignore_label={ignore_label}; fix the mask, raise data.num_classes, or map those pixels to "
        "ignore_label (set data.on_error=skip to skip the file). Received: label_value="), _int_str(example),
    ])
    return tf.where(looks, ringing_text, range_text)


def content_checks(element, num_classes: int, ignore_label: int, where: str, label_file=None):
    """The checks every source shares: size mismatch, label range, NaN/inf."""
    image, label, path = element[E.IMAGE], element[E.LABEL], element[E.PATH]
    label_file = path if label_file is None else label_file
    ihw, lhw = tf.shape(image)[:2], tf.shape(label)[:2]
    range_bad, example = label_range_error(label, num_classes, ignore_label)
    checks = [
        (
            SIZE,
            tf.reduce_any(tf.not_equal(ihw, lhw)),
            lambda: tf.strings.join([
                where, ": image ", path, " is ", _shape_str(ihw), " (HxW) but its mask ", label_file, " is ",
                _shape_str(lhw), ("; an image and its mask must have the same height and width. "
                "Resize or re-export the mask, or set data.on_error=skip. Received: image_shape="),
                _shape_str(ihw), ", mask_shape=", _shape_str(lhw),
            ]),
        ),
        (
            LABEL_RANGE,
            range_bad,
            lambda: _range_message(where, label_file, label, example, num_classes, ignore_label),
        ),
    ]
    if image.dtype.is_floating:
        finite = tf.math.is_finite(image)
        nonfinite = tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int64))
        checks.append((
            NON_FINITE,
            nonfinite > 0,
            lambda: graph_message(NON_FINITE, where=where, path=path, count=_int_str(nonfinite)),
        ))
    return checks


def _file_message(where: str, what: str, path: tf.Tensor, code: tf.Tensor, dtype: tf.DType, max_pixels):
    """The message for a decode-stage error code of one file (the templates of :mod:`fcndata.decode`)."""
    fields = {"where": where, "what": what, "path": path}
    codes = [UNREADABLE, EMPTY, TRUNCATED, BIT_DEPTH, TOO_LARGE]
    messages = tf.stack([
        graph_message(UNREADABLE, **fields),
        graph_message(EMPTY, **fields),
        graph_message(TRUNCATED, **fields),
        graph_message(BIT_DEPTH, dtype=dtype.name, **fields),
        # only the graph's own header check gets here (the folder source drops such files when built)
        graph_message(TOO_LARGE, size=_int_str(declared_pixels(tf.io.read_file(path))), limit=str(max_pixels), **fields),
    ])
    index = tf.argmax(tf.cast(tf.equal(tf.constant(codes), code), tf.int32), output_type=tf.int32)
    return messages[index]


def _placeholder(spec):
    """A dummy value of a (nested) TensorSpec structure, for sentinels."""
    return tf.nest.map_structure(
        lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype), spec
    )


def handle_errors(ds: tf.data.Dataset, on_error: str, report: SkipReport | None) -> tf.data.Dataset:
    """Turns a dataset of ``(element, code, message)`` into elements: raise or skip+report."""
    if on_error == "raise":

        def check(element, code, message):
            ok = tf.debugging.Assert(tf.equal(code, OK), [message], summarize=1)
            with tf.control_dependencies([ok]):
                return tf.nest.map_structure(tf.identity, element)

        return ds.map(_graph(check), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    report = report if report is not None else SkipReport()
    END = -1

    def record(path, message):
        report.record(path.numpy().decode(errors="replace"), message.numpy().decode(errors="replace"))
        return False

    def finish():
        report.end_pass()
        return False

    def keep(element, code, message):
        return tf.case(
            [
                (tf.equal(code, OK), lambda: tf.constant(True)),
                (tf.equal(code, END), lambda: tf.py_function(finish, [], tf.bool)),
            ],
            default=lambda: tf.py_function(record, [element[E.PATH], message], tf.bool),
        )

    end = tf.data.Dataset.from_tensors((_placeholder(ds.element_spec[0]), tf.constant(END), tf.constant("")))
    return ds.concatenate(end).filter(_graph(keep)).map(_graph(lambda e, c, m: e))


# ---------------------------------------------------------------------------- Python-side helpers


def _resolve(pattern: str, root: str | None, glob: bool = False) -> str:
    """``pattern`` joined to ``root``; with ``glob``, the root is escaped (a folder named
    ``data[1]`` is a folder, not a character class)."""
    pattern = os.path.expanduser(pattern)
    if root is not None and not os.path.isabs(pattern) and "://" not in pattern:
        pattern = os.path.join(globlib.escape(root) if glob else root, pattern)
    return pattern


def mask_path(pattern: str, stem: str) -> str:
    """The mask file of an image stem: ``{stem}`` replaced, nothing else.

    Paths are data, not format strings: other braces (a folder ``data_{v1}``) stay as they are.

    Example:
      >>> mask_path("/d/data_{v1}/masks/{stem}.png", "a")
      '/d/data_{v1}/masks/a.png'
    """
    return pattern.replace("{stem}", stem)


def _label_dtype(num_classes: int, ignore_label: int) -> tf.DType:
    return tf.uint8 if num_classes <= 256 and 0 <= ignore_label <= 255 else tf.int32


def _check_common(num_classes, ignore_label, on_error, where):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int. Received: num_classes={num_classes!r}")
    if 0 <= ignore_label < num_classes:
        raise ValueError(
            f"{where}: ignore_label must not be a class id in [0, {num_classes}); the usual value is 255. "
            f"Received: ignore_label={ignore_label}"
        )
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{where}: on_error must be 'raise' or 'skip'. Received: on_error={on_error!r}")


# ---------------------------------------------------------------------------- sources


def _pair_files(images_glob, masks_pattern, root, on_error, report, where) -> list[tuple[str, str]]:
    """(image, mask) paths paired by stem, from the file names alone (nothing is read)."""
    images_abs, masks_abs = _resolve(images_glob, root, glob=True), _resolve(masks_pattern, root)
    # {stem} is substituted in the pattern alone, then joined to root: a root named "{stem}x" is a folder
    masks_rel = os.path.expanduser(masks_pattern)
    base = masks_abs[: len(masks_abs) - len(masks_rel)]  # the root part ("" for an absolute pattern)
    images = sorted(p for p in globlib.glob(images_abs, recursive=True) if os.path.isfile(p))
    if not images:
        raise ValueError(
            f"{where}: no files match the image glob {images_glob!r} (resolved to {images_abs!r}). Check the "
            f"pattern (e.g. 'images/*.png') and data.root, which relative patterns are resolved against. "
            f"Received: images={images_glob!r}, root={root!r}"
        )

    problems: list[tuple[str, str]] = []
    unsupported = [p for p in images if os.path.splitext(p)[1].lower() not in IMAGE_EXTENSIONS]
    for p in unsupported:
        problems.append((p, f"unsupported file type; supported are {', '.join(IMAGE_EXTENSIONS)}"))
    by_stem: dict[str, list[str]] = {}
    for p in images:
        if p not in unsupported:
            by_stem.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
    dupes = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    if dupes:
        ps = next(iter(dupes.values()))
        raise ValueError(
            f"{where}: {len(dupes)} file stem(s) match several images, so the mask pairing is ambiguous, e.g. "
            f"{ps}. Rename the files or narrow the glob (e.g. '*.png'). Received: images={images_glob!r}"
        )
    pairs = []
    for stem, (p,) in sorted(by_stem.items(), key=lambda kv: kv[1][0]):
        mask = base + mask_path(masks_rel, stem)
        if os.path.isfile(mask):
            pairs.append((p, mask))
        else:
            problems.append((p, f"image without mask: expected {mask}"))
    # A mask is orphaned only if no file of its stem sits next to the matched images: a glob
    # that selects a subset (train_*.png) does not make the other masks errors.
    stem_re = re.compile("^" + re.escape(base) + "(.+)".join(re.escape(part) for part in masks_rel.split("{stem}")) + "$")
    image_dirs = sorted({os.path.dirname(p) for p in images})
    for m in sorted(globlib.glob(globlib.escape(base) + "*".join(globlib.escape(part) for part in masks_rel.split("{stem}")))):
        match = stem_re.match(m)
        stem = match.group(1) if match else None
        if stem is None or stem in by_stem or "/" in stem:
            continue
        if not any(globlib.glob(os.path.join(globlib.escape(d), globlib.escape(stem) + ".*")) for d in image_dirs):
            problems.append((m, f"mask without image: no image named {stem}.* next to the files matching {images_glob!r}"))
    if problems:
        if on_error == "raise":
            listing = "\n".join(f"  {p}: {r}" for p, r in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(
                f"{where}: {len(problems)} file(s) cannot be paired by stem (images {images_glob!r}, masks "
                f"{masks_pattern!r}):\n{listing}{more}\nAdd the missing files, remove the extra ones, fix the "
                f"patterns, or set data.on_error=skip to skip them. Received: {len(problems)} unpaired file(s)"
            )
        for p, r in problems:
            report.add_static(p, r)
    if not pairs:
        raise ValueError(
            f"{where}: no image in {images_glob!r} has a mask matching {masks_pattern!r}. Check the mask "
            f"pattern. Received: {len(problems)} unpaired file(s)"
        )

    return pairs


def _plan_decoding(pairs, image_dtype: str, max_pixels, on_error, report, where):
    """Reads every image and mask header once (no decoding) and decides how to decode.

    Refuses, by file: JPEG masks (lossy), files above ``max_pixels``, unsupported or
    float masks, images whose bit depth is not the source's. The source's image dtype is
    ``image_dtype`` if given, else the majority's (a tie is an error: nothing tells which
    files are the odd ones). Under ``skip`` refused pairs are dropped and reported.

    Returns:
      ``(kept pairs, plan)``, plan holding ``image_dtype`` / ``mask_dtype`` (tf dtypes),
      ``convert`` (the images' :func:`fcndata.decode.convert_dtype` rule) and the codecs.
    """
    iheads = [read_header(p) for p, _ in pairs]
    mheads = [read_header(m) for _, m in pairs]
    problems: dict[int, tuple[str, str]] = {}  # pair index -> (file, message)

    def refuse(i, path, text):
        problems.setdefault(i, (path, text))

    for i, ((p, m), ih, mh) in enumerate(zip(pairs, iheads, mheads)):
        if mh.format == "jpeg" or (mh.format == "unknown" and os.path.splitext(m)[1].lower() in (".jpg", ".jpeg")):
            refuse(i, m, message(LOSSY_MASK, where=where, path=m))
        for what, path, h in (("image", p, ih), ("mask", m, mh)):
            if too_large(h, max_pixels):
                refuse(i, path, message(TOO_LARGE, where=where, what=what, path=path, size=f"{h.height}x{h.width}",
                                        limit=max_pixels))
        if mh.dtype is not None and mh.dtype not in ("uint8", "uint16"):
            refuse(i, m, f"{where}: mask {m} has pixel dtype {mh.dtype}; masks hold integer class ids in 8 or 16 bit. "
                         f"Export it as an 8- or 16-bit PNG. Received: dtype={mh.dtype}")
        if ih.dtype is not None and ih.dtype not in ("uint8", "uint16", "float32"):
            refuse(i, p, f"{where}: image {p} has pixel dtype {ih.dtype}; supported are uint8, uint16 and float32. "
                         f"Convert the file. Received: dtype={ih.dtype}")

    dtypes = Counter(h.dtype for i, h in enumerate(iheads) if i not in problems and h.dtype is not None)
    if image_dtype == "auto":
        ranked = dtypes.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            raise ValueError(
                f"{where}: the images are split evenly between bit depths ({', '.join(f'{n} {d}' for d, n in ranked)}), "
                "so no majority tells which files are the odd ones; convert them to one bit depth or set "
                f"data.image_dtype (uint8 or uint16) to convert them when read. Received: data.image_dtype=auto"
            )
        chosen = ranked[0][0] if ranked else "uint8"
        convert = "none"
        for i, ((p, _), h) in enumerate(zip(pairs, iheads)):
            if h.dtype is not None and h.dtype != chosen and i not in problems:
                examples = [q for (q, _), g in zip(pairs, iheads) if g.dtype == chosen][:2]
                refuse(i, p, (f"{where}: image {p} is {h.dtype}, but {dtypes[chosen]} of the {sum(dtypes.values())} "
                              f"images are {chosen} (e.g. {', '.join(examples)}); a source has one dtype, that of the "
                              f"majority. Convert this file, set data.image_dtype to convert every file when read, "
                              f"or set data.on_error=skip. Received: dtype={h.dtype}"))
    else:
        chosen, convert = image_dtype, "scale"
        for i, ((p, _), h) in enumerate(zip(pairs, iheads)):
            if h.dtype == "float32" and i not in problems:
                refuse(i, p, (f"{where}: image {p} is float32, which data.image_dtype={image_dtype} cannot be "
                              f"converted to (only 8/16-bit files are scaled); convert the file or set "
                              f"data.image_dtype=auto. Received: dtype=float32"))

    if problems:
        listed = sorted(problems.values())
        if on_error == "raise":
            if len(listed) == 1:
                raise ValueError(listed[0][1])
            lines = "\n".join(f"  {text}" for _, text in listed[:20])
            more = f"\n  ... and {len(listed) - 20} more" if len(listed) > 20 else ""
            raise ValueError(f"{where}: {len(listed)} image/mask pair(s) cannot be used (set data.on_error=skip to skip "
                             "them):"
                             f"\n{lines}{more}")
        for path, text in listed:
            report.add_static(path, text)
    keep = [i for i in range(len(pairs)) if i not in problems]
    if not keep:
        raise ValueError(
            f"{where}: no usable file: all {len(pairs)} image/mask pair(s) were refused ({listed[0][1]}"
            f"{' ...' if len(listed) > 1 else ''}). Fix the files listed. Received: {len(listed)} refused file(s)"
        )
    mask_dtypes = {mheads[i].dtype for i in keep}
    plan = {
        "image_dtype": tf.as_dtype(chosen),
        "mask_dtype": tf.uint16 if "uint16" in mask_dtypes else tf.uint8,
        "convert": convert,
        "icodecs": [_codec(pairs[i][0], iheads[i]) for i in keep],
        "mcodecs": [_codec(pairs[i][1], mheads[i]) for i in keep],
    }
    return [pairs[i] for i in keep], plan


def _codec(path: str, header: Header) -> int:
    if header.format == "unknown" and os.path.splitext(path)[1].lower() in (".tif", ".tiff"):
        return _CV2
    return header.codec


def from_folder(
    images_glob: str,
    masks_pattern: str,
    *,
    channels: int,
    num_classes: int,
    palette=None,
    ignore_color=None,
    ignore_label: int = E.IGNORE_LABEL,
    on_error: str = "raise",
    root: str | None = None,
    report: SkipReport | None = None,
    image_dtype: str = "auto",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    indices: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Images matched by a glob, each paired with the mask of the same file stem.

    ``images/*.jpg`` with ``masks/{stem}.png`` pairs ``images/a.jpg`` with ``masks/a.png``.
    Relative patterns are resolved against ``root`` (``DataConfig.root``: the recipe's
    folder). Masks hold class ids (single channel, 8 or 16 bit), or colours mapped through
    ``palette`` (VOC style: ``palette[k]`` is the RGB colour of class ``k``); a colour not in
    the palette is an error unless it is ``ignore_color`` (e.g. VOC's ``(224, 224, 192)``
    boundary), which becomes ``ignore_label``.

    Args:
      images_glob: glob of image files (``**`` allowed).
      masks_pattern: mask path with ``{stem}``.
      channels: 1, 3 or 4; images are converted (gray->RGB repeat, RGBA->RGB drop alpha,
        RGB->gray luminance).
      num_classes: label values must be in [0, num_classes) or ``ignore_label``.
      palette: optional RGB colour per class id.
      ignore_color: optional RGB colour that means "unlabeled" in palette masks.
      ignore_label: class id of unlabeled pixels.
      on_error: ``"raise"`` or ``"skip"`` (skipped files are listed in ``report``).
      root: folder that relative patterns are relative to.
      report: a :class:`SkipReport` to fill (a new one if None).
      image_dtype: ``"auto"``: the dtype most images have (from their headers), files of
        another bit depth are errors naming them and the majority; ``"uint8"`` /
        ``"uint16"``: every 8/16-bit file is read and scaled to it (× 257 or ÷ 257).
      max_pixels: files whose header declares more pixels (height × width) are errors,
        never decoded (None: no limit).
      indices: a dataset of int64 positions in the sorted list of pairs: read those
        images, in that order (None: every pair in order). The tf.data service path reads
        one image of one epoch per split this way.

    Returns:
      A dataset of contract elements; image dtype uint8, uint16 or float32 (see
      ``image_dtype``), label uint8 (int32 if class ids exceed 255).

    Raises:
      ValueError: empty glob, image without mask, mask without image, two images with the
        same stem, unsupported extension, a JPEG mask, a file above ``max_pixels``, a
        bit depth other than the majority's (all but the stem clash are skipped under
        ``skip``), or no usable file left.

    Output element:
      image [H, W, channels], label [H, W], roi [H, W] uint8, origin [2] int32 (0, 0),
      source_shape [2] int32, source_index [] int64, path [] string (the image file).

    Example:
      >>> import tempfile, cv2, fcndata.testing as t
      >>> d = tempfile.mkdtemp()
      >>> _ = cv2.imwrite(f"{d}/a.png", t.random_image(5, 7)); _ = cv2.imwrite(f"{d}/a_mask.png", t.stripe_label(5, 7).numpy())
      >>> ds = from_folder("*[!k].png", "{stem}_mask.png", channels=1, num_classes=3, root=d)
      >>> e = next(iter(ds)); e["image"].shape, e["label"].numpy()[0].tolist()
      (TensorShape([5, 7, 1]), [0, 0, 0, 1, 1, 2, 2])
    """
    where = "folder source"
    _check_common(num_classes, ignore_label, on_error, where)
    if channels not in (1, 3, 4):
        raise ValueError(f"{where}: channels must be 1, 3 or 4. Received: channels={channels!r}")
    if image_dtype not in ("auto", "uint8", "uint16"):
        raise ValueError(f"{where}: image_dtype must be 'auto', 'uint8' or 'uint16'. Received: image_dtype={image_dtype!r}")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"{where}: max_pixels must be a positive int or None. Received: max_pixels={max_pixels!r}")
    if "{stem}" not in masks_pattern:
        raise ValueError(
            f"{where}: the mask pattern must contain '{{stem}}', the image file name without extension, "
            f"e.g. 'masks/{{stem}}.png'. Received: masks={masks_pattern!r}"
        )
    if palette is not None:
        palette = [tuple(int(v) for v in c) for c in palette]
        if any(len(c) != 3 for c in palette) or len(palette) > num_classes:
            raise ValueError(
                f"{where}: palette must be a list of at most num_classes={num_classes} [r, g, b] colours, one "
                f"per class id. Received: palette={palette!r}"
            )
    report = report if report is not None else SkipReport(where)
    pairs = _pair_files(images_glob, masks_pattern, root, on_error, report, where)

    pairs, plan = _plan_decoding(pairs, image_dtype, max_pixels, on_error, report, where)
    image_dtype, mask_dtype, iconvert = plan["image_dtype"], plan["mask_dtype"], plan["convert"]
    label_dtype = _label_dtype(num_classes, ignore_label)
    icodecs, mcodecs = plan["icodecs"], plan["mcodecs"]

    def safe_decode(path, codec, dtype, codecs, convert):
        kw = {"convert": convert, "max_pixels": max_pixels}
        ok = tf.data.Dataset.from_tensors((path, codec)).map(
            _graph(lambda p, c: (decode_file(p, c, dtype, codecs, **kw), tf.constant(OK)))
        ).ignore_errors()
        # Read only if decoding failed (take(1) stops before it otherwise): says why it failed.
        failed = tf.data.Dataset.from_tensors((path, codec)).map(
            _graph(lambda p, c: (tf.zeros([0, 0, 1], dtype), file_error(p, c, dtype, codecs, **kw)))
        )
        return ok.concatenate(failed).take(1)

    def decode_pair(x):
        return tf.data.Dataset.zip(
            (tf.data.Dataset.from_tensors(x), safe_decode(x["image"], x["icodec"], image_dtype, icodecs, iconvert),
             safe_decode(x["mask"], x["mcodec"], mask_dtype, mcodecs, "cast"))
        )

    def to_element(x, decoded_image, decoded_mask):
        (image, icode), (mask, mcode) = decoded_image, decoded_mask
        image_c = tf.shape(image)[-1]
        image, channels_ok = convert_channels(image, channels)
        mask_c = tf.shape(mask)[-1]
        if palette is not None:
            rgb = tf.gather(mask, tf.minimum(tf.range(3), mask_c - 1), axis=-1)  # any channel count, flagged below
            label, unmatched, colour = palette_to_labels(rgb, palette, ignore_color, ignore_label)
            mask_ok = (mask_c == 3) | (mask_c == 4)
            mask_need = "3 (RGB) or 4 (RGBA) channels, because data.palette is set; set data.palette to null for single-channel class-id masks"
        else:
            label = tf.cast(mask[..., 0], tf.int32)
            unmatched, colour = tf.constant(0), tf.zeros([3], tf.int32)
            mask_ok = mask_c == 1
            mask_need = "1 channel of class ids; for colour masks set data.palette to the RGB colour of each class id"
        mpath = x["mask"]
        element = E.make_element(
            image, tf.cast(label, label_dtype), source_index=x["index"], path=x["image"], ignore_label=ignore_label
        )
        colour_text = tf.strings.reduce_join(_int_str(colour), separator=", ")
        checks = [
            (icode, icode != OK, lambda: _file_message(where, "image", x["image"], icode, image_dtype, max_pixels)),
            (mcode, mcode != OK, lambda: _file_message(where, "mask", mpath, mcode, mask_dtype, max_pixels)),
            (CHANNELS, ~channels_ok, lambda: graph_message(
                CHANNELS, where=where, path=x["image"], have=_int_str(image_c), channels=str(channels))),
            (MASK_CHANNELS, ~mask_ok, lambda: tf.strings.join([
                where, ": mask ", mpath, " has ", _int_str(mask_c), (f" channel(s); expected {mask_need}. "
                "Received: mask_channels="), _int_str(mask_c)])),
        ]
        # Range-check the int32 ids: a 16-bit mask value of 300 must not wrap into a uint8 class.
        content = content_checks({**element, E.LABEL: label}, num_classes, ignore_label, where, label_file=mpath)
        def palette_message():
            looks, distinct = palette_ringing(rgb, palette, ignore_color)
            return tf.where(
                looks,
                tf.strings.join([
                    where, ": mask ", mpath, " has ", _int_str(unmatched), " pixel(s) of ", _int_str(distinct),
                    (" distinct colours not in data.palette, nearly all close to a palette colour: this looks like "
                     "JPEG compression ringing (the mask was saved as JPEG at some point), so its classes are wrong "
                     "along every edge. Re-export the mask losslessly (PNG) from the original labels, or set "
                     "data.on_error=skip. Received: colour=("), colour_text, ")"]),
                tf.strings.join([
                    where, ": mask ", mpath, " has ", _int_str(unmatched), " pixel(s) of colour (", colour_text,
                    (") that is not in data.palette; add it (its index is the class id) or pass it as the ignore "
                     "colour, or set data.on_error=skip. Received: colour=("), colour_text, ")"]),
            )

        palette_check = (PALETTE, unmatched > 0, palette_message if palette is not None else lambda: tf.constant(""))
        code, message = first_error(checks + content[:1] + [palette_check] + content[1:])
        return element, code, message

    paths = {
        "image": [p for p, _ in pairs],
        "mask": [m for _, m in pairs],
        "icodec": icodecs,
        "mcodec": mcodecs,
        "index": np.arange(len(pairs), dtype=np.int64),
    }
    if indices is None:
        ds = tf.data.Dataset.from_tensor_slices(paths)
    else:
        table = {k: tf.constant(v) for k, v in paths.items()}
        ds = indices.map(_graph(lambda k: {name: tf.gather(t, k) for name, t in table.items()}))
    # interleave, not map: each file is decoded in a tiny dataset whose ignore_errors turns a
    # decoder exception into an error code, so the message can name the file (raise) or the
    # element can be skipped and reported (skip). deterministic keeps the source order.
    ds = ds.interleave(_graph(decode_pair), cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(_graph(to_element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return handle_errors(ds, on_error, report)


def _as_list(arrays, name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray) or tf.is_tensor(arrays):
        return [np.asarray(a) for a in np.asarray(arrays)]
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"from_arrays: {name} must be a list of arrays or one stacked array. Received: {type(arrays).__name__}")
    return [np.asarray(a) for a in arrays]


#: Arrays of at least this many bytes turn tf.data's default graph optimizations off (see
#: :func:`from_arrays`).
LARGE_ARRAYS = 64 * 2**20


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
    step = ALIGN // dtype.itemsize
    sizes = np.array([a.size for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(-(-sizes // step) * step)]).astype(np.int64)
    flat = aligned_empty([int(offsets[-1])], dtype)
    for a, o in zip(arrays, offsets.tolist()):
        np.copyto(flat[o : o + a.size].reshape(a.shape), a, casting="unsafe")  # labels: range checked before
    tensor = tf.experimental.dlpack.from_dlpack(flat.__dlpack__()) if flat.size else tf.zeros([0], dtype)
    shapes = np.array([a.shape for a in arrays], np.int64)
    return tensor, tf.constant(offsets), tf.constant(shapes)


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
    view of that copy, others are sliced out per element, and each element computes its
    roi plane (H x W bytes). tf.data's default graph rewrites serialise the pipeline,
    arrays included, whenever an iterator is made (a transient second copy), so arrays
    of :data:`LARGE_ARRAYS` bytes or more turn them off (``ds.options()`` shows it).
    Cutting an 8192² RGB image + mask into 256² patches therefore adds ~360 MiB over your
    arrays (``python benchmarks/patches.py``): the copy (256 MiB), the roi plane (64 MiB)
    and the patches in flight. The copy is not avoidable cheaply: sharing numpy memory
    (``tf.experimental.dlpack``) works, but TensorFlow's kernels abort the process on
    buffers that are not 64-byte aligned, which large numpy arrays usually are not.

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
      origin (0, 0), source_shape, source_index, path.

    Example:
      >>> import numpy as np
      >>> ds = from_arrays([np.zeros((3, 4), np.uint8), np.ones((5, 2), np.uint8)],
      ...                  [np.zeros((3, 4), np.uint8), np.ones((5, 2), np.uint8)], num_classes=2)
      >>> [tuple(e["image"].shape) for e in ds]
      [(3, 4, 1), (5, 2, 1)]
    """
    where = "from_arrays"
    _check_common(num_classes, ignore_label, "raise", where)
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
    label_dtype = _label_dtype(num_classes, ignore_label)
    img_flat, img_off, img_shape = _ragged_source(images, images[0].dtype)
    lab_flat, lab_off, lab_shape = _ragged_source(labels, label_dtype.as_numpy_dtype)
    channels = images[0].shape[-1]
    path_t = tf.constant(paths)

    def element(i):
        image = tf.reshape(img_flat[img_off[i] : img_off[i] + tf.reduce_prod(img_shape[i])], img_shape[i])
        image.set_shape([None, None, channels])
        label = tf.reshape(lab_flat[lab_off[i] : lab_off[i] + tf.reduce_prod(lab_shape[i])], lab_shape[i])
        label.set_shape([None, None])
        roi = None
        if label.dtype == tf.uint8:  # one H x W plane (the min runs in place), not a bool plane and its cast
            roi = tf.minimum(tf.bitwise.bitwise_xor(label, tf.constant(ignore_label, tf.uint8)), 1)
        return E.make_element(image, label, roi=roi, source_index=i, path=path_t[i], ignore_label=ignore_label)

    positions = tf.data.Dataset.range(len(images)) if indices is None else indices
    ds = positions.map(_graph(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if img_flat.dtype.size * int(img_flat.shape[0]) + lab_flat.dtype.size * int(lab_flat.shape[0]) >= LARGE_ARRAYS:
        # tf.data's default graph rewrites serialise the whole pipeline, arrays included,
        # each time an iterator is made: a transient second copy. fcndata's stages set their
        # parallelism themselves, so they do not need those rewrites.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        ds = ds.with_options(options)
    return ds


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
    resolved = _resolve(pattern, root)
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
    return ds.map(_graph(parse), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
            image, label, source_index=i, path=tf.strings.join([prefix, _int_str(i)]), ignore_label=ignore_label
        )

    return ds.enumerate().map(_graph(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ---------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Validate:
    """Checks contract elements: image/label sizes, label range, NaN/inf in float images.

    With ``channels`` set, images are also brought to that channel count (gray->RGB
    repeat, RGBA->RGB drop alpha, RGB->gray luminance); other counts are errors.
    ``on_error="raise"`` stops the pass at the first bad element
    (``tf.errors.InvalidArgumentError`` whose message names the file); ``"skip"`` drops
    bad elements and lists them in ``report`` (logged at the end of each pass).

    Input element: the contract (image [H, W, C], label [H, W], roi, …, path).
    Output element: unchanged (image [H, W, channels] if ``channels``); bad elements
    removed under ``skip``.

    Example:
      >>> import fcndata.testing as t
      >>> v = Validate(num_classes=2, on_error="skip")
      >>> len(list(t.dataset([(5, 7), (4, 2)], num_classes=2).apply(v))), v.report.count
      (2, 0)
      >>> len(list(t.dataset([(5, 7)], num_classes=3).apply(v))), v.report.skipped
      (0, [('testing/5x7#0', 'validate: mask testing/5x7#0 has label values outside [0, 2) ...')])
    """

    num_classes: int
    ignore_label: int = E.IGNORE_LABEL
    on_error: str = "raise"
    where: str = "validate"
    report: SkipReport = field(default=None, compare=False, repr=False)
    channels: int | None = None

    def __post_init__(self):
        _check_common(self.num_classes, self.ignore_label, self.on_error, self.where)
        if self.channels not in (None, 1, 3, 4):
            raise ValueError(f"{self.where}: channels must be None, 1, 3 or 4. Received: channels={self.channels!r}")
        if self.report is None:
            object.__setattr__(self, "report", SkipReport(self.where))

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(ds, where=self.where)

        def check(element):
            checks = []
            if self.channels is not None:
                image = element[E.IMAGE]
                converted, ok = convert_channels(image, self.channels)
                element = {**element, E.IMAGE: converted}
                checks.append((CHANNELS, ~ok, lambda: graph_message(
                    CHANNELS, where=self.where, path=element[E.PATH], have=_int_str(tf.shape(image)[-1]),
                    channels=str(self.channels))))
            checks += content_checks(element, self.num_classes, self.ignore_label, self.where)
            code, message = first_error(checks)
            return element, code, message

        ds = ds.map(_graph(check), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return handle_errors(ds, self.on_error, self.report)


# ---------------------------------------------------------------------------- dispatch


def has_split(data, split: str) -> bool:
    """Whether ``load_source(data, split)`` has data (a folder / TFRecord source may lack validation)."""
    if split == "train" or data.source in BUILTIN_SOURCES:
        return True
    if data.source == "folder":
        return data.val_images is not None
    if data.source == "tfrecord":
        return data.val_tfrecords is not None
    if data.source == "tfds":
        return bool(data.tfds_val_split)
    return False


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
    val = split == "validation"
    if data.source in BUILTIN_SOURCES:
        from fcndata import datasets

        images, _, _ = datasets.arrays(data, split)
        return len(images), [tuple(int(v) for v in a.shape[:2]) for a in images]
    if data.source == "folder":
        images, masks = (data.val_images, data.val_masks) if val else (data.images, data.masks)
        pairs = _pair_files(images, masks, data.root, data.on_error, SkipReport("folder source"), "folder source")
        shapes = [image_size(p) for p, _ in pairs]
        return len(pairs), (None if any(s is None for s in shapes) else shapes)
    if data.source == "tfrecord":
        pattern = data.val_tfrecords if val else data.tfrecords
        files = sorted(globlib.glob(_resolve(pattern, data.root)))
        count = tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1)
        return int(count), None
    if data.source == "tfds":
        data_dir = _resolve(data.tfds_data_dir, data.root) if data.tfds_data_dir else None
        ds = from_tfds(data.tfds_name, data.tfds_val_split if val else data.tfds_train_split, data_dir,
                       data.tfds_image_key, data.tfds_label_key, ignore_label=data.ignore_label)
        return int(ds.cardinality()), None
    raise ValueError(f"source_shapes: unknown data.source. Received: data.source={data.source!r}")


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
    val = split == "validation"
    report = report if report is not None else SkipReport(f"{data.source} source ({split})")
    if indices is not None and data.source in ("tfrecord", "tfds"):
        raise ValueError(
            f"{data.source} source: images cannot be read by position (a record is found by reading the ones "
            "before it), which the tf.data service's dynamic sharding of a training stream needs; convert the "
            "data to a folder of PNG files, or use service.sharding: off. Received: data.source="
            f"{data.source!r}"
        )
    if data.source in BUILTIN_SOURCES:
        from fcndata import datasets

        if indices is not None:
            images, labels, paths = datasets.arrays(data, split)
            return from_arrays(images, labels, data.num_classes, data.ignore_label, paths=paths, indices=indices)
        return datasets.load(data, split)
    if data.source == "arrays":
        raise ValueError(
            "load_source: data.source=arrays is for the Python API only: build the dataset with "
            "fcndata.sources.from_arrays(images, labels, num_classes). Received: data.source='arrays'"
        )
    if data.source == "folder":
        images, masks = (data.val_images, data.val_masks) if val else (data.images, data.masks)
        prefix = "val_" if val else ""
        if images is None or masks is None:
            raise ValueError(
                f"folder source: data.{prefix}images and data.{prefix}masks must both be set for split={split!r}, "
                f"e.g. {prefix}images: images/*.png and {prefix}masks: masks/{{stem}}.png. "
                f"Received: {prefix}images={images!r}, {prefix}masks={masks!r}"
            )
        ds = from_folder(
            images, masks, channels=data.channels, num_classes=data.num_classes, palette=data.palette,
            ignore_color=getattr(data, "ignore_color", None), ignore_label=data.ignore_label,
            on_error=data.on_error, root=data.root, report=report, indices=indices,
            image_dtype=getattr(data, "image_dtype", "auto"), max_pixels=getattr(data, "max_pixels", DEFAULT_MAX_PIXELS),
        )
        if indices is not None:
            return ds  # read by position: a different subset each time, nothing to cache
    elif data.source == "tfrecord":
        pattern = data.val_tfrecords if val else data.tfrecords
        if pattern is None:
            raise ValueError(
                f"tfrecord source: data.{'val_' if val else ''}tfrecords must be set for split={split!r}, e.g. "
                f"tfrecords: data/train-*.tfrecord. Received: None"
            )
        ds = from_tfrecords(pattern, root=data.root)
        ds = ds.apply(Validate(data.num_classes, data.ignore_label, data.on_error, "tfrecord source", report, data.channels))
    elif data.source == "tfds":
        if data.tfds_name is None:
            raise ValueError("tfds source: set data.tfds_name (e.g. oxford_iiit_pet). Received: tfds_name=None")
        data_dir = _resolve(data.tfds_data_dir, data.root) if data.tfds_data_dir else None
        ds = from_tfds(
            data.tfds_name, data.tfds_val_split if val else data.tfds_train_split, data_dir,
            data.tfds_image_key, data.tfds_label_key, ignore_label=data.ignore_label,
        )
        ds = ds.apply(Validate(data.num_classes, data.ignore_label, data.on_error, "tfds source", report, data.channels))
    else:  # DataConfig validates the choice; kept for dataclasses built by hand
        raise ValueError(f"load_source: unknown data.source. Received: data.source={data.source!r}")
    return ds.cache() if data.cache else ds
