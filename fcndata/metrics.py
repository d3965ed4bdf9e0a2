"""Masked segmentation metrics: confusion matrix, mean IoU, pixel accuracy.

The one place IoU is computed: :func:`confusion_matrix` (numpy, the masked pixels of a
label and a prediction), :func:`per_class_iou`, :func:`mean_iou` and :func:`iou_by_name`
of a confusion matrix, used by the trainer's evaluation, the benchmarks and the
experiments; and the same counts in graph as Keras metrics for ``fit`` logs.

``update_state(y_true, y_pred, sample_weight)`` takes integer labels ``[B, H, W]`` and
logits ``[B, H, W, K]`` (or class ids ``[B, H, W]``) and counts a pixel only when its
label is a class id (``0 <= label < num_classes``, so ``ignore_label`` 255 is skipped)
and, if given, its ``sample_weight > 0``. Counts are pixels, not weights: class
weights and loss sampling in ``weight`` change the loss, not the score.

In ``model.compile`` pass these as ``weighted_metrics``, not ``metrics``: Keras 3
gives ``sample_weight`` only to ``weighted_metrics``. ``to_keras`` maps ignored and
padded labels to 0 and marks them with ``sample_weight = 0``, so under ``metrics=`` the
padding would be scored as class 0::

    model.compile(optimizer="adam", loss=MaskedSparseCrossEntropy(),
                  weighted_metrics=[MeanIoU(num_classes), PixelAccuracy(num_classes)])

Example:
  >>> m = MeanIoU(num_classes=2)
  >>> y_true = np.array([[[0, 1, 1, 255]]])
  >>> y_pred = np.array([[[0, 1, 0, 1]]])          # class ids, or logits [..., 2]
  >>> m.update_state(y_true, y_pred)
  >>> round(float(m.result()), 4)                   # IoU 1/2 for both classes
  0.5
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fcndata.common import IGNORE_LABEL


def confusion_matrix(label, prediction, num_classes: int, roi=None, ignore_label: int | None = None) -> np.ndarray:
    """The ``[K, K]`` int64 confusion matrix (rows = label, columns = prediction) of the masked pixels.

    A pixel counts when its label and its prediction are class ids (``0 <= id < K``),
    its label is not ``ignore_label`` (when given) and its ``roi`` is positive (when
    given; a sample weight works the same: counts are pixels, not weights).

    Args:
      label, prediction: class ids of the same shape (numpy arrays or tensors).
      num_classes: K.
      roi: mask or weights broadcastable to ``label``; None counts every pixel.
      ignore_label: a label value never counted.

    >>> confusion_matrix([[0, 0, 1], [2, 255, 1]], [[0, 1, 1], [2, 0, 0]], 3, ignore_label=255)
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 1]])
    >>> confusion_matrix([[0, 0, 1], [2, 255, 1]], [[0, 1, 1], [2, 0, 0]], 3, roi=[[1, 0, 1], [1, 1, 0]])
    array([[1, 0, 0],
           [0, 1, 0],
           [0, 0, 1]])
    """
    k = int(num_classes)
    label = np.asarray(label).astype(np.int64)
    pred = np.asarray(prediction).astype(np.int64)
    if label.shape != pred.shape:
        raise ValueError(f"confusion_matrix: label and prediction must have one shape. "
                         f"Received: label {label.shape}, prediction {pred.shape}")
    valid = (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
    if ignore_label is not None:
        valid &= label != ignore_label
    if roi is not None:
        valid &= np.broadcast_to(np.asarray(roi) > 0, label.shape)
    counts = np.bincount(label[valid] * k + pred[valid], minlength=k * k)
    return counts.reshape(k, k).astype(np.int64)


def per_class_iou(confusion) -> np.ndarray:
    """IoU of each class from a confusion matrix (rows = true, columns = predicted).

    ``IoU_k = C_kk / (Σ_j C_kj + Σ_i C_ik - C_kk)``; NaN for a class that is neither
    in the labels nor in the predictions.

    >>> per_class_iou([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    array([0.75      , 0.66666667,        nan])
    """
    if isinstance(confusion, ConfusionMatrix):
        confusion = confusion.confusion.numpy()
    c = np.asarray(confusion, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"per_class_iou: confusion must be a square [K, K] matrix. Received: shape={c.shape}")
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(confusion) -> float:
    """Mean of :func:`per_class_iou` over the classes in the labels or the predictions.

    A class absent from both is left out of the mean; NaN when no class is (no pixel counted).

    >>> mean_iou([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # (0.75 + 2/3) / 2
    0.7083333333333333
    """
    iou = per_class_iou(confusion)
    return float("nan") if np.all(np.isnan(iou)) else float(np.nanmean(iou))


def iou_by_name(confusion, names) -> dict:
    """``{"mean_iou": float, "per_class_iou": {name: float or None}}`` of a confusion matrix
    (None for a class absent from labels and predictions), as ``summary.json`` gives them.

    >>> iou_by_name([[3, 1, 0], [0, 2, 0], [0, 0, 0]], ["a", "b", "c"])["per_class_iou"]
    {'a': 0.75, 'b': 0.6666666666666666, 'c': None}
    """
    iou = per_class_iou(confusion)
    return {
        "mean_iou": mean_iou(confusion),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
    }


@keras.saving.register_keras_serializable(package="fcndata")
class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates a ``[K, K]`` int64 confusion matrix (rows = true, columns = predicted).

    Args:
      num_classes: K.
      ignore_label: a label value never counted (any label outside ``0..K-1`` is skipped
        anyway; kept for the config and the error messages).
      name, dtype: as ``keras.metrics.Metric``.

    ``result()`` returns the matrix; use :class:`MeanIoU` / :class:`PixelAccuracy` for
    scalars in ``fit`` logs.
    """

    def __init__(self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str = "confusion_matrix", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"{type(self).__name__}: num_classes must be a positive int. Received: num_classes={num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="int64", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        labels = ops.cast(ops.convert_to_tensor(y_true), "int32")
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) == len(labels.shape) + 1:
            if y_pred.shape[-1] == 1 and k == 2:  # one logit: binary
                pred = ops.cast(y_pred[..., 0] > 0, "int32")
            else:
                pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        else:
            pred = ops.cast(y_pred, "int32")
        if len(labels.shape) == len(pred.shape) + 1 and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, -1)
        valid = ops.logical_and(labels >= 0, labels < k)
        if self.ignore_label is not None:
            valid = ops.logical_and(valid, labels != self.ignore_label)
        valid = ops.logical_and(valid, ops.logical_and(pred >= 0, pred < k))
        if sample_weight is not None:
            sw = ops.convert_to_tensor(sample_weight)
            if len(sw.shape) == len(labels.shape) + 1 and sw.shape[-1] == 1:
                sw = ops.squeeze(sw, -1)
            valid = ops.logical_and(valid, ops.broadcast_to(sw, ops.shape(labels)) > 0)
        index = ops.where(valid, labels * k + pred, 0)
        counts = ops.segment_sum(
            ops.reshape(ops.cast(valid, "int32"), (-1,)), ops.reshape(index, (-1,)), num_segments=k * k
        )
        self.confusion.assign_add(ops.cast(ops.reshape(counts, (k, k)), "int64"))

    def result(self):
        return self.confusion

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), "int64"))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label}


@keras.saving.register_keras_serializable(package="fcndata")
class MeanIoU(ConfusionMatrix):
    """Mean intersection over union over the classes present (in labels or predictions).

    ``mean_k IoU_k`` over classes with a non-empty union; 0 before any pixel is seen.
    See :func:`per_class_iou` for the per-class values.
    """

    def __init__(self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str = "mean_iou", dtype=None):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)

    def result(self):
        c = ops.cast(self.confusion, "float32")
        tp = ops.diagonal(c)
        union = ops.sum(c, axis=0) + ops.sum(c, axis=1) - tp
        present = ops.cast(union > 0, "float32")
        iou = ops.divide_no_nan(tp, union)
        return ops.divide_no_nan(ops.sum(iou * present), ops.sum(present))


@keras.saving.register_keras_serializable(package="fcndata")
class PixelAccuracy(ConfusionMatrix):
    """Fraction of counted pixels whose predicted class is right: ``trace(C) / ΣC``."""

    def __init__(self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str = "pixel_accuracy", dtype=None):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)

    def result(self):
        c = ops.cast(self.confusion, "float32")
        return ops.divide_no_nan(ops.sum(ops.diagonal(c)), ops.sum(c))
