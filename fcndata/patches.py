"""Patches: grid, random and class-balanced extraction and patch origins.

Patchwise training cuts every image into many N×N patches and mixes the patches of
several images in one batch; sliding-window inference cuts the same grid, runs the
model on each patch and stitches the outputs back (:mod:`fcndata.grid`). Both use the same origins, so a patch trained on
is a patch predicted on.

The grid's geometry (origins along an axis, the ``border`` rule, chunk tables) is
:mod:`fcndata.grid`; random and balanced origins are :mod:`fcndata.samplers`.

Every patch keeps ``origin`` (its top-left corner in source coordinates),
``source_shape``, ``source_index`` and ``path``, so it can be traced back and stitched.
Grid patches are cut in chunks of at most ``chunk_size`` (64) by one ``tf.gather`` per
plane, and the per-patch stream is the chunk stream unbatched (random and balanced
origins are cut one slice per patch, see :func:`patches_at`): an 8192×8192 image never has
its ~3,900 patches in memory at once, only its source and the chunks in flight.

Example:
  >>> import fcndata.testing as t
  >>> ds = t.dataset([(37, 53)]).apply(ExtractPatches(patch_size=16, stride=16))
  >>> [e["origin"].numpy().tolist() for e in ds][:4]
  [[0, 0], [0, 16], [0, 32], [0, 37]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.common import choice, pair, positive_int
from fcndata.grid import (
    BORDERS,
    Pair,
    check_stride,
    grid_origins_2d,
    grid_origins_2d_tf,
    grid_table_index,
    grid_tables,
)
from fcndata.samplers import CLASS_PROBABILITIES, balanced_origins, foreground_mask, random_origins

# Salts separating the stateless random streams of the random stages.
_SALT_RANDOM = 0x7A7C
_SALT_BALANCED = 0xBA1A


# ---------------------------------------------------------------------------- validation


# ---------------------------------------------------------------------------- geometry


def crop_patch(element, origin, patch_size: Pair, ignore_label: int = E.IGNORE_LABEL) -> dict:
    """Cuts one patch out of an element; the part outside the element is padded.

    Pure and graph-safe. ``origin`` is in the element's own coordinates and may lie
    partly (or wholly) outside it: image pads with 0, label with ``ignore_label``, roi
    and weight with 0. The patch's ``origin`` is the element's plus ``origin``, so it
    stays in source coordinates even when the element is itself a crop.

    Args:
      element: an unbatched contract element.
      origin: (y, x) int tensor of the patch's top-left corner.
      patch_size: patch (height, width).
      ignore_label: label value of padded pixels.

    Returns:
      A new element with static spatial shape ``patch_size``.

    Example:
      >>> import fcndata.testing as t
      >>> p = crop_patch(t.element(5, 7), [3, 4], 4)
      >>> p["image"][..., 0].numpy().tolist()[:3], p["label"].numpy()[2:].tolist(), p["origin"].numpy().tolist()
      ([[3, 3, 3, 0], [4, 4, 4, 0], [0, 0, 0, 0]], [[255, 255, 255, 255], [255, 255, 255, 255]], [3, 4])
    """
    nh, nw = pair(patch_size, "patch_size", "crop_patch")
    size = tf.constant([nh, nw], tf.int32)
    origin = tf.cast(origin, tf.int32)
    hw = tf.shape(element[E.IMAGE], out_type=tf.int32)[:2]
    start = tf.clip_by_value(origin, 0, hw)
    end = tf.clip_by_value(origin + size, 0, hw)
    before = tf.clip_by_value(-origin, 0, size)
    after = size - before - (end - start)
    paddings = tf.stack([before, after], axis=1)

    def cut(x, value):
        begin = tf.concat([start, tf.zeros([x.shape.rank - 2], tf.int32)], 0)
        extent = tf.concat([end - start, -tf.ones([x.shape.rank - 2], tf.int32)], 0)
        pads = tf.concat([paddings, tf.zeros([x.shape.rank - 2, 2], tf.int32)], 0)
        out = tf.pad(tf.slice(x, begin, extent), pads, constant_values=tf.cast(value, x.dtype))
        return tf.ensure_shape(out, [nh, nw] + x.shape[2:].as_list())

    patch = {
        E.IMAGE: cut(element[E.IMAGE], 0),
        E.LABEL: cut(element[E.LABEL], ignore_label),
        E.ROI: cut(element[E.ROI], 0),
        E.ORIGIN: element[E.ORIGIN] + origin,
        E.SOURCE_SHAPE: element[E.SOURCE_SHAPE],
        E.SOURCE_INDEX: element[E.SOURCE_INDEX],
        E.PATH: element[E.PATH],
    }
    if E.WEIGHT in element:
        patch[E.WEIGHT] = cut(element[E.WEIGHT], 0)
    if E.EPOCH in element:
        patch[E.EPOCH] = element[E.EPOCH]
    return patch


def patches_at(element, origins, patch_size: Pair, ignore_label: int = E.IGNORE_LABEL, inside: bool = False) -> tf.data.Dataset:
    """The lazy dataset of an element's patches at ``origins`` (``[N, 2]``, element coordinates).

    Same patches as :func:`crop_patch` at each origin, made cheaper for streams of
    patches: the element is padded once (only if some origin reaches outside it; never
    with ``inside=True``, which promises that every patch lies inside), then
    each patch is a plain slice, so one patch costs a handful of ops and a copy of its
    own pixels. Nothing but the source and the patch in flight is held in memory.

    Example:
      >>> import fcndata.testing as t
      >>> ds = patches_at(t.element(5, 7), [[0, 0], [3, 4], [-1, -1]], 4)
      >>> [(p["origin"].numpy().tolist(), int(p["roi"].numpy().sum())) for p in ds]
      [([0, 0], 16), ([3, 4], 6), ([-1, -1], 9)]
    """
    nh, nw = pair(patch_size, "patch_size", "patches_at")
    origins = tf.reshape(tf.cast(origins, tf.int32), [-1, 2])
    # Pad the whole element once, and only when needed: a patch is then a plain slice.
    if inside:  # the caller knows every patch lies inside the element
        source, starts = {k: element[k] for k in _PIXEL_KEYS if k in element}, origins
    else:
        source, starts = _pad_for(element, origins, (nh, nw), ignore_label)
    keys = list(source)
    begins2 = starts
    begins3 = tf.concat([starts, tf.zeros_like(starts[:, :1])], axis=1)
    extras = {k: element[k] for k in (E.SOURCE_SHAPE, E.SOURCE_INDEX, E.PATH, E.EPOCH) if k in element}

    def cut(origin, begin2, begin3):
        patch = {}
        for k in keys:
            x = source[k]
            if x.shape.rank == 3:
                channels = x.shape[2] if x.shape[2] is not None else -1  # keep C static when known
                patch[k] = tf.slice(x, begin3, [nh, nw, channels])
            else:
                patch[k] = tf.slice(x, begin2, [nh, nw])
        patch[E.ORIGIN] = element[E.ORIGIN] + origin
        patch.update(extras)
        return {k: patch[k] for k in (*E.REQUIRED_KEYS, *E.OPTIONAL_KEYS) if k in patch}

    return tf.data.Dataset.from_tensor_slices((origins, begins2, begins3)).map(E.no_autograph(cut))


# ---------------------------------------------------------------------------- chunked cutting

#: Default patches per chunk: an 8192² RGB image with 256² patches holds one chunk of
#: 64 × 256² × 5 bytes = 20 MiB besides its source.
CHUNK_SIZE = 64

_PIXEL_KEYS = (E.IMAGE, E.LABEL, E.ROI, E.WEIGHT)
_META_KEYS = (E.SOURCE_SHAPE, E.SOURCE_INDEX, E.PATH, E.EPOCH)


def _pad_for(element, origins, patch_size, ignore_label):
    """Pads the element's pixel planes once so every patch at ``origins`` lies inside.

    Returns ``(planes, origins)`` with origins in padded coordinates. Nothing is copied
    when no origin reaches outside the element.
    """
    size = tf.constant(patch_size, tf.int32)
    origins = tf.reshape(tf.cast(origins, tf.int32), [-1, 2])
    hw = tf.shape(element[E.IMAGE], out_type=tf.int32)[:2]
    before = -tf.reduce_min(tf.concat([origins, tf.zeros([1, 2], tf.int32)], 0), axis=0)
    after = tf.reduce_max(tf.concat([origins + size, hw[None]], 0), axis=0) - hw
    keys = [k for k in _PIXEL_KEYS if k in element]
    fill = {E.IMAGE: 0, E.LABEL: ignore_label, E.ROI: 0, E.WEIGHT: 0}

    def pad():
        paddings = tf.stack([before, after], axis=1)
        out = {}
        for k in keys:
            x = element[k]
            p = tf.concat([paddings, tf.zeros([x.shape.rank - 2, 2], tf.int32)], 0)
            out[k] = tf.pad(x, p, constant_values=tf.cast(fill[k], x.dtype))
        return out

    needs_pad = tf.reduce_any(before > 0) | tf.reduce_any(after > 0)
    planes = tf.cond(needs_pad, pad, lambda: {k: tf.identity(element[k]) for k in keys})
    for k in keys:  # the padded branch has a dynamic size; keep rank and channels static
        planes[k].set_shape([None, None] + element[k].shape[2:].as_list())
    return planes, origins + before[None]


def _chunk_meta(element, origins):
    """A chunk's non-pixel keys: origin in source coordinates, metadata repeated per patch."""
    k = tf.shape(origins)[0]
    meta = {E.ORIGIN: element[E.ORIGIN][None] + origins}
    for key in _META_KEYS:
        if key in element:
            meta[key] = tf.fill([k], element[key]) if element[key].shape.rank == 0 else tf.tile(element[key][None], [k, 1])
    return meta


def _ordered(chunk):
    return {k: chunk[k] for k in (*E.REQUIRED_KEYS, *E.OPTIONAL_KEYS) if k in chunk}


# ---------------------------------------------------------------------------- stages


def _chunks(jobs, chunks_of, cut) -> tf.data.Dataset:
    """Cuts every job's chunks in one parallel, deterministic map.

    The (job, chunk index) pairs are made sequentially and cost nothing (a job's
    tensors are shared by its pairs, not copied); the cutting itself runs in a parallel
    map, so consecutive chunks (of one image or of the next) are cut at the same time,
    in their order.
    """
    pairs = jobs.flat_map(E.no_autograph(lambda j: chunks_of(j).map(E.no_autograph(lambda c: (j, c)))))
    return pairs.map(E.no_autograph(cut), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _num_chunks(count, chunk_size: int) -> tf.data.Dataset:
    count = tf.cast(count, tf.int64)
    return tf.data.Dataset.range((count + chunk_size - 1) // chunk_size)


def _job_meta(element) -> dict:
    return {k: element[k] for k in (E.ORIGIN, *_META_KEYS) if k in element}


def count_skipped(dataset: tf.data.Dataset, patch_size: Pair) -> int:
    """How many images ``border="drop"`` skips: those smaller than the patch in height or width.

    Runs a pass over the dataset reading shapes only (the pixels are never copied).

    Example:
      >>> import fcndata.testing as t
      >>> count_skipped(t.dataset([(37, 53), (10, 80), (20, 20)]), 16)
      1
    """
    n = tf.constant(pair(patch_size, "patch_size", "count_skipped"), tf.int32)
    small = dataset.map(E.no_autograph(lambda e: tf.cast(tf.reduce_any(tf.shape(e[E.IMAGE], out_type=tf.int32)[:2] < n), tf.int64)))
    return int(small.reduce(tf.constant(0, tf.int64), lambda total, x: total + x))


def _sliced_stream(stage, ds: tf.data.Dataset, where: str, chunks_only: bool = False) -> tf.data.Dataset:
    """Random / balanced stages: the origins are drawn once per image, then cut by
    :func:`patches_at` (one slice per patch). Measured here, cutting these free origins
    as chunks (K unrolled slices, or a gather with 1-pixel table rows) was 4x slower
    than the per-patch slices; re-measured on the balanced 512² set of ``make
    bench-peers``, K unrolled slices stacked and rebatched, or ``tf.map_fn`` slices, were
    no faster (0.56-0.71 s against 0.57-0.61 s a pass), so they stay; chunks are those
    patches batched per image.
    """
    E.check_spec(ds, where=where)
    ds = E.with_epoch(ds, stage.seed)  # fresh draws every epoch, even without build_pipeline
    # The origins (the costly part: class counts, draws) in a parallel map, several images
    # at a time; then each image's patches are sliced in stream order.
    ds = ds.map(E.no_autograph(lambda e: (e, stage.origins(e))), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    # Drawn origins lie inside an image at least the patch size (they are clamped), so an
    # image of static size needs no padding step.
    h, w = ds.element_spec[0][E.IMAGE].shape[:2]
    inside = h is not None and w is not None and h >= stage.patch_size[0] and w >= stage.patch_size[1]

    def patches(element, origins):
        return patches_at(element, origins, stage.patch_size, stage.ignore_label, inside=inside)

    if chunks_only:
        return ds.flat_map(E.no_autograph(lambda e, o: patches(e, o).batch(stage.chunk_size)))
    return _interleave(ds, patches, stage.images_per_batch)


def _interleave(ds: tf.data.Dataset, patches_of: Callable, images_per_batch: int) -> tf.data.Dataset:
    # block_length=1 alternates images patch by patch, so a batch of k*m patches holds m
    # patches of each of k images (FCN: 20 patches of 3 images per minibatch of 60).
    # Parallel but deterministic; one image needs no parallel interleave.
    if images_per_batch == 1:
        return ds.interleave(E.no_autograph(patches_of), cycle_length=1, block_length=1)
    return ds.interleave(
        E.no_autograph(patches_of),
        cycle_length=images_per_batch,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


@dataclass(frozen=True)
class ExtractPatches:
    """Every image becomes its grid of overlapping patches (patchwise training, inference).

    Origins follow :func:`grid_origins` on each axis (row-major). Patches are cut in
    chunks of at most ``chunk_size`` by one ``tf.gather`` per plane (see
    :func:`grid_tables`), in a parallel deterministic map, then unbatched into single
    patches; :meth:`chunks` gives the chunk stream itself. Memory: the source, plus one
    copy of it when its width or the shifted last column is not aligned to
    gcd(patch, stride) or when ``border="pad"`` / a small image needs padding, plus the
    chunks in flight. With ``border="drop"`` an image smaller than the patch yields
    nothing; :meth:`count_skipped` says how many.

    Args:
      patch_size: int or (height, width).
      stride: int or (height, width); default half the patch (at least 1).
      border: ``"shift"`` | ``"pad"`` | ``"drop"`` (see :func:`grid_origins`).
      ignore_label: label value of padded pixels.
      images_per_batch: interleave this many images' patch streams (cycle_length=k,
        block_length=1, deterministic).
      chunk_size: patches cut per op (a chunk never mixes images).

    Input element:
      image [H, W, C], label [H, W], roi [H, W] uint8, origin, source_shape,
      source_index, path, optional weight [H, W] and epoch.
    Output element:
      the same keys with image [nh, nw, C], label [nh, nw], roi [nh, nw] (0 where padded),
      weight [nh, nw]; origin = element origin + patch origin (source coordinates).

    Example:
      >>> import fcndata.testing as t
      >>> stage = ExtractPatches(patch_size=(16, 32), stride=(16, 32), border="pad")
      >>> ps = list(t.dataset([(37, 53)]).apply(stage))
      >>> len(ps), ps[-1]["origin"].numpy().tolist(), ps[-1]["image"].shape.as_list()
      (6, [32, 32], [16, 32, 3])
      >>> int(ps[-1]["roi"].numpy().sum()), int(ps[-1]["image"][4, 20, 1])   # 5 rows x 21 columns real
      (105, 52)
    """

    patch_size: Pair
    stride: Pair | None = None
    border: str = "shift"
    ignore_label: int = E.IGNORE_LABEL
    images_per_batch: int = 1
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self):
        where = "ExtractPatches"
        n = pair(self.patch_size, "patch_size", where)
        s = pair(self.stride if self.stride is not None else tuple(max(1, v // 2) for v in n), "stride", where)
        choice(self.border, "border", where, BORDERS, hint=" ('shift' covers every pixel without padding)")
        check_stride(n, s, self.border, where)
        positive_int(self.images_per_batch, "images_per_batch", where)
        positive_int(self.chunk_size, "chunk_size", where)
        object.__setattr__(self, "patch_size", n)
        object.__setattr__(self, "stride", s)

    def origins(self, shape) -> tf.Tensor:
        """``[N, 2]`` int32 grid origins of an image of ``shape`` (H, W, ...)."""
        return grid_origins_2d_tf(tf.cast(shape, tf.int32)[:2], self.patch_size, self.stride, self.border)

    def _job(self, element) -> dict:
        origins = self.origins(tf.shape(element[E.IMAGE], out_type=tf.int32))
        planes, starts = _pad_for(element, origins, self.patch_size, self.ignore_label)
        job = dict(_job_meta(element), origins=origins, starts=starts)
        job.update(grid_tables(planes, starts, self.patch_size, self.stride))
        return job

    def _static_origins(self, spec) -> np.ndarray | None:
        """The grid of elements (or an element spec) whose height and width are static (one
        size for the whole stream), planned at trace time, when it needs no padding and its
        tables are plain reshapes; else None (the job is then planned in the graph, per
        element, by :meth:`_job`)."""
        h, w = spec[E.IMAGE].shape[:2]
        if h is None or w is None:
            return None
        origins = grid_origins_2d((h, w), self.patch_size, self.stride, self.border).astype(np.int32)
        (nh, nw), g = self.patch_size, math.gcd(self.patch_size[1], self.stride[1])
        xs = origins[:, 1]
        if (not len(origins) or origins.min() < 0 or (origins[:, 0] + nh).max() > h or (xs + nw).max() > w
                or w % g or (xs % g).any()):
            return None
        return origins

    def _static_cutter(self, spec, origins: np.ndarray) -> Callable:
        """The chunk cutter of a grid planned at trace time: the table rows of every patch
        are a constant start per patch plus a constant ``[nh, nw/g]`` block, so a chunk is
        a few graph nodes (cheap to build and to start). ``chunk`` None: the only chunk."""
        (nh, nw), g = self.patch_size, math.gcd(self.patch_size[1], self.stride[1])
        h, w = spec[E.IMAGE].shape[:2]
        blocks = w // g
        base = (np.arange(nh)[:, None] * blocks + np.arange(nw // g)[None]).astype(np.int32)
        starts = (origins[:, 0] * blocks + origins[:, 1] // g).astype(np.int32)
        shapes = {k: spec[k].shape[2:].as_list() for k in _PIXEL_KEYS if k in spec}
        n, size = len(origins), self.chunk_size

        def cut(element, chunk):
            if chunk is None:
                k, start, where = n, tf.constant(starts), tf.constant(origins)
            else:
                rows = tf.range(tf.cast(chunk, tf.int32) * size, tf.minimum(n, (tf.cast(chunk, tf.int32) + 1) * size))
                k, start, where = tf.size(rows), tf.gather(starts, rows), tf.gather(origins, rows)
            idx = start[:, None, None] + base[None]
            out = _chunk_meta(element, where)
            for key, rest in shapes.items():
                table = tf.reshape(element[key], [h * w // g, -1])
                out[key] = tf.reshape(tf.gather(table, idx), [k, nh, nw, *rest])
            return _ordered(out)

        return cut

    def _chunks_of(self, job) -> tf.data.Dataset:
        return _num_chunks(tf.shape(job["origins"])[0], self.chunk_size)

    def _cutter(self, spec) -> Callable:
        """The chunk-cutting function for elements of ``spec`` (channel shapes stay static)."""
        shapes = {k: spec[k].shape[2:].as_list() for k in _PIXEL_KEYS if k in spec}
        return lambda job, chunk: self._cut(job, chunk, shapes)

    def _cut(self, job, chunk, shapes) -> dict:
        n = tf.shape(job["origins"])[0]
        first = tf.cast(chunk, tf.int32) * self.chunk_size
        rows = tf.range(first, tf.minimum(n, first + self.chunk_size))
        g = math.gcd(self.patch_size[1], self.stride[1])
        idx = grid_table_index(tf.gather(job["starts"][:, 0], rows), tf.gather(job["block"], rows), job["blocks"], self.patch_size, g)
        out = _chunk_meta(job, tf.gather(job["origins"], rows))
        for k in _PIXEL_KEYS:
            if f"table/{k}" in job:
                patches = tf.gather(job[f"table/{k}"], idx)
                rest = shapes[k]
                out[k] = tf.reshape(patches, [tf.size(rows), *self.patch_size] + [-1] * len(rest))
                out[k].set_shape([None, *self.patch_size] + rest)
        return _ordered(out)

    def patches(self, element) -> tf.data.Dataset:
        """The lazy dataset of one element's patches (cut chunk by chunk)."""
        origins = self._static_origins(element)
        if origins is not None:
            static_cut = self._static_cutter(element, origins)
            count = -(-len(origins) // self.chunk_size)
            return tf.data.Dataset.range(count).map(E.no_autograph(lambda c: static_cut(element, c))).unbatch()
        job, cut = self._job(element), self._cutter(element)
        return self._chunks_of(job).map(E.no_autograph(lambda c: cut(job, c))).unbatch()

    def chunks(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """The chunk stream: batched contract elements of at most ``chunk_size`` patches of one image.

        Example:
          >>> import fcndata.testing as t
          >>> ds = t.dataset([(37, 53), (29, 41)]).apply(ExtractPatches(16, 8, chunk_size=10).chunks)
          >>> [int(c["image"].shape[0]) for c in ds], ds.element_spec["image"].shape.as_list()
          ([10, 10, 4, 10, 5], [None, 16, 16, 3])
        """
        E.check_spec(ds, where="ExtractPatches")
        origins = self._static_origins(ds.element_spec)
        if origins is not None:  # planned once, cut straight from the element's reshaped planes
            static_cut = self._static_cutter(ds.element_spec, origins)
            count = -(-len(origins) // self.chunk_size)
            if count == 1:
                return ds.map(E.no_autograph(lambda e: static_cut(e, None)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return _chunks(ds, lambda e: tf.data.Dataset.range(count), static_cut)
        jobs = ds.map(E.no_autograph(self._job), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _chunks(jobs, self._chunks_of, self._cutter(ds.element_spec))

    def batches(self, ds: tf.data.Dataset, batch_size: int, drop_remainder: bool = False) -> tf.data.Dataset:
        """The grid patches of ``ds`` in batches of ``batch_size``, in stream order: the
        same batches as ``ds.apply(stage).batch(batch_size)``, made from the chunks
        (``rebatch``) instead of single patches, ~1.5-2x faster to consume (per-patch
        elements cost tf.data a few ops each). For consumers that take the grid in order:
        prediction, evaluation, feature extraction; training mixes single patches
        through a shuffle buffer instead (:class:`ShuffledPatches`).

        Example:
          >>> import fcndata.testing as t
          >>> ds = t.dataset([(37, 53), (29, 41)])
          >>> stage = ExtractPatches(16, 8)
          >>> [int(b["image"].shape[0]) for b in stage.batches(ds, 16)]
          [16, 16, 7]
        """
        positive_int(batch_size, "batch_size", "ExtractPatches.batches")
        if self.images_per_batch != 1:
            return ds.apply(self).batch(batch_size, drop_remainder=drop_remainder)
        return self.chunks(ds).rebatch(batch_size, drop_remainder=drop_remainder)

    def count_skipped(self, dataset: tf.data.Dataset) -> int:
        """Images of ``dataset`` that this stage skips (only ``border="drop"`` skips)."""
        return count_skipped(dataset, self.patch_size) if self.border == "drop" else 0

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        # The per-patch stream cuts one slice per patch (patches_at), not the chunk tables:
        # measured on a quiet 2-core machine (16 RGB 512² + mask, patch 128, stride 64,
        # batch 64), slices gave 6.9k patches/s and the chunked table gather 3.1k (8-size
        # set: 3.9k vs 1.3k). `chunks` keeps the chunked form for whole-chunk consumers.
        E.check_spec(ds, where="ExtractPatches")

        def patches(element):
            origins = self.origins(tf.shape(element[E.IMAGE], out_type=tf.int32))
            return patches_at(element, origins, self.patch_size, self.ignore_label)

        return _interleave(ds, patches, self.images_per_batch)


@dataclass(frozen=True)
class RandomPatches:
    """``num_per_image`` patches at uniform random origins inside each image.

    An image smaller than the patch on an axis is padded on that axis (it lands at a
    random offset inside the patch, see :func:`random_origins`). Randomness is keyed by
    (seed, epoch, source_index), so parallel map and autotune do not change results.

    Args:
      patch_size: int or (height, width).
      num_per_image: patches per image.
      seed: stage seed.
      ignore_label: label value of padded pixels.
      images_per_batch: interleave this many images' patch streams.
      chunk_size: patches per element of :meth:`chunks` (a chunk never mixes images).

    Input element:
      contract element (image [H, W, C], label, roi, ...; optional weight, epoch).
    Output element:
      the same keys at [nh, nw]; origin in source coordinates (negative where padded).

    Example:
      >>> import fcndata.testing as t
      >>> ps = list(t.dataset([(37, 53)]).apply(RandomPatches(patch_size=8, num_per_image=3, seed=1)))
      >>> o = ps[0]["origin"].numpy()
      >>> [int(v) for v in ps[0]["image"][0, 0, :2]] == o.tolist()   # pixel (0, 0) is source (y, x)
      True
    """

    patch_size: Pair
    num_per_image: int = 16
    seed: int = 0
    ignore_label: int = E.IGNORE_LABEL
    images_per_batch: int = 1
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self):
        where = "RandomPatches"
        object.__setattr__(self, "patch_size", pair(self.patch_size, "patch_size", where))
        positive_int(self.num_per_image, "num_per_image", where)
        positive_int(self.images_per_batch, "images_per_batch", where)
        positive_int(self.chunk_size, "chunk_size", where)
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"{where}: seed must be an int. Received: seed={self.seed!r}")

    def origins(self, element) -> tf.Tensor:
        """``[num_per_image, 2]`` origins of one element, keyed by (seed, epoch, source_index)."""
        key = E.element_seed(self.seed, element, _SALT_RANDOM)
        return random_origins(tf.shape(element[E.IMAGE]), self.patch_size, self.num_per_image, key)

    def chunks(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """The chunk stream: batched contract elements of at most ``chunk_size`` patches of one image."""
        return _sliced_stream(self, ds, "RandomPatches", chunks_only=True)

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        return _sliced_stream(self, ds, "RandomPatches")


@dataclass(frozen=True)
class BalancedPatches:
    """Class-balanced patches: choose a class, then a pixel of it as the patch centre.

    Per image, ``num_per_image`` times: a class is drawn among the classes present
    (``class_probabilities`` renormalised over them), then a uniform pixel of that class
    becomes the patch centre; the patch is clamped inside the image (so the centre pixel
    is always in the patch, at its centre unless near an edge). ``foreground_fraction``
    of each image's patches (``ceil``, spread evenly, see :func:`foreground_mask`) are
    centred on a class other than 0 whenever the image has one (nnU-Net uses 0.33).
    Ignored pixels (``ignore_label`` or roi 0) are never centres.

    Args:
      patch_size: int or (height, width).
      num_per_image: patches per image.
      num_classes: number of real classes (class 0 is background).
      class_probabilities: ``"uniform"``, ``"inverse_frequency"`` (of the image's own
        class counts) or one probability per class.
      foreground_fraction: share of patches forced onto foreground, in [0, 1].
      seed: stage seed.
      ignore_label: label value of ignored and padded pixels.
      images_per_batch: interleave this many images' patch streams.
      chunk_size: patches per element of :meth:`chunks` (a chunk never mixes images).

    Input element:
      contract element (image [H, W, C], label [H, W], roi [H, W], ...).
    Output element:
      the same keys at [nh, nw]; origin in source coordinates.

    Example:
      >>> import fcndata.testing as t
      >>> ds = t.dataset([(37, 53)])  # three stripes of 18, 18, 17 columns
      >>> stage = BalancedPatches(patch_size=5, num_per_image=6, num_classes=3,
      ...                         class_probabilities=[0.0, 0.0, 1.0], seed=3)
      >>> sorted({int(p["label"][2, 2]) for p in ds.apply(stage)})
      [2]
    """

    patch_size: Pair
    num_per_image: int = 16
    num_classes: int = 2
    class_probabilities: Union[str, Sequence[float]] = "uniform"
    foreground_fraction: float = 0.0
    seed: int = 0
    ignore_label: int = E.IGNORE_LABEL
    images_per_batch: int = 1
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self):
        where = "BalancedPatches"
        object.__setattr__(self, "patch_size", pair(self.patch_size, "patch_size", where))
        positive_int(self.num_per_image, "num_per_image", where)
        positive_int(self.num_classes, "num_classes", where)
        positive_int(self.images_per_batch, "images_per_batch", where)
        positive_int(self.chunk_size, "chunk_size", where)
        p = self.class_probabilities
        if isinstance(p, str):
            choice(p, "class_probabilities", where, CLASS_PROBABILITIES, hint=" or a list of one probability per class")
        else:
            try:
                p = tuple(float(v) for v in p)
            except (TypeError, ValueError):
                raise TypeError(
                    f"{where}: class_probabilities must be 'uniform', 'inverse_frequency' or a list of "
                    f"numbers. Received: class_probabilities={self.class_probabilities!r}"
                ) from None
            if len(p) != self.num_classes or min(p) < 0 or sum(p) <= 0:
                raise ValueError(
                    f"{where}: class_probabilities must list num_classes={self.num_classes} non-negative "
                    f"numbers with a positive sum (they are renormalised over the classes present). "
                    f"Received: class_probabilities={list(p)}"
                )
            object.__setattr__(self, "class_probabilities", p)
        f = self.foreground_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise ValueError(
                f"{where}: foreground_fraction must be a number in [0, 1] (nnU-Net uses 0.33). "
                f"Received: foreground_fraction={f!r}"
            )
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"{where}: seed must be an int. Received: seed={self.seed!r}")

    def origins(self, element, return_classes: bool = False):
        """``[num_per_image, 2]`` origins of one element (and chosen classes)."""
        key = E.element_seed(self.seed, element, _SALT_BALANCED)
        return balanced_origins(
            element[E.LABEL],
            element[E.ROI],
            self.patch_size,
            self.num_per_image,
            self.num_classes,
            key,
            self.class_probabilities,
            foreground_mask(self.num_per_image, self.foreground_fraction),
            self.ignore_label,
            return_classes,
        )

    def chunks(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """The chunk stream: batched contract elements of at most ``chunk_size`` patches of one image."""
        return _sliced_stream(self, ds, "BalancedPatches", chunks_only=True)

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        return _sliced_stream(self, ds, "BalancedPatches")


@dataclass(frozen=True)
class ShuffledPatches:
    """A patch stage followed by a seeded shuffle buffer (mixes the interleaved images).

    Example:
      >>> import fcndata.testing as t
      >>> stage = ShuffledPatches(RandomPatches(8, num_per_image=4, images_per_batch=2), buffer_size=8, seed=0)
      >>> sorted(int(p["source_index"]) for p in t.dataset([(37, 53), (29, 41)]).apply(stage))
      [0, 0, 0, 0, 1, 1, 1, 1]
    """

    patches: Callable[[tf.data.Dataset], tf.data.Dataset]
    buffer_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if not callable(self.patches):
            raise TypeError(f"ShuffledPatches: patches must be a stage (Dataset -> Dataset). Received: patches={self.patches!r}")
        if not isinstance(self.buffer_size, int) or self.buffer_size < 0:
            raise ValueError(f"ShuffledPatches: buffer_size must be an int >= 0 (0 disables). Received: buffer_size={self.buffer_size!r}")

    def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        ds = ds.apply(self.patches)
        if self.buffer_size > 1:
            ds = ds.shuffle(self.buffer_size, seed=self.seed, reshuffle_each_iteration=True)
        return ds


def patches_from_config(cfg, data, seed: int = 0) -> ShuffledPatches:
    """The ``patches:`` section as one stage: grid | random | balanced, then a shuffle buffer.

    Args:
      cfg: :class:`fcndata.config.PatchesConfig`.
      data: :class:`fcndata.config.DataConfig` (``num_classes``, ``ignore_label``).
      seed: seed of the random patch stages and of the shuffle.

    Example:
      >>> from fcndata.config import load_config_text
      >>> cfg = load_config_text("patches: {mode: balanced, patch_size: 16, foreground_fraction: 0.33}")
      >>> patches_from_config(cfg.patches, cfg.data, seed=1).patches
      BalancedPatches(patch_size=(16, 16), num_per_image=16, num_classes=3, class_probabilities='uniform', foreground_fraction=0.33, seed=1, ignore_label=255, images_per_batch=4, chunk_size=64)
    """
    common = dict(patch_size=cfg.patch_size, ignore_label=data.ignore_label, images_per_batch=cfg.images_per_batch)
    if cfg.mode == "grid":
        stage = ExtractPatches(stride=cfg.stride, border=cfg.border, **common)
    elif cfg.mode == "random":
        stage = RandomPatches(num_per_image=cfg.num_per_image, seed=seed, **common)
    elif cfg.mode == "balanced":
        stage = BalancedPatches(
            num_per_image=cfg.num_per_image,
            num_classes=data.num_classes,
            class_probabilities=cfg.class_probabilities,
            foreground_fraction=cfg.foreground_fraction,
            seed=seed,
            **common,
        )
    else:
        raise ValueError(f"patches.mode must be one of ['grid', 'random', 'balanced']. Received: mode={cfg.mode!r}")
    return ShuffledPatches(stage, buffer_size=cfg.shuffle_buffer, seed=seed)
