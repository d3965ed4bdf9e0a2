"""Experiments: settings trained for the same wall-clock budget, compared on validation IoU.

* :mod:`fcndata.experiments.compare`: the driver (:class:`~fcndata.experiments.compare.Setting`,
  :func:`~fcndata.experiments.compare.compare`, :func:`~fcndata.experiments.compare.train_for`).
* :mod:`fcndata.experiments.report`: ``RESULTS.md``, ``curves.png``, ``results.json``.
* :mod:`fcndata.experiments.baseline`: the plain Keras U-Net reference.
* Presets, each a command writing ``experiments/<name>/``:
  ``python -m fcndata.experiments.patchwise`` (FCN §4.4: patchwise vs whole-image training,
  loss sampling, class balance) and ``python -m fcndata.experiments.balance`` (class
  weights vs balanced patches vs focal loss on the rare digit classes) and
  ``python -m fcndata.experiments.panel`` (fcndata.plan's recipe vs the plain U-Net on five
  unlike datasets: brain, digits, shapes, scenes, phantom).
"""
