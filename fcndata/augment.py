"""Joint image / label / roi augmentation in TensorFlow graph ops (GIL-free): :class:`Augment`.

:class:`Augment` is pure TensorFlow graph code: it runs on tf.data's own threads without
the GIL, and it serialises into the tf.data service and a SavedModel. Its sibling
:class:`fcndata.albumentations_bridge.Albumentations` runs any albumentations 2.0 pipeline
through ``tf.numpy_function`` under the same contract: everything albumentations offers,
at the price of the GIL.

Both draw one set of random parameters per element and apply it to ``image``,
``label``, ``roi`` (and ``weight`` if present) alike; the image is interpolated
bilinearly, the masks with nearest neighbour. A pixel that comes from outside the
source image (rotation corners, a crop larger than the scaled image, albumentations
padding) gets ``label = ignore_label`` and ``roi = 0``, so it never trains as
background. Randomness is stateless, keyed by ``(seed, epoch, source_index)``
(:func:`fcndata.elements.element_seed`) and a per-transform salt: the same seed gives
the same output under parallel map and autotune.

Geometry of the affine step (scale, rotate, shear and crop are one resampling)::

    source (H, W) --scale s--> frame (sH, sW) --rotate/shear about its centre-->
    crop_size window at a random offset; a window larger than the frame is
    padded: label = ignore_label, roi = 0

``origin`` and ``source_shape`` are kept as they are: after a flip, rotation or
scaling the element is no longer a translated window of its source, so ``origin``
only says which region it was drawn from (for patches cut *after* augmentation,
origins are relative to the augmented image again).

``import fcndata.augment`` does not import albumentations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

import tensorflow as tf

from fcndata import elements as E
from fcndata.common import PIXEL_MAX, in_range, non_negative_ints

# Salt separating this module's draws from every other stage's (element_seed folds
# them into the key after epoch and source_index).
_SALT_AUGMENT = 0xA06
(
    _FLIP_H,
    _FLIP_V,
    _ROT90,
    _SCALE,
    _ROTATE,
    _SHEAR,
    _CROP_Y,
    _CROP_X,
    _BRIGHTNESS,
    _CONTRAST,
    _GAMMA,
    _HUE,
    _SATURATION,
    _NOISE,
    _BLUR,
) = range(1, 16)

_MAX_VALUE = {tf.as_dtype(name): top for name, top in PIXEL_MAX.items()}


# ---------------------------------------------------------------------------- pure functions


def _spatial_keys(element) -> list[str]:
    return [k for k in (E.IMAGE, E.LABEL, E.ROI, E.WEIGHT) if k in element]


def flip(element: dict, axis: int) -> dict:
    """Mirrors every spatial key of an element along ``axis`` (0: vertical, 1: horizontal).

    Example:
      >>> import fcndata.testing as t
      >>> e = flip(t.element(3, 4), axis=1)
      >>> e["image"][0, :, 1].numpy().tolist(), e["label"][0].numpy().tolist()
      ([3, 2, 1, 0], [2, 1, 0, 0])
    """
    out = dict(element)
    for key in _spatial_keys(element):
        out[key] = tf.reverse(element[key], [axis])
    return out


def rotate90(element: dict, k) -> dict:
    """Rotates every spatial key by ``k`` quarter turns counter-clockwise (``k`` may be a tensor).

    Example:
      >>> import fcndata.testing as t
      >>> e = rotate90(t.element(3, 4), 1)
      >>> e["image"].shape, e["label"].shape
      (TensorShape([4, 3, 3]), TensorShape([4, 3]))
    """
    out = dict(element)
    for key in _spatial_keys(element):
        value = element[key]
        if value.shape.rank == 2:
            out[key] = tf.image.rot90(value[..., None], k)[..., 0]
        else:
            out[key] = tf.image.rot90(value, k)
    return out


def affine_matrix(source_shape, scale=1.0, angle=0.0, shear=0.0, offset=(0, 0)) -> tf.Tensor:
    """The ``ImageProjectiveTransformV3`` row mapping output pixels to source pixels.

    The source (pixel centres at integer coordinates, centre ``c``) is scaled by
    ``scale`` into a frame of nominal size ``scale * source_shape`` with centre ``c_s``,
    rotated by ``angle`` and sheared along x by ``shear`` (radians) about ``c_s``; the
    output pixel ``p`` sits at ``p + offset`` in that frame. Inverting::

        q = c + M^-1 (p + offset - c_s),   M = scale * R(angle) * [[1, tan(shear)], [0, 1]]

    in (x, y) order, as TF expects.

    Args:
      source_shape: (height, width) of the source.
      scale, angle, shear: scalars (Python or tensors); angles in radians.
      offset: (y, x) of the output's top-left pixel in the scaled frame.

    Returns:
      A float32 ``[8]`` tensor ``[a0, a1, a2, b0, b1, b2, 0, 0]``.

    Example:
      >>> affine_matrix((5, 7)).numpy().tolist()  # identity
      [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
      >>> affine_matrix((5, 7), offset=(2, 3)).numpy().tolist()  # a crop at (2, 3)
      [1.0, 0.0, 3.0, 0.0, 1.0, 2.0, 0.0, 0.0]
    """
    f = lambda v: tf.cast(v, tf.float32)
    h, w = f(source_shape[0]), f(source_shape[1])
    s, a, t = f(scale), f(angle), tf.tan(f(shear))
    cos, sin = tf.cos(a), tf.sin(a)
    # M^-1 = Sh^-1 R^-1 / s with Sh^-1 = [[1, -t], [0, 1]], R^-1 = [[cos, sin], [-sin, cos]]
    m00, m01 = (cos + t * sin) / s, (sin - t * cos) / s
    m10, m11 = -sin / s, cos / s
    dx = f(offset[1]) - (s * w - 1.0) / 2.0
    dy = f(offset[0]) - (s * h - 1.0) / 2.0
    a2 = m00 * dx + m01 * dy + (w - 1.0) / 2.0
    b2 = m10 * dx + m11 * dy + (h - 1.0) / 2.0
    zero = tf.zeros([], tf.float32)
    return tf.stack([m00, m01, a2, m10, m11, b2, zero, zero])


def _from_float(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Back to the image dtype: integers are rounded and saturated, float32 is kept as is."""
    if dtype.is_integer:
        # clip, then truncate x + 0.5: round half up in one pass fewer than tf.round
        return tf.saturate_cast(x + 0.5, dtype)
    return tf.cast(x, dtype)


def affine_transform(
    element: dict,
    transform,
    output_shape,
    ignore_label: int = E.IGNORE_LABEL,
    keep_float: bool = False,
) -> dict:
    """Resamples an element through one projective transform (output pixel -> source pixel).

    The image is interpolated bilinearly in float32 and cast back to its dtype; label,
    roi and weight with nearest neighbour. Label and roi travel as one plane,
    ``code = 2 * (label + 1) + roi``, filled with 0: a pixel whose source lies outside
    the image is recognised exactly (``code >= 2`` everywhere inside) and becomes
    ``label = ignore_label``, ``roi = 0``, ``weight = 0`` (weight is a second plane).
    One plane less matters: the op's cost grows with the number of planes.

    Args:
      element: an unbatched element.
      transform: ``[8]`` float32, see :func:`affine_matrix`.
      output_shape: (height, width) of the result.
      ignore_label: label of pixels from outside the source.
      keep_float: return the image as float32 (unrounded), sparing a following
        photometric step two casts.

    Example:
      >>> import fcndata.testing as t
      >>> e = affine_transform(t.element(3, 4), affine_matrix((3, 4), offset=(0, 2)), (3, 4))
      >>> e["label"][0].numpy().tolist(), e["roi"][0].numpy().tolist()
      ([1, 2, 255, 255], [1, 1, 0, 0])
    """
    out = dict(element)
    transform = tf.reshape(tf.cast(transform, tf.float32), [1, 8])
    output_shape = tf.cast(tf.convert_to_tensor(output_shape), tf.int32)

    def warp(planes, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=planes[None],
            transforms=transform,
            output_shape=output_shape,
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )[0]

    image = element[E.IMAGE]
    warped = warp(tf.cast(image, tf.float32), "BILINEAR")
    out[E.IMAGE] = warped if keep_float else _from_float(warped, image.dtype)

    label = element[E.LABEL]
    # float32 holds the code exactly for label ids up to 2**23
    code = 2.0 * (tf.cast(label, tf.float32) + 1.0) + tf.cast(element[E.ROI], tf.float32)
    planes = [code] + ([element[E.WEIGHT]] if E.WEIGHT in element else [])
    masks = warp(tf.stack(planes, axis=-1), "NEAREST")
    code = tf.cast(masks[..., 0], tf.int32)
    outside = tf.equal(code, 0)
    out[E.LABEL] = tf.where(
        outside, tf.cast(ignore_label, label.dtype), tf.cast(code // 2 - 1, label.dtype)
    )
    out[E.ROI] = tf.cast(code % 2, tf.uint8)  # 0 outside as well
    if E.WEIGHT in element:
        out[E.WEIGHT] = masks[..., 1]
    return out


def crop_window(element: dict, offset, size, ignore_label: int = E.IGNORE_LABEL) -> dict:
    """The ``size`` window at ``offset`` (y, x) of an element; parts outside are padded.

    Equal to ``affine_transform`` with a pure-translation matrix, but a copy rather
    than a resampling (several times faster). Padding is image 0, ``label =
    ignore_label``, ``roi = 0``, ``weight = 0``. Offsets may be negative::

        offset (-1, 2), size (3, 3) on a 3x4 image:   . . .    (. = padding)
                                                      x x .
                                                      x x .

    Example:
      >>> import fcndata.testing as t
      >>> e = crop_window(t.element(3, 4), (-1, 2), (3, 3))
      >>> e["label"].numpy().tolist()
      [[255, 255, 255], [1, 2, 255], [1, 2, 255]]
    """
    out = dict(element)
    shape = tf.shape(element[E.IMAGE])[:2]
    offset = tf.cast(tf.stack(offset), tf.int32)
    size = tf.cast(tf.stack(size), tf.int32)
    before = tf.maximum(-offset, 0)
    after = tf.maximum(offset + size - shape, 0)
    start = offset + before
    fills = {E.IMAGE: 0, E.LABEL: ignore_label, E.ROI: 0, E.WEIGHT: 0}
    for key in _spatial_keys(element):
        value = element[key]
        pad = tf.stack([before, after], axis=1)
        if value.shape.rank == 3:
            pad = tf.concat([pad, [[0, 0]]], axis=0)
        padded = tf.pad(value, pad, constant_values=tf.cast(fills[key], value.dtype))
        begin = tf.concat([start, [0]], 0) if value.shape.rank == 3 else start
        extent = tf.concat([size, [-1]], 0) if value.shape.rank == 3 else size
        out[key] = tf.slice(padded, begin, extent)
    return out


def adjust_gamma(x: tf.Tensor, gamma, max_value: float) -> tf.Tensor:
    """``max_value * (x / max_value) ** gamma`` on a float32 image (negatives clipped to 0)."""
    return max_value * tf.pow(tf.maximum(x, 0.0) / max_value, gamma)


def gaussian_blur(x: tf.Tensor, sigma, radius: int) -> tf.Tensor:
    """Separable Gaussian blur of a float32 ``[H, W, C]`` image.

    Normalised convolution (zero padding, divided by the blurred all-ones image), so
    borders are not darkened and any image size works, even one smaller than the kernel.
    """
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / tf.maximum(tf.cast(sigma, tf.float32), 1e-3)))
    kernel = kernel / tf.reduce_sum(kernel)

    def blur(images):
        channels = tf.shape(images)[-1]
        ky = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
        kx = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
        y = tf.nn.depthwise_conv2d(images, ky, [1, 1, 1, 1], "SAME")
        return tf.nn.depthwise_conv2d(y, kx, [1, 1, 1, 1], "SAME")

    ones = tf.ones_like(x[None, ..., :1])
    return (blur(x[None]) / blur(ones))[0]


# ---------------------------------------------------------------------------- TF stage


def _check_range(name: str, value, low, high, why: str, *, low_open=False, high_open=False) -> None:
    """The recipe's vocabulary: the message names the key as ``augment.<name>`` (see fcndata.config)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"augment.{name} must be a number. Received: augment.{name}={value!r}")
    in_range(value, f"augment.{name}", low, high, why, low_open=low_open, high_open=high_open)


@dataclass(frozen=True, repr=False)
class Augment:
    """Random joint augmentation of image, label and roi in pure TensorFlow (GIL-free).

    This class is the ``augment:`` section of a recipe: its fields are the section's keys
    (``ignore_label`` and the default ``seed`` come from ``data:``). A field at its neutral
    default (False / None / 0) disables that transform. Order: flips,
    rot90, one affine resampling (scale + rotate + shear + crop), then photometric
    transforms on the image only (brightness, contrast, gamma, hue, saturation, blur,
    noise), computed in float32 and cast back with saturation, so uint8 stays uint8.

    ``probability`` is the chance of each enabled flip, of rot90 (then by 90, 180 or
    270 degrees) and of each photometric transform; the affine step always runs when
    enabled (its ranges contain the identity). Brightness and noise are in units of
    the dynamic range (255 for uint8, 65535 for uint16, 1 for float32, which is assumed
    in [0, 1] and not clipped). ``weight`` is resampled like roi (nearest, 0 outside),
    so class weights stay exact. ``origin`` and ``source_shape`` are kept unchanged
    (see the module docstring).

    Args:
      flip_horizontal, flip_vertical: random mirror left-right / up-down.
      rot90: random multiple of 90 degrees (changes H and W by an odd multiple).
      scale: (min, max) zoom factor, uniform; output size ``round(scale * (H, W))`` unless
        ``crop_size`` is set.
      crop_size: (height, width) of a random window of the scaled image; smaller images
        are padded with ``roi = 0``, ``label = ignore_label``. Output shape becomes static.
      rotate: max absolute rotation in degrees.
      shear: max absolute x-shear in degrees.
      brightness: max absolute additive change.
      contrast: factor range [1 - contrast, 1 + contrast] around each channel's mean.
      gamma: exponent range [1 - gamma, 1 + gamma].
      hue: max hue shift as a fraction of the colour circle (3 channels only).
      saturation: factor range [1 - saturation, 1 + saturation] (3 channels only).
      noise_std: standard deviation of additive Gaussian noise.
      blur_sigma: max sigma of a Gaussian blur in pixels (sigma uniform in (0, blur_sigma]).
      probability: chance of each flip / rot90 / photometric transform.
      albumentations: an albumentations 2.0 pipeline run after the TF transforms by
        :class:`fcndata.albumentations_bridge.Albumentations` (its ``transform``: an
        ``A.to_dict`` serialisation inline, or a JSON/YAML file holding one).
      seed: stateless seed; the key per element is (seed, epoch, source_index, transform).
        In a recipe it defaults to ``data.seed``.
      ignore_label: label given to pixels from outside the image (a recipe's ``data.ignore_label``).

    Input element:
      image [H, W, C] uint8/uint16/float32, label [H, W] uint8/int32, roi [H, W] uint8,
      optional weight [H, W] float32, the other contract keys.

    Output element:
      the same keys and dtypes; H, W change with rot90, scale and crop_size.

    Example:
      >>> import fcndata.testing as t
      >>> stage = Augment(flip_horizontal=True, rotate=10.0, crop_size=(32, 32), seed=1)
      >>> stage
      Augment(flip_horizontal=True, crop_size=(32, 32), rotate=10.0, seed=1)
      >>> e = next(iter(t.dataset([(37, 53)]).apply(stage)))
      >>> e["image"].shape, e["image"].dtype.name, e["label"].dtype.name
      (TensorShape([32, 32, 3]), 'uint8', 'uint8')
      >>> sorted(set(e["label"].numpy().ravel().tolist()) - {0, 1, 2, 255})
      []
    """

    flip_horizontal: bool = False
    flip_vertical: bool = False
    rot90: bool = False
    scale: tuple[float, float] | None = None
    crop_size: tuple[int, int] | None = None
    rotate: float = 0.0
    shear: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    noise_std: float = 0.0
    blur_sigma: float = 0.0
    probability: float = 0.5
    albumentations: Union[None, str, dict] = None
    seed: int = field(default=0, metadata={"default_from_data": "seed"})  # a recipe's default: data.seed
    # from the recipe's data section (data.ignore_label), not a key of augment:
    ignore_label: int = field(default=E.IGNORE_LABEL, metadata={"from_data": "ignore_label"})

    def __post_init__(self):
        for name in ("flip_horizontal", "flip_vertical", "rot90"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"Augment: {name} must be true or false (config key augment.{name}). "
                    f"Received: {name}={getattr(self, name)!r}"
                )
        if self.scale is not None:
            scale = self.scale
            if (
                isinstance(scale, (str, bytes))
                or not isinstance(scale, Sequence)
                or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
            ):
                raise TypeError(
                    "Augment: scale must be a [min, max] pair of zoom factors, e.g. [0.75, 1.25] "
                    f"(config key augment.scale). Received: scale={scale!r}"
                )
            if not 0 < scale[0] <= scale[1]:
                raise ValueError(
                    "Augment: scale must satisfy 0 < min <= max, e.g. [0.75, 1.25] (config key augment.scale). "
                    f"Received: scale={scale!r}"
                )
            object.__setattr__(self, "scale", (float(scale[0]), float(scale[1])))
        if self.crop_size is not None:
            crop = self.crop_size
            if isinstance(crop, int) and not isinstance(crop, bool):
                crop = (crop, crop)
            if (
                isinstance(crop, (str, bytes))
                or not isinstance(crop, Sequence)
                or len(crop) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in crop)
            ):
                raise ValueError(
                    "Augment: crop_size must be a positive int or [height, width] of positive ints "
                    f"(config key augment.crop_size). Received: crop_size={self.crop_size!r}"
                )
            object.__setattr__(self, "crop_size", tuple(crop))
        _check_range("rotate", self.rotate, 0, 180, "it is the maximum absolute angle in degrees")
        _check_range(
            "shear", self.shear, 0, 60, "it is the maximum absolute shear angle in degrees"
        )
        _check_range("brightness", self.brightness, 0, 1, "it is a fraction of the dynamic range")
        _check_range(
            "contrast", self.contrast, 0, 1, "factors are drawn from [1 - contrast, 1 + contrast]"
        )
        _check_range(
            "gamma",
            self.gamma,
            0,
            1,
            "exponents are drawn from [1 - gamma, 1 + gamma]",
            high_open=True,
        )
        _check_range("hue", self.hue, 0, 0.5, "it is a fraction of the colour circle")
        _check_range("saturation", self.saturation, 0, 1, "factors are drawn from [1 - s, 1 + s]")
        _check_range("noise_std", self.noise_std, 0, 1, "it is a fraction of the dynamic range")
        _check_range("blur_sigma", self.blur_sigma, 0, 20, "it is the maximum sigma in pixels")
        _check_range(
            "probability", self.probability, 0, 1, "it is the chance of each enabled transform"
        )
        non_negative_ints("Augment", seed=self.seed, ignore_label=self.ignore_label)

    def __repr__(self) -> str:
        # The log line: only what differs from the defaults, plus the seed.
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "seed" or value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"Augment({', '.join(parts)})"

    @property
    def geometric(self) -> bool:
        """Whether the affine resampling step runs."""
        return (
            self.scale is not None
            or self.crop_size is not None
            or self.rotate > 0
            or self.shear > 0
        )

    @property
    def photometric(self) -> bool:
        """Whether any image-only transform is enabled."""
        return any(
            getattr(self, n) > 0
            for n in (
                "brightness",
                "contrast",
                "gamma",
                "hue",
                "saturation",
                "noise_std",
                "blur_sigma",
            )
        )

    @property
    def enabled(self) -> bool:
        """False when every TF transform is off (then only ``albumentations``, if set, runs)."""
        return (
            self.flip_horizontal
            or self.flip_vertical
            or self.rot90
            or self.geometric
            or self.photometric
        )

    def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(dataset, where="Augment")
        spec = dataset.element_spec
        channels = spec[E.IMAGE].shape[-1]
        if (self.hue > 0 or self.saturation > 0) and channels != 3:
            raise ValueError(
                "Augment: hue and saturation need RGB images with a static channel count of 3; set them to 0 "
                f"for other images. Received: channels={channels}, hue={self.hue}, saturation={self.saturation}"
            )
        if spec[E.LABEL].dtype == tf.uint8 and self.ignore_label > 255:
            raise ValueError(
                "Augment: ignore_label does not fit uint8 labels; use a value <= 255 (usually 255). "
                f"Received: ignore_label={self.ignore_label}"
            )
        if self.enabled:
            dataset = E.with_epoch(dataset, self.seed)  # fresh draws every epoch, even without build_pipeline
            # explicit tf.cond already; AutoGraph conversion would only add seconds of tracing
            fn = tf.autograph.experimental.do_not_convert(self.augment)
            dataset = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
        if self.albumentations is not None:
            from fcndata.albumentations_bridge import Albumentations  # imports albumentations

            dataset = dataset.apply(Albumentations(self.albumentations, seed=self.seed, ignore_label=self.ignore_label))
        return dataset

    # -- per element

    def augment(self, element: dict) -> dict:
        """Augments one element (usable in ``Dataset.map`` or eagerly)."""
        key = E.element_seed(self.seed, element, _SALT_AUGMENT)
        # One draw per element: column k of row 0 is transform k's coin, of row 1 its
        # parameter. A fixed column per transform acts as its salt: switching one
        # transform on or off leaves the others' draws unchanged. (One op instead of a
        # key derivation per transform also keeps the traced graph small.)
        draws = tf.random.stateless_uniform([2, 16], key)
        coin = lambda salt: draws[0, salt] < self.probability
        unit = lambda salt: draws[1, salt]
        out = dict(element)
        if self.flip_horizontal:
            out = tf.cond(coin(_FLIP_H), lambda: flip(out, 1), lambda: dict(out))
        if self.flip_vertical:
            out = tf.cond(coin(_FLIP_V), lambda: flip(out, 0), lambda: dict(out))
        if self.rot90:
            quarter = 1 + tf.minimum(tf.cast(unit(_ROT90) * 3, tf.int32), 2)
            out = rotate90(out, tf.where(coin(_ROT90), quarter, 0))
        dtype = element[E.IMAGE].dtype
        if self.geometric:
            # a resampled image stays float32 for the photometric step (two casts fewer)
            out = self._affine(unit, out, keep_float=self.photometric)
        if self.photometric:
            out[E.IMAGE] = self._photometric(key, coin, unit, out[E.IMAGE], dtype)
        return out

    def _affine(self, unit, element, keep_float=False):
        between = lambda salt, low, high: low + (high - low) * unit(salt)
        shape = tf.shape(element[E.IMAGE])[:2]
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        s = between(_SCALE, *self.scale) if self.scale is not None else tf.constant(1.0)
        angle = (
            between(_ROTATE, -self.rotate, self.rotate) * (math.pi / 180) if self.rotate else 0.0
        )
        shear = between(_SHEAR, -self.shear, self.shear) * (math.pi / 180) if self.shear else 0.0
        scaled = tf.maximum(tf.cast(tf.round(s * tf.stack([h, w])), tf.int32), 1)
        if self.crop_size is not None:
            crop = tf.constant(self.crop_size, tf.int32)
            low = tf.minimum(0, scaled - crop)
            high = tf.maximum(0, scaled - crop)
            # integer offsets: a crop without zoom or rotation copies pixels exactly
            span = tf.cast(high - low + 1, tf.float32)
            u = tf.stack([unit(_CROP_Y), unit(_CROP_X)])
            offset = low + tf.minimum(tf.cast(tf.floor(u * span), tf.int32), high - low)
            output_shape, offset = crop, (offset[0], offset[1])
        else:
            output_shape, offset = scaled, (0, 0)
        if self.scale is None and not self.rotate and not self.shear:
            out = crop_window(
                element, offset, output_shape, self.ignore_label
            )  # a copy, no resampling
        else:
            transform = affine_matrix((h, w), s, angle, shear, offset)
            out = affine_transform(element, transform, output_shape, self.ignore_label, keep_float)
        if self.crop_size is not None:
            ch, cw = self.crop_size
            out[E.IMAGE] = tf.ensure_shape(out[E.IMAGE], [ch, cw, element[E.IMAGE].shape[-1]])
            for key in _spatial_keys(out)[1:]:
                out[key] = tf.ensure_shape(out[key], [ch, cw])
        return out

    def _photometric(self, key, coin, unit, image, dtype):
        top = _MAX_VALUE[dtype]
        x = tf.cast(image, tf.float32)  # a no-op when the affine step kept float32
        identity = lambda: x
        between = lambda salt, low, high: low + (high - low) * unit(salt)

        def maybe(salt, fn):
            return tf.cond(coin(salt), fn, identity)

        if self.brightness > 0 or self.contrast > 0:
            # brightness then contrast, fused into one multiply-add per channel:
            # ((x + d) - (m + d)) * f + (m + d) = x * f + (m * (1 - f) + d)
            delta, factor = tf.constant(0.0), tf.constant(1.0)
            if self.brightness > 0:
                delta = between(_BRIGHTNESS, -self.brightness, self.brightness) * top
                delta = tf.where(coin(_BRIGHTNESS), delta, 0.0)
            if self.contrast > 0:
                factor = between(_CONTRAST, 1 - self.contrast, 1 + self.contrast)
                factor = tf.where(coin(_CONTRAST), factor, 1.0)
                mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
                x = x * factor + (mean * (1.0 - factor) + delta)
            else:
                x = x + delta
        if self.gamma > 0:
            g = between(_GAMMA, 1 - self.gamma, 1 + self.gamma)
            x = maybe(_GAMMA, lambda: adjust_gamma(x, g, top))
        if self.hue > 0:
            delta = between(_HUE, -self.hue, self.hue)
            x = maybe(_HUE, lambda: tf.image.adjust_hue(x / top, delta) * top)
        if self.saturation > 0:
            factor = between(_SATURATION, 1 - self.saturation, 1 + self.saturation)
            x = maybe(_SATURATION, lambda: tf.image.adjust_saturation(x / top, factor) * top)
        if self.blur_sigma > 0:
            sigma = between(_BLUR, 0.0, self.blur_sigma)
            radius = max(1, int(math.ceil(3 * self.blur_sigma)))
            x = maybe(_BLUR, lambda: gaussian_blur(x, sigma, radius))
        if self.noise_std > 0:
            noise = tf.random.stateless_normal(
                tf.shape(x),
                tf.random.experimental.stateless_fold_in(key, _NOISE),
                0.0,
                self.noise_std * top,
            )
            x = maybe(_NOISE, lambda: x + noise)
        return _from_float(x, dtype)
