"""Matplotlib figures of batches, predictions and training curves; ``python -m fcndata.preview``.

Look at what the model is fed before training on it: padding that is trained as
background, a label that is off by a flip, a class that never shows up or a loss weight
that explodes are obvious in a picture and invisible in a loss curve.

* :func:`plot_batch` — one row per element of a batch: the image, the label over the
  image, the roi (padding greyed and hatched, with its share) and the loss weight map.
  Accepts batched element dicts and the ``(inputs, label, sample_weight)`` triplets
  that ``to_keras`` hands to Keras.
* :func:`save_batch_preview` — the first batch of a dataset as a PNG.
* :func:`plot_predictions` — image, ground truth and prediction side by side.
* :func:`plot_history` — loss and metrics per epoch from a Keras ``History``.

Every function builds a :class:`matplotlib.figure.Figure` directly and renders it with
the Agg canvas: no pyplot, no global backend switch, so it works the same headless, in
scripts and in notebooks (the figure displays itself as a PNG in Jupyter).

Example:
  >>> import fcndata.testing as t
  >>> batch = {k: v[None].numpy() for k, v in t.element(37, 53).items()}
  >>> fig = plot_batch(batch, class_names=["background", "left", "right"], dpi=50)
  >>> len(fig.axes)  # image, label, roi, loss weight + the weight colorbar
  5
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fcndata.common import CLASS_COLOURS, IGNORE_LABEL, LUMA

#: Qualitative colours for class ids 1, 2, … (:data:`fcndata.common.CLASS_COLOURS`).
PALETTE = CLASS_COLOURS
IGNORE_COLOR = "#8a8a8a"
_OVERLAY_ALPHA = 0.6
_PANEL_WIDTH = 2.8  # inches per image panel
_MAX_PATH = 60  # characters of a path shown in a row title


class PreviewFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that renders itself as PNG in notebooks.

    IPython shows any object with ``_repr_png_``, so a figure returned by this module
    displays even when pyplot (and its inline backend) was never imported.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png")
        return buffer.getvalue()


def _new_figure(width: float, height: float, dpi: float) -> PreviewFigure:
    fig = PreviewFigure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever the global backend is (headless-safe)
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, hspace=0.02, wspace=0.02)
    return fig


# ---------------------------------------------------------------------------- pure helpers


def _to_numpy(value) -> np.ndarray:
    """A numpy array from a numpy array, a tf.Tensor or a nested list."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _short(path: str, limit: int = _MAX_PATH) -> str:
    """Keeps the end of a long path, where the file name is."""
    return path if len(path) <= limit else "…" + path[-(limit - 1) :]


def class_color(
    class_id: int, palette=None, ignore_label: int = IGNORE_LABEL
) -> tuple[float, float, float, float]:
    """The RGBA overlay colour of a class id (class 0 clear, ``ignore_label`` grey).

    Args:
      class_id: a label value.
      palette: optional RGB colour per class id, 0–255 ints (``data.palette``), overriding
        the built-in qualitative :data:`PALETTE`.
      ignore_label: the unlabeled value, drawn opaque grey.

    Example:
      >>> class_color(0)[3], class_color(255)[:3] == class_color(255)[:3]
      (0.0, True)
      >>> [round(c, 2) for c in class_color(1, palette=[(0, 0, 0), (255, 0, 0)])]
      [1.0, 0.0, 0.0, 0.6]
    """
    if class_id == ignore_label:
        return to_rgba(IGNORE_COLOR, 0.85)
    if class_id == 0:
        return (0.0, 0.0, 0.0, 0.0)
    if palette is not None and class_id < len(palette):
        r, g, b = (float(c) / 255.0 for c in palette[class_id])
        return (r, g, b, _OVERLAY_ALPHA)
    return to_rgba(PALETTE[(class_id - 1) % len(PALETTE)], _OVERLAY_ALPHA)


def class_name(class_id: int, class_names=None, ignore_label: int = IGNORE_LABEL) -> str:
    """The display name of a class id (``class_names[k]``, else ``class k``)."""
    if class_id == ignore_label:
        return f"ignore ({ignore_label})"
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return f"class {class_id}"


def display_image(
    image: np.ndarray, valid: np.ndarray | None = None, *, unit_range: bool = False
) -> np.ndarray:
    """An image as float RGB in [0, 1] for display.

    uint8 is shown as is; uint16 and float are stretched min–max over the ``valid``
    pixels (so zero padding does not flatten the contrast), except with ``unit_range``,
    where float data already in [0, 1] (model inputs) is shown as is. One channel is
    grey; three or four channels show channels 0–2 as RGB; any other count shows
    channel 0.

    Example:
      >>> img = np.array([[[100], [300]]], np.uint16)
      >>> display_image(img)[..., 0].tolist()
      [[0.0, 1.0]]
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[-1]
    planes = image[..., :3] if channels in (3, 4) else image[..., :1]
    if image.dtype == np.uint8:
        out = planes.astype(np.float32) / 255.0
    else:
        out = planes.astype(np.float32)
        finite = np.isfinite(out)
        if valid is not None and valid.any():
            finite &= np.asarray(valid, bool)[..., None]
        values = out[finite] if finite.any() else np.zeros([1], np.float32)
        lo, hi = float(values.min()), float(values.max())
        if not (unit_range and lo >= 0.0 and hi <= 1.0):
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        out = np.nan_to_num(np.clip(out, 0.0, 1.0))
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out


def label_overlay(label: np.ndarray, palette=None, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """An RGBA [H, W, 4] float image colouring each class id (see :func:`class_color`)."""
    label = np.asarray(label).astype(np.int64)
    ids = np.unique(label)
    table = np.array([class_color(int(k), palette, ignore_label) for k in ids], np.float32)
    return table[np.searchsorted(ids, label)]


def _shares(label: np.ndarray) -> dict[int, float]:
    """Percent of the pixels of each class id present in ``label``."""
    ids, counts = np.unique(np.asarray(label).astype(np.int64), return_counts=True)
    return {k: 100.0 * c / max(label.size, 1) for k, c in zip(ids.tolist(), counts.tolist())}


def _class_legend(subfigure, handles, title: str) -> None:
    """The class legend to the right of one row (same look in every figure)."""
    subfigure.legend(
        handles=handles,
        loc="outside right upper",
        fontsize=8,
        frameon=False,
        handlelength=1.2,
        title=title,
        title_fontsize=8,
        alignment="left",
    )


def _legend_handles(
    shares: Sequence[Mapping[int, float]], class_names, palette, ignore_label: int
) -> list[Patch]:
    """One legend patch per class present in any of ``shares``, with its share(s) in percent."""
    present = set().union(*shares)
    handles = []
    for k in sorted(present, key=lambda k: (k == ignore_label, k)):
        color = class_color(k, palette, ignore_label)
        percents = " / ".join(f"{share.get(k, 0.0):.1f}" for share in shares)
        name = f"{class_name(k, class_names, ignore_label)}  {percents} %"
        if color[3] == 0.0:  # background: an outlined empty box reads as "left clear"
            handles.append(Patch(facecolor="white", edgecolor="0.3", label=name))
        else:
            alpha = min(1.0, color[3] + 0.25)
            handles.append(Patch(facecolor=color[:3], edgecolor="0.3", alpha=alpha, label=name))
    return handles


def _hatch(ax, mask: np.ndarray) -> None:
    """Hatches ``mask`` (True = hatched) and outlines it in red, over whatever is drawn."""
    if not mask.any():
        return
    h, w = mask.shape
    # Pixel centres at integers; extend by half a pixel so the hatching meets the edges.
    ys = np.concatenate([[-0.5], np.arange(h), [h - 0.5]])
    xs = np.concatenate([[-0.5], np.arange(w), [w - 0.5]])
    padded = np.pad(mask.astype(np.float32), 1, mode="edge")
    hatched = ax.contourf(xs, ys, padded, levels=[0.5, 1.5], colors="none", hatches=["////"])
    hatched.set_hatchcolor("0.45")  # mid grey: visible over a black image and over the grey wash
    ax.contour(xs, ys, padded, levels=[0.5], colors=["#d62728"], linewidths=0.8)


def _image_panel(ax, rgb: np.ndarray) -> None:
    ax.imshow(rgb, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` in grey: class colours stay readable on top of a colourful image."""
    grey = rgb @ np.array(LUMA, np.float32)
    return np.repeat(grey[..., None], 3, axis=-1)


def _greyed(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``rgb`` with the ``mask`` pixels turned into a light, flat grey-wash."""
    grey = rgb.mean(axis=-1, keepdims=True)
    washed = 0.72 + 0.2 * grey
    return np.where(mask[..., None], np.repeat(washed, 3, axis=-1), rgb)


# ---------------------------------------------------------------------------- batches


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
            batch["roi"] = _to_numpy(inputs["roi"])[..., 0]
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
    out = {k: _to_numpy(v) for k, v in batch.items()}
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


def _row_height(shape: Sequence[int]) -> float:
    h, w = shape[:2]
    return _PANEL_WIDTH * float(np.clip(h / max(w, 1), 0.35, 1.6))


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
    row_h = _row_height(image.shape[1:3]) + 0.55  # + row title and column titles
    legend_w = 1.9
    fig = _new_figure(columns * _PANEL_WIDTH + legend_w + 0.7, rows * row_h, dpi)
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
        _image_panel(axes[0], rgb)
        axes[0].set_title(image_title, fontsize=9)
        _image_panel(axes[1], _luminance(rgb))
        axes[1].imshow(label_overlay(label, palette, ignore_label), interpolation="nearest")
        if keras_form and "roi" in data:  # to_keras labels padding 0: mark where roi is 0
            _hatch(axes[1], ~roi)
        axes[1].set_title("label", fontsize=9)
        _class_legend(sf, _legend_handles([_shares(label)], class_names, palette, ignore_label), "classes")
        col = 2
        if not keras_form:
            padding = ~roi
            _image_panel(axes[2], _greyed(rgb, padding))
            _hatch(axes[2], padding)
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
        parts.append(_short(_text(data["path"][i])))
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
        elements = [{k: _to_numpy(v) for k, v in e.items()} for e in dataset.take(max_items)]
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
    elements = [{k: _to_numpy(v) for k, v in e.items()} for e in elements]
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
    return _save(fig, path)


def _save(fig: Figure, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return str(path)


# ---------------------------------------------------------------------------- predictions, history


def _as_list(values, item_ndim: int) -> list[np.ndarray]:
    """A list of arrays from a list, one array of rank ``item_ndim`` or a batch of them."""
    if values is None:
        return []
    if isinstance(values, (list, tuple)):
        return [_to_numpy(v) for v in values]
    array = _to_numpy(values)
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
    scores = _to_numpy(predictions) if not isinstance(predictions, (list, tuple)) else None
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
    heights = [_row_height(img.shape) + 0.55 for img in images[:rows]]
    fig = _new_figure(3 * _PANEL_WIDTH + 2.1, sum(heights), dpi)
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
        title = f"[{i}]" if titles is None else f"[{i}]    {_short(_text(titles[i]))}"
        sf.suptitle(title, fontsize=9, x=0.01, ha="left")
        _image_panel(axes[0], rgb)
        axes[0].set_title(f"image {image.shape[0]}×{image.shape[1]}", fontsize=9)
        _image_panel(axes[1], _luminance(rgb))
        axes[1].imshow(
            label_overlay(np.where(valid, label, ignore_label), palette, ignore_label),
            interpolation="nearest",
        )
        axes[1].set_title("ground truth", fontsize=9)
        _image_panel(axes[2], _luminance(rgb))
        axes[2].imshow(label_overlay(pred, palette, ignore_label), interpolation="nearest")
        _hatch(axes[2], ~valid)
        correct = float((pred == label)[valid].mean()) if valid.any() else float("nan")
        axes[2].set_title(f"prediction: {100.0 * correct:.1f} % correct", fontsize=9)
        # Shares over the real pixels, so a collapsed or missing class stands out.
        shares = [_shares(label[valid]), _shares(pred[valid])]
        _class_legend(sf, _legend_handles(shares, class_names, palette, ignore_label), "classes (% gt / pred)")
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
        values = np.asarray(_to_numpy(values), np.float64).reshape(-1)
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
    fig = _new_figure(4.2 * columns, 3.0 * rows, dpi)
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


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fcndata.preview``: writes a PNG of the first batch of a recipe's pipeline."""
    from fcndata import cli

    cli.quiet_defaults()  # before TensorFlow is imported
    from fcndata.config import add_config_arguments, load_config

    parser = argparse.ArgumentParser(
        prog="python -m fcndata.preview",
        description="Write a PNG of the first batch a recipe's pipeline yields: image, label, roi, loss weight.",
    )
    add_config_arguments(parser)
    parser.add_argument("--out", default="preview.png", help="PNG to write (default: preview.png)")
    parser.add_argument(
        "--mode",
        choices=("train", "eval"),
        default="train",
        help="train: augmented, sampled training batches; eval: validation batches",
    )
    parser.add_argument(
        "--max-items", type=int, default=4, help="elements (rows) to draw (default: 4)"
    )
    parser.add_argument("--dpi", type=float, default=100, help="dots per inch (default: 100)")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.max_items < 1:
        parser.error(f"--max-items must be >= 1. Received: --max-items={args.max_items}")

    def body() -> int:
        config = load_config(args.config, args.overrides)
        if args.mode == "eval" and not config.data.has_validation:
            raise ValueError(
                f"{config.source}: the recipe has no validation data (data.val_images / data.val_tfrecords is "
                "not set). Received: --mode eval"
            )
        print("fcndata: building the pipeline and drawing its first batch...", file=sys.stderr, flush=True)
        # Imported here: it pulls in TensorFlow, and `import fcndata.preview` should stay light.
        from fcndata.pipeline import build_pipeline

        dataset = build_pipeline(config, args.mode, keras=False)
        path = save_batch_preview(
            dataset,
            args.out,
            class_names=config.data.names,
            max_items=args.max_items,
            ignore_label=config.data.ignore_label,
            palette=config.data.palette,
            dpi=args.dpi,
        )
        print(path)
        return 0

    return cli.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
