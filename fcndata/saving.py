"""Loading a saved fcndata model: its custom classes registered with Keras.

A ``model.keras`` written by fcndata names classes registered under the package
``fcndata`` (``fcndata>RoiMask``, ``fcndata>MaskedSparseCrossEntropy``, ...) by
``keras.saving.register_keras_serializable(package="fcndata")`` in the modules of
:data:`REGISTERED`. Keras finds a registered class only once the module that defines it has
run (it imports modules by itself only for its own packages), so ``import fcndata`` runs
:func:`register_custom_objects`, and :func:`load_model` is ``keras.models.load_model`` with
a clear error for a missing file.
"""

from __future__ import annotations

import importlib

#: module -> the classes it registers under the package name "fcndata" (a test keeps it exact)
REGISTERED = {
    "fcndata.losses": ("MaskedSparseCrossEntropy", "SparseFocalLoss", "SigmoidFocalLoss", "DiceLoss", "SumOfLosses"),
    "fcndata.metrics": ("ConfusionMatrix", "MeanIoU", "PixelAccuracy"),
    "fcndata.layers": ("BilinearInitializer", "FrozenBatchNormalization", "RoiMask", "ImagePreprocess"),
    "fcndata.normalization": ("RoiBatchNormalization", "RoiGroupNormalization", "RoiInstanceNormalization", "Intensity"),
    "fcndata.schedules": ("LinearWarmup",),
}


def register_custom_objects() -> None:
    """Imports every module in :data:`REGISTERED` (their decorators register the classes)."""
    for module in REGISTERED:
        importlib.import_module(module)


def load_model(path, **kwargs):
    """``keras.models.load_model`` with fcndata's custom classes registered.

    Raises:
      FileNotFoundError: ``path`` does not exist (the message names it).
    """
    from pathlib import Path

    if not Path(path).exists():
        raise FileNotFoundError(
            f"{path}: model file not found; pass the model.keras of a run (runs/NAME/model.keras). Received: {path}"
        )
    import keras

    register_custom_objects()
    return keras.models.load_model(path, **kwargs)
