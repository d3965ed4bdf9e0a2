"""``build_pipeline(config, mode)``: the one function that turns a recipe into a tf.data pipeline.

It reads top to bottom, one stage per recipe section: source (decoded, validated, cached)
→ [augment] → [patches] → [sampling] → batching → [service] → to_keras → prefetch. A
stage in brackets is skipped when its YAML section is absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.config import Config
from fcndata.sections import BUILTIN_SOURCES

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

    ``train`` is one stream of ``train.epochs`` epochs (``epochs`` overrides), built once:
    ``Dataset.range(initial_epoch, ...).flat_map(one_epoch)`` with the epoch number a
    tensor, so build time, graph size and memory do not grow with the number of epochs.
    Each epoch is a pure function of ``(seed, epoch)``: its order is a stateless shuffle
    keyed by both, and every random stage keys on the element's ``epoch``; a run resumed at
    epoch ``e`` (``initial_epoch=e``) sees exactly the batches an uninterrupted run would.
    Batches never straddle two epochs, and each epoch is exactly :func:`steps_per_epoch`
    batches (a count from the source's metadata, no pass over the data), so Keras epochs
    and data epochs stay aligned. ``eval`` and ``predict`` make one pass over the
    validation split, whole images, no augmentation or sampling.

    With a ``service:`` section, the ``train`` stream runs on the tf.data service up to
    batching; ``to_keras`` and prefetch stay here (``eval`` and ``predict`` stay local).
    Under ``sharding: dynamic`` its source is a stream of (epoch, image) indices, one split
    each, so every image of every epoch goes to one worker: the same patches as without
    the service, shuffled and batched per worker (batches may straddle two epochs), and
    with ``fixed_length`` the workers stream epochs without end, of which ``epochs`` x
    :func:`steps_per_epoch` batches are read. A recipe with a stage that calls Python is
    refused (``ValueError`` naming the stage) before anything is sent.

    Args:
      config: a loaded recipe (:func:`fcndata.config.load_config`).
      mode: ``"train"``, ``"eval"`` or ``"predict"``.
      keras: end with ``to_keras`` (``(inputs, label, sample_weight)`` triplets);
        False keeps batched element dicts (for previews and your own loops).
      initial_epoch: first epoch of a ``train`` stream (resuming).
      epochs: number of ``train`` epochs to stream (None: ``train.epochs - initial_epoch``).
      fixed_length: make every ``train`` epoch exactly :func:`steps_per_epoch` batches
        (False: each epoch ends where its data ends).

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
    from fcndata import patches, sources

    if mode not in MODES:
        raise ValueError(f"build_pipeline: mode must be one of {list(MODES)}. Received: mode={mode!r}")
    data = config.data
    if mode != "train":
        return _finish(_one_pass(config, mode), config, keras)
    count = config.train.epochs - initial_epoch if epochs is None else epochs
    if count < 1:
        raise ValueError(
            f"build_pipeline: no training epochs left (train.epochs={config.train.epochs}, "
            f"initial_epoch={initial_epoch}). Raise train.epochs. Received: epochs={epochs}"
        )
    # Every epoch is exactly `steps` batches (cycling its own batches if it runs short, cut if
    # bucketing or augmentation gives more), so Keras epochs and data epochs stay aligned.
    steps = steps_per_epoch(config) if fixed_length else None
    service = config.service
    dynamic = service is not None and service.sharding == "dynamic"

    # source: decoded, checked images; load_source caches them (once) and skips bad files if asked.
    images = sources.load_source(data, "train")
    # Under the service's dynamic sharding the stream is one image of one epoch per split instead,
    # so each image of each epoch goes to one worker.
    source = _images_by_split(data, data.seed, initial_epoch, None if steps is not None else count) if dynamic else images
    # One stage per recipe section, in order; an absent section is skipped.
    stages = [
        # augment: whole images, so patches see augmented context at their borders
        ("augment", config.augment),
        # patches: patchwise training cuts, balances and mixes several images per batch
        ("patches", patches.patches_from_config(config.patches, data, data.seed) if config.patches else None),
        # sampling: class weights and FCN loss sampling write the per-pixel `weight`
        ("sampling", _sampling(config)),
        # batching: padded with the roi, bucketed by size; its shuffle is the epochs' own (below)
        ("batching", _batching(config, "train", images)),
    ]
    stages = [(section, stage) for section, stage in stages if stage is not None]

    def pipeline(ds):
        for _, stage in stages:
            ds = ds.apply(stage)
        return ds

    if dynamic:
        # The stages run on the workers as they would here (their keys are per element, so a patch
        # is the same whichever worker cuts it); the shuffle and the batches mix the images each
        # worker holds.
        ds = pipeline(source)
    else:
        numbering = E.Epochs(count, initial_epoch, shuffle_buffer=config.batching.shuffle_buffer, seed=data.seed)

        def one_epoch(epoch):
            # `epoch` is a tensor: traced once, whatever the number of epochs. Randomness is keyed
            # by (seed, epoch, source_index), the order by (seed, epoch); batches never straddle epochs.
            ds = pipeline(numbering.one_epoch(source, epoch))
            return ds if steps is None else ds.repeat().take(steps)

        ds = tf.data.Dataset.range(initial_epoch, initial_epoch + count).flat_map(E.no_autograph(one_epoch))
    # service: everything above runs on the tf.data service's workers
    if service is not None:
        _refuse_python(config, source, stages, ds)
        from fcndata.distributed import distribute_dataset

        ds = distribute_dataset(
            ds.with_options(data_options()), service.address, sharding=service.sharding,
            job_name=service.job_name, compression=service.compression,
        )
        if steps is not None and dynamic:
            # The workers stream epochs without end; `count` epochs of `steps` batches are read.
            ds = ds.take(count * steps)
    return _finish(ds, config, keras)


def _finish(ds: tf.data.Dataset, config: Config, keras: bool) -> tf.data.Dataset:
    """``to_keras`` (here, not on a service worker: batches travel as uint8, 4x smaller than float32),
    then prefetch and the options every fcndata pipeline runs with."""
    from fcndata import batching

    if keras:
        ds = ds.apply(batching.to_keras(masked_input=config.model.masked))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(data_options())


def _one_pass(config: Config, mode: str) -> tf.data.Dataset:
    """``eval`` / ``predict``: one pass over the validation split, whole images, batched."""
    from fcndata import sources

    source = sources.load_source(config.data, "validation")
    batcher, sizes = _batching(config, mode, source, with_sizes=True)
    ds = source.apply(batcher)
    # Tell tf.data (and so Keras) how many batches one pass gives, counted from metadata:
    # Keras then needs no counting pass and warns of no "input ran out of data".
    batches = _eval_batches(config.data, "validation", batcher, sizes)
    if batches is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds


def _sampling(config: Config):
    """The ``sampling:`` stage (None when absent), with class counts from one cached pass if its
    weights are derived from the data (before streaming, never inside it)."""
    from fcndata import sampling

    if config.sampling is None:
        return None
    counts = training_class_counts(config) if isinstance(config.sampling.class_weights, str) else None
    return sampling.sampling_from_config(config.sampling, config.data, counts)


def _batching(config: Config, mode: str, source: tf.data.Dataset, with_sizes: bool = False):
    """The ``batching:`` stage of a mode. Size buckets are built once, eagerly, from the sizes in
    the source's metadata (image headers, array shapes) when it has them, else from a read of
    ``source``: the data cannot be read inside the per-epoch function."""
    from fcndata import batching

    cfg = config.batching
    if mode == "train" and config.patches is not None and cfg.bucket_by != "none":
        # Training patches all have patch_size: there is nothing to bucket, so switching
        # patches on in a whole-image recipe needs no other change (eval still buckets).
        cfg = dataclasses.replace(cfg, bucket_by="none")
    split = "train" if mode == "train" else "validation"
    bucketing = cfg.bucket_by != "none" and cfg.bucket_boundaries is None and mode != "predict"
    sizes = _sizes_dataset(config.data, split) if bucketing else None
    batcher = batching.batching_from_config(
        cfg, config.data, mode, shuffle=False, dataset=sizes if sizes is not None else source,
    )
    return (batcher, sizes) if with_sizes else batcher


def _images_by_split(data, seed: int, initial_epoch: int, count: int | None) -> tf.data.Dataset:
    """The training source as one image of one epoch per element of a ``range``: the stream
    the tf.data service shards dynamically (one split = one image of one epoch).

    Element ``i`` is image ``index_shuffle(i mod N)`` of epoch ``i div N``, a permutation keyed
    by ``(seed, epoch)``, read by position and tagged with its ``epoch``. ``count`` epochs
    from ``initial_epoch``, or without end when None.
    """
    from fcndata import sources

    n, _ = sources.source_shapes(data, "train")
    start = initial_epoch * n
    stop = start + count * n if count is not None else np.iinfo(np.int64).max

    @tf.autograph.experimental.do_not_convert  # builds a dataset: plain Python, nothing to convert
    def one_image(i):
        epoch = i // n
        key = tf.stack([tf.constant(seed, tf.int64) ^ 0x51A7, epoch])
        position = tf.random.experimental.index_shuffle(i % n, seed=key, max_index=n - 1)
        image = sources.load_source(data, "train", indices=tf.data.Dataset.from_tensors(position))
        return image.map(E.no_autograph(lambda e: {**e, E.EPOCH: epoch}))

    # Parallel and in order: while one image waits on storage, others are read.
    return tf.data.Dataset.range(start, stop).interleave(
        E.no_autograph(one_image), cycle_length=tf.data.AUTOTUNE, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


#: what to use instead of a stage that calls Python, by recipe section
_GRAPH_ALTERNATIVES = {
    "augment": "use augment's TensorFlow keys instead (flip_horizontal, flip_vertical, rot90, scale, crop_size, "
               "rotate, shear, brightness, contrast, gamma, hue, saturation, noise_std, blur_sigma), which run in "
               "the graph",
}


def _refuse_python(config: Config, source: tf.data.Dataset, stages: list, ds: tf.data.Dataset) -> None:
    """Raises before the pipeline is registered with the service if a stage calls Python
    (``tf.py_function`` / ``tf.numpy_function``): a worker in another process cannot run it."""
    from fcndata.distributed import python_ops

    if not python_ops(ds):
        return
    data = config.data
    where = f"{config.source or 'recipe'}: service"
    ops = python_ops(source)
    if ops:
        if data.on_error == "skip":
            raise ValueError(
                f"{where}: data.on_error=skip records each skipped file with tf.py_function, which a tf.data "
                "service worker (another process) cannot run; set data.on_error: raise (the first bad file then "
                "stops the run and is named), or fix the files it lists when run locally. Received: "
                "data.on_error='skip'"
            )
        raise ValueError(
            f"{where}: the data source calls Python ({', '.join(ops)}), which a tf.data service worker (another "
            "process) cannot run: TIFF files are decoded with OpenCV through tf.numpy_function because TensorFlow "
            "has no TIFF decoder; convert them to PNG (16-bit PNG keeps uint16 pixels and decodes in the graph). "
            f"Received: data.source={data.source!r}"
        )
    ds = source
    for section, stage in stages:
        ds = ds.apply(stage)
        ops = python_ops(ds)
        if ops:
            hint = _GRAPH_ALTERNATIVES.get(section, "replace it with TensorFlow ops, or run without service:")
            detail = "augment.albumentations runs albumentations through tf.numpy_function" if (
                section == "augment" and config.augment is not None and config.augment.albumentations is not None
            ) else f"the {section} stage calls Python ({', '.join(ops)})"
            raise ValueError(
                f"{where}: {detail}, which a tf.data service worker (another process) cannot run; {hint}. "
                f"Received: {section} stage {stage!r}"
            )


def _sizes_dataset(data, split: str) -> tf.data.Dataset | None:
    """Label-shaped zeros of the source's sizes, from metadata (None if it lacks them): bucket boundaries
    are derived from sizes alone, so they need no read of the data."""
    from fcndata import sources

    _, shapes = sources.source_shapes(data, split)
    if not shapes:
        return None
    return tf.data.Dataset.from_tensor_slices(np.asarray(shapes, np.int32)).map(
        lambda hw: {E.LABEL: tf.zeros(hw, tf.uint8)}
    )


def _eval_batches(data, split: str, batcher, sizes) -> int | None:
    """Batches of one eval pass, from metadata; None where metadata cannot be trusted to match
    (TFRecord/TFDS would need a read, ``on_error=skip`` may drop files)."""
    from fcndata import batching, sources

    if data.on_error != "raise" or data.source not in (*BUILTIN_SOURCES, "folder"):
        return None
    if isinstance(batcher, batching.BucketBySize):
        if sizes is None or batcher.boundaries is None:
            return None
        key = lambda e: batching.bucket_index(batching.size_key(e, batcher.by, batcher.pad_to_multiple), batcher.boundaries)
        buckets = np.asarray(list(sizes.map(key).as_numpy_iterator()), np.int64)
        counts = np.bincount(buckets) if buckets.size else np.zeros([0], np.int64)
        return int(sum(-(-int(c) // batcher.batch_size) for c in counts))
    if isinstance(batcher, batching.PadAndBatch):
        n, _ = sources.source_shapes(data, split)
        return -(-n // batcher.batch_size)
    return None


def steps_per_epoch(config: Config) -> int:
    """Batches in one training epoch, from the source's metadata: no pass over the data.

    ``train.steps_per_epoch`` if set, else ``ceil(elements / batch_size)`` (floor with
    ``drop_remainder``), where elements are the source's images (whole-image training),
    images × ``num_per_image`` (random / balanced patches) or the grid patches of every
    image (grid; needs the image sizes, which image headers and built-in datasets give).

    Counts are of the source as listed: files that ``on_error=skip`` drops, sizes that
    augmentation changes (grid) and the partial batch each size bucket may leave make the
    real epoch a little shorter or longer; :func:`build_pipeline` then cycles or cuts the
    epoch to exactly this many batches, so an image left out of one epoch's tail is
    still seen in the others (each epoch has its own order).

    Raises:
      ValueError: grid patches over a source whose image sizes are unknown (TFRecord,
        TFDS, TIFF files) and no ``train.steps_per_epoch``.

    Example:
      >>> from fcndata.config import load_config
      >>> cfg = load_config("pipelines/shapes.yaml", ["data.num_images=5", "batching.batch_size=2"])
      >>> steps_per_epoch(cfg)
      3
    """
    if config.train.steps_per_epoch:
        return config.train.steps_per_epoch
    from fcndata import sources

    n, shapes = sources.source_shapes(config.data, "train")
    p = config.patches
    if p is None:
        elements = n
    elif p.mode in ("random", "balanced"):
        elements = n * p.num_per_image
    elif shapes is None:
        raise ValueError(
            "steps_per_epoch: grid patches are counted from the image sizes, which this source's "
            f"metadata does not give (data.source={config.data.source!r}); set train.steps_per_epoch. "
            "Received: train.steps_per_epoch=None"
        )
    else:
        from fcndata.grid import grid_origins_2d

        elements = sum(len(grid_origins_2d(s, p.patch_size, p.stride, p.border)) for s in shapes)
    b = config.batching.batch_size
    batches = elements // b if config.batching.drop_remainder else -(-elements // b)
    return max(1, batches)
