"""fcndata: tf.data pipelines for training fully convolutional segmentation networks.

The entry points a user types are attributes of the package, and so is every module::

    import fcndata as fd
    cfg = fd.load_config("pipelines/shapes.yaml")
    ds = fd.build_pipeline(cfg, "train")
    model = fd.models.model_from_config(cfg)
    patches = fd.from_arrays(images, labels, num_classes=3).apply(fd.ExtractPatches(32))

``import fcndata`` imports Keras (and so TensorFlow, a few seconds) and the modules whose
layers, losses, metrics and schedules are registered with
``keras.saving.register_keras_serializable(package="fcndata")``: a saved ``model.keras``
then loads with plain ``keras.models.load_model``, in any process that imported fcndata.
The other names and modules load on first use (``fd.preview`` imports matplotlib then).
A ``python -m fcndata.<command>`` (or ``fcndata-<command>``) process sets its quiet logging
defaults before that import (:func:`fcndata.cli.quiet_defaults`); a library user's
``import fcndata`` changes no environment variable.

Example:
  >>> import fcndata as fd
  >>> fd.ExtractPatches.__module__, fd.models.__name__, "build_pipeline" in dir(fd)
  ('fcndata.patches', 'fcndata.models', True)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

__version__ = "0.1.0"


def _is_fcndata_command() -> bool:
    """True in ``python -m fcndata.X`` and in the ``fcndata-X`` console scripts."""
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        if module == "fcndata" or module.startswith("fcndata."):
            return True
    return bool(sys.argv) and os.path.basename(sys.argv[0] or "").startswith("fcndata-")


if _is_fcndata_command():
    from fcndata import cli as _cli  # no TensorFlow import

    _cli.quiet_defaults()  # before Keras imports TensorFlow: its C++ loggers read the environment once

from fcndata import saving as _saving  # noqa: E402

_saving.register_custom_objects()

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
    "Albumentations": "fcndata.albumentations_bridge",
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
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # fd.models, fd.losses, fd.preview, ...
    else:
        raise AttributeError(f"module 'fcndata' has no attribute {name!r}")
    globals()[name] = value  # next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
