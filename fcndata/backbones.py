"""The networks' building blocks: conv blocks with their norm (roi-aware when masked), the tiny
backbone, the U-Net decoder, and keras.applications backbones with their batch norm replaced.

:mod:`fcndata.models` assembles them into FCN-32s/16s/8s and U-Nets.
"""

from __future__ import annotations

import keras
from keras import layers

from fcndata.layers import FrozenBatchNormalization, RoiMask, group_count
from fcndata.normalization import RoiBatchNormalization, RoiGroupNormalization, RoiInstanceNormalization

# Last layer at stride 8, 16 and 32 of each keras.applications backbone (checked by
# building them at 64x64: the next layer halves the resolution).
FEATURES = {
    "vgg16": ("block3_pool", "block4_pool", "block5_pool"),
    "resnet50": ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "mobilenetv2": ("block_5_add", "block_12_add", "out_relu"),
}


#: Kernel initialiser of the unet convs (relu everywhere, often without a norm).
UNET_INIT = "he_normal"


def make_norm(norm: str, channels: int, name: str, masked: bool = False):
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


def conv_block(x, channels, kernel, norm, name, roi=None, init="glorot_uniform"):
    """conv → norm → relu (→ × roi). Conv has no bias when a norm follows.

    With a roi, batch / group / instance statistics are taken over the roi pixels only.
    """
    x = layers.Conv2D(
        channels, kernel, padding="same", use_bias=norm == "none", kernel_initializer=init, name=f"{name}_conv"
    )(x)
    masked = roi is not None and norm in ("batch", "group", "instance")
    norm_layer = make_norm(norm, channels, f"{name}_{norm}norm" if norm != "batch" else f"{name}_bn", masked)
    if masked:
        x = norm_layer(x, roi)
    elif norm_layer is not None:
        x = norm_layer(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    if roi is not None:
        x = RoiMask(name=f"{name}_roi")(x, roi)
    return x


#: Channel multiplier of each tiny stage (of ``width``).
TINY_MULTS = (1, 2, 4, 8, 8)


def tiny_backbone(x, width, norm, rois, init="glorot_uniform", depth=5):
    """``depth`` (1-5) stages of 2 × conv-norm-relu + 2×2 max-pool.

    Returns the pooled stride 2, 4, …, 2**depth maps (the FCN skips) and the stride 1, 2,
    …, 2**(depth-1) maps before each pool (the U-Net skips: they keep the stage's full resolution).
    """
    features, before_pool = [], []
    for stage, mult in enumerate(TINY_MULTS[:depth], start=1):
        roi = rois.get(2 ** (stage - 1)) if rois else None
        for i in (1, 2):
            x = conv_block(x, width * mult, 3, norm, f"block{stage}_{i}", roi, init)
        before_pool.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        features.append(x)
    return features, before_pool


def conv_decoder(x, skips, norm, rois, name="up"):
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
            x = conv_block(x, channels, 3, norm, f"{name}{stride}_{i}", roi, UNET_INIT)
    return x


def call_without_bn_kwargs(layer, *args, **kwargs):
    # A BatchNormalization node records `mask=`; its replacement may not accept it.
    if not isinstance(layer, layers.BatchNormalization):
        kwargs.pop("mask", None)
    return layer(*args, **kwargs)


def replace_batch_norm(model: keras.Model, norm: str) -> keras.Model:
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

    cloned = keras.models.clone_model(model, clone_function=clone, call_function=call_without_bn_kwargs)
    for old, new in pairs:
        if not old.weights or not new.weights:
            continue
        if isinstance(old, layers.BatchNormalization) and isinstance(new, layers.GroupNormalization):
            new.set_weights([old.gamma.numpy(), old.beta.numpy()])
        else:
            new.set_weights(old.get_weights())
    return cloned


def application_backbone(name, norm, weights_file):
    ctor = {
        "vgg16": keras.applications.VGG16,
        "resnet50": keras.applications.ResNet50,
        "mobilenetv2": keras.applications.MobileNetV2,
    }[name]
    app = ctor(include_top=False, weights=weights_file, input_shape=(None, None, 3))
    backbone = keras.Model(app.input, [app.get_layer(n).output for n in FEATURES[name]], name="backbone")
    if norm != "batch" and any(isinstance(l, layers.BatchNormalization) for l in backbone.layers):
        backbone = replace_batch_norm(backbone, norm)
    return backbone
