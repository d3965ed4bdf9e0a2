"""FCN-32s / 16s / 8s (Long, Shelhamer & Darrell) and a U-Net-style decoder on four backbones, Keras 3.

The model takes a float32 image batch ``[B, H, W, C]`` in ``[0, 1]`` (what
``to_keras`` yields), with H and W multiples of the stride (32; ``2**depth`` for the
tiny backbone, :func:`stride`), and returns float32 logits
``[B, H, W, num_classes]`` at the input resolution from a layer named ``logits``
(cast to float32 there, so ``mixed_float16`` / ``mixed_bfloat16`` work)::

    image ─► backbone ─► pool3 (/8) ─► pool4 (/16) ─► pool5 (/32) ─► fc6 ─► fc7
                            │               │                             │
                         score_pool3     score_pool4                   score_fr
                            │               │                             │
    fcn32s:                 │               │             logits ◄─ up ×32 (fixed)
    fcn16s:                 │               └──────── + ◄─ up ×2 ─────────┘
                            │                  logits ◄─ up ×16 (fixed)
    fcn8s:                  └──────── + ◄─ up ×2 ─ (pool4 + up ×2 fr)
                          logits ◄─ up ×8 (fixed)

``variant="unet"`` replaces the score fusion by a decoder with capacity (U-Net style):
a 2-conv bottleneck at stride 32, then per skip a learned 2×2 up-convolution, a concat
with the skip and two 3×3 conv-norm-relu blocks, down to full resolution on the tiny
backbone (skips taken before each pool) and to stride 8 on keras.applications backbones
(then a fixed bilinear ×8)::

    image ─► block1 ─► block2 ─► block3 ─► block4 ─► block5 ─► pool5 ─► bottleneck
             (/1)       (/2)      (/4)      (/8)      (/16)                  │
               │          │         │         │          └─ concat ◄─ up ×2 ─┘
               │          │         │         └─ concat ◄─ up ×2 ─ 2 × conv
               ⋮  (the same at /4, /2, /1)               ... ─► score (1×1) ─► logits

Upsampling is a ``Conv2DTranspose`` with kernel 2s and stride s initialised to
bilinear interpolation; the ×2 steps are trainable, the last one is fixed, as in the
paper. ``score_pool3`` / ``score_pool4`` start at zero, so FCN-16s/8s start out as
their coarser parent.

Backbones: ``tiny`` (5 stages of 2 × conv-norm-relu + max-pool, channels w, 2w, 4w,
8w, 8w; trains in minutes on a CPU) and ``vgg16`` / ``resnet50`` / ``mobilenetv2``
from ``keras.applications`` (weights None or a local file, never downloaded; their
input scaling is done inside the model). ``depth`` < 5 drops the tiny backbone's
deepest stages: the fc6/fc7 head or the unet bottleneck sits on the deepest pool left.

Normalisation (``norm``) with ``masked=True``: ``batch`` / ``group`` / ``instance`` are
the roi layers of :mod:`fcndata.normalization`, whose means and variances are taken over
roi pixels only (batch: over the whole batch, moving statistics in inference; group and
instance: per image), so an image normalises the same however it was padded or bucketed.
Without ``masked`` they are Keras' BatchNormalization / GroupNormalization (instance =
one group per channel), whose statistics include the padding. An optional first layer
``Intensity`` clips to a raw-value window and/or z-scores each image over its roi.

Example:
  >>> model = fcn(3, "fcn8s", backbone="tiny", width=4)
  >>> model(np.zeros((1, 64, 96, 3), "float32")).shape
  TensorShape([1, 64, 96, 3])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from fcndata.normalization import Intensity, RoiBatchNormalization, RoiGroupNormalization, RoiInstanceNormalization

VARIANTS = ("fcn8s", "fcn16s", "fcn32s", "fcn4s", "fcn2s", "unet")
#: Variants that fuse the stride-4 / stride-2 maps: only the tiny backbone exposes them.
FINE_VARIANTS = ("fcn4s", "fcn2s")
BACKBONES = ("tiny", "vgg16", "resnet50", "mobilenetv2")
NORMS = ("batch", "frozen_batch", "group", "instance", "none")
#: Total stride of the full-depth network (every keras.applications backbone, tiny at depth 5):
#: inputs must have H and W divisible by it. The tiny backbone's is ``2**depth``: see :func:`stride`.
STRIDE = 32
#: The fcn variants' output stride: the finest pooled map each fuses (fcnNs predicts at stride N).
VARIANT_STRIDE = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8, "fcn4s": 4, "fcn2s": 2}
#: Raw pixel maximum of each built-in source's images (the one table: ``pixel_max`` reads it).
BUILTIN_IMAGE_DTYPES = {"shapes": "uint8", "brain": "uint8", "digits": "uint8", "scenes": "uint8", "phantom": "uint16"}
_DTYPE_MAX = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}

# Last layer at stride 8, 16 and 32 of each keras.applications backbone (checked by
# building them at 64x64: the next layer halves the resolution).
_FEATURES = {
    "vgg16": ("block3_pool", "block4_pool", "block5_pool"),
    "resnet50": ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "mobilenetv2": ("block_5_add", "block_12_add", "out_relu"),
}
# How each application expects its pixels: "caffe" = BGR 0..255 minus the ImageNet
# mean (vgg16, resnet50 preprocess_input), "tf" = [-1, 1] (mobilenetv2).
_PREPROCESS = {"vgg16": "caffe", "resnet50": "caffe", "mobilenetv2": "tf"}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: Kernel initialiser of the unet convs (relu everywhere, often without a norm).
_UNET_INIT = "he_normal"


# ---------------------------------------------------------------------------- pure functions


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


def stride(backbone: str = "tiny", depth: int = 5) -> int:
    """The network's total stride: inputs need H and W divisible by it.

    >>> stride("tiny", 3), stride("tiny"), stride("vgg16")
    (8, 32, 32)
    """
    return 2**depth if backbone == "tiny" else STRIDE


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is at most ``max_groups`` (GroupNorm groups).

    >>> group_count(64), group_count(24), group_count(96), group_count(3)
    (32, 24, 32, 3)
    """
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


# ---------------------------------------------------------------------------- layers


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


# ---------------------------------------------------------------------------- building blocks


def _check_choice(value, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"fcn: {name} must be one of {list(choices)}. Received: {name}={value!r}")


def _norm_layer(norm: str, channels: int, name: str, masked: bool = False):
    """The norm layer; ``masked``: the roi layers of fcndata.normalization (called as ``layer(x, roi)``)."""
    if norm == "batch":
        return RoiBatchNormalization(name=name) if masked else layers.BatchNormalization(name=name)
    if norm == "frozen_batch":
        return FrozenBatchNormalization(name=name)
    if norm == "group":
        groups = group_count(channels)
        return RoiGroupNormalization(groups, name=name) if masked else layers.GroupNormalization(groups, name=name)
    if norm == "instance":
        return RoiInstanceNormalization(name=name) if masked else layers.GroupNormalization(channels, name=name)
    return None


def _conv_block(x, channels, kernel, norm, name, roi=None, init="glorot_uniform"):
    """conv → norm → relu (→ × roi). Conv has no bias when a norm follows.

    With a roi, batch / group / instance statistics are taken over the roi pixels only.
    """
    x = layers.Conv2D(
        channels, kernel, padding="same", use_bias=norm == "none", kernel_initializer=init, name=f"{name}_conv"
    )(x)
    masked = roi is not None and norm in ("batch", "group", "instance")
    norm_layer = _norm_layer(norm, channels, f"{name}_{norm}norm" if norm != "batch" else f"{name}_bn", masked)
    if masked:
        x = norm_layer(x, roi)
    elif norm_layer is not None:
        x = norm_layer(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    if roi is not None:
        x = RoiMask(name=f"{name}_roi")(x, roi)
    return x


#: Channel multiplier of each tiny stage (of ``width``).
_TINY_MULTS = (1, 2, 4, 8, 8)


def _tiny_backbone(x, width, norm, rois, init="glorot_uniform", depth=5):
    """``depth`` (1-5) stages of 2 × conv-norm-relu + 2×2 max-pool.

    Returns the pooled stride 2, 4, …, 2**depth maps (the FCN skips) and the stride 1, 2,
    …, 2**(depth-1) maps before each pool (the U-Net skips: they keep the stage's full resolution).
    """
    features, before_pool = [], []
    for stage, mult in enumerate(_TINY_MULTS[:depth], start=1):
        roi = rois.get(2 ** (stage - 1)) if rois else None
        for i in (1, 2):
            x = _conv_block(x, width * mult, 3, norm, f"block{stage}_{i}", roi, init)
        before_pool.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        features.append(x)
    return features, before_pool


def _conv_decoder(x, skips, norm, rois, name="up"):
    """U-Net decoder: per skip, ×2 up-convolution, concat the skip, then 2 × conv-norm-relu (3×3).

    ``skips`` runs coarse to fine as ``(feature, stride, channels)``; each step doubles
    the resolution of ``x``, so every skip's stride is half the previous one. Unlike the
    FCN fusion (1×1 class scores added), the decoder keeps ``channels`` features per
    pixel all the way to the finest skip, which is what thin, multi-class boundaries need.
    """
    for feature, stride, channels in skips:
        roi = rois[stride] if rois else None
        # U-Net's up-convolution: a learned 2×2 transposed conv, stride 2 (cheap, and shape-agnostic)
        x = layers.Conv2DTranspose(channels, 2, strides=2, name=f"{name}{stride}_upconv")(x)
        x = layers.Concatenate(name=f"{name}{stride}_concat")([x, feature])
        for i in (1, 2):
            x = _conv_block(x, channels, 3, norm, f"{name}{stride}_{i}", roi, _UNET_INIT)
    return x


def _call_without_bn_kwargs(layer, *args, **kwargs):
    # A BatchNormalization node records `mask=`; its replacement may not accept it.
    if not isinstance(layer, layers.BatchNormalization):
        kwargs.pop("mask", None)
    return layer(*args, **kwargs)


def _replace_batch_norm(model: keras.Model, norm: str) -> keras.Model:
    """Clones a backbone with its BatchNormalization layers swapped for ``norm``.

    Conv and frozen-BN weights are copied; GroupNorm gets BN's gamma/beta (its
    statistics differ, so a pretrained net needs some fine-tuning); ``none`` drops BN.
    """
    pairs = []

    def clone(layer):
        if isinstance(layer, layers.BatchNormalization):
            if norm == "frozen_batch":
                new = FrozenBatchNormalization.from_config(layer.get_config())
            elif norm in ("group", "instance"):
                channels = layer.input.shape[-1]
                groups = group_count(channels) if norm == "group" else channels
                new = layers.GroupNormalization(groups=groups, epsilon=layer.epsilon, name=layer.name)
            else:
                new = layers.Identity(name=layer.name)
        else:
            new = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new))
        return new

    cloned = keras.models.clone_model(model, clone_function=clone, call_function=_call_without_bn_kwargs)
    for old, new in pairs:
        if not old.weights or not new.weights:
            continue
        if isinstance(old, layers.BatchNormalization) and isinstance(new, layers.GroupNormalization):
            new.set_weights([old.gamma.numpy(), old.beta.numpy()])
        else:
            new.set_weights(old.get_weights())
    return cloned


def _application_backbone(name, norm, weights_file):
    ctor = {
        "vgg16": keras.applications.VGG16,
        "resnet50": keras.applications.ResNet50,
        "mobilenetv2": keras.applications.MobileNetV2,
    }[name]
    app = ctor(include_top=False, weights=weights_file, input_shape=(None, None, 3))
    backbone = keras.Model(app.input, [app.get_layer(n).output for n in _FEATURES[name]], name="backbone")
    if norm != "batch" and any(isinstance(l, layers.BatchNormalization) for l in backbone.layers):
        backbone = _replace_batch_norm(backbone, norm)
    return backbone


def _upsample(x, factor, channels, name, trainable):
    return layers.Conv2DTranspose(
        channels,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearInitializer(),
        trainable=trainable,
        name=name,
    )(x)


def _score(x, num_classes, name, zero=False):
    init = "zeros" if zero else "glorot_uniform"
    return layers.Conv2D(num_classes, 1, kernel_initializer=init, name=name)(x)


def _weights_kind(weights: str | None, backbone: str) -> str | None:
    """``None``, ``"model"`` (a whole fcndata model file) or ``"backbone"`` (legacy .h5)."""
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"fcn: weights must be a local file path or None. Received: weights={weights!r}")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ValueError(
            f"fcn: weights file not found: {path}. fcndata never downloads weights; pass a local "
            "file: a .weights.h5 / .keras saved from an fcndata model, or (vgg16, resnet50, "
            "mobilenetv2) a keras.applications 'notop' .h5 file. "
            f"Received: weights={path!r}"
        )
    if path.endswith((".weights.h5", ".keras")):
        return "model"
    if path.endswith(".h5") and backbone != "tiny":
        return "backbone"
    raise ValueError(
        "fcn: cannot tell what the weights file holds. Use a .weights.h5 or .keras file saved from "
        "an fcndata model (whole model), or a keras.applications 'notop' .h5 file for the "
        "vgg16 / resnet50 / mobilenetv2 backbone (the tiny backbone has no pretrained weights). "
        f"Received: weights={path!r}, backbone={backbone!r}"
    )


# ---------------------------------------------------------------------------- public API


def fcn(
    num_classes: int,
    variant: str = "fcn8s",
    backbone: str = "tiny",
    norm: str = "batch",
    masked: bool = False,
    weights: str | None = None,
    input_channels: int = 3,
    width: int = 32,
    dropout: float = 0.0,
    input_size: tuple[int, int] | None = None,
    name: str | None = None,
    depth: int = 5,
    intensity: str = "scale",
    clip: tuple[float, float] | None = None,
    pixel_max: float = 1.0,
) -> keras.Model:
    """Builds a fully convolutional network (Keras 3 functional model).

    Args:
      num_classes: number of output channels (logits).
      variant: ``fcn8s`` (fuses pool3 and pool4), ``fcn16s`` (pool4) or ``fcn32s``, as in
        the paper; ``fcn4s`` and ``fcn2s`` continue the same skip pattern down to pool2 /
        pool1 (tiny backbone only) for structures a few pixels wide, which a stride-8
        prediction cannot draw. ``fcnNs`` predicts at stride N: the fc6/fc7 head sits on
        the deepest pooled map (stride ``2**depth``) and every pooled map from there down
        to stride N is fused, so it needs ``2**depth >= N`` (fcn32s depth 5, fcn16s >= 4,
        fcn8s >= 3, fcn4s >= 2).
        ``unet`` is not from the paper: a conv decoder (see the module docstring) that
        refines each skip with 3×3 convs instead of adding 1×1 class scores; any depth.
      backbone: ``tiny`` (from scratch), ``vgg16``, ``resnet50`` or ``mobilenetv2``.
      norm: normalisation after each conv of the tiny backbone, the fc6/fc7 head and the
        unet decoder. Without ``masked``, the plain Keras layers: ``batch``
        (BatchNormalization: statistics of the whole padded batch in training, moving ones
        in inference), ``group`` (GroupNormalization, groups = largest divisor of the
        channels <= 32, per image), ``instance`` (GroupNormalization with one group per
        channel). With ``masked``, the same three take the roi and compute their statistics
        over roi pixels only (fcndata.normalization: ``RoiBatchNormalization``,
        ``RoiGroupNormalization``, ``RoiInstanceNormalization``), so padding and
        size-bucketing change nothing and training and inference mode agree.
        ``frozen_batch`` (moving statistics only: works at batch size 1) and ``none`` are
        the same either way. For resnet50 / mobilenetv2 their BatchNormalization layers are
        swapped too (``batch`` keeps them; ``instance`` = GroupNormalization per channel);
        inside keras.applications backbones the layers cannot take a roi, so their
        statistics include padding even when ``masked`` (only the fcndata head and
        decoder layers use the roi). vgg16 has none.
      masked: inputs become ``{"image": [B,H,W,C], "roi": [B,H,W,1]}``; the image and the
        features are multiplied by the roi (max-pooled to each resolution) so padding
        stays zero instead of spreading into real pixels, and norms use roi statistics
        (above). The tiny backbone masks after every conv block; keras.applications
        backbones only at their three feature outputs (their inner layers are not
        reachable), so padding leaks a little there.
      weights: None or a local file: ``.weights.h5`` / ``.keras`` from an fcndata model
        (loaded into the whole model, layers whose shapes differ — e.g. the score
        layers when ``num_classes`` changed — are skipped), or a keras.applications
        ``notop`` ``.h5`` file (loaded into the backbone). Never downloaded.
      input_channels: image channels C. keras.applications backbones get a trainable
        1x1 conv ``channel_adapter`` to 3 channels, initialised so that output channel
        k copies input channel k mod C (grey is repeated; RGBA drops alpha).
      width: channels of the first tiny stage (then 2w, 4w, 8w, 8w; fc6/fc7 have the
        deepest stage's); for ``unet`` also the decoder's (8w at stride 16, 4w at 8, 2w at
        4, w at 2 and 1).
      dropout: dropout rate after fc6 and fc7 (the paper uses 0.5), or after the first
        ``unet`` bottleneck conv.
      input_size: optional static (H, W), multiples of the stride; default None × None.
      name: model name; default ``f"{variant}_{backbone}"``.
      depth: pooling stages of the tiny backbone (1-5); the network's stride is
        ``2**depth`` (:func:`stride`). keras.applications backbones: 5 only.
      intensity: the first layer (``Intensity``): ``scale`` (pixels as given, in [0, 1])
        or ``zscore`` (per image and channel over the roi; needs ``masked``).
      clip: None or ``(low, high)`` raw pixel values: an intensity window applied first
        (with ``scale`` stretched to [0, 1]); needs ``pixel_max``.
      pixel_max: the raw pixel maximum the pipeline divided by (255 uint8, 65535 uint16,
        1.0 float): converts ``clip`` to [0, 1] units.

    Returns:
      A ``keras.Model`` whose output layer ``logits`` gives float32 ``[B, H, W, num_classes]``.

    Raises:
      ValueError: a choice, size, depth or weights file is invalid, or ``zscore`` without ``masked``.
    """
    _check_choice(variant, "variant", VARIANTS)
    if variant in FINE_VARIANTS and backbone != "tiny":
        raise ValueError(
            f"fcn: variant {variant!r} fuses the stride-4/2 maps, which only the tiny backbone exposes; "
            f"use fcn8s with {backbone!r}, or backbone='tiny'. Received: variant={variant!r}, backbone={backbone!r}"
        )
    _check_choice(backbone, "backbone", BACKBONES)
    _check_choice(norm, "norm", NORMS)
    _check_choice(intensity, "intensity", ("scale", "zscore"))
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"fcn: num_classes must be a positive int. Received: num_classes={num_classes!r}")
    if not isinstance(input_channels, int) or input_channels < 1:
        raise ValueError(f"fcn: input_channels must be a positive int. Received: input_channels={input_channels!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"fcn: width must be a positive int. Received: width={width!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"fcn: dropout must be in [0, 1). Received: dropout={dropout!r}")
    if not isinstance(depth, int) or not 1 <= depth <= 5:
        raise ValueError(f"fcn: depth must be an int in [1, 5] (the tiny backbone pools 5 times). Received: depth={depth!r}")
    if depth != 5 and backbone != "tiny":
        raise ValueError(
            f"fcn: depth is for the tiny backbone; {backbone} pools 5 times. Use depth=5 or backbone='tiny'. "
            f"Received: depth={depth}, backbone={backbone!r}"
        )
    if variant in VARIANT_STRIDE and 2**depth < VARIANT_STRIDE[variant]:
        same = next(v for v, s in VARIANT_STRIDE.items() if s == 2**depth)  # the variant without skips here
        raise ValueError(
            f"fcn: {variant} predicts at stride {VARIANT_STRIDE[variant]}, but depth={depth} puts the fc6/fc7 head at "
            f"stride {2**depth}, finer than that. Use depth >= {VARIANT_STRIDE[variant].bit_length() - 1}, or "
            f"variant={same!r} (no skips at this depth) or 'unet'. Received: variant={variant!r}, depth={depth}"
        )
    if intensity == "zscore" and not masked:
        raise ValueError(
            "fcn: intensity='zscore' normalises each image over its roi pixels, so the model needs the roi: set "
            "masked=True (model.masked: true), or use intensity='scale'. Received: intensity='zscore', masked=False"
        )
    total_stride = stride(backbone, depth)
    if input_size is not None:
        input_size = tuple(input_size)
        if len(input_size) != 2 or any(s is not None and (s <= 0 or s % total_stride) for s in input_size):
            raise ValueError(
                f"fcn: input_size must be (height, width) with multiples of {total_stride} (or None); pad "
                f"images with PadAndBatch(pad_to_multiple={total_stride}). Received: input_size={input_size!r}"
            )
    weights_kind = _weights_kind(weights, backbone)
    h, w = input_size or (None, None)

    image = keras.Input((h, w, input_channels), name="image")
    inputs = image
    rois = None
    x = image
    strides = [2**k for k in range(1, (depth if backbone == "tiny" else 5) + 1)]
    if masked:
        roi = keras.Input((h, w, 1), name="roi")
        inputs = {"image": image, "roi": roi}
        # max-pool: a feature is real when any pixel under it is real (for a 0/1 roi
        # this is the same as avg-pool > 0).
        rois = {1: roi}
        for s in strides:
            rois[s] = layers.MaxPooling2D(s, name=f"roi_pool{s}")(roi)
    if intensity != "scale" or clip is not None:
        x = Intensity(intensity, clip=clip, pixel_max=pixel_max, name="intensity")(x, *([rois[1]] if masked else []))

    if backbone == "tiny":
        if masked:
            x = RoiMask(name="image_roi")(x, rois[1])
        # unet: He init. Its ~22 relu convs without a norm shrink a Glorot-initialised signal
        # until the relus die (measured: loss stuck after one Adam step at width 4).
        init = _UNET_INIT if variant == "unet" else "glorot_uniform"
        pools, before_pool = _tiny_backbone(x, width, norm, rois, init, depth)
        head = _TINY_MULTS[depth - 1] * width
    else:
        if input_channels != 3:
            x = layers.Conv2D(
                3,
                1,
                use_bias=False,
                kernel_initializer=keras.initializers.Constant(0.0),
                name="channel_adapter",
            )(x)
        x = ImagePreprocess(_PREPROCESS[backbone], name="preprocess")(x)
        if masked:
            # after preprocessing, so padding is 0 in the backbone's input space
            x = RoiMask(name="image_roi")(x, rois[1])
        net = _application_backbone(backbone, norm, weights if weights_kind == "backbone" else None)
        pool3, pool4, pool5 = net(x)
        if masked:
            pool3 = RoiMask(name="pool3_roi")(pool3, rois[8])
            pool4 = RoiMask(name="pool4_roi")(pool4, rois[16])
            pool5 = RoiMask(name="pool5_roi")(pool5, rois[32])
        pools = [None, None, pool3, pool4, pool5]
        head = 512
    deepest = pools[-1]

    if variant == "unet":
        return _finish(
            _unet_head(
                deepest, (before_pool if backbone == "tiny" else None), tuple(pools[2:4]), num_classes, norm,
                rois, width, dropout, backbone,
            ),
            inputs, num_classes, variant, backbone, name, input_channels, weights, weights_kind,
        )

    top = strides[-1]
    roi_top = rois[top] if masked else None
    x = _conv_block(deepest, head, 3, norm, "fc6", roi_top)
    if dropout:
        x = layers.Dropout(dropout, name="fc6_dropout")(x)
    x = _conv_block(x, head, 1, norm, "fc7", roi_top)
    if dropout:
        x = layers.Dropout(dropout, name="fc7_dropout")(x)

    def masked_(t, stride_, name_):
        # scores at padding would otherwise carry the bias into real pixels when upsampled
        return RoiMask(name=name_)(t, rois[stride_]) if masked else t

    score = masked_(_score(x, num_classes, "score_fr"), top, "score_fr_roi")
    final_factor = top
    # the pooled maps finer than the head, down to the variant's stride: pool k has stride 2**k
    for k in range(top.bit_length() - 2, VARIANT_STRIDE[variant].bit_length() - 2, -1):
        feature, skip_stride = pools[k - 1], 2**k
        # the first ×2 step keeps the paper's name, "upscore2"
        up_name = "upscore2" if skip_stride == top // 2 else f"upscore_pool{k + 1}"
        score = _upsample(score, 2, num_classes, up_name, trainable=True)
        score = layers.Add(name=f"fuse_pool{k}")([score, _score(feature, num_classes, f"score_pool{k}", zero=True)])
        score = masked_(score, skip_stride, f"fuse_pool{k}_roi")
        final_factor = skip_stride
    # "upscore2" is already the first ×2 step's name (the paper's), hence fcn2s's own name
    last = f"upscore{final_factor}" if final_factor != 2 else "upscore_out2"
    score = _upsample(score, final_factor, num_classes, last, trainable=False)
    return _finish(score, inputs, num_classes, variant, backbone, name, input_channels, weights, weights_kind)


def _unet_head(deepest, before_pool, app_features, num_classes, norm, rois, width, dropout, backbone):
    """``variant="unet"``: a conv bottleneck at the deepest stride, then the conv decoder.

    Tiny backbone (depth d): the bottleneck has the deepest stage's channels and sits at
    stride 2**d; the decoder climbs back to full resolution through the stage outputs
    before pooling (at depth 5: stride 16, 8, 4, 2, 1; channels 8w, 4w, 2w, w, w), so the
    class scores are computed at the input resolution. keras.applications backbones
    expose only their stride-8/16 maps: the decoder refines at 16 (8w) and 8 (4w) and a
    fixed bilinear ×8 takes the scores to the input resolution.
    """
    if backbone == "tiny":
        depth = len(before_pool)
        channels, top = _TINY_MULTS[depth - 1] * width, 2**depth
    else:
        channels, top = 8 * width, 32
    roi_top = rois[top] if rois else None
    x = _conv_block(deepest, channels, 3, norm, "bottleneck_1", roi_top, _UNET_INIT)
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    x = _conv_block(x, channels, 3, norm, "bottleneck_2", roi_top, _UNET_INIT)
    if backbone == "tiny":
        # decoder channels at stride 2**k: w at 1 and 2, 2w at 4, 4w at 8, 8w at 16
        decoder = (1, 1, 2, 4, 8)
        skips = [(before_pool[k], 2**k, decoder[k] * width) for k in range(depth - 1, -1, -1)]
        x = _conv_decoder(x, skips, norm, rois)
        return _score(x, num_classes, "score")
    pool3, pool4 = app_features
    x = _conv_decoder(x, [(pool4, 16, 8 * width), (pool3, 8, 4 * width)], norm, rois)
    score = _score(x, num_classes, "score")
    if rois:
        # scores at padding would otherwise carry the bias into real pixels when upsampled
        score = RoiMask(name="score_roi")(score, rois[8])
    return _upsample(score, 8, num_classes, "upscore8", trainable=False)


def _finish(score, inputs, num_classes, variant, backbone, name, input_channels, weights, weights_kind):
    """Float32 ``logits`` layer, the model, channel-adapter init and weights loading."""
    logits = layers.Activation("linear", dtype="float32", name="logits")(score)
    model = keras.Model(inputs, logits, name=name or f"{variant}_{backbone}")

    if backbone != "tiny" and input_channels != 3:
        kernel = np.zeros((1, 1, input_channels, 3), np.float32)
        for k in range(3):
            kernel[0, 0, k % input_channels, k] = 1.0
        model.get_layer("channel_adapter").set_weights([kernel])
    if weights_kind == "model":
        if os.fspath(weights).endswith(".keras"):
            saved = keras.saving.load_model(os.fspath(weights), compile=False)
            _copy_matching_weights(saved, model)
        else:
            model.load_weights(os.fspath(weights), skip_mismatch=True)
    return model


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _copy_matching_weights(source: keras.Model, target: keras.Model) -> None:
    by_name = {l.name: l for l in _all_layers(source)}
    for layer in _all_layers(target):
        src = by_name.get(layer.name)
        if src is None or not layer.weights:
            continue
        values = src.get_weights()
        if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(values)


def pixel_max(data) -> float:
    """The raw pixel maximum of a ``data:`` section's images (255 uint8, 65535 uint16).

    ``data.image_dtype`` when set; else, for a built-in source, its images' dtype
    (:data:`BUILTIN_IMAGE_DTYPES`). Other sources with ``image_dtype: auto`` decide per
    dataset, so the maximum cannot be known before reading.

    Raises:
      ValueError: it cannot be known (names ``data.image_dtype`` and how to set it).

    Example:
      >>> from fcndata.config import DataConfig
      >>> pixel_max(DataConfig(source="shapes")), pixel_max(DataConfig(source="phantom"))
      (255.0, 65535.0)
    """
    if data.image_dtype != "auto":
        return _DTYPE_MAX[data.image_dtype]
    if data.source in BUILTIN_IMAGE_DTYPES:
        return _DTYPE_MAX[BUILTIN_IMAGE_DTYPES[data.source]]
    raise ValueError(
        f"model.clip is in raw pixel values, but the pixel maximum of data.source={data.source} images is only known "
        "once they are read (image_dtype auto): set data.image_dtype to uint8 or uint16 (every image is then read as "
        "that bit depth), or remove model.clip. Received: data.image_dtype='auto'"
    )


def model_stride(cfg) -> int:
    """The total stride of the model a ``model:`` section builds (``2**depth`` for tiny, else 32)."""
    return stride(cfg.backbone, getattr(cfg, "depth", 5))


def model_from_config(cfg, data) -> keras.Model:
    """Builds :func:`fcn` from the ``model:`` and ``data:`` sections.

    ``model.intensity: zscore`` needs ``model.masked: true``; ``model.clip`` needs the raw
    pixel maximum (:func:`pixel_max`).

    Args:
      cfg: a ``ModelConfig``.
      data: a ``DataConfig`` (``num_classes``, ``channels``, ``source``, ``image_dtype``).

    Raises:
      ValueError: ``zscore`` without ``masked``, or ``clip`` whose pixel maximum is unknown.

    Example:
      >>> from fcndata.config import DataConfig, ModelConfig
      >>> m = model_from_config(ModelConfig(variant="fcn32s", width=4), DataConfig(num_classes=2, channels=1))
      >>> m.input_shape, m.output_shape
      ((None, None, None, 1), (None, None, None, 2))
    """
    if cfg.intensity == "zscore" and not cfg.masked:
        raise ValueError(
            "model.intensity: zscore normalises each image over its roi pixels, so the model needs the roi as an "
            "input: set model.masked: true, or use model.intensity: scale. Received: model.intensity=zscore, "
            "model.masked=false"
        )
    return fcn(
        data.num_classes,
        variant=cfg.variant,
        backbone=cfg.backbone,
        norm=cfg.norm,
        masked=cfg.masked,
        weights=cfg.weights,
        input_channels=data.channels,
        width=cfg.width,
        dropout=cfg.dropout,
        depth=cfg.depth,
        intensity=cfg.intensity,
        clip=cfg.clip,
        pixel_max=pixel_max(data) if cfg.clip is not None else 1.0,
    )


def _foldable_pairs(model: keras.Model) -> dict:
    """Maps id(BN layer) -> the Conv2D / DepthwiseConv2D whose only consumer it is.

    Read from each functional model's own config (``get_config()``: every layer's
    ``inbound_nodes`` name the producing layer, node and tensor), a public and
    serialised description of the graph, so no private Keras attribute is touched.
    Nested functional models (keras.applications backbones) are read the same way.
    """
    pairs = {}
    for graph in _all_models(model):
        config = graph.get_config()
        if not isinstance(config, dict) or "layers" not in config:
            continue  # a subclassed or Sequential model: nothing is folded inside it
        producers, consumers, calls = {}, {}, {}
        for entry in config["layers"]:
            nodes = entry.get("inbound_nodes", [])
            calls[entry["name"]] = len(nodes)
            for node in nodes:
                sources = _keras_histories(node)
                if len(nodes) == 1:
                    producers[entry["name"]] = sources
                for source in sources:
                    consumers[source] = consumers.get(source, 0) + 1
        outputs = config.get("output_layers", [])
        if outputs and isinstance(outputs[0], str):
            outputs = [outputs]  # one output: a single [name, node, tensor] triple
        for name, node, index in outputs:
            consumers[(name, node, index)] = consumers.get((name, node, index), 0) + 1
        for entry in config["layers"]:
            layer = graph.get_layer(entry["name"])
            if not isinstance(layer, layers.BatchNormalization) or layer.axis not in (-1, 3):
                continue
            sources = producers.get(entry["name"])
            if not sources or len(sources) != 1:
                continue
            name, node, index = sources[0]
            producer = graph.get_layer(name)
            if (
                type(producer) in (layers.Conv2D, layers.DepthwiseConv2D)
                and calls.get(name) == 1
                and consumers.get((name, node, index)) == 1
                and producer.activation is keras.activations.linear
            ):
                pairs[id(layer)] = producer
    return pairs


def _all_models(model):
    """``model`` and every functional model nested in it."""
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_models(layer)


def _keras_histories(node) -> list[tuple[str, int, int]]:
    """The (layer, node, tensor) triples a serialised inbound node reads."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                name, node_index, tensor_index = value["config"]["keras_history"]
                found.append((name, node_index, tensor_index))
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(node.get("args", []))
    walk(node.get("kwargs", {}))
    return found


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with each BatchNormalization folded into the conv before it.

    For export: in inference mode ``BN(conv(x)) = conv'(x)`` with
    ``W' = W · γ/√(σ² + ε)`` and ``b' = (b − μ) · γ/√(σ² + ε) + β`` per output channel.
    Folded BN layers become ``Identity`` layers of the same name; a BN that does not
    directly follow a Conv2D / DepthwiseConv2D used only by it is kept. Nested models
    (keras.applications backbones) are folded too. The result is meant for inference:
    it matches ``model(x, training=False)`` to float precision.

    Example:
      >>> m = fcn(2, "fcn32s", width=2)
      >>> folded = fold_batch_norm(m)
      >>> sum(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
      0
    """
    pairs = _foldable_pairs(model)
    convs = {id(conv) for conv in pairs.values()}
    bn_of_conv = {id(conv): bn_id for bn_id, conv in pairs.items()}
    bn_layers = {id(l): l for l in _all_layers(model) if id(l) in pairs}
    clones = []

    def clone(layer):
        if id(layer) in pairs:
            new = layers.Identity(name=layer.name)
        elif id(layer) in convs:
            new = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
        else:
            new = layer.__class__.from_config(layer.get_config())
        clones.append((layer, new))
        return new

    folded = keras.models.clone_model(model, clone_function=clone, call_function=_call_without_bn_kwargs, recursive=True)
    for old, new in clones:
        if id(old) in convs:
            bn = bn_layers[bn_of_conv[id(old)]]
            mean = np.asarray(bn.moving_mean.numpy(), np.float64)
            var = np.asarray(bn.moving_variance.numpy(), np.float64)
            gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones_like(mean)
            beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros_like(mean)
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel = old.kernel.numpy().astype(np.float64)
            bias = old.bias.numpy().astype(np.float64) if old.use_bias else np.zeros_like(mean)
            if isinstance(old, layers.DepthwiseConv2D):
                *_, cin, mult = kernel.shape
                kernel = kernel * scale.reshape(cin, mult)
            else:
                kernel = kernel * scale
            bias = (bias - mean) * scale + beta
            new.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        elif old.weights and new.weights and not isinstance(old, keras.Model):
            new.set_weights(old.get_weights())
    return folded
