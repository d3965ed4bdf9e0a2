"""Normalisation over the roi: statistics from real pixels only, so padding changes nothing.

Whole images of different sizes are padded per batch and size-bucketed; a plain
BatchNormalization then averages over padding, and its batch statistics differ from
any single image (measured: 0.52 mean IoU in training mode, 0.17 in inference mode on
the same images). Each layer here is called as ``layer(x, roi)`` with ``x``
``[B, h, w, C]`` and ``roi`` ``[B, h, w, 1]`` (1 = real pixel, 0 = padding or
ignore), and computes every mean and variance as a roi-weighted average::

    mean = Σ x·roi / max(Σ roi, 1)        var = Σ (x − mean)²·roi / max(Σ roi, 1)

* :class:`RoiBatchNormalization`: per channel over the roi pixels of the whole batch
  (training), moving statistics (inference).
* :class:`RoiGroupNormalization` / :class:`RoiInstanceNormalization`: per image and
  channel group (instance: one channel per group) over that image's roi pixels.
* :class:`Intensity`: the model's first layer, optional clip (a window in raw pixel
  values) then ``scale`` (identity) or ``zscore`` (per image and channel over the roi).

Values at padding are normalised too (they are not zeroed, except by ``Intensity``);
the model multiplies features by the roi after each conv block (``RoiMask``). Statistics
are computed in float32 under mixed precision. An all-zero roi (an image that is only
padding) gives mean 0 and variance 0 instead of a division by zero, and leaves the
moving statistics of :class:`RoiBatchNormalization` untouched.

Example:
  >>> x = np.arange(8, dtype="float32").reshape(1, 2, 4, 1)
  >>> roi = np.array([1, 1, 0, 0, 1, 1, 0, 0], "float32").reshape(1, 2, 4, 1)
  >>> z = Intensity("zscore")(x, roi)                 # real pixels 0, 1, 4, 5: mean 2.5
  >>> np.round(np.asarray(z)[0, :, :, 0], 3)
  array([[-1.213, -0.728,  0.   ,  0.   ],
         [ 0.728,  1.213,  0.   ,  0.   ]], dtype=float32)
  >>> bn = RoiBatchNormalization(epsilon=0.0)
  >>> y = bn(x, roi, training=True)                   # the padding (2, 3, 6, 7) is not counted
  >>> np.round(bn.moving_mean.numpy(), 3)             # 0.9 · 0 + 0.1 · 2.5
  array([0.25], dtype=float32)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

__all__ = [
    "MOMENTUM", "roi_moments", "RoiBatchNormalization", "RoiGroupNormalization", "RoiInstanceNormalization", "Intensity",
]

#: Default momentum of :class:`RoiBatchNormalization`'s moving statistics (PyTorch's 0.1):
#: they reach the weights' current statistics within ~10 steps (time constant 1/(1 − m)),
#: where Keras' 0.99 needs ~100 and lags behind the fast-changing weights of a short CPU run,
#: so inference mode would see stale statistics.
MOMENTUM = 0.9


def roi_moments(x, roi, axes, keepdims=True):
    """Roi-weighted mean and (biased) variance of ``x`` over ``axes``, in float32.

    Args:
      x: features ``[B, h, w, C]`` (or ``[B, h, w, G, C/G]``), any float dtype.
      roi: ``[B, h, w, 1]`` (or broadcastable) with 1 at real pixels, 0 elsewhere.
      axes: the axes to reduce.
      keepdims: keep the reduced axes (size 1).

    Returns:
      ``(mean, variance, count)`` float32; count is the number of roi pixels (the
      denominator is ``max(count, 1)``, so an all-zero roi gives 0 and 0).

    Example:
      >>> x = np.array([1.0, 2.0, 30.0], "float32").reshape(1, 1, 3, 1)
      >>> roi = np.array([1.0, 1.0, 0.0], "float32").reshape(1, 1, 3, 1)
      >>> [float(np.squeeze(t)) for t in roi_moments(x, roi, [0, 1, 2])]
      [1.5, 0.25, 2.0]
    """
    x = tf.cast(x, tf.float32)
    roi = tf.cast(roi, tf.float32)
    # each roi pixel counts once per element of x it broadcasts over (the channels of a group);
    # counted from the roi alone, so no x-sized weight tensor is made (one pass less)
    repeat = 1
    for a in axes:
        if roi.shape[a] == 1 and x.shape[a] != 1:
            repeat *= x.shape[a]
    count = tf.reduce_sum(roi, axis=axes, keepdims=True) * float(repeat)
    denominator = tf.maximum(count, 1.0)
    mean = tf.reduce_sum(x * roi, axis=axes, keepdims=True) / denominator
    variance = tf.reduce_sum(tf.square(x - mean) * roi, axis=axes, keepdims=True) / denominator
    if not keepdims:
        mean, variance, count = (tf.squeeze(t, axis=axes) for t in (mean, variance, count))
        count = count * tf.ones_like(mean)
    return mean, variance, count


def _check_roi(layer, x_shape, roi_shape):
    if roi_shape is None or len(roi_shape) != 4 or roi_shape[-1] not in (1, None):
        raise ValueError(
            f"{layer.__class__.__name__} {layer.name!r} takes (x, roi) with roi [B, h, w, 1] (1 = real pixel): "
            f"call it as layer(x, roi). Received: x.shape={tuple(x_shape)}, roi.shape="
            f"{None if roi_shape is None else tuple(roi_shape)}"
        )
    if len(x_shape) != 4:
        raise ValueError(
            f"{layer.__class__.__name__} {layer.name!r} normalises channels-last images [B, h, w, C]. "
            f"Received: x.shape={tuple(x_shape)}"
        )


@keras.saving.register_keras_serializable(package="fcndata")
class RoiBatchNormalization(layers.Layer):
    """Batch normalisation whose statistics come from roi pixels only, renormalised.

    Training (``training=True``): per channel over the roi pixels of the whole batch,
    ``μ_B``, ``σ²_B``, and the moving statistics are updated with exactly those
    (biased, as Keras BatchNormalization): ``moving = momentum · moving + (1 − momentum) ·
    batch``. A batch without any roi pixel leaves them unchanged. Inference: the moving
    statistics, like BatchNormalization.

    With ``renorm`` (the default) training uses batch renormalisation (Ioffe, 2017)::

        σ_B = √(σ²_B + ε)     σ = √(moving_variance + ε)
        r = stop_gradient(clip(σ_B / σ, 1/r_max, r_max))
        d = stop_gradient(clip((μ_B − moving_mean) / σ, −d_max, d_max))
        y = γ ((x − μ_B) / σ_B · r + d) + β

    Inside the clip range this *is* ``γ (x − moving_mean) / σ + β``, the inference-mode
    output, while the gradients still flow through the batch statistics. Size-bucketed,
    padded batches of a few images have batch statistics unlike one another and unlike
    the moving averages; plain batch norm trains on the former and infers with the latter
    (measured on padded, bucketed shapes batches, tests/test_normalization.py: mean IoU
    0.01–0.04 lower in inference mode); with renormalisation the model trains on what it
    infers with. ``renorm=False`` is plain batch norm over the roi.

    Args:
      momentum: of the moving statistics; default :data:`MOMENTUM` (0.9 = PyTorch's 0.1;
        Keras' default 0.99 lags behind in the short trainings fcndata runs on a CPU).
      epsilon: added to the variance.
      center, scale: learn β / γ.
      renorm: batch renormalisation in training (see above).
      renorm_clipping: ``(r_max, d_max)``, the paper's final values (3, 5) by default:
        while the moving statistics are still far from the batch's (the first steps),
        the correction is bounded and the batch statistics dominate.
      **kwargs: Layer arguments (``name``, ``dtype``).

    Call arguments:
      x: ``[B, h, w, C]`` features.
      roi: ``[B, h, w, 1]``, 1 at real pixels.
      training: Python or tensor bool.

    Example:
      >>> bn = RoiBatchNormalization()
      >>> x = np.ones((2, 5, 7, 3), "float32"); roi = np.ones((2, 5, 7, 1), "float32")
      >>> bn(x, roi, training=True).shape
      TensorShape([2, 5, 7, 3])
    """

    def __init__(self, momentum: float = MOMENTUM, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 renorm: bool = True, renorm_clipping=(3.0, 5.0), **kwargs):
        # float32 statistics: the variables must not be read as float16 under mixed precision
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"RoiBatchNormalization: momentum must be in [0, 1), e.g. 0.9. Received: momentum={momentum!r}")
        if epsilon < 0:
            raise ValueError(f"RoiBatchNormalization: epsilon must be >= 0, e.g. 1e-3. Received: epsilon={epsilon!r}")
        r_max, d_max = (float(v) for v in renorm_clipping)
        if r_max < 1.0 or d_max < 0.0:
            raise ValueError(
                "RoiBatchNormalization: renorm_clipping is (r_max, d_max) with r_max >= 1 and d_max >= 0, e.g. "
                f"(3.0, 5.0). Received: renorm_clipping={renorm_clipping!r}"
            )
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.renorm = bool(renorm)
        self.renorm_clipping = (r_max, d_max)

    def build(self, x_shape, roi_shape=None):
        _check_roi(self, x_shape, roi_shape)
        channels = x_shape[-1]
        if channels is None:
            raise ValueError(f"RoiBatchNormalization needs a known channel count. Received: x.shape={tuple(x_shape)}")
        # float32 under mixed precision: self.variable_dtype
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma", trainable=True) if self.scale else None
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta", trainable=True) if self.center else None
        self.moving_mean = self.add_weight(shape=(channels,), initializer="zeros", name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(shape=(channels,), initializer="ones", name="moving_variance",
                                               trainable=False)

    def call(self, x, roi, training=None):
        moving_mean = tf.convert_to_tensor(self.moving_mean, tf.float32)
        moving_variance = tf.convert_to_tensor(self.moving_variance, tf.float32)
        if training:
            mean, variance, count = roi_moments(x, roi, [0, 1, 2], keepdims=False)
            any_roi = count > 0
            m = self.momentum
            self.moving_mean.assign(tf.where(any_roi, m * moving_mean + (1 - m) * mean, moving_mean))
            self.moving_variance.assign(tf.where(any_roi, m * moving_variance + (1 - m) * variance, moving_variance))
            inv = tf.math.rsqrt(variance + self.epsilon)
            if self.renorm:
                # r, d from the statistics before this batch's update: y = (x − moving_mean) / σ inside the clip
                r_max, d_max = self.renorm_clipping
                sigma = tf.sqrt(moving_variance + self.epsilon)
                r = tf.stop_gradient(tf.clip_by_value(tf.sqrt(variance + self.epsilon) / sigma, 1 / r_max, r_max))
                d = tf.stop_gradient(tf.clip_by_value((mean - moving_mean) / sigma, -d_max, d_max))
                r, d = tf.where(any_roi, r, 1.0), tf.where(any_roi, d, 0.0)
                inv = inv * r
                mean = mean - d / inv  # (x − μ_B)·inv·r + d = (x − (μ_B − d / (inv·r)))·inv·r
        else:
            mean, variance = moving_mean, moving_variance
            inv = tf.math.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            inv = inv * tf.cast(self.gamma, tf.float32)
        offset = -mean * inv
        if self.beta is not None:
            offset = offset + tf.cast(self.beta, tf.float32)
        # one multiply-add in x's dtype (float16 under mixed precision)
        return x * tf.cast(inv, x.dtype) + tf.cast(offset, x.dtype)

    def compute_output_shape(self, x_shape, roi_shape=None):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "renorm": self.renorm, "renorm_clipping": list(self.renorm_clipping)}


@keras.saving.register_keras_serializable(package="fcndata")
class RoiGroupNormalization(layers.Layer):
    """Group normalisation per image over that image's roi pixels (Wu & He, with a roi).

    Channels are split into ``groups`` groups; for each image and group,
    ``y = γ (x − μ) / √(σ² + ε) + β`` with μ, σ² over the group's channels at the
    image's roi pixels. Training and inference compute the same thing; the result for an
    image does not depend on the other images of the batch nor on its padding.

    Args:
      groups: number of groups; must divide the channels. ``-1``: one group per channel
        (instance normalisation, :class:`RoiInstanceNormalization`).
      epsilon: added to the variance.
      center, scale: learn β / γ (per channel).
      **kwargs: Layer arguments.

    Example:
      >>> gn = RoiGroupNormalization(groups=2)
      >>> x = np.random.default_rng(0).random((1, 5, 7, 4)).astype("float32")
      >>> y = gn(x, np.ones((1, 5, 7, 1), "float32"))
      >>> abs(float(np.mean(np.asarray(y)[..., :2]))) < 1e-5             # per group mean 0
      True
    """

    def __init__(self, groups: int = 32, epsilon: float = 1e-3, center: bool = True, scale: bool = True, **kwargs):
        kwargs.setdefault("autocast", False)  # float32 statistics and γ, β under mixed precision
        super().__init__(**kwargs)
        if not isinstance(groups, int) or (groups < 1 and groups != -1):
            raise ValueError(
                f"{self.__class__.__name__}: groups must be a positive int (or -1: one per channel). Received: groups={groups!r}"
            )
        self.groups = groups
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale

    def build(self, x_shape, roi_shape=None):
        _check_roi(self, x_shape, roi_shape)
        channels = x_shape[-1]
        groups = channels if self.groups == -1 else self.groups
        if channels is None or channels % groups:
            raise ValueError(
                f"{self.__class__.__name__} {self.name!r}: groups must divide the channels; use "
                f"fcndata.layers.group_count(channels). Received: groups={self.groups}, channels={channels}"
            )
        self._groups = groups
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma") if self.scale else None
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta") if self.center else None

    def call(self, x, roi):
        shape = tf.shape(x)
        channels = x.shape[-1]
        g = self._groups
        grouped = tf.reshape(tf.cast(x, tf.float32), [shape[0], shape[1], shape[2], g, channels // g])
        mean, variance, _ = roi_moments(grouped, tf.expand_dims(roi, -1), [1, 2, 4])
        y = (grouped - mean) * tf.math.rsqrt(variance + self.epsilon)
        y = tf.reshape(y, shape)
        if self.gamma is not None:
            y = y * tf.cast(self.gamma, tf.float32)
        if self.beta is not None:
            y = y + tf.cast(self.beta, tf.float32)
        return tf.cast(y, x.dtype)

    def compute_output_shape(self, x_shape, roi_shape=None):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale}


@keras.saving.register_keras_serializable(package="fcndata")
class RoiInstanceNormalization(RoiGroupNormalization):
    """Instance normalisation over the roi: :class:`RoiGroupNormalization` with one group per channel.

    Example:
      >>> x = np.random.default_rng(0).random((2, 5, 7, 3)).astype("float32")
      >>> y = RoiInstanceNormalization()(x, np.ones((2, 5, 7, 1), "float32"))
      >>> np.allclose(np.asarray(y).mean(axis=(1, 2)), 0, atol=1e-5)
      True
    """

    def __init__(self, epsilon: float = 1e-3, center: bool = True, scale: bool = True, **kwargs):
        kwargs.pop("groups", None)  # get_config of the parent writes it
        super().__init__(groups=-1, epsilon=epsilon, center=center, scale=scale, **kwargs)


@keras.saving.register_keras_serializable(package="fcndata")
class Intensity(layers.Layer):
    """The model's first layer: optional intensity window, then ``scale`` or ``zscore``.

    Input pixels are what ``to_keras`` yields: raw values divided by the image's pixel
    maximum (255 for uint8, 65535 for uint16, 1 for float).

    * ``clip=(low, high)`` in raw pixel values (e.g. a CT window): pixels are clipped to
      ``[low, high] / pixel_max``; with ``mode="scale"`` the window is then stretched to
      ``[0, 1]`` (a narrow window of a 16-bit image would otherwise span a few thousandths).
    * ``mode="scale"``: nothing else (the pipeline already scaled the pixels).
    * ``mode="zscore"``: per image and channel, ``(x − mean) / std`` over the roi pixels,
      then × roi, so padding stays 0. A constant image gives 0 (std floored at ``epsilon``).

    Args:
      mode: ``"scale"`` or ``"zscore"``.
      clip: None or ``(low, high)`` raw pixel values, ``low < high``.
      pixel_max: the image's raw pixel maximum (255, 65535 or 1.0); needed for ``clip``.
      epsilon: floor of the standard deviation (in [0, 1] pixel units).
      **kwargs: Layer arguments.

    Call arguments:
      x: ``[B, h, w, C]`` pixels in ``[0, 1]``.
      roi: ``[B, h, w, 1]``; required by ``zscore``; None means every pixel is real.

    Example:
      >>> window = Intensity("scale", clip=(50, 100), pixel_max=255)
      >>> np.asarray(window(np.array([0, 75, 255], "float32").reshape(1, 1, 3, 1) / 255)).ravel()
      array([0. , 0.5, 1. ], dtype=float32)
    """

    def __init__(self, mode: str = "scale", clip=None, pixel_max: float = 1.0, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("scale", "zscore"):
            raise ValueError(f"Intensity: mode must be 'scale' or 'zscore'. Received: mode={mode!r}")
        if clip is not None:
            clip = tuple(float(c) for c in clip)
            if len(clip) != 2 or not clip[0] < clip[1]:
                raise ValueError(
                    f"Intensity: clip must be (low, high) raw pixel values with low < high. Received: clip={clip!r}")
        if not pixel_max > 0:
            raise ValueError(
                f"Intensity: pixel_max must be the images' raw maximum (255 for uint8, 65535 for uint16, 1.0 for "
                f"float). Received: pixel_max={pixel_max!r}")
        self.mode = mode
        self.clip = clip
        self.pixel_max = float(pixel_max)
        self.epsilon = float(epsilon)

    def call(self, x, roi=None):
        dtype = x.dtype
        x = tf.cast(x, tf.float32)
        if self.clip is not None:
            low, high = self.clip[0] / self.pixel_max, self.clip[1] / self.pixel_max
            x = tf.clip_by_value(x, low, high)
            if self.mode == "scale":
                x = (x - low) / (high - low)
        if self.mode == "zscore":
            if roi is None:
                roi = tf.ones_like(x[..., :1])
            roi = tf.cast(roi, tf.float32)
            mean, variance, _ = roi_moments(x, roi, [1, 2])
            x = (x - mean) / tf.maximum(tf.sqrt(variance), self.epsilon) * roi
        return tf.cast(x, dtype)

    def compute_output_shape(self, x_shape, roi_shape=None):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "clip": None if self.clip is None else list(self.clip),
                "pixel_max": self.pixel_max, "epsilon": self.epsilon}
