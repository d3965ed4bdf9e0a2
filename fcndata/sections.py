"""The sections of a recipe that are not stages themselves: typed, frozen, validated once.

``data:``, ``patches:``, ``sampling:``, ``batching:``, ``model:``, ``loss:``, ``train:``,
``service:`` and ``predict:`` are the dataclasses below (``augment:`` is the
:class:`fcndata.augment.Augment` stage itself); :mod:`fcndata.config` loads a YAML recipe
into them and rejects unknown keys. Each checks its own values in ``__post_init__`` and
raises :class:`ConfigError` naming the key (``section.key``).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Optional, Union

from fcndata.common import in_range


class ConfigError(ValueError):
    """A recipe or override that cannot be turned into a valid configuration."""


#: the built-in datasets (fcndata.datasets), offline after install
BUILTIN_SOURCES = ("shapes", "brain", "digits", "scenes", "phantom")


def _pair(value, name: str) -> tuple[int, int]:
    """Normalises an int or [h, w] to a (height, width) tuple of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{name} must be a positive int or [height, width] of positive ints. Received: {name}={value!r}")
    return value


def _choice(value, name: str, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}. Received: {name}={value!r}")


#: the range check of every recipe key, raising ConfigError (fcndata.common.in_range)
_range = functools.partial(in_range, error=ConfigError)


# ---------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """``data:`` — where images and labels come from.

    ``source`` is one of ``shapes``, ``brain``, ``digits`` (built-in), ``folder``,
    ``tfrecord``, ``tfds`` or ``arrays`` (Python API only). Source-specific fields are
    ignored by the other sources.
    """

    source: str = "shapes"
    num_classes: int = 3
    channels: int = 3
    class_names: Optional[tuple[str, ...]] = None
    ignore_label: int = 255
    on_error: str = "raise"  # raise | skip
    seed: int = 0
    cache: bool = True  # cache decoded sources in memory (built-in datasets are small)
    # folder: files whose header declares more pixels (height x width) are refused, never decoded;
    # null = no limit. Default 20000 x 20000 (1.2 GB as 8-bit RGB).
    max_pixels: Optional[int] = 400_000_000
    # folder: auto = the bit depth most images have (others are errors naming them); uint8 / uint16 =
    # every 8/16-bit file is read and scaled to it.
    image_dtype: str = "auto"
    # folder: image glob and a mask pattern paired by stem, for train and validation.
    images: Optional[str] = None
    masks: Optional[str] = None
    val_images: Optional[str] = None
    val_masks: Optional[str] = None
    palette: Optional[tuple[tuple[int, int, int], ...]] = None  # RGB colour per class id (VOC style)
    ignore_color: Optional[tuple[int, int, int]] = None  # palette masks: this colour becomes ignore_label
    # tfrecord: file globs written by write_tfrecords.
    tfrecords: Optional[str] = None
    val_tfrecords: Optional[str] = None
    # tfds: an already prepared dataset (never downloaded).
    tfds_name: Optional[str] = None
    tfds_data_dir: Optional[str] = None
    tfds_train_split: str = "train"
    tfds_val_split: str = "validation"
    tfds_image_key: str = "image"
    tfds_label_key: str = "segmentation_mask"
    # built-in synthetic / composed datasets (shapes, digits).
    num_images: int = 64
    val_num_images: int = 16
    min_size: int = 48
    max_size: int = 96
    class_imbalance: float = 1.0  # shapes: ratio of the most to the least frequent foreground class
    # brain: slicing of the MNI152 volumes.
    axes: tuple[int, ...] = (0, 1, 2)
    slice_step: int = 2
    val_fraction: float = 0.2
    # a relative path in this section is resolved against the recipe's folder
    root: Optional[str] = None

    def __post_init__(self):
        _choice(self.source, "data.source", BUILTIN_SOURCES + ("folder", "tfrecord", "tfds", "arrays"))
        _choice(self.on_error, "data.on_error", ("raise", "skip"))
        _choice(self.image_dtype, "data.image_dtype", ("auto", "uint8", "uint16"))
        if self.max_pixels is not None:
            _range(self.max_pixels, "data.max_pixels", 1)
        if self.num_classes < 1:
            raise ConfigError(f"data.num_classes must be >= 1. Received: data.num_classes={self.num_classes}")
        if self.channels not in (1, 3, 4):
            raise ConfigError(f"data.channels must be 1, 3 or 4. Received: data.channels={self.channels}")
        if 0 <= self.ignore_label < self.num_classes:
            raise ConfigError(
                "data.ignore_label must not be a real class id (0..num_classes-1); the usual value is 255. "
                f"Received: data.ignore_label={self.ignore_label}, data.num_classes={self.num_classes}"
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"data.class_names must have num_classes={self.num_classes} entries. "
                f"Received: {len(self.class_names)} names"
            )
        if self.palette is not None and len(self.palette) != self.num_classes:
            raise ConfigError(
                f"data.palette must have one RGB colour per class, num_classes={self.num_classes}. "
                f"Received: {len(self.palette)} colours"
            )
        for name in ("num_images", "val_num_images", "min_size", "slice_step"):
            _range(getattr(self, name), f"data.{name}", 1)
        if self.max_size < self.min_size:
            raise ConfigError(
                "data.max_size must be >= data.min_size. "
                f"Received: data.min_size={self.min_size}, data.max_size={self.max_size}"
            )
        if self.class_imbalance < 1:
            raise ConfigError(
                "data.class_imbalance (the ratio of the most to the least frequent shape class) must be >= 1. "
                f"Received: data.class_imbalance={self.class_imbalance}"
            )
        _range(self.val_fraction, "data.val_fraction", 0, 1, low_open=True, high_open=True)
        required = {"folder": ("images", "masks"), "tfrecord": ("tfrecords",), "tfds": ("tfds_name",)}
        for name in required.get(self.source, ()):
            if getattr(self, name) is None:
                raise ConfigError(
                    f"data.{name} is needed with data.source={self.source}; see pipelines/folder.yaml. "
                    f"Received: data.{name}=None"
                )
        if (self.val_images is None) != (self.val_masks is None) and self.source == "folder":
            raise ConfigError(
                "data.val_images and data.val_masks go together: give both, or remove both to train without "
                f"validation. Received: data.val_images={self.val_images!r}, data.val_masks={self.val_masks!r}"
            )

    @property
    def has_validation(self) -> bool:
        """Whether the recipe names validation data: :func:`fcndata.sources.has_split`, the one answer."""
        from fcndata.sources import has_split  # imports TensorFlow, which this module does not

        return has_split(self, "validation")

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, defaulting to ``class0``, ``class1``, …"""
        return self.class_names or tuple(f"class{k}" for k in range(self.num_classes))


@dataclass(frozen=True)
class PatchesConfig:
    """``patches:`` — patchwise training (absent: whole images are fed).

    ``mode`` is ``grid`` (every overlapping patch, ``stride`` apart), ``random`` or
    ``balanced`` (class-balanced centres). ``images_per_batch`` patch streams are
    interleaved and shuffled so a batch mixes several images.
    """

    mode: str = "grid"
    patch_size: tuple[int, int] = (64, 64)
    stride: Optional[tuple[int, int]] = None  # default: half the patch size
    border: str = "shift"  # shift | pad | drop
    num_per_image: int = 16  # random / balanced
    class_probabilities: Union[str, tuple[float, ...]] = "uniform"  # uniform | inverse_frequency | [p0, p1, ...]
    foreground_fraction: float = 0.0
    images_per_batch: int = 4
    shuffle_buffer: int = 256

    def __post_init__(self):
        _choice(self.mode, "patches.mode", ("grid", "random", "balanced"))
        _choice(self.border, "patches.border", ("shift", "pad", "drop"))
        object.__setattr__(self, "patch_size", _pair(self.patch_size, "patches.patch_size"))
        stride = self.stride if self.stride is not None else tuple(max(1, n // 2) for n in self.patch_size)
        object.__setattr__(self, "stride", _pair(stride, "patches.stride"))
        if isinstance(self.class_probabilities, str):
            _choice(self.class_probabilities, "patches.class_probabilities", ("uniform", "inverse_frequency"))
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ConfigError(
                f"patches.foreground_fraction must be in [0, 1]. Received: {self.foreground_fraction}"
            )
        if self.num_per_image < 1 or self.images_per_batch < 1:
            raise ConfigError(
                "patches.num_per_image and patches.images_per_batch must be >= 1. Received: "
                f"num_per_image={self.num_per_image}, images_per_batch={self.images_per_batch}"
            )


@dataclass(frozen=True)
class SamplingConfig:
    """``sampling:`` — class weights and FCN loss sampling, multiplied into ``weight``."""

    class_weights: Union[None, str, tuple[float, ...]] = None  # inverse_frequency | median_frequency | effective_number | [w0, ...]
    beta: float = 0.999  # effective_number
    max_weight: Optional[float] = 50.0  # clip so an almost absent class does not explode the loss
    loss_keep_probability: Optional[float] = None  # FCN §4.4 loss sampling
    loss_rescale: bool = False  # divide kept weights by p (the paper does not)
    cache: bool = True  # cache class counts next to the recipe
    seed: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.class_weights, str):
            _choice(
                self.class_weights,
                "sampling.class_weights",
                ("inverse_frequency", "median_frequency", "effective_number"),
            )
        p = self.loss_keep_probability
        if p is not None and not 0.0 < p <= 1.0:
            raise ConfigError(f"sampling.loss_keep_probability must be in (0, 1]. Received: {p}")
        _range(self.beta, "sampling.beta", 0, 1, low_open=True, high_open=True)
        _range(self.max_weight, "sampling.max_weight", 0, low_open=True)
        if isinstance(self.class_weights, tuple) and any(w < 0 for w in self.class_weights):
            raise ConfigError(f"sampling.class_weights must be >= 0. Received: {list(self.class_weights)}")


@dataclass(frozen=True)
class BatchingConfig:
    """``batching:`` — dynamic padding with roi, pad-to-stride and size bucketing."""

    batch_size: int = 4
    pad_to_multiple: int = 32
    drop_remainder: bool = False
    bucket_by: str = "none"  # none | area | aspect | shape
    bucket_boundaries: Optional[tuple[float, ...]] = None  # default: derived from a pass over the data
    num_buckets: int = 4
    shuffle_buffer: int = 64  # images (fully convolutional) before batching; 0 disables

    def __post_init__(self):
        _choice(self.bucket_by, "batching.bucket_by", ("none", "area", "aspect", "shape"))
        if self.batch_size < 1 or self.pad_to_multiple < 1:
            raise ConfigError(
                "batching.batch_size and batching.pad_to_multiple must be >= 1. Received: "
                f"batch_size={self.batch_size}, pad_to_multiple={self.pad_to_multiple}"
            )
        _range(self.num_buckets, "batching.num_buckets", 1)
        _range(self.shuffle_buffer, "batching.shuffle_buffer", 0, why="0 disables shuffling")


@dataclass(frozen=True)
class ModelConfig:
    """``model:`` — the bundled FCN."""

    variant: str = "fcn8s"  # fcn8s | fcn16s | fcn32s (the paper's) | fcn4s | fcn2s (tiny backbone); unet (conv decoder)
    backbone: str = "tiny"  # tiny | vgg16 | resnet50 | mobilenetv2
    # batch | group | instance: over roi pixels only when masked (the layers take the roi), the plain
    # Keras layers otherwise; frozen_batch (moving statistics only) | none
    norm: str = "batch"
    masked: bool = False
    # input pixels: scale (uint8 / 255, uint16 / 65535) | zscore (per image and channel, over the roi)
    intensity: str = "scale"
    clip: Optional[tuple[float, float]] = None  # clip raw pixel values to [low, high] first (CT windows)
    weights: Optional[str] = None  # local weights file; never downloaded
    width: int = 32  # tiny backbone: channels of the first stage
    # tiny backbone: pooling stages (1-5); the network's stride is 2**depth, so batching.pad_to_multiple
    # must be a multiple of it
    depth: int = 5
    dropout: float = 0.0

    def __post_init__(self):
        _choice(self.variant, "model.variant", ("fcn8s", "fcn16s", "fcn32s", "fcn4s", "fcn2s", "unet"))
        _choice(self.backbone, "model.backbone", ("tiny", "vgg16", "resnet50", "mobilenetv2"))
        _choice(self.norm, "model.norm", ("batch", "frozen_batch", "group", "instance", "none"))
        _choice(self.intensity, "model.intensity", ("scale", "zscore"))
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ConfigError(f"model.clip must be [low, high] with low < high, in raw pixel values. Received: model.clip={list(self.clip)}")
        _range(self.width, "model.width", 1)
        _range(self.depth, "model.depth", 1, 5, "the tiny backbone has five pooling stages")
        if self.depth != 5 and self.backbone != "tiny":
            raise ConfigError(f"model.depth is for the tiny backbone; {self.backbone} pools 5 times. "
                              f"Received: model.depth={self.depth}, model.backbone={self.backbone!r}")
        _range(self.dropout, "model.dropout", 0, 1, high_open=True)


LOSS_NAMES = ("cross_entropy", "focal", "sigmoid_focal", "dice")
#: keys of one entry of ``loss.terms`` (fcndata.losses reads the same ones)
TERM_KEYS = ("name", "weight", "gamma", "alpha", "label_smoothing", "smooth", "per_image")


@dataclass(frozen=True)
class LossConfig:
    """``loss:`` — masked losses; ``terms`` combines several as a weighted sum."""

    name: str = "cross_entropy"  # cross_entropy | focal | sigmoid_focal | dice | sum
    gamma: float = 2.0
    alpha: Union[None, float, tuple[float, ...]] = None
    label_smoothing: float = 0.0
    smooth: float = 1.0  # dice: added to numerator and denominator
    dice_per_image: bool = False  # dice: average per-image Dice instead of one batch Dice
    terms: Optional[tuple[dict, ...]] = None  # name: sum -> [{name: cross_entropy, weight: 1.0}, {name: dice, weight: 0.5}]

    def __post_init__(self):
        _choice(self.name, "loss.name", LOSS_NAMES + ("sum",))
        _range(self.gamma, "loss.gamma", 0)
        _range(self.label_smoothing, "loss.label_smoothing", 0, 1, high_open=True)
        _range(self.smooth, "loss.smooth", 0)
        if self.name == "sum" and not self.terms:
            raise ConfigError(
                "loss.terms: name 'sum' needs a list of terms, e.g. terms: [{name: cross_entropy, weight: 1.0}, "
                "{name: dice, weight: 0.5}]. Received: terms=None"
            )
        if self.terms is not None and self.name != "sum":
            raise ConfigError(
                f"loss.terms is only read with loss.name: sum; set name: sum or remove terms. Received: loss.name={self.name!r}"
            )
        for i, term in enumerate(self.terms or ()):
            where = f"loss.terms[{i}]"
            if "name" not in term:
                raise ConfigError(f"{where}: each term is a mapping with a 'name' key. Received: {term!r}")
            for key in term:
                if key not in TERM_KEYS:
                    close = difflib.get_close_matches(str(key), TERM_KEYS, n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else "."
                    raise ConfigError(
                        f"{where}: unknown key '{key}'{hint} Valid keys: {', '.join(TERM_KEYS)}. Received: {term!r}"
                    )
            _choice(term["name"], f"{where}.name", LOSS_NAMES)
            for key, (tp, low, high) in {"weight": (float, 0, None), "gamma": (float, 0, None),
                                         "label_smoothing": (float, 0, 1), "smooth": (float, 0, None)}.items():
                if key in term:
                    value = term[key]
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ConfigError(f"{where}.{key} must be a number. Received: {key}={value!r}")
                    _range(value, f"{where}.{key}", low, high, high_open=key == "label_smoothing")
            if "per_image" in term and not isinstance(term["per_image"], bool):
                raise ConfigError(f"{where}.per_image must be true or false. Received: per_image={term['per_image']!r}")


@dataclass(frozen=True)
class TrainConfig:
    """``train:`` — the bundled trainer."""

    epochs: Optional[int] = 10  # null: train.seconds decides alone
    # end training after this many seconds of training (the schedule runs over them); null: epochs decide
    seconds: Optional[float] = None
    steps_per_epoch: Optional[int] = None  # None: one pass over the training data
    validation_steps: Optional[int] = None
    optimizer: str = "adam"  # adam | sgd | adamw
    learning_rate: float = 1e-3
    momentum: float = 0.9  # sgd; the paper's "heavy" setting is batch 1 with 0.99
    weight_decay: Optional[float] = None  # null: the optimizer's default (0; adamw: 0.004, Keras' default)
    schedule: str = "constant"  # constant | cosine | poly
    warmup_steps: int = 0  # linear warm-up from 0 to learning_rate, then the schedule, with any schedule
    mixed_precision: str = "auto"  # auto (mixed_float16 on GPU) | off | mixed_float16 | mixed_bfloat16
    jit_compile: bool = False
    run_dir: str = "runs"
    name: Optional[str] = None  # default: recipe name + timestamp
    seed: int = 0
    deterministic: bool = True  # tf.config.experimental.enable_op_determinism: exact resume, some GPU ops slower
    verbose: int = 1  # 0 silent | 1 progress bar (one line per epoch when output is not a terminal) | 2 one line per epoch
    strategy: str = "auto"  # auto | one_device | mirrored | multi_worker (TF_CONFIG)

    def __post_init__(self):
        _choice(self.optimizer, "train.optimizer", ("adam", "sgd", "adamw"))
        _choice(self.schedule, "train.schedule", ("constant", "cosine", "poly"))
        _choice(self.mixed_precision, "train.mixed_precision", ("auto", "off", "mixed_float16", "mixed_bfloat16"))
        _range(self.epochs, "train.epochs", 1)
        if self.epochs is None and self.seconds is None:
            raise ConfigError("train.epochs: null trains until train.seconds have passed; set train.seconds "
                              "(or --minutes), or give train.epochs. Received: train.epochs=None, train.seconds=None")
        _range(self.seconds, "train.seconds", 0, low_open=True, why="null trains for train.epochs")
        _range(self.steps_per_epoch, "train.steps_per_epoch", 1, why="null means one pass over the training data")
        _range(self.validation_steps, "train.validation_steps", 1, why="null means the whole validation split")
        _range(self.learning_rate, "train.learning_rate", 0, low_open=True)
        _range(self.momentum, "train.momentum", 0, 1, high_open=True)
        _range(self.weight_decay, "train.weight_decay", 0, why="0 turns weight decay off")
        _range(self.warmup_steps, "train.warmup_steps", 0)
        _choice(self.verbose, "train.verbose", (0, 1, 2))
        _choice(self.strategy, "train.strategy", ("auto", "one_device", "mirrored", "multi_worker"))
        if self.steps_per_epoch is not None and self.epochs is not None and self.warmup_steps >= self.epochs * self.steps_per_epoch:
            raise ConfigError(
                "train.warmup_steps must be fewer than the training steps (train.epochs x train.steps_per_epoch = "
                f"{self.epochs * self.steps_per_epoch}), or the learning rate never reaches train.learning_rate. "
                f"Received: train.warmup_steps={self.warmup_steps}"
            )
        if self.name is not None and (not self.name or "/" in self.name or "\\" in self.name):
            raise ConfigError(f"train.name is a folder name inside train.run_dir, without '/'. Received: train.name={self.name!r}")


@dataclass(frozen=True)
class ServiceConfig:
    """``service:`` — run the training pipeline on a tf.data service (absent: in this process).

    Decode, validation, augmentation, patches, sampling and batching run on the service's
    workers; this process keeps only ``to_keras`` and prefetch. ``sharding: dynamic`` hands
    each image of each epoch to one worker (every patch once per epoch); ``off`` runs the
    whole stream on every worker (each batch once per worker: for one worker, or for
    TFRecord / TFDS sources, which cannot be read by position). ``job_name``: trainers that
    name the same job share one stream. ``compression``: ``auto`` or ``none``.
    """

    address: str = ""  # HOST:PORT of the dispatcher (python -m fcndata.distributed dispatcher)
    sharding: str = "dynamic"  # dynamic | off
    job_name: Optional[str] = None
    compression: str = "auto"  # auto | none

    def __post_init__(self):
        if not self.address.strip() or self.address.strip().startswith(":"):
            raise ConfigError(
                "service.address must be HOST:PORT of a tf.data service dispatcher (started with "
                f"python -m fcndata.distributed dispatcher --port 5050). Received: service.address={self.address!r}"
            )
        _choice(self.sharding, "service.sharding", ("dynamic", "off"))
        _choice(self.compression, "service.compression", ("auto", "none"))
        if self.job_name is not None and not self.job_name.strip():
            raise ConfigError(f"service.job_name must be a non-empty name or null. Received: service.job_name={self.job_name!r}")


@dataclass(frozen=True)
class PredictConfig:
    """``predict:`` — sliding-window (``patch_size`` given) or whole-image prediction."""

    patch_size: Optional[tuple[int, int]] = None
    stride: Optional[tuple[int, int]] = None
    blend: str = "gaussian"  # average | gaussian | hann | crop
    batch_size: int = 8
    flip_tta: bool = False
    # XLA-compiled cut and blend when the stride divides the patch (numpy otherwise): ~1.3x
    # faster per 512² image once compiled, but each image size compiles (~0.3 s) and 8192²
    # images run 2.3x slower (fcndata.infer.SlidingWindowPredictor).
    jit_compile: bool = False

    def __post_init__(self):
        _choice(self.blend, "predict.blend", ("average", "gaussian", "hann", "crop"))
        _range(self.batch_size, "predict.batch_size", 1)
        if self.patch_size is not None:
            object.__setattr__(self, "patch_size", _pair(self.patch_size, "predict.patch_size"))
            stride = self.stride if self.stride is not None else tuple(max(1, n // 2) for n in self.patch_size)
            object.__setattr__(self, "stride", _pair(stride, "predict.stride"))
