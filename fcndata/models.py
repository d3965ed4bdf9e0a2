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

import keras
import numpy as np
from keras import layers

from fcndata.backbones import (
    TINY_MULTS,
    UNET_INIT,
    application_backbone,
    conv_block,
    conv_decoder,
    tiny_backbone,
)
from fcndata.common import PIXEL_MAX, choice
from fcndata.layers import BilinearInitializer, ImagePreprocess, RoiMask, all_layers
from fcndata.normalization import Intensity

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

# How each application expects its pixels: "caffe" = BGR 0..255 minus the ImageNet
# mean (vgg16, resnet50 preprocess_input), "tf" = [-1, 1] (mobilenetv2).
_PREPROCESS = {"vgg16": "caffe", "resnet50": "caffe", "mobilenetv2": "tf"}


# ---------------------------------------------------------------------------- pure functions


def stride(backbone: str = "tiny", depth: int = 5) -> int:
    """The network's total stride: inputs need H and W divisible by it.

    >>> stride("tiny", 3), stride("tiny"), stride("vgg16")
    (8, 32, 32)
    """
    return 2**depth if backbone == "tiny" else STRIDE


# ---------------------------------------------------------------------------- building blocks


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
    choice(variant, "variant", "fcn", VARIANTS)
    if variant in FINE_VARIANTS and backbone != "tiny":
        raise ValueError(
            f"fcn: variant {variant!r} fuses the stride-4/2 maps, which only the tiny backbone exposes; "
            f"use fcn8s with {backbone!r}, or backbone='tiny'. Received: variant={variant!r}, backbone={backbone!r}"
        )
    choice(backbone, "backbone", "fcn", BACKBONES)
    choice(norm, "norm", "fcn", NORMS)
    choice(intensity, "intensity", "fcn", ("scale", "zscore"))
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
        init = UNET_INIT if variant == "unet" else "glorot_uniform"
        pools, before_pool = tiny_backbone(x, width, norm, rois, init, depth)
        head = TINY_MULTS[depth - 1] * width
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
        net = application_backbone(backbone, norm, weights if weights_kind == "backbone" else None)
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
    x = conv_block(deepest, head, 3, norm, "fc6", roi_top)
    if dropout:
        x = layers.Dropout(dropout, name="fc6_dropout")(x)
    x = conv_block(x, head, 1, norm, "fc7", roi_top)
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
        channels, top = TINY_MULTS[depth - 1] * width, 2**depth
    else:
        channels, top = 8 * width, 32
    roi_top = rois[top] if rois else None
    x = conv_block(deepest, channels, 3, norm, "bottleneck_1", roi_top, UNET_INIT)
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    x = conv_block(x, channels, 3, norm, "bottleneck_2", roi_top, UNET_INIT)
    if backbone == "tiny":
        # decoder channels at stride 2**k: w at 1 and 2, 2w at 4, 4w at 8, 8w at 16
        decoder = (1, 1, 2, 4, 8)
        skips = [(before_pool[k], 2**k, decoder[k] * width) for k in range(depth - 1, -1, -1)]
        x = conv_decoder(x, skips, norm, rois)
        return _score(x, num_classes, "score")
    pool3, pool4 = app_features
    x = conv_decoder(x, [(pool4, 16, 8 * width), (pool3, 8, 4 * width)], norm, rois)
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


def _copy_matching_weights(source: keras.Model, target: keras.Model) -> None:
    by_name = {l.name: l for l in all_layers(source)}
    for layer in all_layers(target):
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
        return PIXEL_MAX[data.image_dtype]
    if data.source in BUILTIN_IMAGE_DTYPES:
        return PIXEL_MAX[BUILTIN_IMAGE_DTYPES[data.source]]
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


