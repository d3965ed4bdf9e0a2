"""``python -m fcndata.plan``: a complete recipe planned from the data, every value with its reason.

nnU-Net's idea for 2-D, in seconds: :func:`fcndata.fingerprint.fingerprint` reads a recipe's
``data:`` section once (headers first, then a bounded sample of images for intensities and
class frequencies), and the :data:`RULES` below — one small table, each rule with the keys it
sets, its reason and a test in ``tests/test_plan.py`` — turn those facts, a memory budget and
a time budget into the other sections. :func:`write_plan` writes the recipe with a comment on
every planned value naming the fact that chose it::

    python -m fcndata.plan --config my_data.yaml [--memory 4GiB] [--minutes 10] [--out PATH]
    python -m fcndata.train --config my_data.plan.yaml          # or train the data-only recipe directly

``python -m fcndata.train`` on a recipe without ``model:`` and ``train:`` sections trains its
plan (:func:`plan_for_training`).

The yardstick of every size decision is activation memory: :func:`bytes_per_pixel` of the
planned network × the pixels of one batch. On a GPU the budget is memory (half the device's);
on CPU it is time: the default budget (:data:`CPU_BUDGET`) is about the activations of two of
the steps the bundled recipes measured as learning fastest per second on 2 cores (brain: 4
whole slices of ~100×110 at width 16), so a plan on CPU takes steps of about that cost.

Example:
  >>> from fcndata.config import load_config_text
  >>> cfg = load_config_text("data: {source: shapes, num_classes: 4, num_images: 8, val_num_images: 2}")
  >>> p = plan(cfg, minutes=1)
  >>> p.config.model.variant, p.config.model.intensity, p.config.train.seconds, p.config.patches is None
  ('unet', 'zscore', 60.0, True)
  >>> "model.depth" in p.reasons and "min side" in p.reasons["model.depth"]
  True
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from fcndata import config as C
from fcndata.fingerprint import Fingerprint, fingerprint as measure

GiB, MiB = 1 << 30, 1 << 20

#: The CPU budget is a time budget per step: a step costs time in proportion to its pixels on
#: 2 cores, and the bundled recipes learned fastest per second with small steps (brain: batch 4
#: of ~96x112 slices at width 16, ~55 MiB of activations, beat batch 8; shapes: batch 4 beat 8).
#: 128 MiB is about two such steps: batch 4 of brain-sized images, batch 2 of 192x224 ones, and
#: patches for images of ~512 px and more (nnU-Net's floor of 2 images per batch).
CPU_BUDGET = 128 * MiB
#: on a GPU: this share of its memory for activations (weights, optimizer state, cuDNN workspace
#: and the input pipeline's prefetch take the rest)
GPU_SHARE = 0.5
DEFAULT_MINUTES = 10.0
RARE = 0.01  # a class under this share of the labelled pixels is rare
FEW_IMAGES = 80  # augmentation below this many training images...
AUGMENT_SECONDS = 180.0  # ...when the budget is at least this long (a short one is spent better on the data)
SMALL_SIDE = 96  # images no larger than this: the higher learning rate
WIDE_16BIT = 1024  # uint16 images whose labelled pixels span more levels than this get clipped
LEARNING_RATE = 2e-3  # width 16: brain_fullimage.yaml, digits_fullimage.yaml
LEARNING_RATE_SMALL = 3e-3  # small images: shapes.yaml (2e-3 there: 0.611 vs 0.746 after 25 epochs)


def bytes_per_pixel(width: int, depth: int, channels: int = 1, num_classes: int = 2) -> float:
    """Training activation bytes per input pixel of the tiny-backbone unet (float32, kept for backward).

    Per level ``l`` (stride ``2**l``, ``width × (1, 2, 4, 8, 8, 8)[l]`` channels) about ten
    feature maps are kept: two convolutions and their activations in the encoder, the
    up-convolution, concat and two convolutions in the decoder; level ``l`` has ``4**-l``
    of the pixels. Plus input, logits, softmax and loss maps. An estimate (to ~2x), used to
    compare sizes, not to promise an allocation.

    Example:
      >>> round(bytes_per_pixel(16, 4, 1, 4))
      1276
    """
    floats = 2 * channels + 3 * num_classes
    for level in range(depth + 1):
        floats += 10 * width * (1, 2, 4, 8, 8, 8)[level] / 4**level
    return 4.0 * floats


def parse_memory(text: str | None) -> int | None:
    """``"4GiB"``, ``"512MiB"``, ``"2G"``, ``"1e9"`` -> bytes (None stays None).

    Example:
      >>> parse_memory("4GiB"), parse_memory("512M"), parse_memory("1000")
      (4294967296, 536870912, 1000)
    """
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B?)\s*", str(text))
    if not m:
        raise ValueError(f"--memory must be a size such as 4GiB, 512MiB or 2G. Received: --memory {text}")
    value = float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")
    if value <= 0:
        raise ValueError(f"--memory must be positive. Received: --memory {text}")
    return int(value)


def _gpu_memory() -> int | None:
    """Total memory of the first GPU TensorFlow sees (None without one)."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return int(out.stdout.split()[0]) * MiB
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return 8 * GiB  # a GPU we cannot query: assume a small one


@dataclass(frozen=True)
class Budget:
    """What the plan may spend: activation bytes per step, training seconds, and where they came from."""

    memory: int
    memory_source: str  # "--memory", "GPU" or "CPU default"
    seconds: float
    device: str  # cpu | gpu


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %" if x < 0.1 else f"{100 * x:.1f} %"


def _round_to(n: float, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


# ---------------------------------------------------------------------------- the rules
#
# Each rule reads the fingerprint, the budget and the values planned by the rules above it
# (``so_far``: "section.key" -> value) and returns {"section.key": (value, fact)}: the fact is
# the measured number that chose the value; the rule's ``reason`` says why that fact decides.


def _network(fp, budget, so_far):
    fact = f"{fp.num_train} train images, {len(fp.class_names)} classes"
    return {"model.variant": ("unet", fact), "model.backbone": ("tiny", fact), "model.masked": (True, fact)}


def _norm(fp, budget, so_far):
    if budget.device == "gpu":
        return {"model.norm": ("instance", "GPU: a norm layer costs little there; per image over its roi pixels: the "
                                           "same in training and inference, at any batch size or padding")}
    return {"model.norm": ("none", "CPU: a norm layer costs 1.4-1.7x the step, and a short budget is spent better "
                                   "on steps")}


def _intensity(fp, budget, so_far):
    i = fp.intensity
    fact = (f"{fp.dtype}, labelled pixels mean {i.get('mean', 0):.4g}, std {i.get('std', 0):.4g}" if i
            else f"{fp.dtype} pixels")
    return {"model.intensity": ("zscore", fact)}


def _clip(fp, budget, so_far):
    i, f = fp.intensity, fp.foreground or fp.intensity
    span = (i["p99.5"] - i["p0.5"]) if i else 0.0
    if fp.dtype == "uint16" and span > WIDE_16BIT and f:
        low, high = float(round(f["p0.5"])), float(round(f["p99.5"]))
        if high <= low:
            high = low + 1.0
        fact = (f"uint16, labelled pixels span {span:.0f} levels (0.5-99.5 %); foreground 0.5/99.5 % "
                f"percentiles {low:g}/{high:g}")
        out = {"model.clip": ([low, high], fact)}
        if fp.source == "folder":
            out["data.image_dtype"] = ("uint16", "model.clip is in uint16 pixel values")
        return out
    why = f"{fp.dtype}" + (f", labelled pixels span {span:.0f} levels (0.5-99.5 %)" if i else "")
    return {"model.clip": (None, why)}


def _depth(fp, budget, so_far):
    side = fp.min_side
    depth = 1
    for d in range(1, 6):
        if side / 2**d >= 4:
            depth = d
    fact = f"min side {side} px / 2**{depth} = {side / 2**depth:.1f} px at the deepest level"
    return {"model.depth": (depth, fact), "batching.pad_to_multiple": (2**depth, f"network stride 2**{depth}")}


def _width(fp, budget, so_far):
    if budget.device == "gpu":
        return {"model.width": (32, f"GPU, {_gib(budget.memory)} budget")}
    return {"model.width": (16, "CPU")}


def _padded(shape, multiple):
    return _round_to(shape[0], multiple) * _round_to(shape[1], multiple)


def _batch(fp, budget, so_far):
    width, depth, multiple = so_far["model.width"], so_far["model.depth"], so_far["batching.pad_to_multiple"]
    per_px = bytes_per_pixel(width, depth, fp.channels, len(fp.class_names))
    cap = 4 if budget.device == "cpu" else 32
    cap = max(2, min(cap, fp.num_train))
    largest = _padded(fp.max_shape, multiple)
    median = _padded(fp.median_shape, multiple)
    h, w = fp.max_shape
    if 2 * largest * per_px <= budget.memory:
        batch = int(max(2, min(cap, budget.memory // (median * per_px))))
        mh, mw = fp.median_shape
        fact = (f"{batch} x {mh}x{mw} median images (padded {median} px) x unet width {width} ~ "
                f"{_gib(batch * median * per_px)} of activations <= the {_gib(budget.memory)} {budget.memory_source} "
                f"budget; 2 x the largest {h}x{w} ~ {_gib(2 * largest * per_px)}")
        return {"batching.batch_size": (batch, fact), "patches": (None, fact)}
    batch = cap
    side = int(math.sqrt(budget.memory / (batch * per_px)))
    side = max(4 * multiple, side // multiple * multiple)
    side = min(side, _round_to(max(h, w), multiple))
    fact = (f"2 x the largest {h}x{w} image ~ {_gib(2 * largest * per_px)} > the {_gib(budget.memory)} "
            f"{budget.memory_source} budget; {batch} x {side}x{side} patches ~ {_gib(batch * side * side * per_px)}")
    per_image = max(1, min(16, round(_padded(fp.median_shape, 1) / side**2 * 2)))
    rare = [n for n, f in zip(fp.class_names, fp.class_frequency) if 0 < f < RARE]
    mode = "balanced" if rare else "random"
    mode_fact = f"rare classes {', '.join(rare)}" if rare else "no class under 1 % of labelled pixels"
    return {
        "batching.batch_size": (batch, fact),
        "patches.mode": (mode, mode_fact),
        "patches.patch_size": ([side, side], fact),
        "patches.num_per_image": (per_image, f"median image {fp.median_shape[0]}x{fp.median_shape[1]} ~ "
                                              f"{per_image / 2:g} patch areas: each pixel twice per epoch"),
        "patches.images_per_batch": (batch, f"batch {batch}"),
        "predict.patch_size": ([side, side], f"trained on {side}x{side} patches"),
    }


def _bucketing(fp, budget, so_far):
    if fp.num_shapes > 1:
        return {"batching.bucket_by": ("area", f"{fp.num_shapes} distinct image sizes")}
    return {"batching.bucket_by": ("none", "one image size")}


def _cache(fp, budget, so_far):
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * GiB
    fits = fp.train_bytes <= ram / 4
    return {"data.cache": (fits, f"decoded train split ~ {_gib(fp.train_bytes)} {'<=' if fits else '>'} "
                                 f"1/4 of {_gib(ram)} RAM")}


def _loss(fp, budget, so_far):
    f = [x for x in fp.class_frequency if x > 0]
    fact = f"{len(fp.class_names)} classes, the rarest {_pct(min(f)) if f else 'absent'} of labelled pixels"
    terms = [{"name": "cross_entropy", "weight": 1.0}, {"name": "dice", "weight": 1.0}]
    return {"loss.name": ("sum", fact), "loss.terms": (terms, fact)}


def _balance(fp, budget, so_far):
    rare = [(n, f) for n, f in zip(fp.class_names, fp.class_frequency) if f < RARE]
    listed = ", ".join(f"{n} {_pct(f)}" for n, f in rare)
    if not rare:
        low = min(zip(fp.class_frequency, fp.class_names))
        return {"sampling": (None, f"every class >= 1 % of labelled pixels (rarest {low[1]} {_pct(low[0])})")}
    if so_far.get("patches.mode") == "balanced":
        return {"sampling": (None, f"rare: {listed}; balanced patches already raise their share")}
    return {"sampling.class_weights": ("median_frequency", f"rare: {listed} of labelled pixels"),
            "sampling.max_weight": (10.0, f"rare: {listed}")}


def _augment(fp, budget, so_far):
    if fp.num_train >= FEW_IMAGES:
        return {"augment": (None, f"{fp.num_train} train images >= {FEW_IMAGES}")}
    if budget.seconds < AUGMENT_SECONDS:
        return {"augment": (None, f"{fp.num_train} train images < {FEW_IMAGES}, but a budget of "
                                  f"{budget.seconds:g} s < {AUGMENT_SECONDS:g} s")}
    fact = f"{fp.num_train} train images < {FEW_IMAGES}, a budget of {budget.seconds:g} s"
    return {"augment.scale": ([0.9, 1.1], fact), "augment.rotate": (10.0, fact)}


def _optimizer(fp, budget, so_far):
    side = max(fp.max_shape)
    fact = "the bundled recipes' measured setting"
    small = side <= SMALL_SIDE
    lr = LEARNING_RATE_SMALL if small else LEARNING_RATE
    return {"train.optimizer": ("adam", fact),
            "train.learning_rate": (lr, f"largest image side {side} px {'<=' if small else '>'} {SMALL_SIDE}: "
                                        f"{'shapes' if small else 'brain, digits'} measured"),
            "train.schedule": ("cosine", fact), "train.warmup_steps": (0, fact)}


def _time(fp, budget, so_far):
    fact = f"{budget.seconds / 60:g} minutes"
    return {"train.seconds": (budget.seconds, fact), "train.epochs": (None, fact)}


@dataclass(frozen=True)
class Rule:
    """One row of the planning table: what it sets, why, and the function that decides."""

    name: str
    keys: tuple[str, ...]
    reason: str
    decide: Callable = field(repr=False)


#: The planning table, applied top to bottom (a rule may read the values of the rules above it).
RULES = (
    Rule("network", ("model.variant", "model.backbone", "model.masked"),
         "a conv decoder draws thin structures FCN score fusion cannot (brain csf, shapes); masked: padding never "
         "enters a statistic", _network),
    Rule("norm", ("model.norm",),
         "on a CPU none: every norm layer costs 1.4-1.7x the step (benchmarks/norm_step.py), and at minutes of "
         "training steps count more (digits, equal 60 s, 3 seeds, each against the U-Net in the same run: "
         "none 0.251 vs 0.174, roi instance 0.192 vs 0.206, roi batch 0.161 vs 0.158, experiments/panel-norm; shapes, equal 30 s: none 0.876-0.887, instance 0.798; z-scored inputs keep the first layers "
         "in range); on a GPU instance normalisation over the roi (nnU-Net's choice): per-image statistics, so "
         "padding, size buckets and batch size never change them and inference mode equals training mode",
         _norm),
    Rule("intensity", ("model.intensity",),
         "per-image z-score over the roi: any bit depth, offset, gain or exposure reaches the network at mean 0, "
         "std 1 (digits, equal 60 s: z-score 0.248, scale 0.210; brain, equal 73 s: scale 0.880, z-score 0.860 - "
         "a user's folder is less uniform than one template brain)", _intensity),
    Rule("clip", ("model.clip", "data.image_dtype"),
         "wide 16-bit ranges (CT) are clipped to the foreground's 0.5-99.5 % percentiles before the z-score, so "
         "air and metal do not set the scale (nnU-Net)", _clip),
    Rule("depth", ("model.depth", "batching.pad_to_multiple"),
         "the deepest feature map of the smallest image stays >= 4 px; padding to the stride", _depth),
    Rule("width", ("model.width",),
         "16 on CPU (about the hand-written U-Net's compute per pixel; shapes, equal 30 s: 0.779 vs 0.764 at "
         "width 8); 32 on a GPU", _width),
    Rule("batch", ("batching.batch_size", "patches.*", "predict.patch_size"),
         "whole images when 2 padded largest images fit the budget, else the largest patches 4 of which fit; "
         "batch <= 4 on CPU (brain and shapes: batch 4 beat 8 at equal time)", _batch),
    Rule("bucketing", ("batching.bucket_by",),
         "batches of like sizes pad less (brain: 35 -> 22 % padded pixels)", _bucketing),
    Rule("cache", ("data.cache",), "decode once when the split fits in a quarter of the RAM", _cache),
    Rule("loss", ("loss.name", "loss.terms"),
         "cross-entropy + Dice: Dice weighs every class equally (brain csf, digits at 0.2-0.8 %)", _loss),
    Rule("balance", ("sampling.class_weights", "sampling.max_weight"),
         "a class under 1 % of labelled pixels gets median-frequency weights clipped at 10 (balanced patches "
         "instead when training on patches); none otherwise: weighting lowered csf at 71 % background", _balance),
    Rule("augment", ("augment.scale", "augment.rotate"),
         "few images and a budget of >= 3 minutes: small scale and rotation (shapes, 64 images, 90 epochs: 0.886 "
         "with, 0.860 without, at 1.24x the seconds; at 30 s augmentation cost 0.044 and 0.014; brain's 92 slices of one template trained best without); no flips (a mirrored digit or a "
         "left/right label changes what is learnable), no photometric ones (a z-score undoes them; each transform "
         "costs CPU beside the step on 2 cores)", _augment),
    Rule("optimizer", ("train.optimizer", "train.learning_rate", "train.schedule", "train.warmup_steps"),
         "Adam, cosine from 2e-3 (brain, digits: 0.882 and 0.385 vs the U-Net's 0.843 and 0.239), 3e-3 for "
         "images <= 96 px (shapes)", _optimizer),
    Rule("time", ("train.seconds", "train.epochs"),
         "--minutes decides; the schedule runs over the seconds", _time),
)


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """A planned recipe: ``config``, ``reasons`` ("section.key" -> comment) and the fingerprint."""

    config: C.Config
    reasons: dict
    fingerprint: Fingerprint
    #: the planned sections as written (section -> key -> value; None: the section is absent)
    sections: dict = field(default_factory=dict, compare=False, repr=False)


def default_budget(memory: int | None = None, minutes: float | None = None) -> Budget:
    """``--memory`` / ``--minutes`` or the defaults: half the GPU's memory, else :data:`CPU_BUDGET`."""
    seconds = float(DEFAULT_MINUTES if minutes is None else minutes) * 60
    if seconds <= 0:
        raise ValueError(f"--minutes must be positive. Received: --minutes {minutes}")
    gpu = _gpu_memory()
    device = "gpu" if gpu else "cpu"
    if memory is not None:
        return Budget(int(memory), "--memory", seconds, device)
    if gpu:
        return Budget(int(gpu * GPU_SHARE), "GPU", seconds, device)
    return Budget(CPU_BUDGET, "CPU default", seconds, device)


def _check_data(config: C.Config) -> None:
    where = config.source or "recipe"
    if config.given is not None and "data" not in config.given:
        raise ValueError(f"{where}: the recipe has no data: section to plan from; start from pipelines/folder.yaml "
                         "(data: source: folder, images: ..., masks: ...). Received: sections "
                         f"{sorted(config.given) or 'none'}")
    if config.data.source in ("arrays",):
        raise ValueError(f"{where}: data.source=arrays has no files to fingerprint; plan a folder, TFRecord, TFDS or "
                         "built-in source. Received: data.source='arrays'")


def plan(config: C.Config, *, memory: int | None = None, minutes: float | None = None,
         fingerprint: Fingerprint | None = None, budget: Budget | None = None, overrides=()) -> Plan:
    """Plans a complete recipe for ``config.data`` by :data:`RULES`.

    Args:
      config: a recipe; only its ``data:`` section is read.
      memory: activation budget in bytes (default: half the GPU's memory, else :data:`CPU_BUDGET`).
      minutes: training time (default :data:`DEFAULT_MINUTES`).
      fingerprint: facts measured before (default: :func:`fcndata.fingerprint.fingerprint` now).
      budget: a :class:`Budget` (overrides ``memory`` and ``minutes``; tests use it).
      overrides: ``--set section.key=value`` strings: they win over the rules (``data.*`` ones
        are expected in ``config`` already, as ``load_config`` applies them).

    Returns:
      A :class:`Plan` whose ``config`` keeps ``config.data`` (plus planned data keys).

    Raises:
      ValueError: no ``data:`` section, a source without files, or the source's own errors.
    """
    _check_data(config)
    fp = fingerprint if fingerprint is not None else measure(config.data)
    budget = budget or default_budget(memory, minutes)
    values, reasons = {}, {}
    for rule in RULES:
        for key, (value, fact) in rule.decide(fp, budget, dict(values)).items():
            values[key] = value
            reasons[key] = fact
    given = C.apply_overrides({}, overrides)  # checks section and key names, parses the values
    for section, keys in given.items():
        if section == "data":
            continue
        values.pop(section, None)  # a section the rules left out exists once the command line sets a key of it
        for name, value in keys.items():
            values[f"{section}.{name}"] = value
            reasons[f"{section}.{name}"] = f"--set {section}.{name} on the command line"
    sections: dict = {}
    for key, value in values.items():
        if "." not in key:  # a whole section decided absent
            sections.setdefault(key, None)
            continue
        section, name = key.split(".", 1)
        if sections.get(section, {}) is None:
            continue
        sections.setdefault(section, {})[name] = value
    if sections.get("patches") and "predict" in sections:
        sections["predict"]["blend"] = "gaussian"
        reasons["predict.blend"] = "patches overlap by half; the centre of a patch sees the most context"
    raw = {**{k: v for k, v in sections.items() if v is not None}, "data": _data_raw(config.data, values)}
    cfg = C.config_from_dict(raw, name=config.source or "<plan>", given=None)
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, root=config.data.root))
    return Plan(cfg, reasons, fp, sections)


def _data_raw(data: C.DataConfig, values: dict) -> dict:
    """The data section: the recipe's values (every non-default key) plus the planned data keys."""
    defaults = C.DataConfig()
    raw = {}
    for f in dataclasses.fields(data):
        value = getattr(data, f.name)
        if f.name == "root" or (value == getattr(defaults, f.name) and f.name not in ("source", "num_classes", "channels")):
            continue
        raw[f.name] = list(value) if isinstance(value, tuple) else value
    for key, value in values.items():
        if key.startswith("data."):
            raw[key[5:]] = value
    if data.root is not None:
        raw["root"] = data.root
    return raw


# ---------------------------------------------------------------------------- writing


def _flow(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def write_plan(p: Plan, path: str | Path, recipe: str | None = None) -> Path:
    """Writes the plan as a recipe: every planned value with a trailing comment naming its fact.

    ``data.root`` is written only when ``path`` is not in the data's folder (relative paths
    then still resolve), so the written file loads back to ``p.config`` with ``load_config``.
    """
    path = Path(path)
    fp = p.fingerprint
    lines = [
        f"# Planned by python -m fcndata.plan{f' from {recipe}' if recipe else ''}: {fp.num_train} train / "
        f"{fp.num_val} validation images,",
        f"# {fp.sampled_images} decoded for intensities and class frequencies, in {fp.seconds:.1f} s. "
        "Each comment names the fact",
        "# that chose the value; the rules and their reasons are fcndata.plan.RULES. Edit freely.",
        f"# class frequencies: " + ", ".join(f"{n} {_pct(f)}" for n, f in zip(fp.class_names, fp.class_frequency)),
    ]
    data = {**_data_raw(p.config.data, {}), **(p.sections.get("data") or {})}
    if data.get("root") is not None and Path(data["root"]).resolve() == path.parent.resolve():
        del data["root"]
    sections = {"data": data, **{k: v for k, v in p.sections.items() if v is not None and k != "data"}}
    for section, keys in sections.items():
        lines.append(f"{section}:")
        for key, value in keys.items():
            reason = p.reasons.get(f"{section}.{key}")
            text = f"  {key}: {_flow(value)}"
            lines.append(f"{text:<40}  # {reason}" if reason else text)
    for section in [k for k, v in p.sections.items() if v is None]:
        reason = p.reasons.get(section, "")
        lines.append(f"# no {section}: section: {reason}")
    path.write_text("\n".join(lines) + "\n")
    return path


def format_decisions(p: Plan) -> str:
    """The short table the command prints: key, value, fact."""
    rows = []
    for key, reason in p.reasons.items():
        section, _, name = key.partition(".")
        if not name:
            rows.append((section, "absent", reason))
            continue
        block = p.sections.get(section)
        if block is None or name not in block:
            continue
        rows.append((key, _flow(block[name]), reason))
    width = max(len(r[0]) for r in rows)
    vwidth = min(24, max(len(r[1]) for r in rows))
    return "\n".join(f"  {k:<{width}}  {v:<{vwidth}}  {r}" for k, v, r in rows)


# ---------------------------------------------------------------------------- train integration


def plan_for_training(config: C.Config, overrides=(), minutes: float | None = None, out=None) -> C.Config:
    """The config ``fcndata.train`` trains: the recipe itself, or its plan when it has neither
    ``model:`` nor ``train:`` (the ``--set`` overrides re-applied on top of the plan).

    A config built in Python (``given`` None) or a recipe with either section is returned as is.
    """
    if config.given is None or {"model", "train"} & set(config.given):
        return config
    p = plan(config, minutes=minutes, overrides=overrides)
    raw = C.to_dict(p.config)
    if config.service is not None:  # where the input runs is not the plan's to decide
        raw["service"] = C.to_dict(config)["service"]
    planned = C.config_from_dict(raw, name=config.source or "<plan>", given=config.given)
    print(f"fcndata: {config.source} has no model:/train: sections: training the plan "
          f"(python -m fcndata.plan --config {config.source} writes it with its reasons)", file=out or sys.stdout,
          flush=True)
    return planned


# ---------------------------------------------------------------------------- command


def default_out(recipe: str | Path) -> Path:
    """``X.yaml`` -> ``X.plan.yaml`` beside it."""
    recipe = Path(recipe)
    return recipe.with_name(recipe.stem + ".plan.yaml")


def main(argv=None) -> int:
    from fcndata import cli

    parser = cli.command_parser("python -m fcndata.plan", __doc__.split("\n")[0])
    parser.add_argument("--memory", help="activation budget, e.g. 4GiB (default: half the GPU's memory; on CPU "
                                         f"{CPU_BUDGET // MiB} MiB, a time budget per step)")
    parser.add_argument("--minutes", type=float, help=f"training time (default {DEFAULT_MINUTES:g})")
    parser.add_argument("--out", help="where to write the plan (default: X.plan.yaml beside the recipe X.yaml)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.config is None:
            raise ValueError("python -m fcndata.plan needs --config: a recipe with a data: section, e.g. a copy of "
                             "pipelines/folder.yaml with your paths. Received: no --config")
        config = C.load_config(args.config, args.overrides)
        print(f"fcndata: fingerprinting {config.data.source} data of {args.config}...", file=sys.stderr, flush=True)
        p = plan(config, memory=parse_memory(args.memory), minutes=args.minutes, overrides=args.overrides)
        out = Path(args.out) if args.out else default_out(args.config)
        write_plan(p, out, recipe=args.config)
        fp = p.fingerprint
        print(f"fcndata: {fp.num_train} train / {fp.num_val} validation images, sizes "
              f"{fp.height[0]:g}-{fp.height[2]:g} x {fp.width[0]:g}-{fp.width[2]:g}, {fp.channels} channel(s) "
              f"{fp.dtype}; fingerprint in {fp.seconds:.1f} s")
        print(format_decisions(p))
        print(f"fcndata: plan written to {out}; train it with: python -m fcndata.train --config {out}")
        return 0

    return cli.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
