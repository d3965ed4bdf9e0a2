"""Segmentation losses that honour per-pixel ``sample_weight`` and ``ignore_label``.

Every loss takes integer labels ``y_true [B, H, W]`` and logits ``y_pred [B, H, W, K]``
(``SigmoidFocalLoss`` also takes 0/1 targets ``[B, H, W, K]``). A pixel whose label is
``ignore_label`` (or any value outside ``0..K-1``) contributes nothing, even without a
``sample_weight``; the ``sample_weight`` that ``to_keras`` yields (``roi × weight``,
zero on padding, where it also maps the label to 0) is multiplied in on top.

The default reduction is ``"mean_with_sample_weight"``: the weighted sum divided by the
summed weights (valid mask × sample_weight), so padded or ignored pixels do not dilute
the mean and a batch that is half padding has the same loss scale as one that is not.
``"sum_over_batch_size"`` (Keras' default) divides by all B·H·W pixels instead.

Which focal loss:

* ``SparseFocalLoss`` — one label per pixel (mutually exclusive classes, softmax). The
  usual semantic segmentation case. ``alpha`` may be one value per class; with a
  single scalar alpha it only rescales the loss, because every pixel is a "positive"
  of exactly one class — class balance needs the per-class list.
* ``SigmoidFocalLoss`` — several independent yes/no labels per pixel (multi-label, or
  binary segmentation with one logit), RetinaNet style: ``alpha`` for positives and
  ``1 - alpha`` for negatives, so a scalar alpha does balance each class's positives
  against its (much more frequent) negatives.

Example:
  >>> loss = MaskedSparseCrossEntropy()
  >>> y_true = np.array([[[0, 255]]])               # second pixel ignored
  >>> y_pred = np.array([[[[0.0, 0.0], [9.0, -9.0]]]])
  >>> round(float(loss(y_true, y_pred)), 4)          # log 2, from the first pixel only
  0.6931
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

IGNORE_LABEL = 255
DEFAULT_REDUCTION = "mean_with_sample_weight"

_EPSILON = 1e-7


def _check_alpha(alpha, where: str):
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if alpha < 0:
            raise ValueError(f"{where}: alpha must be >= 0. Received: alpha={alpha!r}")
        return float(alpha)
    if isinstance(alpha, (list, tuple, np.ndarray)):
        values = [float(a) for a in alpha]
        if not values or any(a < 0 for a in values):
            raise ValueError(f"{where}: alpha must be a non-empty list of values >= 0. Received: alpha={alpha!r}")
        return values
    raise TypeError(f"{where}: alpha must be None, a number or a list of numbers (one per class). Received: alpha={alpha!r}")


def _check_num_alpha(alpha, num_classes, where):
    if isinstance(alpha, list) and len(alpha) != num_classes:
        raise ValueError(
            f"{where}: alpha has one value per class, so it needs {num_classes} values "
            f"(the logits' last dimension). Received: alpha={alpha!r}"
        )


def _valid_labels(labels, num_classes: int, ignore_label: int | None):
    """1.0 where 0 <= label < num_classes and label != ignore_label, else 0.0."""
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    if ignore_label is not None:
        valid = ops.logical_and(valid, labels != ignore_label)
    return valid


def _log_probs(y_pred, from_logits: bool):
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    probs = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    return ops.log(ops.clip(probs, _EPSILON, 1.0))


def _merge_weight(valid, sample_weight, dtype):
    weight = ops.cast(valid, dtype)
    if sample_weight is None:
        return weight
    sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
    if len(sample_weight.shape) == len(weight.shape) + 1 and sample_weight.shape[-1] == 1:
        sample_weight = ops.squeeze(sample_weight, -1)
    return weight * sample_weight


class _PixelLoss(keras.losses.Loss):
    """Base: ``call`` returns a per-pixel loss; ``__call__`` folds the valid mask into the weight."""

    def __init__(self, ignore_label: int | None = IGNORE_LABEL, reduction=DEFAULT_REDUCTION, name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if ignore_label is not None and not isinstance(ignore_label, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: ignore_label must be an int or None. Received: ignore_label={ignore_label!r}")
        self.ignore_label = None if ignore_label is None else int(ignore_label)

    def _valid(self, y_true, y_pred):
        labels = ops.cast(ops.convert_to_tensor(y_true), "int32")
        if len(labels.shape) == len(y_pred.shape) and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, -1)
        return _valid_labels(labels, y_pred.shape[-1], self.ignore_label)

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        weight = _merge_weight(self._valid(y_true, y_pred), sample_weight, self.dtype)
        return super().__call__(y_true, y_pred, sample_weight=weight)

    def _labels(self, y_true, y_pred):
        """int32 labels [B, H, W] with invalid ones replaced by 0 (their weight is 0)."""
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape) and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, -1)
        valid = _valid_labels(labels, y_pred.shape[-1], self.ignore_label)
        return ops.where(valid, labels, 0)

    def get_config(self):
        return {**super().get_config(), "ignore_label": self.ignore_label}


@keras.saving.register_keras_serializable(package="fcndata")
class MaskedSparseCrossEntropy(_PixelLoss):
    """Sparse softmax cross-entropy over valid pixels.

    Per pixel with label y and K classes, with label smoothing ε::

        loss = -(1 - ε) · log p_y - (ε / K) · Σ_k log p_k,    p = softmax(logits)

    reduced with ``reduction`` (default ``mean_with_sample_weight``:
    ``Σ w·loss / Σ w``, w = valid × sample_weight).

    Args:
      from_logits: ``y_pred`` are logits (True) or probabilities.
      ignore_label: label value that contributes nothing; labels outside ``0..K-1``
        are ignored too.
      label_smoothing: ε in [0, 1).
      reduction, name, dtype: as ``keras.losses.Loss``.

    Example:
      >>> loss = MaskedSparseCrossEntropy()
      >>> round(float(loss(np.array([[[1]]]), np.array([[[[0.0, 0.0]]]]))), 4)
      0.6931
    """

    def __init__(
        self,
        from_logits: bool = True,
        ignore_label: int | None = IGNORE_LABEL,
        label_smoothing: float = 0.0,
        reduction=DEFAULT_REDUCTION,
        name: str = "masked_sparse_cross_entropy",
        dtype=None,
    ):
        super().__init__(ignore_label=ignore_label, reduction=reduction, name=name, dtype=dtype)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"MaskedSparseCrossEntropy: label_smoothing must be in [0, 1). Received: label_smoothing={label_smoothing!r}"
            )
        self.from_logits = from_logits
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = self._labels(y_true, y_pred)
        log_p = _log_probs(y_pred, self.from_logits)
        one_hot = ops.one_hot(labels, y_pred.shape[-1], dtype=log_p.dtype)
        nll = -ops.sum(one_hot * log_p, axis=-1)
        if self.label_smoothing:
            smooth = -ops.mean(log_p, axis=-1)
            nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth
        return nll

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


class _FocalLoss(_PixelLoss):
    """What the softmax and sigmoid focal losses share: γ, α, logits, their checks and config."""

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: None | float | Sequence[float] = None,
        from_logits: bool = True,
        ignore_label: int | None = IGNORE_LABEL,
        reduction=DEFAULT_REDUCTION,
        name: str = "focal_loss",
        dtype=None,
    ):
        super().__init__(ignore_label=ignore_label, reduction=reduction, name=name, dtype=dtype)
        if gamma < 0:
            raise ValueError(f"{type(self).__name__}: gamma must be >= 0. Received: gamma={gamma!r}")
        self.gamma = float(gamma)
        self.alpha = _check_alpha(alpha, type(self).__name__)
        self.from_logits = from_logits

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha, "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="fcndata")
class SparseFocalLoss(_FocalLoss):
    """Softmax focal loss for single-label multi-class segmentation (Lin et al. 2017).

    Per pixel with label y, ``p = softmax(logits)`` and ``p_t = p_y``::

        loss = -α_t · (1 - p_t)^γ · log p_t

    with ``α_t = alpha[y]`` when ``alpha`` is a list (one weight per class), ``alpha``
    when it is a number and 1 when None. γ = 0 and alpha None is cross-entropy.
    Equal to ``keras.losses.CategoricalFocalCrossentropy(alpha, gamma)`` on one-hot
    labels (Keras multiplies alpha, scalar or per-class list, into the true class term
    the same way), but sparse, masked and without one-hot labels in memory.

    Fits mutually exclusive classes (one label per pixel). A scalar alpha only rescales
    the loss here — every pixel is the positive of exactly one class — so class
    imbalance needs one alpha per class (e.g. inverse frequency); for independent
    binary labels use :class:`SigmoidFocalLoss`.

    Args:
      gamma: focusing parameter γ >= 0 (2 in the paper).
      alpha: None, a number, or a list of K per-class weights.
      from_logits: ``y_pred`` are logits (True) or probabilities.
      ignore_label: label value that contributes nothing.
      reduction, name, dtype: as ``keras.losses.Loss``.
    """

    def __init__(self, gamma=2.0, alpha=None, from_logits=True, ignore_label=IGNORE_LABEL,
                 reduction=DEFAULT_REDUCTION, name="sparse_focal_loss", dtype=None):
        super().__init__(gamma, alpha, from_logits, ignore_label, reduction, name, dtype)

    def call(self, y_true, y_pred):
        labels = self._labels(y_true, y_pred)
        num_classes = y_pred.shape[-1]
        _check_num_alpha(self.alpha, num_classes, "SparseFocalLoss")
        log_p = _log_probs(y_pred, self.from_logits)
        one_hot = ops.one_hot(labels, num_classes, dtype=log_p.dtype)
        log_pt = ops.sum(one_hot * log_p, axis=-1)
        pt = ops.exp(log_pt)
        loss = -ops.power(ops.maximum(1.0 - pt, 0.0), self.gamma) * log_pt
        if isinstance(self.alpha, list):
            alpha = ops.convert_to_tensor(self.alpha, dtype=log_p.dtype)
            loss = loss * ops.sum(one_hot * alpha, axis=-1)
        elif self.alpha is not None:
            loss = loss * self.alpha
        return loss



@keras.saving.register_keras_serializable(package="fcndata")
class SigmoidFocalLoss(_FocalLoss):
    """Sigmoid (binary) focal loss for multi-label targets, RetinaNet style.

    For each pixel and class k with target t ∈ {0, 1} and ``p = sigmoid(logit)``::

        p_t = p if t == 1 else 1 - p
        α_t = α if t == 1 else 1 - α          (α None: 1 for both)
        loss_k = -α_t · (1 - p_t)^γ · log p_t
        loss = mean_k loss_k

    (the mean over k matches ``keras.losses.BinaryFocalCrossentropy`` with
    ``apply_class_balancing=True``). ``alpha`` may be a list with one positive-class
    weight per class.

    Targets: 0/1 ``[B, H, W, K]``; a pixel with any target equal to ``ignore_label``
    is ignored. Sparse labels ``[B, H, W]`` (what the pipeline yields) are one-hot
    encoded (one-vs-all) when K > 1, or used as the 0/1 target when K == 1 (binary
    segmentation with a single logit).

    Fits independent yes/no labels (overlapping classes, or binary segmentation): each
    class's positives are balanced against its own negatives. For mutually exclusive
    classes prefer :class:`SparseFocalLoss`.

    Args:
      gamma: focusing parameter γ >= 0.
      alpha: None, a number in [0, 1] (0.25 in RetinaNet), or a list of K numbers.
      from_logits: ``y_pred`` are logits (True) or probabilities.
      ignore_label: target value that marks a pixel as unlabeled.
      reduction, name, dtype: as ``keras.losses.Loss``.
    """

    def __init__(self, gamma=2.0, alpha=None, from_logits=True, ignore_label=IGNORE_LABEL,
                 reduction=DEFAULT_REDUCTION, name="sigmoid_focal_loss", dtype=None):
        super().__init__(gamma, alpha, from_logits, ignore_label, reduction, name, dtype)

    def _targets(self, y_true, y_pred):
        """(0/1 float targets [B,H,W,K] with ignored pixels zeroed, valid [B,H,W] bool)."""
        num_classes = y_pred.shape[-1]
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) and (y_true.shape[-1] == num_classes and num_classes > 1):
            labels = ops.cast(y_true, "int32")
            valid = ops.all(ops.logical_and(labels >= 0, labels <= 1), axis=-1)
            if self.ignore_label is not None:
                valid = ops.logical_and(valid, ops.logical_not(ops.any(labels == self.ignore_label, axis=-1)))
            targets = ops.cast(ops.where(valid[..., None], labels, 0), y_pred.dtype)
            return targets, valid
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, -1)
        limit = 2 if num_classes == 1 else num_classes
        valid = _valid_labels(labels, limit, self.ignore_label)
        labels = ops.where(valid, labels, 0)
        if num_classes == 1:
            return ops.cast(labels, y_pred.dtype)[..., None], valid
        return ops.one_hot(labels, num_classes, dtype=y_pred.dtype), valid

    def _valid(self, y_true, y_pred):
        return self._targets(y_true, y_pred)[1]

    def call(self, y_true, y_pred):
        targets, _ = self._targets(y_true, y_pred)
        _check_num_alpha(self.alpha, y_pred.shape[-1], "SigmoidFocalLoss")
        if self.from_logits:
            # log sigmoid(x) = -softplus(-x), stable for large |x|
            log_p = -ops.softplus(-y_pred)
            log_not_p = -ops.softplus(y_pred)
        else:
            p = ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
            log_p, log_not_p = ops.log(p), ops.log(1.0 - p)
        log_pt = targets * log_p + (1.0 - targets) * log_not_p
        pt = ops.exp(log_pt)
        loss = -ops.power(ops.maximum(1.0 - pt, 0.0), self.gamma) * log_pt
        if self.alpha is not None:
            alpha = ops.convert_to_tensor(self.alpha, dtype=y_pred.dtype)
            loss = loss * (targets * alpha + (1.0 - targets) * (1.0 - alpha))
        return ops.mean(loss, axis=-1)



@keras.saving.register_keras_serializable(package="fcndata")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss over valid pixels, averaged over classes.

    With ``p = softmax(logits)``, one-hot labels g and pixel weight
    ``w = valid × sample_weight`` (0 on padding and ignored pixels)::

        D_k = (2 Σ_i w_i p_ik g_ik + smooth) / (Σ_i w_i p_ik + Σ_i w_i g_ik + smooth)
        loss = 1 - mean_k D_k

    The sums run over the whole batch (``per_image=False``, default, "batch Dice" as in
    nnU-Net: stable when a class is absent from one image) or over each image, with the
    loss then averaged over images (``per_image=True``). A class absent from both
    labels and predictions gets D_k ≈ 1 thanks to ``smooth``. Dice is already a
    ratio, so ``reduction`` is not applied (kept for config compatibility).

    Args:
      num_classes: K, the logits' last dimension.
      smooth: additive smoothing (1 is the common choice).
      ignore_label: label value that contributes nothing.
      from_logits: ``y_pred`` are logits (True) or probabilities.
      per_image: Dice per image (True) or over the batch (False).
    """

    def __init__(
        self,
        num_classes: int,
        smooth: float = 1.0,
        ignore_label: int | None = IGNORE_LABEL,
        from_logits: bool = True,
        per_image: bool = False,
        reduction=DEFAULT_REDUCTION,
        name: str = "dice_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"DiceLoss: num_classes must be a positive int. Received: num_classes={num_classes!r}")
        if smooth < 0:
            raise ValueError(f"DiceLoss: smooth must be >= 0. Received: smooth={smooth!r}")
        self.num_classes = int(num_classes)
        self.smooth = float(smooth)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.from_logits = from_logits
        self.per_image = per_image

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            if y_pred.shape[-1] != self.num_classes:
                raise ValueError(
                    f"DiceLoss: y_pred has {y_pred.shape[-1]} channels but num_classes={self.num_classes}. "
                    f"Build DiceLoss with the model's number of classes. Received: y_pred.shape={tuple(y_pred.shape)}"
                )
            labels = ops.cast(ops.convert_to_tensor(y_true), "int32")
            if len(labels.shape) == len(y_pred.shape):
                labels = ops.squeeze(labels, -1)
            valid = _valid_labels(labels, self.num_classes, self.ignore_label)
            weight = _merge_weight(valid, sample_weight, self.dtype)[..., None]
            probs = ops.softmax(y_pred, axis=-1) if self.from_logits else y_pred
            one_hot = ops.one_hot(ops.where(valid, labels, 0), self.num_classes, dtype=self.dtype)
            rank = len(y_pred.shape)
            axes = tuple(range(1, rank - 1)) if self.per_image else tuple(range(rank - 1))
            intersection = ops.sum(weight * probs * one_hot, axis=axes)
            denominator = ops.sum(weight * probs, axis=axes) + ops.sum(weight * one_hot, axis=axes)
            dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth + _EPSILON * (self.smooth == 0))
            return 1.0 - ops.mean(dice)

    def call(self, y_true, y_pred):
        """Keras' per-sample hook: the unweighted Dice (``__call__`` folds weights into the sums)."""
        return self(y_true, y_pred)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "smooth": self.smooth,
            "ignore_label": self.ignore_label,
            "from_logits": self.from_logits,
            "per_image": self.per_image,
        }


@keras.saving.register_keras_serializable(package="fcndata")
class SumOfLosses(keras.losses.Loss):
    """A weighted sum of losses: ``loss = Σ_j weight_j · loss_j(y_true, y_pred, sample_weight)``.

    Each term applies its own masking and reduction (e.g. cross-entropy + 0.5 × Dice).

    Args:
      terms: a list of ``(loss, weight)`` pairs; loss is a ``keras.losses.Loss``.

    Example:
      >>> loss = SumOfLosses([(MaskedSparseCrossEntropy(), 1.0), (DiceLoss(2), 0.5)])
      >>> float(loss(np.array([[[0]]]), np.array([[[[0.0, 0.0]]]]))) > 0
      True
    """

    def __init__(self, terms, name: str = "sum_of_losses", reduction=DEFAULT_REDUCTION, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        parsed = []
        for term in terms:
            if isinstance(term, dict):  # from get_config
                loss, weight = keras.saving.deserialize_keras_object(term["loss"]), term["weight"]
            else:
                try:
                    loss, weight = term
                except (TypeError, ValueError):
                    raise TypeError(f"SumOfLosses: each term must be a (loss, weight) pair. Received: term={term!r}") from None
            if not isinstance(loss, keras.losses.Loss):
                raise TypeError(f"SumOfLosses: each loss must be a keras.losses.Loss instance. Received: loss={loss!r}")
            parsed.append((loss, float(weight)))
        if not parsed:
            raise ValueError("SumOfLosses: needs at least one (loss, weight) term. Received: terms=[]")
        self.terms = parsed

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            total = 0.0
            for loss, weight in self.terms:
                total = total + weight * ops.cast(loss(y_true, y_pred, sample_weight=sample_weight), self.dtype)
            return total

    def call(self, y_true, y_pred):
        """Keras' per-sample hook: the unweighted sum (``__call__`` passes weights to each term)."""
        return self(y_true, y_pred)

    def get_config(self):
        return {
            **super().get_config(),
            "terms": [{"loss": keras.saving.serialize_keras_object(l), "weight": w} for l, w in self.terms],
        }


_TERM_KEYS = {"name", "weight", "gamma", "alpha", "label_smoothing", "smooth", "per_image"}


def _single_loss(name, params, num_classes, ignore_label, where):
    alpha = params.get("alpha")
    if isinstance(alpha, (list, tuple)) and name in ("focal", "sigmoid_focal") and len(alpha) != num_classes:
        raise ValueError(
            f"{where}.alpha: one value per class is needed, num_classes={num_classes}. "
            f"Received: alpha={list(alpha)!r}"
        )
    if name == "cross_entropy":
        return MaskedSparseCrossEntropy(ignore_label=ignore_label, label_smoothing=params.get("label_smoothing", 0.0))
    if name == "focal":
        return SparseFocalLoss(gamma=params.get("gamma", 2.0), alpha=alpha, ignore_label=ignore_label)
    if name == "sigmoid_focal":
        return SigmoidFocalLoss(gamma=params.get("gamma", 2.0), alpha=alpha, ignore_label=ignore_label)
    if name == "dice":
        return DiceLoss(
            num_classes,
            smooth=params.get("smooth", 1.0),
            ignore_label=ignore_label,
            per_image=params.get("per_image", False),
        )
    raise ValueError(
        f"{where}.name must be one of ['cross_entropy', 'focal', 'sigmoid_focal', 'dice']. Received: name={name!r}"
    )


def loss_from_config(cfg, num_classes: int, ignore_label: int | None = IGNORE_LABEL) -> keras.losses.Loss:
    """Builds the loss of a ``loss:`` section (a ``LossConfig``).

    ``name: sum`` combines ``terms``, each a mapping with ``name``, ``weight`` (default
    1) and optionally ``gamma``, ``alpha``, ``label_smoothing``, ``smooth``,
    ``per_image``; keys a term leaves out fall back to the section's values.

    Example:
      >>> from fcndata.config import LossConfig
      >>> cfg = LossConfig(name="sum", terms=({"name": "cross_entropy"}, {"name": "dice", "weight": 0.5}))
      >>> [(type(l).__name__, w) for l, w in loss_from_config(cfg, num_classes=3).terms]
      [('MaskedSparseCrossEntropy', 1.0), ('DiceLoss', 0.5)]
    """
    base = {"gamma": cfg.gamma, "alpha": cfg.alpha, "label_smoothing": cfg.label_smoothing,
            "smooth": cfg.smooth, "per_image": cfg.dice_per_image}
    if cfg.name != "sum":
        return _single_loss(cfg.name, base, num_classes, ignore_label, "loss")
    if not cfg.terms:
        raise ValueError(
            "loss.terms: name 'sum' needs a list of terms, e.g. terms: [{name: cross_entropy, weight: 1.0}, "
            "{name: dice, weight: 0.5}]. Received: terms=None"
        )
    terms = []
    for i, term in enumerate(cfg.terms):
        where = f"loss.terms[{i}]"
        if not isinstance(term, dict) or "name" not in term:
            raise ValueError(f"{where}: each term is a mapping with a 'name' key. Received: {term!r}")
        unknown = sorted(set(term) - _TERM_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid keys: {sorted(_TERM_KEYS)}. Received: {term!r}")
        params = {**base, **term}
        terms.append((_single_loss(term["name"], params, num_classes, ignore_label, where), float(term.get("weight", 1.0))))
    return SumOfLosses(terms)
