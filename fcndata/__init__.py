"""fcndata: tf.data pipelines for training fully convolutional segmentation networks.

The entry points a user types are attributes of the package, imported lazily (``import
fcndata`` stays cheap: TensorFlow loads when the first of them is used)::

    import fcndata
    cfg = fcndata.load_config("pipelines/shapes.yaml")
    ds = fcndata.build_pipeline(cfg, "train")
    patches = fcndata.from_arrays(images, labels, num_classes=3).apply(fcndata.ExtractPatches(32))

Example:
  >>> import fcndata
  >>> fcndata.ExtractPatches.__module__, "build_pipeline" in dir(fcndata)
  ('fcndata.patches', True)
"""

from __future__ import annotations

import importlib

from fcndata import saving as _saving  # imports neither Keras nor TensorFlow

__version__ = "0.1.0"

# A saved model.keras loads with plain keras.models.load_model after `import fcndata`:
# fcndata's custom layers, losses and metrics are made known to Keras without loading them here.
_saving.install()

#: Public name -> module that defines it.
_EXPORTS = {
    "load_config": "fcndata.config",
    "build_pipeline": "fcndata.pipeline",
    "steps_per_epoch": "fcndata.pipeline",
    "load_source": "fcndata.sources",
    "from_folder": "fcndata.sources",
    "from_arrays": "fcndata.sources",
    "from_tfrecords": "fcndata.sources",
    "from_tfds": "fcndata.sources",
    "Validate": "fcndata.sources",
    "read_image": "fcndata.decode",
    "Epochs": "fcndata.elements",
    "with_epoch": "fcndata.elements",
    "Augment": "fcndata.augment",
    "Albumentations": "fcndata.augment",
    "ExtractPatches": "fcndata.patches",
    "RandomPatches": "fcndata.patches",
    "BalancedPatches": "fcndata.patches",
    "ClassWeights": "fcndata.sampling",
    "LossSampling": "fcndata.sampling",
    "PadAndBatch": "fcndata.batching",
    "BucketBySize": "fcndata.batching",
    "to_keras": "fcndata.batching",
    "SlidingWindowPredictor": "fcndata.infer",
    "load_model": "fcndata.saving",
}

__all__ = list(sorted(_EXPORTS))


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fcndata' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
