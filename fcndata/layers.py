"""fcndata's own Keras layers, registered for saving: the bilinear upsampling initialiser, frozen batch
norm, the roi mask and the backbones' pixel preprocessing; small pure functions they need.

Every class here is registered with ``keras.saving.register_keras_serializable(package="fcndata")``
(:mod:`fcndata.saving` lists them), so a saved model loads after ``import fcndata``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """A ``Conv2DTranspose`` kernel ``[size, size, channels, channels]`` doing bilinear upsampling.

    Channel c maps to channel c only (diagonal). With kernel 2s, stride s and
    ``padding="same"`` the output is bilinear interpolation with half-pixel centres.

    Example:
      >>> bilinear_kernel(4, 1)[:, 1, 0, 0]  # 1-D profile 0.25, 0.75, 0.75, 0.25 (x 0.75)
      array([0.1875, 0.5625, 0.5625, 0.1875], dtype=float32)
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    filt1d = 1.0 - np.abs(og - center) / factor
    filt = np.outer(filt1d, filt1d)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = filt
    return kernel


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is at most ``max_groups`` (GroupNorm groups).

    >>> group_count(64), group_count(24), group_count(96), group_count(3)
    (32, 24, 32, 3)
    """
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


@keras.saving.register_keras_serializable(package="fcndata")
class BilinearInitializer(keras.initializers.Initializer):
    """Initialises a square ``Conv2DTranspose`` kernel (in == out channels) to bilinear upsampling."""

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3]:
            raise ValueError(
                "BilinearInitializer needs a square Conv2DTranspose kernel with as many input "
                f"as output channels, [k, k, c, c]. Received: shape={tuple(shape)}"
            )
        return ops.convert_to_tensor(bilinear_kernel(shape[0], shape[2]), dtype=dtype or "float32")

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="fcndata")
class FrozenBatchNormalization(layers.BatchNormalization):
    """BatchNormalization that always normalises with its moving statistics.

    ``call`` forces ``training=False``, so the statistics never update and a batch of
    one image normalises exactly like a batch of sixteen. ``gamma`` / ``beta`` stay
    trainable (the affine part keeps learning); set ``layer.trainable = False`` to
    freeze them too (Detectron2's FrozenBatchNorm). Use it when fine-tuning a
    pretrained backbone with tiny batches: batch statistics of 1-2 images are noise.
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


@keras.saving.register_keras_serializable(package="fcndata")
class RoiMask(layers.Layer):
    """Multiplies features ``[B, h, w, C]`` by a roi ``[B, h, w, 1]`` (0 = padding)."""

    def call(self, x, roi):
        return x * ops.cast(roi, x.dtype)

    def compute_output_shape(self, x_shape, roi_shape):
        return x_shape


@keras.saving.register_keras_serializable(package="fcndata")
class ImagePreprocess(layers.Layer):
    """Maps ``[0, 1]`` pixels to what a ``keras.applications`` backbone expects.

    ``mode="caffe"``: RGB → BGR, ×255, minus the ImageNet mean (VGG16, ResNet50).
    ``mode="tf"``: ×2 − 1 (MobileNetV2).
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise ValueError(f"ImagePreprocess mode must be 'caffe' or 'tf'. Received: mode={mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "tf":
            return x * 2.0 - 1.0
        mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        return ops.flip(x, axis=-1) * 255.0 - mean

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer
