"""``build_pipeline(config, mode)``: the one function that turns a recipe into a tf.data pipeline.

It reads top to bottom: source → validate → augment → patches → sampling → batching →
to_keras → prefetch. An optional stage is skipped when its YAML section is absent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.config import Config

MODES = ("train", "eval", "predict")


def data_options() -> tf.data.Options:
    """The ``tf.data.Options`` every fcndata pipeline runs with (set in one place)."""
    options = tf.data.Options()
    # Same seed, same batches, bit for bit: parallel map keeps element order.
    options.deterministic = True
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    # One thread per op inside tf.data: parallelism comes from parallel map, not from
    # intra-op threads fighting the model for the same cores.
    options.threading.max_intra_op_parallelism = 1
    return options


def _epoch_seed(seed: int, epoch: int) -> int:
    """A shuffle seed for one epoch: a pure function of (seed, epoch)."""
    digest = hashlib.sha256(f"{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _counts_cache_path(config: Config) -> Path | None:
    """Where the class-count pass of this data config is cached (next to the recipe)."""
    if config.source is None or not Path(config.source).is_file():
        return None
    return Path(config.source).with_suffix(".class_counts.json")


def _data_key(config: Config) -> str:
    """A hash of the data section: cached counts are reused only for the same data."""
    from fcndata.config import to_dict

    text = json.dumps(to_dict(config)["data"], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_class_counts(config: Config) -> np.ndarray:
    """Per-image, per-class pixel counts of the training split (cached next to the recipe).

    Per image, so median-frequency weights use Eigen & Fergus' definition (a class's
    frequency over the images where it appears).
    """
    from fcndata import sampling, sources

    ds = sources.load_source(config.data, "train")
    path = _counts_cache_path(config) if (config.sampling is None or config.sampling.cache) else None
    if path is None:
        return sampling.class_counts(ds, config.data.num_classes, config.data.ignore_label, per_image=True)
    return sampling.cached_class_counts(
        ds, config.data.num_classes, path, key=_data_key(config), ignore_label=config.data.ignore_label,
        per_image=True,
    )


def build_pipeline(
    config: Config,
    mode: str = "train",
    *,
    keras: bool = True,
    initial_epoch: int = 0,
    epochs: int | None = None,
    fixed_length: bool = True,
) -> tf.data.Dataset:
    """Builds the input pipeline of a recipe.

    ``train`` streams ``train.epochs`` epochs one after the other (``epochs`` overrides),
    so Keras needs ``steps_per_epoch`` (see :func:`steps_per_epoch`). Each epoch is a pure
    function of ``(seed, epoch)``: a run resumed at epoch ``e`` (``initial_epoch=e``) sees
    exactly the batches an uninterrupted run would have seen. ``eval`` and ``predict``
    make one pass over the validation split, whole images, no augmentation or sampling.

    Args:
      config: a loaded recipe (:func:`fcndata.config.load_config`).
      mode: ``"train"``, ``"eval"`` or ``"predict"``.
      keras: end with ``to_keras`` (``(inputs, label, sample_weight)`` triplets);
        False keeps batched element dicts (for previews and your own loops).
      initial_epoch: first epoch of a ``train`` stream (resuming).
      epochs: number of ``train`` epochs to stream (None: ``train.epochs - initial_epoch``).
      fixed_length: make every ``train`` epoch exactly :func:`steps_per_epoch` batches.

    Returns:
      A ``tf.data.Dataset``.

    Example (in your own training code):
      >>> from fcndata.config import load_config
      >>> cfg = load_config("pipelines/shapes.yaml", ["data.num_images=4", "batching.batch_size=2"])
      >>> ds = build_pipeline(cfg, "train", epochs=1)
      >>> inputs, label, sample_weight = next(iter(ds))
      >>> inputs.dtype.name, label.dtype.name, sample_weight.shape.rank
      ('float32', 'int32', 3)

      Then ``model.fit(ds, steps_per_epoch=steps_per_epoch(cfg), epochs=...)``.
    """
    from fcndata import augment, batching, patches, sampling, sources

    if mode not in MODES:
        raise ValueError(f"build_pipeline: mode must be one of {list(MODES)}. Received: mode={mode!r}")
    data = config.data
    training = mode == "train"
    seed = data.seed

    # Source → validate: load_source decodes, checks and (on_error) skips, per split.
    source = sources.load_source(data, "train" if training else "validation")
    if data.cache:
        source = source.cache()

    counts = None
    if training and config.sampling is not None and isinstance(config.sampling.class_weights, str):
        counts = training_class_counts(config)  # one cached class-count pass, before streaming

    # Built once, eagerly: size buckets are derived from the finite source here, because
    # the data cannot be read inside the per-epoch function. The pipeline shuffles per
    # epoch itself (seeded by the epoch), so the stage does not shuffle again.
    batcher = batching.batching_from_config(
        config.batching, data, mode, shuffle=False, dataset=None if (training and config.patches) else source
    )

    def one_epoch(epoch) -> tf.data.Dataset:
        ds = source
        if training:
            # Each epoch is built from its number alone: randomness keyed by (seed, epoch,
            # source_index), its own image order, and batches that never straddle two
            # epochs, so a run resumed at epoch e sees exactly the batches it would have.
            ds = ds.map(lambda e: {**e, E.EPOCH: tf.constant(epoch, tf.int64)})
            if config.batching.shuffle_buffer > 1:
                ds = ds.shuffle(config.batching.shuffle_buffer, seed=_epoch_seed(seed, epoch))

            # Augment whole images so patches see augmented context at their borders.
            if config.augment is not None:
                ds = ds.apply(augment.augment_from_config(config.augment, data))

            # Patches: patchwise training cuts, balances and mixes several images per batch.
            if config.patches is not None:
                ds = ds.apply(patches.patches_from_config(config.patches, data, seed))

            # Sampling: class weights and FCN loss sampling write the per-pixel `weight`.
            if config.sampling is not None:
                stage = sampling.sampling_from_config(config.sampling, data, counts)
                if stage is not None:
                    ds = ds.apply(stage)

        # Batching: dynamic padding with roi (and size bucketing when configured).
        return ds.apply(batcher)

    if training:
        # Epochs are chained in Python (not Dataset.counter().flat_map) so each epoch's
        # shuffle gets a plain integer seed: tf.data rejects tensor seeds once a global
        # seed is set (keras.utils.set_random_seed does set one).
        count = config.train.epochs - initial_epoch if epochs is None else epochs
        if count < 1:
            raise ValueError(
                f"build_pipeline: no training epochs left (train.epochs={config.train.epochs}, "
                f"initial_epoch={initial_epoch}). Raise train.epochs. Received: epochs={epochs}"
            )
        # Every epoch is exactly `steps` batches (cycling its own batches if it runs
        # short), so Keras epochs and data epochs stay aligned even when augmentation
        # changes sizes and with them the number of bucketed batches.
        steps = steps_per_epoch(config) if fixed_length else None

        def sized(epoch):
            ds = one_epoch(epoch)
            return ds if steps is None else ds.repeat().take(steps)

        ds = sized(initial_epoch)
        for epoch in range(initial_epoch + 1, initial_epoch + count):
            ds = ds.concatenate(sized(epoch))
    else:
        ds = one_epoch(0)

    if keras:
        ds = ds.apply(batching.to_keras(masked_input=config.model.masked))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(data_options())


def steps_per_epoch(config: Config) -> int:
    """Batches in one training epoch (one pass over the training images or their patches).

    Counted by running one epoch of the pipeline without the model; for very large data
    set ``train.steps_per_epoch`` instead.
    """
    if config.train.steps_per_epoch:
        return config.train.steps_per_epoch
    from fcndata.config import to_dict

    key = json.dumps(to_dict(config), sort_keys=True, default=str)
    if key not in _STEPS:
        _STEPS[key] = _count_batches(config)
    return _STEPS[key]


_STEPS: dict[str, int] = {}


def _count_batches(config: Config) -> int:
    ds = build_pipeline(config, "train", keras=False, epochs=1, fixed_length=False)
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())
