"""What every preview figure is drawn with: class colours, image display, label overlays, legends, the
roi hatching, and the figure class that shows itself as a PNG in Jupyter (Agg canvas, no pyplot)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fcndata.common import CLASS_COLOURS, IGNORE_LABEL, LUMA

#: Qualitative colours for class ids 1, 2, … (:data:`fcndata.common.CLASS_COLOURS`).
PALETTE = CLASS_COLOURS


IGNORE_COLOR = "#8a8a8a"


OVERLAY_ALPHA = 0.6


PANEL_WIDTH = 2.8  # inches per image panel


MAX_PATH = 60  # characters of a path shown in a row title


class PreviewFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that renders itself as PNG in notebooks.

    IPython shows any object with ``_repr_png_``, so a figure returned by this module
    displays even when pyplot (and its inline backend) was never imported.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png")
        return buffer.getvalue()


def new_figure(width: float, height: float, dpi: float) -> PreviewFigure:
    fig = PreviewFigure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever the global backend is (headless-safe)
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, hspace=0.02, wspace=0.02)
    return fig


def to_numpy(value) -> np.ndarray:
    """A numpy array from a numpy array, a tf.Tensor or a nested list."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def short(path: str, limit: int = MAX_PATH) -> str:
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
        return (r, g, b, OVERLAY_ALPHA)
    return to_rgba(PALETTE[(class_id - 1) % len(PALETTE)], OVERLAY_ALPHA)


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


def class_shares(label: np.ndarray) -> dict[int, float]:
    """Percent of the pixels of each class id present in ``label``."""
    ids, counts = np.unique(np.asarray(label).astype(np.int64), return_counts=True)
    return {k: 100.0 * c / max(label.size, 1) for k, c in zip(ids.tolist(), counts.tolist())}


def class_legend(subfigure, handles, title: str) -> None:
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


def legend_handles(
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


def hatch(ax, mask: np.ndarray) -> None:
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


def image_panel(ax, rgb: np.ndarray) -> None:
    ax.imshow(rgb, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` in grey: class colours stay readable on top of a colourful image."""
    grey = rgb @ np.array(LUMA, np.float32)
    return np.repeat(grey[..., None], 3, axis=-1)


def greyed(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``rgb`` with the ``mask`` pixels turned into a light, flat grey-wash."""
    grey = rgb.mean(axis=-1, keepdims=True)
    washed = 0.72 + 0.2 * grey
    return np.where(mask[..., None], np.repeat(washed, 3, axis=-1), rgb)


def save(fig: Figure, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return str(path)
