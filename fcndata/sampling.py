"""Class statistics, class weights and FCN loss sampling, all written into ``weight``.

Two of fcndata's three answers to class imbalance live here (the third, class-balanced
patch sampling, is in :mod:`fcndata.patches`):

* **Loss weighting** — per-class weights from one counting pass over the training data
  (:func:`class_counts`, cached by :func:`cached_class_counts`), turned into weights by
  :func:`class_weights` and multiplied into ``weight`` by :class:`ClassWeights`.
* **Loss sampling** — FCN (Long et al., 2015, §4.4 "patchwise training is loss
  sampling"): each pixel's loss is kept with probability ``p`` by a stateless Bernoulli
  mask in ``weight`` (:class:`LossSampling`).

Both stages only multiply ``weight`` (creating it as ones), and ``to_keras`` turns it
into ``sample_weight = roi × weight``. :func:`class_distribution` reports the
(weighted) class frequencies a pipeline actually delivers.

Weighting methods (``n_c`` = labeled pixels of class c; classes with ``n_c = 0`` get
weight 0 — they never occur in the loss, and 0 cannot blow up if one appears later;
``max_weight`` clips the result):

* ``inverse_frequency``: ``w_c ∝ 1 / n_c``, normalised so the pixel-weighted mean
  weight ``Σ n_c w_c / Σ n_c`` is 1 (the loss keeps its scale). Clipping comes after
  normalising.
* ``median_frequency`` (Eigen & Fergus, 2015): ``w_c = median(freq) / freq_c`` over the
  present classes, with ``freq_c = n_c / (labeled pixels of the images where c is
  present)`` — the paper's definition — when the counts are per image
  (``per_image=True``, shape [N, C]). From totals only (shape [C]) ``freq_c = n_c /
  Σ n`` is used, which equals the paper's whenever every class appears in every image.
* ``effective_number`` (Cui et al., 2019): ``w_c ∝ (1 − β) / (1 − β^{n_c})``, normalised
  so the weights of the present classes sum to their number (as in the paper).
* a list: the weights as given.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.config import DataConfig, SamplingConfig

METHODS = ("inverse_frequency", "median_frequency", "effective_number")

#: Folded into the loss-sampling key so its draws differ from every other stage's.
_LOSS_SAMPLING_SALT = 0x1055

# ---------------------------------------------------------------------------- element functions


def count_classes(element, num_classes: int, ignore_label: int = E.IGNORE_LABEL) -> tf.Tensor:
    """int64 [num_classes]: labeled pixels (roi 1, label not ignored) of each class in an element or batch.

    Label values outside ``0 … num_classes − 1`` are not counted (validation reports them).

    Example:
      >>> import fcndata.testing as t
      >>> count_classes(t.element(5, 7, widths=[2, 4, 1]), 3).numpy().tolist()
      [10, 20, 5]
    """
    label = tf.cast(tf.reshape(element[E.LABEL], [-1]), tf.int32)
    valid = tf.reshape(element[E.ROI] > 0, [-1])
    valid = valid & tf.not_equal(label, ignore_label) & (label >= 0) & (label < num_classes)
    return tf.math.bincount(
        tf.boolean_mask(label, valid), minlength=num_classes, maxlength=num_classes, dtype=tf.int64
    )


def weight_or_ones(element) -> tf.Tensor:
    """The element's ``weight``, or float32 ones shaped like its label."""
    if E.WEIGHT in element:
        return element[E.WEIGHT]
    return tf.ones(tf.shape(element[E.LABEL]), tf.float32)


def apply_class_weights(element, weights: tf.Tensor, ignore_label: int = E.IGNORE_LABEL) -> dict:
    """Multiplies ``weights[label]`` into ``weight``; ignored or out-of-range labels get 0.

    Works on elements and batches. Pure, graph-safe.

    Example:
      >>> import fcndata.testing as t
      >>> out = apply_class_weights(t.element(2, 3), tf.constant([0.5, 1.0, 2.0]))
      >>> out["weight"].numpy().tolist()
      [[0.5, 1.0, 2.0], [0.5, 1.0, 2.0]]
    """
    label = tf.cast(element[E.LABEL], tf.int32)
    n = tf.shape(weights)[0]
    valid = tf.not_equal(label, ignore_label) & (label >= 0) & (label < n)
    per_pixel = tf.where(valid, tf.gather(weights, tf.clip_by_value(label, 0, n - 1)), 0.0)
    return {**element, E.WEIGHT: weight_or_ones(element) * per_pixel}


def loss_sampling_mask(element, keep_probability: float, seed: int) -> tf.Tensor:
    """float32 [H, W] Bernoulli(p) mask keyed by (seed, epoch, source_index, origin).

    The origin is part of the key so overlapping patches of one image draw different
    masks. Unbatched elements only.

    Example:
      >>> import fcndata.testing as t
      >>> m = loss_sampling_mask(t.element(37, 53), 0.25, seed=1)
      >>> m.shape.as_list(), round(float(tf.reduce_mean(m)), 1)
      ([37, 53], 0.3)
    """
    origin = element[E.ORIGIN]
    key = E.element_seed(seed, element, _LOSS_SAMPLING_SALT, origin[0], origin[1])
    uniform = tf.random.stateless_uniform(tf.shape(element[E.LABEL]), seed=key)
    return tf.cast(uniform < keep_probability, tf.float32)


# ---------------------------------------------------------------------------- counting


def _finite(dataset: tf.data.Dataset, num_batches: int | None, where: str) -> tf.data.Dataset:
    if num_batches is not None:
        return dataset.take(num_batches)
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"{where}: the dataset is infinite, so it cannot be counted to the end. Pass num_batches "
            "(e.g. 100), or count the finite source before repeat(). Received: num_batches=None"
        )
    return dataset


def _check_num_classes(num_classes, where: str) -> None:
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be an int >= 1 (data.num_classes). Received: num_classes={num_classes!r}")


def class_counts(
    dataset: tf.data.Dataset,
    num_classes: int,
    ignore_label: int = E.IGNORE_LABEL,
    *,
    per_image: bool = False,
    num_batches: int | None = None,
) -> np.ndarray:
    """Labeled pixels per class, counted in one pass with graph ops.

    Only pixels with roi 1 and a label in ``0 … num_classes − 1`` count (padding and
    ignored pixels never do).

    Args:
      dataset: contract elements (batched elements are unbatched first).
      num_classes: number of classes.
      ignore_label: the unlabeled value.
      per_image: return one row per element ([N, C]) instead of the totals ([C]);
        ``median_frequency`` needs it for the paper's definition.
      num_batches: count only this many elements of the dataset (needed if infinite).

    Returns:
      np.int64 array [num_classes], or [N, num_classes] with ``per_image``.

    Example:
      >>> import fcndata.testing as t
      >>> class_counts(t.dataset([(5, 7), (3, 4)]), 3).tolist()
      [21, 13, 13]
    """
    _check_num_classes(num_classes, "class_counts")
    dataset = _finite(dataset, num_batches, "class_counts")
    E.check_spec(dataset, batched=dataset.element_spec[E.LABEL].shape.rank == 3, where="class_counts")
    if dataset.element_spec[E.LABEL].shape.rank == 3:
        dataset = dataset.unbatch()
    counts = dataset.map(lambda e: count_classes(e, num_classes, ignore_label), num_parallel_calls=tf.data.AUTOTUNE)
    if not per_image:
        return counts.reduce(tf.zeros([num_classes], tf.int64), lambda acc, c: acc + c).numpy()
    rows = [c for c in counts.batch(1024).as_numpy_iterator()]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros([0, num_classes], np.int64)


def cached_class_counts(
    dataset: tf.data.Dataset,
    num_classes: int,
    cache_path: str | os.PathLike,
    key: str = "",
    ignore_label: int = E.IGNORE_LABEL,
    *,
    per_image: bool = False,
) -> np.ndarray:
    """:func:`class_counts`, cached as JSON and reused while ``key`` (and num_classes, ignore_label) match.

    The cache always stores per-image counts, so either form can be answered from it.
    A missing, unreadable or mismatching cache is recomputed and rewritten (atomically).

    Args:
      dataset: a finite dataset of contract elements.
      num_classes, ignore_label, per_image: as in :func:`class_counts`.
      cache_path: the JSON file (e.g. ``pipelines/brain.class_counts.json``).
      key: identifies the data, e.g. a hash of the ``data:`` section.

    Returns:
      As :func:`class_counts`.
    """
    path = Path(cache_path)
    meta = {"key": str(key), "num_classes": int(num_classes), "ignore_label": int(ignore_label)}
    rows = None
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if all(cached.get(k) == v for k, v in meta.items()):
                rows = np.asarray(cached["per_image_counts"], np.int64).reshape(-1, num_classes)
        except (ValueError, KeyError, TypeError):
            rows = None  # unreadable cache: count again and overwrite it
    if rows is None:
        rows = class_counts(dataset, num_classes, ignore_label, per_image=True)
        payload = {**meta, "counts": rows.sum(0).tolist(), "per_image_counts": rows.tolist()}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)
    return rows if per_image else rows.sum(0).astype(np.int64)


def class_distribution(
    dataset: tf.data.Dataset,
    num_classes: int,
    num_batches: int | None = None,
    ignore_label: int = E.IGNORE_LABEL,
) -> np.ndarray:
    """The class frequencies a pipeline actually delivers to the loss.

    Each pixel counts with its loss weight: ``roi × weight`` for element dicts
    (batched or not), ``sample_weight`` for ``to_keras`` triplets. So class weights,
    loss sampling, balanced patches and padding all show up in the result.

    Args:
      dataset: element dicts or ``(inputs, label, sample_weight)`` triplets.
      num_classes: number of classes.
      num_batches: read only this many elements/batches (needed if infinite).
      ignore_label: the unlabeled value.

    Returns:
      float64 [num_classes], summing to 1 (all zeros if no pixel has weight).

    Example:
      >>> import fcndata.testing as t
      >>> class_distribution(t.dataset([(4, 4)], num_classes=2), 2).tolist()
      [0.5, 0.5]
    """
    _check_num_classes(num_classes, "class_distribution")
    dataset = _finite(dataset, num_batches, "class_distribution")
    spec = dataset.element_spec

    if isinstance(spec, tuple):
        def weighted(_, label, sample_weight):
            return tf.reshape(label, [-1]), tf.reshape(sample_weight, [-1])
    else:
        def weighted(e):
            label = tf.cast(e[E.LABEL], tf.int32)
            w = tf.cast(e[E.ROI] > 0, tf.float32) * weight_or_ones(e)
            w = tf.where(tf.equal(label, ignore_label), 0.0, w)
            return tf.reshape(label, [-1]), tf.reshape(w, [-1])

    def count(label, w):
        valid = (label >= 0) & (label < num_classes)
        return tf.math.unsorted_segment_sum(
            tf.cast(tf.boolean_mask(w, valid), tf.float64), tf.boolean_mask(label, valid), num_classes
        )

    totals = (
        dataset.map(weighted, num_parallel_calls=tf.data.AUTOTUNE)
        .map(count, num_parallel_calls=tf.data.AUTOTUNE)
        .reduce(tf.zeros([num_classes], tf.float64), lambda acc, c: acc + c)
        .numpy()
    )
    total = totals.sum()
    return totals / total if total > 0 else totals


# ---------------------------------------------------------------------------- weights


def class_weights(
    counts,
    method: str | Sequence[float],
    beta: float = 0.999,
    max_weight: float | None = 50.0,
) -> np.ndarray:
    """Per-class loss weights from pixel counts (see the module docstring for the formulas).

    Args:
      counts: class pixel counts, [C] totals or [N, C] per image (from
        :func:`class_counts`); may be None when ``method`` is a list.
      method: ``"inverse_frequency"``, ``"median_frequency"``, ``"effective_number"`` or
        an explicit list of C weights.
      beta: ``effective_number``'s β in [0, 1).
      max_weight: clip weights to at most this (None: no clipping).

    Returns:
      np.float32 [C]; absent classes (0 pixels) get 0.

    Raises:
      ValueError: unknown method, bad beta or max_weight, negative or badly shaped counts.

    Example (stripes of 1, 2 and 5 columns):
      >>> class_weights([10, 20, 50], "median_frequency").tolist()
      [2.0, 1.0, 0.4000000059604645]
      >>> class_weights([10, 20, 50], "inverse_frequency").round(4).tolist()
      [2.6667, 1.3333, 0.5333]
    """
    where = "class_weights"
    if not isinstance(method, str):
        weights = np.asarray(method, np.float64)
        if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(
                f"{where}: explicit class weights must be a flat list of finite, non-negative numbers "
                f"(sampling.class_weights). Received: class_weights={list(method)!r}"
            )
        if counts is not None and weights.size != np.asarray(counts).shape[-1]:
            raise ValueError(
                f"{where}: give one weight per class: {np.asarray(counts).shape[-1]} classes, "
                f"{weights.size} weights. Received: class_weights={list(method)!r}"
            )
        return _clip(weights, max_weight, where).astype(np.float32)
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {list(METHODS)} or a list of weights. Received: method={method!r}")
    if counts is None:
        raise ValueError(
            f"{where}: method {method!r} needs class counts; compute them with fcndata.sampling.class_counts"
            "(dataset, num_classes). Received: counts=None"
        )
    counts = np.asarray(counts, np.float64)
    if counts.ndim not in (1, 2) or counts.shape[-1] < 1 or np.any(counts < 0):
        raise ValueError(
            f"{where}: counts must be non-negative, shaped [num_classes] or [num_images, num_classes]. "
            f"Received: counts.shape={counts.shape}"
        )
    per_image = counts if counts.ndim == 2 else None
    totals = counts.sum(0) if counts.ndim == 2 else counts
    present = totals > 0
    weights = np.zeros_like(totals)
    if not present.any():
        return weights.astype(np.float32)
    if method == "inverse_frequency":
        weights[present] = totals.sum() / (present.sum() * totals[present])
    elif method == "median_frequency":
        if per_image is not None:
            image_pixels = per_image.sum(1, keepdims=True)
            denominators = ((per_image > 0) * image_pixels).sum(0)
        else:
            denominators = np.full_like(totals, totals.sum())
        freq = totals[present] / denominators[present]
        weights[present] = np.median(freq) / freq
    else:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{where}: beta must be in [0, 1) (sampling.beta); 0.999 is usual. Received: beta={beta}")
        effective = (1.0 - np.power(beta, totals[present])) / (1.0 - beta)
        raw = 1.0 / effective
        weights[present] = raw * present.sum() / raw.sum()
    return _clip(weights, max_weight, where).astype(np.float32)


def _clip(weights: np.ndarray, max_weight, where: str) -> np.ndarray:
    if max_weight is None:
        return weights
    if not isinstance(max_weight, (int, float)) or isinstance(max_weight, bool) or not max_weight > 0:
        raise ValueError(f"{where}: max_weight must be a positive number or None (sampling.max_weight). Received: max_weight={max_weight!r}")
    return np.minimum(weights, max_weight)


# ---------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class ClassWeights:
    """Multiplies per-class weights into ``weight`` (created as ones if absent).

    Pixels labeled ``ignore_label`` (or out of range) get weight 0.

    Args:
      weights: one non-negative weight per class (e.g. from :func:`class_weights`).
      ignore_label: the unlabeled value.

    Input element:
      a contract element or batch.
    Output element:
      the same, with ``weight`` float32 [..., H, W] = old weight × weights[label].

    Example:
      >>> import fcndata.testing as t
      >>> ds = t.dataset([(2, 3)]).apply(ClassWeights([1.0, 2.0, 0.5]))
      >>> next(iter(ds))["weight"].numpy().tolist()
      [[1.0, 2.0, 0.5], [1.0, 2.0, 0.5]]
    """

    weights: tuple[float, ...]
    ignore_label: int = E.IGNORE_LABEL

    def __post_init__(self):
        try:
            weights = tuple(float(w) for w in np.asarray(self.weights, np.float64).reshape(-1))
        except (TypeError, ValueError):
            raise TypeError(f"ClassWeights: weights must be a list of numbers. Received: weights={self.weights!r}") from None
        if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(
                "ClassWeights: weights must be a non-empty list of finite, non-negative numbers, one per class. "
                f"Received: weights={list(weights)}"
            )
        object.__setattr__(self, "weights", weights)

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(ds, batched=ds.element_spec[E.LABEL].shape.rank == 3, where="ClassWeights")
        weights = tf.constant(self.weights, tf.float32)
        return ds.map(E.no_autograph(lambda e: apply_class_weights(e, weights, self.ignore_label)), num_parallel_calls=tf.data.AUTOTUNE)


@dataclass(frozen=True)
class LossSampling:
    """FCN loss sampling: keep each pixel's loss with probability ``keep_probability``.

    Long et al. (2015, §4.4) show that patchwise training is loss sampling and sample
    the loss of whole images instead: a Bernoulli(p) mask, drawn statelessly per
    element from (seed, epoch, source_index, origin), is multiplied into ``weight``.
    The paper does not rescale the kept losses (``rescale=False``), and advises raising
    the images per batch by 1/p to keep the effective batch size; ``rescale=True``
    divides by p instead (an unbiased estimate of the full loss under ``"sum"``;
    under ``"mean_with_sample_weight"`` a uniform rescale cancels out).

    Args:
      keep_probability: p in (0, 1].
      seed: the stage's seed.
      rescale: divide the kept weights by p.

    Input element:
      an unbatched contract element (apply before batching).
    Output element:
      the same, with ``weight`` float32 [H, W] = old weight × mask (× 1/p).

    Example:
      >>> import fcndata.testing as t
      >>> ds = t.dataset([(37, 53)]).apply(LossSampling(0.5, seed=3))
      >>> sorted(set(next(iter(ds))["weight"].numpy().ravel().tolist()))
      [0.0, 1.0]
    """

    keep_probability: float
    seed: int = 0
    rescale: bool = False

    def __post_init__(self):
        p = self.keep_probability
        if not isinstance(p, (int, float)) or isinstance(p, bool):
            raise TypeError(f"LossSampling: keep_probability must be a number. Received: keep_probability={p!r}")
        if not 0.0 < p <= 1.0:
            raise ValueError(
                "LossSampling: keep_probability must be in (0, 1] (sampling.loss_keep_probability); "
                f"the FCN paper uses 0.5 to 0.25. Received: keep_probability={p}"
            )
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"LossSampling: seed must be an int. Received: seed={self.seed!r}")

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(ds, where="LossSampling")
        ds = E.with_epoch(ds, self.seed)  # fresh masks every epoch, even without build_pipeline
        scale = 1.0 / self.keep_probability if self.rescale else 1.0

        def sample(e):
            mask = loss_sampling_mask(e, self.keep_probability, self.seed) * scale
            return {**e, E.WEIGHT: weight_or_ones(e) * mask}

        return ds.map(E.no_autograph(sample), num_parallel_calls=tf.data.AUTOTUNE)


def sampling_from_config(cfg: SamplingConfig, data: DataConfig, counts=None):
    """The stage of a recipe's ``sampling:`` section, or None if it changes nothing.

    Class weights first (``cfg.class_weights``: a method name needs ``counts`` from
    :func:`class_counts` / :func:`cached_class_counts`; a list is used as is), then loss
    sampling (``cfg.loss_keep_probability``; seed ``cfg.seed``, default ``data.seed``).

    Raises:
      ValueError: a method name without counts, or a weight list of the wrong length.

    Example:
      >>> sampling_from_config(SamplingConfig(loss_keep_probability=0.5), DataConfig(seed=7))
      LossSampling(keep_probability=0.5, seed=7, rescale=False)
    """
    stages = []
    if cfg.class_weights is not None:
        if isinstance(cfg.class_weights, str) and counts is None:
            raise ValueError(
                f"sampling_from_config: sampling.class_weights={cfg.class_weights!r} needs class counts of the "
                "training data; pass counts=fcndata.sampling.class_counts(dataset, num_classes). Received: counts=None"
            )
        weights = class_weights(counts, cfg.class_weights, cfg.beta, cfg.max_weight)
        if weights.size != data.num_classes:
            raise ValueError(
                f"sampling_from_config: sampling.class_weights must give data.num_classes={data.num_classes} "
                f"weights. Received: {weights.size} weights"
            )
        stages.append(ClassWeights(tuple(weights.tolist()), data.ignore_label))
    if cfg.loss_keep_probability is not None and cfg.loss_keep_probability < 1.0:
        seed = cfg.seed if cfg.seed is not None else data.seed
        stages.append(LossSampling(cfg.loss_keep_probability, seed, rescale=cfg.loss_rescale))
    if not stages:
        return None
    return stages[0] if len(stages) == 1 else E.Chain(tuple(stages))
