"""Matplotlib figures of batches, predictions and training curves; ``python -m fcndata.preview``.

One module per kind of figure: :mod:`~fcndata.preview.batches`, :mod:`~fcndata.preview.results`
(predictions, training curves), drawn with :mod:`~fcndata.preview.drawing`; the command is
:mod:`~fcndata.preview.__main__`.

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

from fcndata.preview.__main__ import main
from fcndata.preview.batches import pad_elements, plot_batch, save_batch_preview
from fcndata.preview.drawing import (
    IGNORE_COLOR,
    PALETTE,
    PreviewFigure,
    class_color,
    class_name,
    display_image,
    label_overlay,
)
from fcndata.preview.results import plot_history, plot_predictions

__all__ = [
    "IGNORE_COLOR", "PALETTE", "PreviewFigure", "class_color", "class_name", "display_image", "label_overlay", "main",
    "pad_elements", "plot_batch", "plot_history", "plot_predictions", "save_batch_preview",
]
