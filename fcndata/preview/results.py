"""Figures of results: image, ground truth and prediction side by side; loss and metrics per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from fcndata.common import IGNORE_LABEL
from fcndata.preview.batches import row_height
from fcndata.preview.drawing import (
    PANEL_WIDTH,
    class_legend,
    class_shares,
    display_image,
    hatch,
    image_panel,
    label_overlay,
    legend_handles,
    luminance,
    new_figure,
    short,
    text,
    to_numpy,
)


def _as_list(values, item_ndim: int) -> list[np.ndarray]:
    """A list of arrays from a list, one array of rank ``item_ndim`` or a batch of them."""
    if values is None:
        return []
    if isinstance(values, (list, tuple)):
        return [to_numpy(v) for v in values]
    array = to_numpy(values)
    return [array] if array.ndim == item_ndim else list(array)


def plot_predictions(
    images,
    labels,
    predictions,
    class_names: Sequence[str] | None = None,
    rois=None,
    max_items: int = 4,
    ignore_label: int = IGNORE_LABEL,
    *,
    titles: Sequence[str] | None = None,
    palette=None,
    dpi: float = 100,
) -> Figure:
    """Image, ground truth and prediction side by side, one row per image.

    Each of ``images``, ``labels``, ``predictions`` (and ``rois``) is a list (images may
    differ in size) or a batched array. Predictions are class ids [H, W], or scores
    [H, W, K] that are arg-maxed. Pixels with ``roi == 0`` or an ignored label are
    hatched in the prediction and left out of the row's pixel accuracy.

    Args:
      images: [H, W, C] images (any of uint8 / uint16 / float).
      labels: [H, W] ground-truth class ids.
      predictions: [H, W] predicted class ids or [H, W, K] scores.
      class_names: a name per class id.
      rois: optional [H, W] masks (1 = real pixel), e.g. to hide padding.
      max_items: rows to draw.
      ignore_label: the unlabeled label value.
      titles: a row title per image (e.g. its path); default ``[i]``.
      palette: optional RGB (0–255) colour per class id.
      dpi: dots per inch.

    Returns:
      A :class:`matplotlib.figure.Figure` with three panels per row; each row's legend
      gives every class's share of the real pixels in the ground truth and the prediction.

    Raises:
      ValueError: the lists have different lengths or an image and its label differ in size.

    Example:
      >>> import fcndata.testing as t
      >>> label = t.stripe_label(37, 53).numpy()
      >>> fig = plot_predictions([t.coordinate_image(37, 53)], [label], [label], ["bg", "a", "b"])
      >>> fig.axes[2].get_title()
      'prediction: 100.0 % correct'
    """
    if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
        raise ValueError(
            f"plot_predictions: max_items must be a positive int. Received: max_items={max_items!r}"
        )
    images = _as_list(images, 3)
    labels = _as_list(labels, 2)
    # [H, W, K] scores of one image look like [B, H, W] ids: tell them apart by the label's size.
    scores = to_numpy(predictions) if not isinstance(predictions, (list, tuple)) else None
    one_scores = (
        scores is not None
        and scores.ndim == 3
        and len(labels) == 1
        and scores.shape[:2] == labels[0].shape
    )
    if one_scores:
        predictions = [scores]
    else:
        predictions = _as_list(predictions, 3 if scores is not None and scores.ndim == 4 else 2)
    rois = _as_list(rois, 2) or [None] * len(images)
    lengths = {
        "images": len(images),
        "labels": len(labels),
        "predictions": len(predictions),
        "rois": len(rois),
    }
    if len(set(lengths.values())) != 1 or not images:
        raise ValueError(
            "plot_predictions: images, labels, predictions (and rois) must be non-empty lists of the same "
            f"length, one entry per image. Received: lengths={lengths}"
        )
    rows = min(len(images), max_items)
    heights = [row_height(img.shape) + 0.55 for img in images[:rows]]
    fig = new_figure(3 * PANEL_WIDTH + 2.1, sum(heights), dpi)
    subfigs = fig.subfigures(rows, 1, squeeze=False, height_ratios=heights)[:, 0]
    for i, sf in enumerate(subfigs):
        image, label, pred, roi = images[i], labels[i].astype(np.int64), predictions[i], rois[i]
        if pred.ndim == 3:
            pred = np.argmax(pred, axis=-1)
        pred = pred.astype(np.int64)
        if image.shape[:2] != label.shape or pred.shape != label.shape:
            raise ValueError(
                f"plot_predictions: image, label and prediction {i} must have the same height and width. "
                f"Received: image.shape={image.shape}, label.shape={label.shape}, prediction.shape={pred.shape}"
            )
        valid = label != ignore_label
        if roi is not None:
            valid &= np.asarray(roi).astype(bool)
        rgb = display_image(image, valid)
        axes = sf.subplots(1, 3)
        title = f"[{i}]" if titles is None else f"[{i}]    {short(text(titles[i]))}"
        sf.suptitle(title, fontsize=9, x=0.01, ha="left")
        image_panel(axes[0], rgb)
        axes[0].set_title(f"image {image.shape[0]}×{image.shape[1]}", fontsize=9)
        image_panel(axes[1], luminance(rgb))
        axes[1].imshow(
            label_overlay(np.where(valid, label, ignore_label), palette, ignore_label),
            interpolation="nearest",
        )
        axes[1].set_title("ground truth", fontsize=9)
        image_panel(axes[2], luminance(rgb))
        axes[2].imshow(label_overlay(pred, palette, ignore_label), interpolation="nearest")
        hatch(axes[2], ~valid)
        correct = float((pred == label)[valid].mean()) if valid.any() else float("nan")
        axes[2].set_title(f"prediction: {100.0 * correct:.1f} % correct", fontsize=9)
        # Shares over the real pixels, so a collapsed or missing class stands out.
        shares = [class_shares(label[valid]), class_shares(pred[valid])]
        class_legend(sf, legend_handles(shares, class_names, palette, ignore_label), "classes (% gt / pred)")
    return fig


def _history_dict(history) -> dict[str, list[float]]:
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        history = history.history  # a keras.callbacks.History
    if not isinstance(history, Mapping):
        raise TypeError(
            "plot_history: expected a dict of metric name -> list of per-epoch values, or a Keras History. "
            f"Received: type(history)={type(history).__name__}"
        )
    out = {}
    for key, values in history.items():
        values = np.asarray(to_numpy(values), np.float64).reshape(-1)
        if values.size:
            out[str(key)] = values
    if not out:
        raise ValueError(
            "plot_history: the history has no values to plot; pass model.fit(...).history after at least "
            f"one epoch. Received: keys={sorted(history)}"
        )
    return out


def plot_history(history, *, dpi: float = 100) -> Figure:
    """Training curves per epoch: one panel per metric, train and validation together.

    Keys are grouped by name with and without a ``val_`` prefix (``loss`` / ``val_loss``,
    ``mean_iou`` / ``val_mean_iou``, …); ``loss`` comes first and IoU metrics next. The
    best validation epoch (lowest loss, highest other metric) is marked.

    Args:
      history: ``{name: [value per epoch]}`` or a ``keras.callbacks.History``.
      dpi: dots per inch.

    Returns:
      A :class:`matplotlib.figure.Figure` with one axes per metric.

    Raises:
      TypeError: ``history`` is not a mapping.
      ValueError: it holds no values.

    Example:
      >>> fig = plot_history({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "mean_iou": [0.2, 0.4]})
      >>> [ax.get_title() for ax in fig.axes]
      ['loss', 'mean iou']
    """
    values = _history_dict(history)
    names: list[str] = []
    for key in values:
        base = key.removeprefix("val_")
        if base not in names:
            names.append(base)
    names.sort(key=lambda n: 0 if n == "loss" else 1 if "loss" in n else 2 if "iou" in n else 3)
    columns = min(len(names), 3)
    rows = -(-len(names) // columns)
    fig = new_figure(4.2 * columns, 3.0 * rows, dpi)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        lower_is_better = "loss" in name or "error" in name
        pair = name in values and "val_" + name in values
        for key, style, tag in ((name, "-", "train"), ("val_" + name, "--", "validation")):
            if key not in values:
                continue
            tag = tag if pair else key
            y = values[key]
            epochs = np.arange(1, y.size + 1)
            ax.plot(epochs, y, style, marker="o", markersize=3, label=tag)
            if key.startswith("val_") and np.isfinite(y).any():
                best = int(np.nanargmin(y) if lower_is_better else np.nanargmax(y))
                ax.plot(
                    epochs[best],
                    y[best],
                    "*",
                    color="#d62728",
                    markersize=11,
                    zorder=3,
                    label=f"best {y[best]:.4g} @ {best + 1}",
                )
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    for ax in axes[len(names) :]:
        ax.remove()
    return fig
