"""Loading a saved fcndata model: the custom classes it names, found without asking.

A ``model.keras`` written by fcndata names classes registered under the package
``fcndata`` (``fcndata>RoiMask``, ``fcndata>MaskedSparseCrossEntropy``, ...). Keras finds
a registered class only once the module that defines it has run, and it imports modules
by itself only for its own packages. So:

* :func:`load_model` imports the defining modules, then calls ``keras.models.load_model``.
* :func:`install` (called by ``import fcndata``) makes a plain
  ``keras.models.load_model`` work too, without importing TensorFlow: when Keras is
  imported (or right away if it already is), each name in :data:`REGISTERED` is entered
  in Keras' public registry (``keras.saving.get_custom_objects()``) as a stand-in whose
  ``from_config`` imports the real module and hands over. The real decorator replaces
  the stand-in as soon as that module is imported.

This module imports neither Keras nor TensorFlow at import time.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: module -> the classes it registers under the package name "fcndata" (a test keeps it exact)
REGISTERED = {
    "fcndata.losses": ("MaskedSparseCrossEntropy", "SparseFocalLoss", "SigmoidFocalLoss", "DiceLoss", "SumOfLosses"),
    "fcndata.metrics": ("ConfusionMatrix", "MeanIoU", "PixelAccuracy"),
    "fcndata.models": ("BilinearInitializer", "FrozenBatchNormalization", "RoiMask", "ImagePreprocess"),
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


class _Deferred:
    """Stands in for a registered class until its module is imported."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def resolve(self):
        return getattr(importlib.import_module(self.module), self.name)

    def from_config(self, config):
        return self.resolve().from_config(config)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self):
        return f"<deferred {self.module}.{self.name}>"


def _enter_stand_ins(keras) -> None:
    registry = keras.saving.get_custom_objects()
    for module, names in REGISTERED.items():
        for name in names:
            registry.setdefault(f"fcndata>{name}", _Deferred(module, name))


class _AfterExec(importlib.abc.Loader):
    """Runs the real loader, then ``then(module)``; every other attribute is the real loader's."""

    def __init__(self, loader, then):
        self._loader, self._then = loader, then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._then(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _KerasImportHook(importlib.abc.MetaPathFinder):
    # Stays in sys.meta_path until Keras has actually been executed: TensorFlow asks
    # importlib.util.find_spec("keras") before it imports it, and that spec is thrown away.
    _searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec("keras")
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterExec(spec.loader, self._done)
        return spec

    def _done(self, keras) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        _enter_stand_ins(keras)


def install() -> None:
    """Makes ``keras.models.load_model`` find fcndata's classes (see the module docstring)."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "saving"):
        _enter_stand_ins(keras)
    elif not any(isinstance(f, _KerasImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())
