"""Figures of batches: one row per element (image, label over the image, roi, loss weight), and the
first batch of a dataset saved as a PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fcndata.common import IGNORE_LABEL
from fcndata.preview.drawing import (
    PANEL_WIDTH,
    class_legend,
    class_shares,
    display_image,
    greyed,
    hatch,
    image_panel,
    label_overlay,
    legend_handles,
    luminance,
    new_figure,
    save,
    short,
    text,
    to_numpy,
)


def _standardise(batch) -> dict[str, Any]:
    """A dict of numpy arrays with a batch axis, from any accepted batch form."""
    keras_form = False
    if isinstance(batch, (tuple, list)):
        if not 2 <= len(batch) <= 3:
            raise ValueError(
                "plot_batch: a tuple batch must be (inputs, label) or (inputs, label, sample_weight) "
                f"as produced by to_keras. Received: len(batch)={len(batch)}"
            )
        inputs, label = batch[0], batch[1]
        sample_weight = batch[2] if len(batch) == 3 else None
        if isinstance(inputs, Mapping):
            if "image" not in inputs:
                raise ValueError(
                    "plot_batch: dict inputs of a to_keras triplet must have an 'image' key. "
                    f"Received: inputs keys={sorted(inputs)}"
                )
            image = inputs["image"]
        else:
            image = inputs
        batch = {"image": image, "label": label}
        if isinstance(inputs, Mapping) and "roi" in inputs:  # masked model: [B, H, W, 1] float
            batch["roi"] = to_numpy(inputs["roi"])[..., 0]
        if sample_weight is not None:
            batch["sample_weight"] = sample_weight
        keras_form = True
    if not isinstance(batch, Mapping):
        raise TypeError(
            "plot_batch: expected a batched element dict or a to_keras tuple (inputs, label, sample_weight). "
            f"Received: type(batch)={type(batch).__name__}"
        )
    missing = [k for k in ("image", "label") + (() if keras_form else ("roi",)) if k not in batch]
    if missing:
        raise ValueError(
            f"plot_batch: the batch is missing keys {missing}; a batched element has image [B, H, W, C], "
            f"label [B, H, W] and roi [B, H, W]. Received: keys={sorted(batch)}"
        )
    out = {k: to_numpy(v) for k, v in batch.items()}
    image = out["image"]
    if image.ndim == 3 and out["label"].ndim == 2:  # one unbatched element
        out = {k: v[None] for k, v in out.items()}
        image = out["image"]
    if image.ndim != 4:
        raise ValueError(
            "plot_batch: image must be [B, H, W, C] (or one [H, W, C] element). "
            f"Received: image.shape={image.shape}"
        )
    for key in ("label", "roi", "weight", "sample_weight"):
        if key in out and out[key].shape != image.shape[:3]:
            raise ValueError(
                f"plot_batch: {key} must be [B, H, W] matching image [B, H, W, C]={image.shape}. "
                f"Received: {key}.shape={out[key].shape}"
            )
    out["keras"] = keras_form
    return out


def row_height(shape: Sequence[int]) -> float:
    h, w = shape[:2]
    return PANEL_WIDTH * float(np.clip(h / max(w, 1), 0.35, 1.6))


def plot_batch(
    batch,
    class_names: Sequence[str] | None = None,
    max_items: int = 4,
    ignore_label: int = IGNORE_LABEL,
    *,
    palette=None,
    dpi: float = 100,
) -> Figure:
    """A figure with one row per element of a batch, as the model will see it.

    Columns of a batched element dict (numpy arrays or tf tensors):

    * **image** — uint8 as is, uint16 / float stretched min–max over the real pixels;
    * **label** — class colours over the image in grey (background clear, ``ignore_label``
      grey) and a legend of the classes present with their share of the pixels;
    * **roi** — the image with ``roi == 0`` (padding and ignored pixels) greyed out,
      hatched, outlined, and its share annotated as ``x % padding``;
    * **loss weight** — ``weight × roi`` (``roi`` without ``weight``) with a colorbar.

    Each row is titled with the element's path, origin (y, x) and source shape.

    A ``to_keras`` triplet ``(inputs, label, sample_weight)`` (inputs a float
    [B, H, W, C] tensor in [0, 1] or a dict with ``image``) gives the columns image,
    label and sample weight; with dict inputs the ``roi == 0`` part of the label is
    hatched.

    Args:
      batch: a batched element dict, one unbatched element, or a ``to_keras`` tuple.
      class_names: a name per class id; missing ids are called ``class k``.
      max_items: rows to draw (the first ``max_items`` elements).
      ignore_label: the unlabeled label value.
      palette: optional RGB (0–255) colour per class id, e.g. ``data.palette``.
      dpi: dots per inch of the figure; its PNG is ``fig.get_size_inches() * dpi`` pixels.

    Returns:
      A :class:`matplotlib.figure.Figure`: ``fig.axes`` holds each row's panels in
      column order followed by that row's colorbar; save it with ``fig.savefig(path)``.

    Raises:
      ValueError: a key is missing, shapes disagree or ``max_items < 1``.
      TypeError: ``batch`` is neither a dict nor a tuple.

    Example:
      >>> import fcndata.testing as t
      >>> batch = pad_elements([t.element(29, 41), t.element(17, 64, source_index=1)])
      >>> batch["image"].shape, float(batch["roi"].mean()) < 1.0  # padded bottom / right
      ((2, 29, 64, 3), True)
      >>> fig = plot_batch(batch, ["bg", "a", "b"])
      >>> len(fig.axes)  # 2 rows x (4 panels + a colorbar)
      10
      >>> [ax.get_title() for ax in fig.axes[:4]]
      ['image (uint8)', 'label', 'roi', 'loss weight (roi)']
    """
    if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
        raise ValueError(
            f"plot_batch: max_items must be a positive int. Received: max_items={max_items!r}"
        )
    data = _standardise(batch)
    keras_form = data["keras"]
    image = data["image"]
    rows = min(image.shape[0], max_items)
    if rows == 0:
        raise ValueError(f"plot_batch: the batch is empty. Received: image.shape={image.shape}")
    columns = 3 if keras_form else 4
    if keras_form and "sample_weight" not in data:
        columns = 2
    row_h = row_height(image.shape[1:3]) + 0.55  # + row title and column titles
    legend_w = 1.9
    fig = new_figure(columns * PANEL_WIDTH + legend_w + 0.7, rows * row_h, dpi)
    subfigs = fig.subfigures(rows, 1, squeeze=False)[:, 0]
    channels, dtype = image.shape[-1], image.dtype
    if keras_form:
        weights_key, weight_title = "sample_weight", "sample weight"
    elif "weight" in data:
        weights_key, weight_title = "weight", "loss weight (weight × roi)"
    else:
        weights_key, weight_title = "roi", "loss weight (roi)"
    image_title = f"image ({dtype.name}" + (", ch 0-2" if channels == 4 else "") + ")"
    if keras_form:
        image_title = f"model input ({dtype.name})"
    for i, sf in enumerate(subfigs):
        label = data["label"][i].astype(np.int64)
        roi = data["roi"][i].astype(bool) if "roi" in data else label != ignore_label
        rgb = display_image(image[i], roi, unit_range=keras_form)
        axes = sf.subplots(1, columns, squeeze=True)
        image_panel(axes[0], rgb)
        axes[0].set_title(image_title, fontsize=9)
        image_panel(axes[1], luminance(rgb))
        axes[1].imshow(label_overlay(label, palette, ignore_label), interpolation="nearest")
        if keras_form and "roi" in data:  # to_keras labels padding 0: mark where roi is 0
            hatch(axes[1], ~roi)
        axes[1].set_title("label", fontsize=9)
        class_legend(sf, legend_handles([class_shares(label)], class_names, palette, ignore_label), "classes")
        col = 2
        if not keras_form:
            padding = ~roi
            image_panel(axes[2], greyed(rgb, padding))
            hatch(axes[2], padding)
            axes[2].set_title("roi", fontsize=9)
            axes[2].text(
                0.02,
                0.02,
                f"{100.0 * padding.mean():.1f} % padding",
                transform=axes[2].transAxes,
                fontsize=8,
                va="bottom",
                ha="left",
                bbox={
                    "boxstyle": "round,pad=0.2",
                    "facecolor": "white",
                    "edgecolor": "0.5",
                    "alpha": 0.85,
                },
            )
            col = 3
        if col < columns:
            weights = data[weights_key][i].astype(np.float32)
            if weights_key == "weight":
                weights = weights * roi
            vmax = float(weights.max()) if weights.size and weights.max() > 0 else 1.0
            ax = axes[col]
            im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(weight_title, fontsize=9)
            bar = sf.colorbar(im, ax=ax, fraction=0.08, pad=0.02, aspect=15)
            bar.ax.tick_params(labelsize=7)
        sf.suptitle(_row_title(data, i), fontsize=9, x=0.01, ha="left")
    return fig


def _row_title(data: Mapping[str, np.ndarray], i: int) -> str:
    parts = [f"[{i}]"]
    if "path" in data:
        parts.append(short(text(data["path"][i])))
    if "origin" in data:
        y, x = (int(v) for v in data["origin"][i])
        parts.append(f"origin (y, x) = ({y}, {x})")
    if "source_shape" in data:
        h, w = (int(v) for v in data["source_shape"][i])
        parts.append(f"source {h}×{w}")
    h, w = data["image"].shape[1:3]
    parts.append(f"batch {h}×{w}")
    return "    ".join(parts)


def _first_batch(dataset, max_items: int):
    """The first batch of a dataset, or ``max_items`` unbatched elements padded by hand."""
    spec = getattr(dataset, "element_spec", None)
    image_spec = None
    if isinstance(spec, Mapping):
        image_spec = spec.get("image")
    if image_spec is not None and image_spec.shape.rank == 3:
        elements = [{k: to_numpy(v) for k, v in e.items()} for e in dataset.take(max_items)]
        if not elements:
            raise ValueError(
                "save_batch_preview: the dataset is empty; there is nothing to preview."
            )
        return pad_elements(elements)
    for batch in dataset:
        return batch
    raise ValueError("save_batch_preview: the dataset is empty; there is nothing to preview.")


def pad_elements(
    elements: Sequence[Mapping[str, Any]], ignore_label: int = IGNORE_LABEL
) -> dict[str, np.ndarray]:
    """Stacks unbatched elements of different sizes into one batch, padding bottom/right.

    Padding has image 0, label ``ignore_label``, roi 0 and weight 0, like ``PadAndBatch``
    (without its pad-to-multiple), so a source can be previewed before batching.

    Example:
      >>> import fcndata.testing as t
      >>> b = pad_elements([t.element(5, 7), t.element(3, 9)])
      >>> b["image"].shape, int(b["label"][0, 0, 8]), int(b["roi"][1].sum())
      ((2, 5, 9, 3), 255, 27)
    """
    elements = [{k: to_numpy(v) for k, v in e.items()} for e in elements]
    h = max(e["image"].shape[0] for e in elements)
    w = max(e["image"].shape[1] for e in elements)
    fill = {"image": 0, "label": ignore_label, "roi": 0, "weight": 0}
    out: dict[str, np.ndarray] = {}
    for key in elements[0]:
        values = []
        for e in elements:
            v = e[key]
            if key in fill:
                pad = [(0, h - v.shape[0]), (0, w - v.shape[1])] + [(0, 0)] * (v.ndim - 2)
                v = np.pad(v, pad, constant_values=fill[key])
            values.append(v)
        out[key] = np.stack(values)
    return out


def save_batch_preview(
    dataset,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    max_items: int = 4,
    **kwargs,
) -> str:
    """Draws the first batch of ``dataset`` with :func:`plot_batch` and writes a PNG.

    A dataset of unbatched elements (image rank 3) works too: its first ``max_items``
    elements are padded into one batch by hand (:func:`pad_elements`).

    Args:
      dataset: a ``tf.data.Dataset`` (or any iterable) of batched element dicts or
        ``to_keras`` triplets.
      path: the PNG to write; missing parent folders are created.
      class_names: a name per class id.
      max_items: rows to draw.
      **kwargs: passed to :func:`plot_batch` (``ignore_label``, ``palette``, ``dpi``).

    Returns:
      ``path`` as a string.

    Raises:
      ValueError: the dataset is empty.
    """
    batch = _first_batch(dataset, max_items)
    fig = plot_batch(batch, class_names=class_names, max_items=max_items, **kwargs)
    return save(fig, path)
