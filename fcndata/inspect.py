"""``python -m fcndata.inspect``: what a source actually delivers, before any training.

Prints the number of images, the distribution of image sizes, pixel counts and
frequencies per class, and the files rejected (with reasons) under ``on_error: skip``;
exits with status 2 and one ``error:`` line if no image is left::

    python -m fcndata.inspect --config pipelines/brain.yaml --split validation
    python -m fcndata.inspect --config pipelines/shapes.yaml --set data.class_imbalance=10

Example:
  >>> import fcndata.testing as t
  >>> info = inspect_dataset(t.dataset([(5, 7), (5, 7), (4, 3)]), num_classes=3)
  >>> info["num_images"], info["shapes"], info["class_pixels"]
  (3, {'5x7': 2, '4x3': 1}, [34, 24, 24])
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from fcndata import config as C

if TYPE_CHECKING:
    import tensorflow as tf


def inspect_dataset(dataset: tf.data.Dataset, num_classes: int, class_names=None, report=None) -> dict:
    """One pass over a dataset of contract elements; returns its statistics.

    Args:
      dataset: unbatched contract elements.
      num_classes: label values in [0, num_classes) are counted per class; others
        (``ignore_label``) count as ignored.
      class_names: a name per class (default ``class0``, ``class1``, …).
      report: the :class:`fcndata.sources.SkipReport` of the source, if any.

    Returns:
      A dict with ``num_images``, ``height`` / ``width`` (``min``, ``median``, ``max``),
      ``shapes`` (``"HxW"`` -> count, most common first), ``class_names``,
      ``class_pixels``, ``class_frequency`` (share of labelled pixels),
      ``images_with_class``, ``ignored_pixels``, ``total_pixels`` and ``skipped``
      (``[(path, reason)]``).
    """
    import tensorflow as tf

    from fcndata import elements as E

    E.check_spec(dataset, where="inspect")
    names = list(class_names) if class_names is not None else [f"class{k}" for k in range(num_classes)]

    def stats(e):
        label = tf.reshape(tf.cast(e[E.LABEL], tf.int32), [-1])
        valid = (label >= 0) & (label < num_classes)
        counts = tf.math.bincount(tf.boolean_mask(label, valid), minlength=num_classes, maxlength=num_classes, dtype=tf.int64)
        return tf.shape(e[E.IMAGE])[:2], counts, tf.reduce_sum(tf.cast(~valid, tf.int64))

    sizes, pixels, present, ignored = [], np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64), 0
    for hw, counts, n_ignored in dataset.map(stats, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator():
        sizes.append((int(hw[0]), int(hw[1])))
        pixels += counts
        present += counts > 0
        ignored += int(n_ignored)
    hs, ws = np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])

    def summary(v):
        return {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())} if len(v) else {}

    labelled = int(pixels.sum())
    return {
        "num_images": len(sizes),
        "height": summary(hs),
        "width": summary(ws),
        "shapes": {f"{h}x{w}": n for (h, w), n in Counter(sizes).most_common()},
        "class_names": names,
        "class_pixels": pixels.tolist(),
        "class_frequency": (pixels / max(labelled, 1)).tolist(),
        "images_with_class": present.tolist(),
        "ignored_pixels": ignored,
        "total_pixels": labelled + ignored,
        "skipped": list(report.skipped) if report is not None else [],
    }


def format_report(info: dict, title: str = "dataset") -> str:
    """The human-readable report that the command prints."""
    lines = [f"{title}: {info['num_images']} images"]
    if info["num_images"]:
        h, w = info["height"], info["width"]
        lines.append(f"  height  min {h['min']}  median {h['median']:g}  max {h['max']}")
        lines.append(f"  width   min {w['min']}  median {w['median']:g}  max {w['max']}")
        shapes = info["shapes"]
        if len(shapes) <= 12:
            lines.append("  shapes  " + ", ".join(f"{s} x{n}" for s, n in shapes.items()))
        else:
            lines.append(f"  shapes  {len(shapes)} distinct (HxW); most common: "
                         + ", ".join(f"{s} x{n}" for s, n in list(shapes.items())[:5]))
    lines.append(f"  pixels  {info['total_pixels']} ({info['ignored_pixels']} ignored)")
    width = max((len(n) for n in info["class_names"]), default=5)
    lines.append(f"  {'class':<{width + 4}} {'pixels':>12} {'frequency':>10} {'images':>7}")
    for k, name in enumerate(info["class_names"]):
        lines.append(
            f"  {k:>2} {name:<{width}} {info['class_pixels'][k]:>13} {info['class_frequency'][k]:>10.4f}"
            f" {info['images_with_class'][k]:>7}"
        )
    if info["skipped"]:
        lines.append(f"  rejected files: {len(info['skipped'])}")
        lines += [f"    {path}: {reason}" for path, reason in info["skipped"]]
    else:
        lines.append("  rejected files: none")
    return "\n".join(lines)


def main(argv=None) -> int:
    from fcndata import cli

    parser = cli.command_parser("python -m fcndata.inspect", __doc__.split("\n")[0])
    parser.add_argument("--split", choices=("train", "validation"), default="train")
    args = parser.parse_args(argv)

    def body() -> int:
        from fcndata import sources

        cfg = C.load_config(args.config, args.overrides)
        data = cfg.data
        if args.split == "validation" and not sources.has_split(data, "validation"):
            raise ValueError(
                f"{cfg.source}: the recipe has no validation data (data.val_images / data.val_tfrecords is not set). "
                "Received: --split validation"
            )
        with sources.collect_skips():  # the report below lists skipped files once; the source stays quiet
            report = sources.SkipReport(f"{data.source} source ({args.split})")
            # file-level problems (empty glob, unpaired files, headers) are found here, and named
            ds = sources.load_source(data, args.split, report=report)
            print(f"fcndata: one pass over the {args.split} split...", file=sys.stderr, flush=True)
            info = inspect_dataset(ds, data.num_classes, data.names, report)
        print(format_report(info, f"{args.config or '<defaults>'} [{data.source}, {args.split}]"))
        if info["num_images"] == 0:
            skipped = info["skipped"]
            first = f" (first: {skipped[0][1]})" if skipped else ""
            raise ValueError(
                f"{cfg.source or '<defaults>'}: no usable image in the {args.split} split: all {len(skipped)} file(s) "
                f"were skipped (data.on_error=skip), listed above{first}. Fix or replace the files. "
                f"Received: 0 images"
            )
        return 0

    return cli.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
