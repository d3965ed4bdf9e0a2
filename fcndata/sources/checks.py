"""In-graph data checks and skip reporting, shared by every source.

A source turns each element into ``(element, code, message)``: :func:`content_checks`
(image and mask sizes, label range with a JPEG-ringing diagnosis, NaN/inf) and the
source's own checks, reduced by :func:`first_error`. :func:`handle_errors` then raises the
first message (``on_error="raise"``) or drops the bad elements and records them in a
:class:`SkipReport` (``on_error="skip"``). :class:`Validate` is the same checks as a stage,
for sources that cannot check while decoding (TFRecord, TFDS) and for any dataset.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import tensorflow as tf

from fcndata import elements as E
from fcndata.decode import (
    CHANNELS,
    LABEL_RANGE,
    NON_FINITE,
    OK,
    SIZE,
    convert_channels,
    graph_message,
)

from fcndata.elements import no_autograph  # noqa: E402,F401  (re-used by the sources)

logger = logging.getLogger("fcndata")


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


def int_str(x) -> tf.Tensor:
    return tf.strings.as_string(tf.cast(x, tf.int64))


def _shape_str(hw) -> tf.Tensor:
    return tf.strings.join([int_str(hw[0]), "x", int_str(hw[1])])


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
        where, ": mask ", label_file, " has ", int_str(n), " pixel(s) of ", int_str(distinct), (f" distinct values "
        f"outside [0, {num_classes}), nearly all next to a class id or ignore_label={ignore_label}: this looks like "
        "JPEG compression ringing (the mask was saved as JPEG at some point), so its class ids are wrong along every "
        "edge. Re-export the mask losslessly (PNG) from the original labels, or set data.on_error=skip. "
        "Received: label_value="), int_str(example),
    ])
    range_text = tf.strings.join([
        where, ": mask ", label_file, (f" has label values outside [0, {num_classes}) that are not "
        f"ignore_label={ignore_label}; fix the mask, raise data.num_classes, or map those pixels to "
        "ignore_label (set data.on_error=skip to skip the file). Received: label_value="), int_str(example),
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
            lambda: graph_message(NON_FINITE, where=where, path=path, count=int_str(nonfinite)),
        ))
    return checks


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

        return ds.map(no_autograph(check), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

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
    return ds.concatenate(end).filter(no_autograph(keep)).map(no_autograph(lambda e, c, m: e))


# ---------------------------------------------------------------------------- arguments


def label_dtype_for(num_classes: int, ignore_label: int) -> tf.DType:
    """The label dtype of a source: uint8 when every class id and ignore_label fit in it."""
    return tf.uint8 if num_classes <= 256 and 0 <= ignore_label <= 255 else tf.int32


def check_arguments(num_classes, ignore_label, on_error, where):
    """The arguments every source and :class:`Validate` take, checked at construction."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int. Received: num_classes={num_classes!r}")
    if 0 <= ignore_label < num_classes:
        raise ValueError(
            f"{where}: ignore_label must not be a class id in [0, {num_classes}); the usual value is 255. "
            f"Received: ignore_label={ignore_label}"
        )
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{where}: on_error must be 'raise' or 'skip'. Received: on_error={on_error!r}")


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
        check_arguments(self.num_classes, self.ignore_label, self.on_error, self.where)
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
                    CHANNELS, where=self.where, path=element[E.PATH], have=int_str(tf.shape(image)[-1]),
                    channels=str(self.channels))))
            checks += content_checks(element, self.num_classes, self.ignore_label, self.where)
            code, message = first_error(checks)
            return element, code, message

        ds = ds.map(no_autograph(check), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return handle_errors(ds, self.on_error, self.report)
