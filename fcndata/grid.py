"""The patch grid, shared by training and prediction: origins, chunk tables, blend windows, stitching.

TorchIO splits this between its grid sampler and its aggregator; here one module holds the
geometry both sides use, so a patch trained on is a patch predicted on. Along one axis
(rows and columns alike) of length L, patch n, stride s::

    L = 11, n = 4, s = 3        0 1 2 3 4 5 6 7 8 9 10 | 11 12
    lattice 0, 3, 6             [0 0 0 0]
                                      [3 3 3 3]
                                            [6 6 6 6]    10 not covered yet
    shift: + one at L - n = 7                 [7 7 7 7]  -> 0 3 6 7   (default)
    pad:   + next lattice point 9                   [9 9 9|9 9]  -> 0 3 6 9   (padded)
    drop:  only patches inside                      -> 0 3 6   (10 never seen)

* origins: :func:`grid_origins` (numpy) and :func:`grid_origins_tf` (in the graph), and
  their 2-D products;
* chunk tables: :func:`grid_tables` cuts a whole grid with one gather per plane when the
  stride divides the patch (:func:`block_cuttable`);
* blending: :func:`blend_window` (average, gaussian σ = n/8, hann, crop);
* stitching: :class:`Stitcher` (numpy, in place, any number of windows) and :func:`stitch`.

Example:
  >>> grid_origins(11, 4, 3, "shift").tolist(), grid_origins(11, 4, 3, "pad").tolist()
  ([0, 3, 6, 7], [0, 3, 6, 9])
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata.common import choice, pair, positive_int

BORDERS = ("shift", "pad", "drop")
#: Largest patch / stride ratio blended as k² shifted block adds (see
#: :func:`block_cuttable`); above it the scatter-add path is fewer ops.
MAX_BLOCKS = 8
BLENDS = ("average", "gaussian", "hann", "crop")
#: Smallest per-axis blend weight, so an edge pixel covered by one patch only keeps a
#: positive weight (a Hann window is 0 at its ends) and identity stitching stays exact.
WEIGHT_FLOOR = 1e-4

Pair = Union[int, Sequence[int]]


def check_stride(patch_size, stride, border, where):
    if border != "drop" and any(s > n for s, n in zip(stride, patch_size)):
        raise ValueError(
            f"{where}: stride larger than patch_size leaves pixels that no patch covers under "
            f"border={border!r}; use stride <= patch_size, or border='drop' if gaps are wanted. "
            f"Received: stride={tuple(stride)}, patch_size={tuple(patch_size)}"
        )


def grid_origins(length: int, patch_size: int, stride: int, border: str = "shift") -> np.ndarray:
    """Patch origins along one axis: the regular lattice plus the border rule.

    Origins are ``0, s, 2s, …`` while ``origin + n <= L``; what happens to the last
    ``L mod s`` pixels depends on ``border``::

        L = 11, n = 4, s = 3      |0 1 2 3 4 5 6 7 8 9 10|
        shift  0 3 6 7            one more patch at L - n: full coverage, no padding
        pad    0 3 6 9            lattice continues until it covers L; 9..12 padded
        drop   0 3 6              only whole patches (tf.image.extract_patches VALID)

    An axis shorter than the patch gives ``[0]`` (the patch is padded) except under
    ``drop``, which gives no origin at all.

    Args:
      length: L, pixels along the axis (>= 0).
      patch_size: n, patch length (>= 1).
      stride: s, distance between lattice origins (>= 1).
      border: ``"shift"`` (default, as TorchIO / MONAI / nnU-Net), ``"pad"`` or ``"drop"``.

    Returns:
      Sorted, distinct int64 origins.

    Raises:
      ValueError: a size is out of range or ``border`` unknown.

    Example:
      >>> grid_origins(10, 4, 3).tolist(), grid_origins(10, 4, 4).tolist()
      ([0, 3, 6], [0, 4, 6])
      >>> grid_origins(10, 4, 4, "pad").tolist(), grid_origins(10, 4, 4, "drop").tolist()
      ([0, 4, 8], [0, 4])
      >>> grid_origins(3, 4, 2).tolist(), grid_origins(3, 4, 2, "drop").tolist()
      ([0], [])
    """
    where = "grid_origins"
    choice(border, "border", where, BORDERS)
    for name, value, low in (("length", length, 0), ("patch_size", patch_size, 1), ("stride", stride, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{where}: {name} must be an int >= {low}. Received: {name}={value!r}")
    length, n, s = int(length), int(patch_size), int(stride)
    if border == "drop":
        return np.arange(0, max(length - n + 1, 0), s, dtype=np.int64)
    if border == "pad":
        last = max(0, -(-(length - n) // s))  # ceil((L - n) / s): first lattice point reaching L
        return np.arange(last + 1, dtype=np.int64) * s
    origins = np.arange(0, max(length - n, 0) + 1, s, dtype=np.int64)
    if origins[-1] + n < length:
        origins = np.append(origins, length - n)
    return origins


def grid_origins_tf(length, patch_size: int, stride: int, border: str = "shift") -> tf.Tensor:
    """The graph twin of :func:`grid_origins`: ``length`` may be a dynamic int tensor.

    Example:
      >>> grid_origins_tf(tf.constant(11), 4, 3).numpy().tolist()
      [0, 3, 6, 7]
      >>> tf.function(lambda L: grid_origins_tf(L, 4, 3, "pad"))(tf.constant(11)).numpy().tolist()
      [0, 3, 6, 9]
    """
    choice(border, "border", "grid_origins_tf", BORDERS)
    length = tf.cast(length, tf.int32)
    n, s = int(patch_size), int(stride)
    if border == "drop":
        return tf.range(0, tf.maximum(length - n + 1, 0), s)  # empty when L < n
    if border == "pad":
        last = tf.maximum(0, (length - n + s - 1) // s)
        return tf.range(last + 1) * s
    origins = tf.range(0, tf.maximum(length - n, 0) + 1, s)
    needs_shift = origins[-1] + n < length
    shifted = tf.reshape(length - n, [1])[: tf.cast(needs_shift, tf.int32)]
    return tf.concat([origins, shifted], axis=0)


def grid_origins_2d(shape: Sequence[int], patch_size: Pair, stride: Pair, border: str = "shift") -> np.ndarray:
    """All (y, x) grid origins of an image, row-major: ``[N, 2]`` int64.

    Example:
      >>> grid_origins_2d((5, 7), 4, 3).tolist()
      [[0, 0], [0, 3], [1, 0], [1, 3]]
    """
    n = pair(patch_size, "patch_size", "grid_origins_2d")
    s = pair(stride, "stride", "grid_origins_2d")
    ys = grid_origins(int(shape[0]), n[0], s[0], border)
    xs = grid_origins(int(shape[1]), n[1], s[1], border)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def grid_origins_2d_tf(shape, patch_size: Pair, stride: Pair, border: str = "shift") -> tf.Tensor:
    """The graph twin of :func:`grid_origins_2d`: ``[N, 2]`` int32 from a dynamic (H, W)."""
    n = pair(patch_size, "patch_size", "grid_origins_2d_tf")
    s = pair(stride, "stride", "grid_origins_2d_tf")
    shape = tf.cast(shape, tf.int32)
    ys = grid_origins_tf(shape[0], n[0], s[0], border)
    xs = grid_origins_tf(shape[1], n[1], s[1], border)
    yy, xx = tf.meshgrid(ys, xs, indexing="ij")
    return tf.stack([tf.reshape(yy, [-1]), tf.reshape(xx, [-1])], axis=1)


def grid_tables(planes, origins, patch_size: Pair, stride: Pair) -> dict:
    """Lays out pixel planes so grid patches are cut by one ``tf.gather`` per plane.

    A plane ``[H, W, ...]`` becomes a table of rows of ``g`` pixels,
    ``g = gcd(patch width, stride width)``. A patch at (y, x) is then ``nh × nw/g``
    whole table rows, ``(y + r) * width_blocks + x/g + t``, so a chunk of patches is cut
    straight into ``[K, nh, nw, ...]``: no per-patch op, each output byte written once::

        W = 12, nw = 4, s = 2, g = 2     | 0 1 | 2 3 | 4 5 | 6 7 | 8 9 | 10 11 |
        patch at x = 4 = table columns        2     3   of the rows it spans

    Rows need no alignment (any y). The table is a free reshape when W and every x
    origin are multiples of g; otherwise (``border="shift"``'s last column at W - nw, a
    width not a multiple of g) it is the aligned columns plus that one last column band,
    which costs one copy of the planes. Grid origins have at most one unaligned column.

    Args:
      planes: dict of ``[H, W, ...]`` tensors (image, label, roi, weight).
      origins: ``[N, 2]`` int32 grid origins inside the planes.
      patch_size, stride: the grid's.

    Returns:
      A dict of tensors: ``table/<key>`` ``[rows, g * channels]`` per plane,
      ``block`` ``[N]`` the table column of each origin, ``blocks`` the table width.
    """
    nw = pair(patch_size, "patch_size", "grid_tables")[1]
    g = math.gcd(nw, pair(stride, "stride", "grid_tables")[1])
    origins = tf.cast(origins, tf.int32)
    width = tf.shape(planes[E.IMAGE], out_type=tf.int32)[1]
    xs = origins[:, 1]
    wb = width // g
    aligned = tf.equal(xs % g, 0) & (xs + nw <= wb * g)
    extra = tf.reduce_any(~aligned)
    extra_x = tf.reduce_max(tf.concat([tf.where(aligned, 0, xs), [0]], 0))
    extra_w = tf.where(extra, nw, 0)
    copy = extra | tf.not_equal(width % g, 0)
    out = {"block": tf.where(aligned, xs // g, wb), "blocks": wb + extra_w // g}
    for k, x in planes.items():
        c = tf.reduce_prod(tf.shape(x, out_type=tf.int32)[2:])  # 1 for [H, W] planes
        rest = x.shape.rank - 2

        def view(x=x, c=c):
            return tf.reshape(x, [-1, g * c])

        def rebuilt(x=x, c=c, rest=rest):
            last = tf.slice(x, tf.concat([[0, extra_x], tf.zeros([rest], tf.int32)], 0),
                            tf.concat([[-1, extra_w], -tf.ones([rest], tf.int32)], 0))
            return tf.reshape(tf.concat([x[:, : wb * g], last], axis=1), [-1, g * c])

        out[f"table/{k}"] = tf.cond(copy, rebuilt, view)
    return out


def grid_table_index(y, block, blocks, patch_size: Pair, g: int) -> tf.Tensor:
    """Table rows of the patches at rows ``y`` ``[K]`` and table columns ``block`` ``[K]``: ``[K, nh, nw/g]``."""
    nh, nw = patch_size
    rows = (y[:, None, None] + tf.range(nh)[None, :, None]) * blocks
    return rows + block[:, None, None] + tf.range(nw // g)[None, None, :]


def block_cuttable(patch_size: Pair, stride: Pair) -> bool:
    """True when each stride divides its patch side with at most :data:`MAX_BLOCKS`
    blocks per side: a window is then k × k blocks of s × s pixels, k = n / s, and
    overlapping windows share whole blocks.

    Example:
      >>> block_cuttable(128, 64), block_cuttable((128, 96), (64, 32)), block_cuttable(16, 6)
      (True, True, False)
    """
    n = pair(patch_size, "patch_size", "block_cuttable")
    s = pair(stride, "stride", "block_cuttable")
    return all(a % b == 0 and a // b <= MAX_BLOCKS for a, b in zip(n, s))


def blend_window(patch_size: int, blend: str = "gaussian") -> np.ndarray:
    """The 1-D blend weights of one axis (the 2-D window is their outer product).

    ``average`` and ``crop``: ones; ``gaussian``: σ = n/8 around the patch centre (as
    MONAI and nnU-Net); ``hann``: a Hann window of n + 2 points without its zero ends
    (as TorchIO). All are floored at :data:`WEIGHT_FLOOR`, never 0.

    Example:
      >>> blend_window(5, "hann").round(2).tolist()
      [0.25, 0.75, 1.0, 0.75, 0.25]
      >>> [round(float(v), 4) for v in blend_window(8, "gaussian")[[0, 3]]]
      [0.0022, 0.8825]
    """
    choice(blend, "blend", "blend_window", BLENDS)
    n = int(patch_size)
    if blend == "gaussian":
        i = np.arange(n) - (n - 1) / 2
        w = np.exp(-0.5 * (i / (n / 8)) ** 2)
    elif blend == "hann":
        w = np.hanning(n + 2)[1:-1]
    else:
        w = np.ones(n)
    return np.maximum(w, WEIGHT_FLOOR).astype(np.float32)


def nearest_centre_intervals(origins: np.ndarray, length: int, n: int) -> dict[int, tuple[int, int]]:
    """Crop blend on one axis: the local interval [a, b) of each patch whose pixels have
    this patch's centre as the nearest one (first patch on ties). In 1-D these cells are
    intervals, so crop stitching on a grid is a copy of one rectangle per patch."""
    centres = origins + (n - 1) / 2
    nearest = np.argmin(np.abs(np.arange(length)[:, None] - centres[None, :]), axis=1)
    out = {}
    for i, o in enumerate(origins.tolist()):
        pixels = np.flatnonzero(nearest == i)
        pixels = pixels[(pixels >= o) & (pixels < o + n)]
        out[o] = (int(pixels[0] - o), int(pixels[-1] + 1 - o)) if len(pixels) else (0, 0)
    return out


class Stitcher:
    """Re-assembles per-patch outputs into one ``[H, W, C]`` float32 map, batch by batch.

    Output = per-pixel weighted sum of the patch outputs divided by the summed weights
    (``blend`` sets the window, see :func:`blend_window`); ``crop`` takes each pixel
    from the patch whose centre is nearest, i.e. keeps the centre of every overlap.
    Pixels no patch covers (only possible with ``border="drop"``) are 0.

    Give ``stride`` (and ``border``) when the patches come from the grid: the summed
    weights are then separable, two vectors of H and W, and memory is the output
    alone. Without ``stride`` any origins are accepted and an [H, W] weight map is kept.

    Args:
      source_shape: (H, W) of the image.
      patch_size: int or (height, width) of the patch outputs.
      channels: channels C of the outputs.
      blend: ``"average"`` | ``"gaussian"`` | ``"hann"`` | ``"crop"``.
      stride: the grid stride, or None for arbitrary origins.
      border: the grid border rule (with ``stride``).
      dtype: accumulator dtype, ``"float32"`` or ``"float64"`` (bit-exact identity).

    Example:
      >>> import fcndata.testing as t
      >>> image = t.coordinate_image(37, 53, dtype="float32")
      >>> origins = grid_origins_2d((37, 53), 16, 8)
      >>> patches = np.stack([image[y:y + 16, x:x + 16] for y, x in origins])
      >>> s = Stitcher((37, 53), 16, channels=3, blend="average", stride=8)
      >>> s.add(patches[:10], origins[:10]); s.add(patches[10:], origins[10:])
      >>> bool(np.array_equal(s.result(), image.numpy()))
      True
    """

    def __init__(
        self,
        source_shape: Sequence[int],
        patch_size: Pair,
        channels: int,
        blend: str = "gaussian",
        stride: Pair | None = None,
        border: str = "shift",
        dtype: str = "float32",
    ):
        where = "Stitcher"
        self.source_shape = pair(tuple(int(v) for v in source_shape[:2]), "source_shape", where)
        self.patch_size = pair(patch_size, "patch_size", where)
        positive_int(channels, "channels", where)
        choice(blend, "blend", where, BLENDS)
        choice(border, "border", where, BORDERS)
        choice(str(np.dtype(dtype)), "dtype", where, ("float32", "float64"))
        self.channels, self.blend, self.border = int(channels), blend, border
        self.stride = None if stride is None else pair(stride, "stride", where)
        (h, w), (nh, nw) = self.source_shape, self.patch_size
        self._out = np.zeros((h, w, self.channels), dtype)
        self._tmp = np.zeros((nh, nw, self.channels), dtype)
        window = np.outer(blend_window(nh, blend), blend_window(nw, blend)).astype(dtype)
        self._window = window
        # Repeated over channels: a broadcast over a last axis of 3 runs numpy ~10x slower.
        self._window_c = np.ascontiguousarray(np.repeat(window[:, :, None], self.channels, axis=2))
        self._grid = None
        if self.stride is not None:
            check_stride(self.patch_size, self.stride, border, where)
            self._grid = []
            for length, n, s in zip(self.source_shape, self.patch_size, self.stride):
                origins = grid_origins(length, n, s, border)
                if blend == "crop":
                    self._grid.append((nearest_centre_intervals(origins, length, n), None))
                    continue
                total = np.zeros(length + n + int(origins[-1] if len(origins) else 0), np.float64)
                for o in origins.tolist():
                    total[o : o + n] += blend_window(n, blend)
                total = total[:length]
                self._grid.append(({int(o): None for o in origins}, np.where(total > 0, total, 1.0).astype(dtype)))
        elif blend == "crop":
            i = (np.arange(nh) - (nh - 1) / 2) ** 2
            j = (np.arange(nw) - (nw - 1) / 2) ** 2
            self._distance = (i[:, None] + j[None, :]).astype(np.float32)
            self._best = np.full((h, w), np.inf, np.float32)
        else:
            self._weight = np.zeros((h, w), dtype)

    def _regions(self, origin, local_from=(0, 0), local_to=None):
        """Source and patch slices of the part of a patch inside the image (and inside
        the local box [local_from, local_to))."""
        local_to = local_to or self.patch_size
        out, local = [], []
        for o, a0, b0, length in zip(origin, local_from, local_to, self.source_shape):
            a, b = max(o + a0, 0), min(o + b0, length)
            if b <= a:
                return None
            out.append(slice(a, b))
            local.append(slice(a - o, b - o))
        return tuple(out), tuple(local)

    def _check_on_grid(self, y, x):
        (ys, _), (xs, _) = self._grid
        if y not in ys or x not in xs:
            raise ValueError(
                f"Stitcher.add: origin ({y}, {x}) is not on the grid of patch_size={self.patch_size}, "
                f"stride={self.stride}, border={self.border!r} for source_shape={self.source_shape}; "
                f"create the Stitcher without stride to accept arbitrary origins. Received: origin=({y}, {x})"
            )

    def add(self, predictions, origins) -> None:
        """Adds a batch: ``predictions [B, nh, nw, C]`` (any real dtype), ``origins [B, 2]`` (y, x)."""
        predictions = np.asarray(predictions)
        origins = np.asarray(origins).astype(np.int64).reshape(-1, 2)
        expected = (*self.patch_size, self.channels)
        if predictions.ndim != 4 or predictions.shape[1:] != expected or len(predictions) != len(origins):
            raise ValueError(
                f"Stitcher.add: predictions must be [B, {expected[0]}, {expected[1]}, {expected[2]}] with one "
                f"(y, x) origin per patch. Received: predictions.shape={predictions.shape}, "
                f"origins.shape={origins.shape}"
            )
        if self.blend == "crop":
            if self._grid is None:
                self._add_nearest(predictions, origins)
                return
            (ys, _), (xs, _) = self._grid
            for patch, (y, x) in zip(predictions, origins.tolist()):
                self._check_on_grid(y, x)
                (ay, by), (ax, bx) = ys[y], xs[x]
                regions = self._regions((y, x), (ay, ax), (by, bx))
                if regions is not None:
                    self._out[regions[0]] = patch[regions[1]]
            return
        weighted = self._tmp  # one patch, reused: stays in cache between multiply and add
        for patch, (y, x) in zip(predictions, origins.tolist()):
            if self._grid is not None:
                self._check_on_grid(y, x)
            regions = self._regions((y, x))
            if regions is None:
                continue
            out, local = regions
            np.multiply(patch, self._window_c, out=weighted, casting="unsafe")
            view = self._out[out]
            np.add(view, weighted[local], out=view)
            if self._grid is None:
                self._weight[out] += self._window[local]

    def _add_nearest(self, predictions, origins) -> None:
        for patch, (y, x) in zip(predictions, origins.tolist()):
            regions = self._regions((y, x))
            if regions is None:
                continue
            out, local = regions
            best = self._best[out]
            closer = self._distance[local] < best
            best[closer] = self._distance[local][closer]
            self._out[out][closer] = patch[local][closer]

    def result(self) -> np.ndarray:
        """The stitched ``[H, W, C]`` float32 map (call once, after the last :meth:`add`).

        With a float32 accumulator the normalisation is done in place and the
        accumulator itself is returned (no second copy of the output).
        """
        out = self._out
        if self.blend == "crop":
            pass  # values were copied, not summed
        elif self._grid is not None:
            (_, total_y), (_, total_x) = self._grid
            out /= total_y[:, None, None]
            out /= total_x[None, :, None]
        else:
            out /= np.where(self._weight > 0, self._weight, 1)[:, :, None]
        return out.astype(np.float32, copy=False)


def stitch(predictions, origins, source_shape: Sequence[int], blend: str = "gaussian") -> np.ndarray:
    """Stitches all patch outputs of one image at once: ``[N, nh, nw, C]`` -> ``[H, W, C]`` float32.

    Any origins are accepted (grid, random, balanced; partly outside the image). The
    sums run in float64, so stitching the patches of an image with an identity model
    returns the image bit for bit with every blend. Use :class:`Stitcher` to stream
    batches of a large image instead of holding all its patches.

    Args:
      predictions: per-patch outputs, any channel count.
      origins: ``[N, 2]`` (y, x) of each patch in the source image.
      source_shape: (H, W) of the source image.
      blend: ``"average"`` | ``"gaussian"`` | ``"hann"`` | ``"crop"``.

    Example:
      >>> import fcndata.testing as t
      >>> image = t.coordinate_image(37, 53, dtype="float32")
      >>> from fcndata.patches import ExtractPatches
      >>> ds = t.dataset([(37, 53)], dtype="float32").apply(ExtractPatches(16, stride=5))
      >>> ps = next(iter(ds.batch(1000)))
      >>> out = stitch(ps["image"], ps["origin"], (37, 53), blend="hann")
      >>> out.shape, out.dtype, bool(np.array_equal(out, image.numpy()))
      ((37, 53, 3), dtype('float32'), True)
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 4:
        raise ValueError(
            "stitch: predictions must be [N, height, width, channels] (add a channel axis to "
            f"single-channel outputs). Received: predictions.shape={predictions.shape}"
        )
    stitcher = Stitcher(source_shape, predictions.shape[1:3], predictions.shape[3], blend, dtype="float64")
    stitcher.add(predictions, origins)
    return stitcher.result()
