"""The albumentations bridge: any albumentations 2.0 pipeline as a fcndata stage.

:class:`Albumentations` runs an albumentations pipeline on image, label and roi through
``tf.numpy_function`` (everything albumentations offers, at the price of the GIL; a
tf.data service worker cannot run it). It keeps :mod:`fcndata.augment`'s contract: one
draw per element applied to image, label, roi (and weight) alike, pixels from outside the
image get ``label = ignore_label`` and ``roi = 0``, and randomness is keyed by
``(seed, epoch, source_index)``.

This is the only module of fcndata that imports albumentations, and only when a bridge is
built: importing this module does not import it.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.common import non_negative_ints

# Salt separating the bridge's draws from every other stage's (element_seed folds it in).
_SALT_BRIDGE = 0xA1B


def _load_albumentations(transform, where: str = "Albumentations"):
    """Builds an ``A.Compose`` from a dict (``A.to_dict`` format), a JSON/YAML path or an object."""
    import albumentations as A  # the only albumentations import in fcndata

    if isinstance(transform, (str, Path)):
        path = Path(transform)
        if not path.is_file():
            raise ValueError(
                f"{where}: albumentations file not found; pass a JSON or YAML file written by A.save or "
                f"holding an A.to_dict serialisation (relative paths resolve against the recipe's folder). "
                f"Received: transform={str(transform)!r}"
            )
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(
                f"{where}: albumentations file must end in .json, .yaml or .yml. Received: transform={str(path)!r}"
            )
        import yaml

        text = path.read_text()
        try:
            raw = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            raise ValueError(
                f"{where}: cannot parse {path} ({e}). Fix the file's syntax. Received: transform={str(path)!r}"
            ) from None
        return _load_albumentations(raw, where=f"{where} ({path})")
    if isinstance(transform, dict):
        raw = {"transform": transform} if "__class_fullname__" in transform else transform
        if not isinstance(raw.get("transform"), dict):
            raise ValueError(
                f"{where}: an albumentations serialisation is the dict of A.to_dict(pipeline), with a "
                "'transform' entry (or a single transform dict with '__class_fullname__'). "
                f"Received: keys={sorted(map(str, transform))}"
            )
        try:
            built = A.from_dict(raw)
        except Exception as e:  # albumentations raises KeyError / ValidationError / TypeError
            raise ValueError(
                f"{where}: albumentations could not build the pipeline ({type(e).__name__}: {e}). Check the "
                f"transform names and arguments against albumentations 2.0. Received: transform={transform!r}"
            ) from None
        return _load_albumentations(built, where=where)
    if isinstance(transform, A.Compose):
        return copy.deepcopy(transform)  # never mutate the caller's pipeline
    if isinstance(transform, (A.BasicTransform, A.BaseCompose)):
        return A.Compose([copy.deepcopy(transform)])
    raise TypeError(
        f"{where}: transform must be an albumentations serialisation dict (A.to_dict), a path to a JSON/YAML "
        f"file holding one, or an A.Compose / A.BasicTransform. Received: transform={type(transform).__name__}"
    )


def _force_mask_fill(transforms) -> None:
    """Sets every mask fill to 0, the bridge's "came from outside" marker (see Albumentations)."""
    for t in transforms:
        if getattr(t, "fill_mask", None) is not None:
            t.fill_mask = 0
        if hasattr(t, "transforms"):
            _force_mask_fill(t.transforms)


def _seed_int(key: np.ndarray) -> int:
    """The 128-bit Python int of an element_seed key (both words, so nothing collides)."""
    k0, k1 = (int(v) & 0xFFFFFFFFFFFFFFFF for v in np.asarray(key).ravel()[:2])
    return (k0 << 64) | k1


_AUX = "fcndata_aux"  # [roi, valid] stacked as one mask target
_WEIGHT = "fcndata_weight"


@dataclass(frozen=True, repr=False)
class Albumentations:
    """Runs an albumentations 2.0 pipeline on image, label and roi (a ``tf.numpy_function`` bridge).

    ``transform`` is an albumentations serialisation (the dict of ``A.to_dict``, e.g.
    written inline in the recipe's ``augment.albumentations``), a path to a JSON/YAML
    file holding one (``A.save``), or an ``A.Compose`` / single transform built in
    Python. The pipeline is copied, never modified in place.

    How labels stay honest:

    * label goes in as albumentations' ``mask`` (its real values, so mask-aware
      transforms such as ``CropNonEmptyMaskIfExists`` see the classes); roi and an
      all-ones *valid* plane travel as one extra mask target, weight as another.
    * every transform's ``fill_mask`` is forced to 0 and the mask interpolation to
      nearest. A pixel whose valid plane is 0 afterwards was filled (padding,
      rotation corners, dropout holes with a mask fill): it gets ``label =
      ignore_label`` and ``roi = 0``, whatever fill value the pipeline asked for.
      Albumentations' default mask fill of 0 would otherwise train padding as class
      0. Reflect / replicate borders copy real pixels, and their labels count.
    * uint16 images are scaled to float32 [0, 1] for albumentations and back.

    Randomness: per element, the pipeline gets fresh generators seeded by
    ``element_seed(seed, element)`` (one shared stream for all its transforms, unlike
    ``Compose(seed=...)``, which seeds each child identically and correlates them); a
    ``seed`` inside the pipeline is ignored. Each tf.data worker thread owns a private
    copy of the pipeline (albumentations keeps per-call state on the objects), so
    parallel calls share no mutable state and take no lock; results do not depend on
    which worker handles which element. Re-seeding costs 0.02-0.1 ms per element; deep-copying
    the pipeline per call instead would cost 1-3 ms (benchmarks/augment.py).

    Costs: the bridge holds the GIL while albumentations runs (OpenCV releases it
    inside its own kernels), so it scales worse than :class:`Augment` with
    ``num_parallel_calls``; and ``tf.numpy_function`` cannot be serialised, so a
    pipeline using it cannot run in the tf.data service or be saved in a SavedModel.
    Prefer :class:`Augment` where it covers your transforms.

    Args:
      transform: dict, path, or albumentations object (see above).
      seed: stateless seed.
      ignore_label: label of filled pixels.

    Input element:
      image [H, W, C] uint8/uint16/float32, label [H, W] uint8/int32, roi [H, W] uint8,
      optional weight [H, W] float32, the other contract keys.

    Output element:
      the same keys and dtypes; H and W become unknown (a transform may crop or resize),
      C stays.

    Example:
      >>> import fcndata.testing as t
      >>> flip_lr = {"transform": {"__class_fullname__": "HorizontalFlip", "p": 1.0}}
      >>> bridge = Albumentations(flip_lr, seed=0)
      >>> bridge
      Albumentations(transform=<HorizontalFlip>, seed=0, ignore_label=255)
      >>> e = next(iter(t.dataset([(5, 7)]).apply(bridge)))
      >>> e["image"][0, :, 1].numpy().tolist()
      [6, 5, 4, 3, 2, 1, 0]
    """

    transform: Any
    seed: int = 0
    ignore_label: int = E.IGNORE_LABEL
    _compose: Any = field(init=False, compare=False)
    _local: Any = field(init=False, compare=False)

    def __post_init__(self):
        non_negative_ints("Albumentations", seed=self.seed, ignore_label=self.ignore_label)
        import cv2

        compose = _load_albumentations(self.transform)
        compose.add_targets({_AUX: "mask", _WEIGHT: "mask"})
        # labels are class ids: never interpolate between them
        compose.set_mask_interpolation(cv2.INTER_NEAREST)
        _force_mask_fill(compose.transforms)
        object.__setattr__(self, "_compose", compose)
        object.__setattr__(self, "_local", threading.local())

    def __repr__(self) -> str:
        if isinstance(self.transform, (str, Path)):
            what = repr(str(self.transform))
        else:
            names = [type(t).__name__ for t in self._compose.transforms]
            what = f"<{', '.join(names)}>"
        return (
            f"Albumentations(transform={what}, seed={self.seed}, ignore_label={self.ignore_label})"
        )

    @property
    def pipeline(self):
        """The prepared ``A.Compose`` (a copy of the input with the fills forced)."""
        return self._compose

    def _thread_pipeline(self):
        compose = getattr(self._local, "compose", None)
        if compose is None:
            compose = copy.deepcopy(self._compose)
            self._local.compose = compose
        return compose

    def apply_numpy(self, image, label, roi, key, weight=None, path=b""):
        """Runs the pipeline on NumPy arrays (the body of the ``tf.numpy_function``)."""
        compose = self._thread_pipeline()
        seed = _seed_int(key)
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        in_dtype = image.dtype
        img = image.astype(np.float32) / 65535.0 if in_dtype == np.uint16 else image
        # cv2 has no int32 warps; float32 holds label ids exactly up to 2**24
        mask = label if label.dtype == np.uint8 else label.astype(np.float32)
        data = {"image": img, "mask": mask, _AUX: np.stack([roi, np.ones_like(roi)], axis=-1)}
        if weight is not None:
            data[_WEIGHT] = weight
        try:
            out = compose(**data)
        except Exception as e:
            name = path.decode() if isinstance(path, bytes) else str(path)
            raise ValueError(
                f"Albumentations: the pipeline failed on {name!r} ({type(e).__name__}: {e}). Check that its "
                f"transforms accept this image. Received: image.shape={image.shape}, image.dtype={image.dtype}"
            ) from e
        img = out["image"]
        if img.ndim == 2:
            img = img[..., None]
        if in_dtype == np.uint16:
            img = np.clip(np.rint(img * 65535.0), 0, 65535)
        elif in_dtype == np.uint8 and img.dtype != np.uint8:
            img = np.clip(np.rint(img * 255.0 if img.dtype.kind == "f" else img), 0, 255)
        aux = out[_AUX]
        valid = aux[..., 1] > 0
        new_label = np.where(valid, out["mask"], self.ignore_label).astype(label.dtype)
        new_roi = np.where(valid, aux[..., 0], 0).astype(np.uint8)
        result = [np.ascontiguousarray(img.astype(in_dtype)), new_label, new_roi]
        if weight is not None:
            result.append(np.where(valid, out[_WEIGHT], 0).astype(np.float32))
        return result

    def augment(self, element: dict) -> dict:
        """Augments one element through ``tf.numpy_function``."""
        image = element[E.IMAGE]
        has_weight = E.WEIGHT in element
        key = E.element_seed(self.seed, element, _SALT_BRIDGE)
        inputs = [image, element[E.LABEL], element[E.ROI], key]
        if has_weight:
            inputs.append(element[E.WEIGHT])
        inputs.append(element[E.PATH])

        def run(image, label, roi, key, *rest):
            weight, path = (rest[0], rest[1]) if has_weight else (None, rest[0])
            return self.apply_numpy(image, label, roi, key, weight, path)

        tout = [image.dtype, element[E.LABEL].dtype, tf.uint8] + (
            [tf.float32] if has_weight else []
        )
        outputs = tf.numpy_function(run, inputs, tout, stateful=False, name="albumentations")
        out = dict(element)
        out[E.IMAGE] = tf.ensure_shape(outputs[0], [None, None, image.shape[-1]])
        out[E.LABEL] = tf.ensure_shape(outputs[1], [None, None])
        out[E.ROI] = tf.ensure_shape(outputs[2], [None, None])
        if has_weight:
            out[E.WEIGHT] = tf.ensure_shape(outputs[3], [None, None])
        return out

    def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        E.check_spec(dataset, where="Albumentations")
        if dataset.element_spec[E.LABEL].dtype == tf.uint8 and self.ignore_label > 255:
            raise ValueError(
                "Albumentations: ignore_label does not fit uint8 labels; use a value <= 255 (usually 255). "
                f"Received: ignore_label={self.ignore_label}"
            )
        dataset = E.with_epoch(dataset, self.seed)  # fresh draws every epoch, even without build_pipeline
        fn = tf.autograph.experimental.do_not_convert(self.augment)
        return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


