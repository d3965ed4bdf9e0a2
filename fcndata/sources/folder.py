"""The folder source: images matched by a glob, each paired with the mask of its file stem.

Problems visible from file names (empty glob, image without mask, mask without image, an
unsupported extension) and from headers (a JPEG mask, a file above ``max_pixels``, a bit
depth other than the majority's) are found in Python when the source is built; problems
inside a file (unreadable or truncated, sizes, label range, channels, palette) per element
in the graph, each with a message naming the file (see :mod:`fcndata.sources.checks`).

Decoding happens inside the tf.data graph: PNG (8 and 16 bit), JPEG, BMP and GIF with
``tf.io``; only TIFF goes through OpenCV (``tf.numpy_function``), because TensorFlow has
no TIFF decoder. 16-bit PNG is decoded by ``tf.io.decode_png(dtype=uint16)`` rather than
OpenCV: same pixels, but it stays graph-only (serialisable for the tf.data service).
"""

from __future__ import annotations

import glob as globlib
import os
import re
from collections import Counter

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.decode import (
    _CV2,
    BIT_DEPTH,
    CHANNELS,
    DEFAULT_MAX_PIXELS,
    EMPTY,
    IMAGE_EXTENSIONS,
    LOSSY_MASK,
    MASK_CHANNELS,
    OK,
    PALETTE,
    TOO_LARGE,
    TRUNCATED,
    UNREADABLE,
    Header,
    convert_channels,
    declared_pixels,
    decode_file,
    file_error,
    graph_message,
    message,
    read_header,
    too_large,
)
from fcndata.sources.checks import (
    SkipReport,
    check_arguments,
    content_checks,
    first_error,
    handle_errors,
    int_str,
    label_dtype_for,
    no_autograph,
    palette_ringing,
    palette_to_labels,
)

# ---------------------------------------------------------------------------- file names


def resolve(pattern: str, root: str | None, glob: bool = False) -> str:
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


# ---------------------------------------------------------------------------- pairing and decoding plans


def pair_files(images_glob, masks_pattern, root, on_error, report, where) -> list[tuple[str, str]]:
    """(image, mask) paths paired by stem, from the file names alone (nothing is read)."""
    images_abs, masks_abs = resolve(images_glob, root, glob=True), resolve(masks_pattern, root)
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
        graph_message(TOO_LARGE, size=int_str(declared_pixels(tf.io.read_file(path))), limit=str(max_pixels), **fields),
    ])
    index = tf.argmax(tf.cast(tf.equal(tf.constant(codes), code), tf.int32), output_type=tf.int32)
    return messages[index]


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
    check_arguments(num_classes, ignore_label, on_error, where)
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
    pairs = pair_files(images_glob, masks_pattern, root, on_error, report, where)

    pairs, plan = _plan_decoding(pairs, image_dtype, max_pixels, on_error, report, where)
    image_dtype, mask_dtype, iconvert = plan["image_dtype"], plan["mask_dtype"], plan["convert"]
    label_dtype = label_dtype_for(num_classes, ignore_label)
    icodecs, mcodecs = plan["icodecs"], plan["mcodecs"]

    def safe_decode(path, codec, dtype, codecs, convert):
        kw = {"convert": convert, "max_pixels": max_pixels}
        ok = tf.data.Dataset.from_tensors((path, codec)).map(
            no_autograph(lambda p, c: (decode_file(p, c, dtype, codecs, **kw), tf.constant(OK)))
        ).ignore_errors()
        # Read only if decoding failed (take(1) stops before it otherwise): says why it failed.
        failed = tf.data.Dataset.from_tensors((path, codec)).map(
            no_autograph(lambda p, c: (tf.zeros([0, 0, 1], dtype), file_error(p, c, dtype, codecs, **kw)))
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
        colour_text = tf.strings.reduce_join(int_str(colour), separator=", ")
        checks = [
            (icode, icode != OK, lambda: _file_message(where, "image", x["image"], icode, image_dtype, max_pixels)),
            (mcode, mcode != OK, lambda: _file_message(where, "mask", mpath, mcode, mask_dtype, max_pixels)),
            (CHANNELS, ~channels_ok, lambda: graph_message(
                CHANNELS, where=where, path=x["image"], have=int_str(image_c), channels=str(channels))),
            (MASK_CHANNELS, ~mask_ok, lambda: tf.strings.join([
                where, ": mask ", mpath, " has ", int_str(mask_c), (f" channel(s); expected {mask_need}. "
                "Received: mask_channels="), int_str(mask_c)])),
        ]
        # Range-check the int32 ids: a 16-bit mask value of 300 must not wrap into a uint8 class.
        content = content_checks({**element, E.LABEL: label}, num_classes, ignore_label, where, label_file=mpath)
        def palette_message():
            looks, distinct = palette_ringing(rgb, palette, ignore_color)
            return tf.where(
                looks,
                tf.strings.join([
                    where, ": mask ", mpath, " has ", int_str(unmatched), " pixel(s) of ", int_str(distinct),
                    (" distinct colours not in data.palette, nearly all close to a palette colour: this looks like "
                     "JPEG compression ringing (the mask was saved as JPEG at some point), so its classes are wrong "
                     "along every edge. Re-export the mask losslessly (PNG) from the original labels, or set "
                     "data.on_error=skip. Received: colour=("), colour_text, ")"]),
                tf.strings.join([
                    where, ": mask ", mpath, " has ", int_str(unmatched), " pixel(s) of colour (", colour_text,
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
        ds = indices.map(no_autograph(lambda k: {name: tf.gather(t, k) for name, t in table.items()}))
    # interleave, not map: each file is decoded in a tiny dataset whose ignore_errors turns a
    # decoder exception into an error code, so the message can name the file (raise) or the
    # element can be skipped and reported (skip). deterministic keeps the source order.
    ds = ds.interleave(no_autograph(decode_pair), cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(no_autograph(to_element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return handle_errors(ds, on_error, report)
