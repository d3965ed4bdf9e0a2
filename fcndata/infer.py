"""Sliding-window and whole-image prediction over images of any size, and stitching.

The predictor uses the patch engine's geometry: the same grid origins that
``ExtractPatches`` cuts for training (``border="shift"``: full coverage, no padding
inside the image) and the same blends as :class:`Stitcher`, with windows normalised per
axis beforehand (no division pass). When the stride divides the patch (128/64,
256/128, ...) a window is k × k blocks of s × s pixels and the image is predicted in
jobs, rectangles of windows on one lattice (one job for a 512² image with patch 128):
each job's windows are a strided numpy view of its region, scaled into one float32
buffer the model reads in place; the model runs ``batch_size`` windows per call, and
its outputs are weighted and overlap-added as k² strided adds of whole blocks (numpy,
no compile step; ``jit_compile=True`` does the cut and blend in XLA-compiled
``tf.function`` calls instead). Otherwise it runs one call per band of whole
window rows (about :data:`BAND_BYTES` of image): cut a batch (one ``tf.gather``, see
:func:`fcndata.patches.grid_tables`), run the model and scatter-add the weighted
outputs into the accumulator laid out the same way. Either way there is no Python per
patch. Without a patch size the whole image is padded to a multiple of 32
(roi 0 on the padding) and the prediction cropped back.

``Stitcher`` and ``stitch`` re-assemble per-patch outputs computed elsewhere (numpy,
any origins).

Example:
  >>> import keras, numpy as np
  >>> inp = keras.Input((None, None, 3))
  >>> identity = keras.Model(inp, inp)                    # "class scores" = the pixels
  >>> image = np.random.default_rng(0).random((37, 53, 3)).astype("float32")
  >>> out = SlidingWindowPredictor(identity, patch_size=16, stride=8, pad_to_multiple=1).predict(image)
  >>> bool(np.allclose(out, image, atol=1e-6))
  True
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import tensorflow as tf

from fcndata.common import ALIGN, PIXEL_MAX, aligned_empty, positive_int
from fcndata.grid import (
    blend_window,
    block_cuttable,
    grid_origins,
    grid_table_index,
    grid_tables,
    nearest_centre_intervals,
)


def to_model_input(image: np.ndarray) -> np.ndarray:
    """Scales pixels by training's rule (:func:`fcndata.batching.scale_image`, :data:`fcndata.common.PIXEL_MAX`):
    uint8 / 255, uint16 / 65535, float unchanged; bit for bit the numbers ``to_keras`` feeds."""
    image = np.asarray(image)
    top = PIXEL_MAX.get(image.dtype.name, 1.0)
    return image.astype(np.float32) if top == 1.0 else image.astype(np.float32) / np.float32(top)


def _pad_to(x: np.ndarray, height: int, width: int) -> np.ndarray:
    pad = [(0, height - x.shape[0]), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, pad)


@dataclass
class SlidingWindowPredictor:
    """Predicts class probabilities for images of any size.

    Args:
      model: a Keras model returning logits ``[B, H, W, K]`` (or any per-pixel output).
      patch_size: (height, width) or int; None predicts whole images.
      stride: (height, width) or int; default half the patch size.
      blend: ``average``, ``gaussian`` (σ = patch/8), ``hann`` or ``crop``.
      batch_size: patches per model call.
      flip_tta: also predict the horizontally flipped image and average.
      masked: the model takes ``{"image", "roi"}`` (``model.masked: true``); detected
        from the model's inputs when None.
      pad_to_multiple: patch / image sizes the model needs (32 for FCN-8s).
      softmax: turn logits into probabilities before blending (identity-free models only).
      workers: threads that run the block path's jobs (and :meth:`predict_many`'s
        images) side by side; default the cores, at most 4. 1 runs everything on the
        calling thread.
      jit_compile: when the stride divides the patch, cut and blend in XLA-compiled
        ``tf.function`` calls instead of numpy (the model itself is not compiled). XLA
        compiles once per window grid (~0.3 s) and is then ~1.3x faster per 512² image,
        but 2.3x slower on an 8192² image (see :meth:`_job`): worth it for long runs of
        one mid-sized image shape.
    """

    model: object
    patch_size: Optional[object] = None
    stride: Optional[object] = None
    blend: str = "gaussian"
    batch_size: int = 8
    flip_tta: bool = False
    masked: Optional[bool] = None
    pad_to_multiple: int = 32
    softmax: bool = False
    jit_compile: bool = False
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))

    def __post_init__(self):
        positive_int(self.workers, "workers", "SlidingWindowPredictor")
        if self.patch_size is not None:
            self.patch_size = _size_pair(self.patch_size, "patch_size")
            self.stride = _size_pair(self.stride if self.stride is not None else tuple(max(1, n // 2) for n in self.patch_size), "stride")
            bad = [n for n in self.patch_size if n % self.pad_to_multiple]
            if bad:
                raise ValueError(
                    f"SlidingWindowPredictor: patch_size must be a multiple of {self.pad_to_multiple} for this model "
                    f"(its skip connections need it). Received: patch_size={self.patch_size}"
                )
        if self.masked is None:
            self.masked = isinstance(getattr(self.model, "input", None), dict) or len(getattr(self.model, "inputs", [1])) > 1

    def _call(self, batch, roi):
        inputs = {"image": batch, "roi": roi[..., None]} if self.masked else batch
        out = tf.cast(self.model(inputs, training=False), tf.float32)
        return tf.nn.softmax(out, axis=-1) if self.softmax else out

    def _forward(self, batch, roi):
        out = self._call(batch, roi)
        if self.flip_tta:
            flipped = self._call(batch[:, :, ::-1], roi[:, :, ::-1])
            out = 0.5 * (out + flipped[:, :, ::-1])
        return out

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Per-pixel model output ``[H, W, K]`` (float32) for one image ``[H, W, C]``.

        Memory, block path (stride divides the patch): the float32
        output (filled job by job: copied where a job is first, added where jobs
        overlap; the job's own output when one job covers the image) plus the jobs in
        flight (``workers`` + 1) — each its image region, its float32 windows (at most
        :data:`JOB_BYTES`, at least one batch), the model outputs and the job's output
        region (reused from job to job). 8192² RGB, patch 256, stride 128, batch 16:
        +907 MiB for a 768 MiB output, MONAI's ``sliding_window_inference`` +1,873 MiB
        (``make bench-peers``).

        Memory, scatter path: the float32 output ``[H, W, K]`` itself — a
        variable the batches are scatter-added into in place, handed back without a
        copy — plus one band of image rows (about :data:`BAND_BYTES`, as given: uint8
        stays uint8, pixels are scaled per batch; no copy at all when the band is
        64-byte aligned and contiguous) and one batch. The blend windows are
        normalised per axis beforehand, so there is no division pass and no weight
        plane. Images whose width or shifted last column is not aligned to
        gcd(patch, stride) add one copy of the band and one of the output at the end
        (see :func:`fcndata.patches.grid_tables`). Identity models return the input to
        float32 rounding (a few ulp; exactly with ``blend="crop"``).
        """
        return self._predict(image, parallel=self.workers > 1)

    def _predict(self, image: np.ndarray, parallel: bool) -> np.ndarray:
        if self.patch_size is None:
            x = to_model_input(image)
            if x.ndim == 2:
                x = x[..., None]
            h, w = x.shape[:2]
            m = self.pad_to_multiple
            ph, pw = -(-h // m) * m, -(-w // m) * m
            roi = _pad_to(np.ones((h, w), np.float32), ph, pw)
            return self._forward(_pad_to(x, ph, pw)[None], roi[None])[0, :h, :w].numpy()
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            image = image.astype(np.float32)
        if block_cuttable(self.patch_size, self.stride):
            return self._sliding_blocks(image, parallel)
        return self._sliding(image)

    def _axis_plan(self, length: int, n: int, s: int):
        """Grid origins of one axis (``border="shift"``) and each origin's blend window,
        normalised so that every pixel's weights along this axis sum to 1."""
        origins = grid_origins(length, n, s, "shift")
        if self.blend == "crop":  # each pixel from the patch whose centre is nearest
            cells = nearest_centre_intervals(origins, length, n)
            windows = np.zeros((len(origins), n), np.float32)
            for i, o in enumerate(origins.tolist()):
                windows[i, cells[o][0] : cells[o][1]] = 1.0
        else:
            windows = np.tile(blend_window(n, self.blend), (len(origins), 1))
        total = np.zeros(length, np.float64)
        for o, v in zip(origins.tolist(), windows):
            total[o : o + n] += v
        # Normalised windows: each pixel's weights already sum to 1 along each axis, so
        # the accumulator is the output (no division pass, no second output-sized plane).
        for i, o in enumerate(origins.tolist()):
            windows[i] = windows[i] / total[o : o + n]
        return origins, windows

    def _plan(self, h: int, w: int):
        """Grid origins (row-major, as ``ExtractPatches`` with ``border="shift"``) and the
        per-patch window vectors and summed weights of each axis, in numpy."""
        (nh, nw), (sh, sw) = self.patch_size, self.stride
        H, W = max(h, nh), max(w, nw)  # an image smaller than the patch is padded (roi 0)
        (ys, wy), (xs, wx) = self._axis_plan(H, nh, sh), self._axis_plan(W, nw, sw)
        iy, ix = np.meshgrid(np.arange(len(ys)), np.arange(len(xs)), indexing="ij")
        iy, ix = iy.ravel(), ix.ravel()
        origins = np.stack([ys[iy], xs[ix]], axis=1).astype(np.int32)
        return origins, wy[iy], wx[ix]

    def _sliding(self, image: np.ndarray) -> np.ndarray:
        (nh, nw), (_, sw) = self.patch_size, self.stride
        h, w = image.shape[:2]
        H, W = max(h, nh), max(w, nw)
        origins, wy, wx = self._plan(h, w)
        # The accumulator uses the cutting table's layout (rows of g pixels, see
        # fcndata.patches.grid_tables): a window is nh x nw/g whole rows, so one
        # scatter-add per batch blends it in. It is a variable: the adds are in place.
        g = math.gcd(nw, sw)
        xs = np.unique(origins[:, 1])
        extra = 0 if ((xs % g == 0) & (xs + nw <= (W // g) * g)).all() else nw
        blocks = W // g + extra // g
        k = self._output_channels(image)
        acc = tf.Variable(tf.zeros([H * blocks, g * k], tf.float32), shape=tf.TensorShape(None), trainable=False)
        # A divisor the graph cannot see as a constant: it would turn "x / 255" into
        # "x * (1 / 255)", which is not to_model_input's rounding.
        divisor = tf.constant(PIXEL_MAX.get(image.dtype.name, 1.0), tf.float32)
        for first, last in _bands(origins[:, 0], nh, image[0].nbytes, BAND_BYTES):
            y0, y1 = int(origins[first, 0]), int(origins[last - 1, 0]) + nh
            band = _adopt(image[y0 : min(y1, h)])  # rows are contiguous: a copy of the band at most
            rows = slice(first, last)
            self._graph(band, origins[rows] - np.array([y0, 0], np.int32), wy[rows], wx[rows], acc,
                        tf.constant([y0, y1 - y0, w], tf.int32), divisor)
        out = np.asarray(acc.read_value_no_copy()).reshape(H, blocks * g, k)  # the accumulator itself
        del acc
        if blocks * g != W:  # aligned columns + the shifted last column band: one copy
            main = (W // g) * g
            full = np.zeros((H, W, k), np.float32)
            full[:, :main] = out[:, :main]
            full[:, W - nw :] += out[:, main : main + extra]
            out = full
        return out[:h, :w]

    def _sliding_blocks(self, image: np.ndarray, parallel: bool = True) -> np.ndarray:
        """The sliding window when the stride divides the patch (:func:`block_cuttable`).

        Jobs are rectangles of windows on one lattice: bands of whole window rows ×
        segments of window columns, plus ``border="shift"``'s unaligned last row and
        column of windows as their own jobs. Each job's image region is scaled and cut,
        run through the model ``batch_size`` windows at a time, weighted and
        overlap-added as k² shifted adds of s × s blocks (no scatter) into the job's
        output region (:meth:`_job`, numpy; with ``jit_compile`` one ``tf.function``
        call whose cutting and blending are XLA-compiled, once per region shape), which
        is added into the numpy output.
        """
        (nh, nw), (sh, sw) = self.patch_size, self.stride
        h, w = image.shape[:2]
        H, W = max(h, nh), max(w, nw)
        (ys, wys), (xs, wxs) = self._axis_plan(H, nh, sh), self._axis_plan(W, nw, sw)
        window_bytes = nh * nw * image.shape[2] * 4
        # Whole batches per job: a job of one batch runs the model without slicing.
        max_windows = self.batch_size * max(1, JOB_BYTES // (self.batch_size * window_bytes))
        row_bytes = image[0].nbytes
        divisor = np.float32(PIXEL_MAX.get(image.dtype.name, 1.0))
        jobs = _jobs(ys, xs, sh, sw, nh, max_windows, row_bytes, BAND_BYTES)

        def run(rows, cols):
            y0, x0 = int(ys[rows.start]), int(xs[cols.start])
            y1, x1 = int(ys[rows.stop - 1]) + nh, int(xs[cols.stop - 1]) + nw
            region = image[y0:min(y1, h), x0:min(x1, w)]
            if region.shape[:2] != (y1 - y0, x1 - x0):  # only an image smaller than the patch
                region = _pad_to(region, y1 - y0, x1 - x0)
            ry = (ys[rows, None] + np.arange(nh)[None] < h).astype(np.float32)
            rx = (xs[cols, None] + np.arange(nw)[None] < w).astype(np.float32)
            if self.jit_compile:
                graph = self._job_graph[len(rows) * len(cols) > self.batch_size]
                return _own_numpy(graph(_adopt(region), wys[rows], wxs[cols], ry, rx, tf.constant(divisor)))
            return self._job(region, wys[rows], wxs[cols], ry, rx, divisor, spare)

        # Several jobs: their outputs are merged into `out` and dropped, so they are taken
        # from and given back to a few spare buffers (fresh pages cost the kernel a zeroing
        # each: the 8192² image's kernel time fell from 0.50 to 0.40 s, getrusage). One
        # job: its output is the image's output, fresh.
        spare = _Spare() if len(jobs) > 1 and not self.jit_compile else None

        # Jobs run on the worker threads (numpy and TensorFlow release the GIL), at most
        # `workers` ahead; their outputs are merged here, in order.
        tasks = ((lambda r=r, c=c: run(r, c)) for r, c in jobs)
        results = self._in_order(tasks) if parallel else (task() for task in tasks)
        out, group, done_y, done_x = None, None, 0, 0
        for (rows, cols), result in zip(jobs, results):
            y0, x0 = int(ys[rows.start]), int(xs[cols.start])
            y1, x1 = int(ys[rows.stop - 1]) + nh, int(xs[cols.stop - 1]) + nw
            if out is None and (y1 - y0, x1 - x0) == (H, W):
                out = result  # one job covers the image: its output is the output
                continue
            if out is None:  # every pixel is written before it is added to: no zero fill
                out = np.empty((H, W, result.shape[-1]), np.float32)
            if rows != group:  # jobs go row band by row band, each band over the full width
                done_y = max(done_y, y0 if group is None else int(ys[group.stop - 1]) + nh)
                group, done_x = rows, 0
            # Rows above done_y and, below it, columns left of done_x hold earlier jobs'
            # sums: add there, copy elsewhere.
            a = max(0, min(done_y, y1) - y0)
            b = max(0, min(done_x, x1) - x0)
            if a:
                np.add(out[y0 : y0 + a, x0:x1], result[:a], out=out[y0 : y0 + a, x0:x1])
            if b:
                np.add(out[y0 + a : y1, x0 : x0 + b], result[a:, :b], out=out[y0 + a : y1, x0 : x0 + b])
            out[y0 + a : y1, x0 + b : x1] = result[a:, b:]
            done_x = max(done_x, x1)
            if spare is not None:
                spare.give(result)
        return out[:h, :w]

    def _job(self, region, wy, wx, ry, rx, divisor, spare=None) -> np.ndarray:
        """One job of the block path in numpy: the output of its region.

        The windows are a strided view of the region, scaled into one reused float32
        buffer by one ``np.divide`` (a true division, as :func:`to_model_input`), which
        TensorFlow reads in place (DLPack); the model runs ``batch_size`` windows per
        call (a ``tf.function``); its outputs are weighted in place by the normalised
        axis windows (one 2-D plane per run of equal windows) and overlap-added as k²
        strided adds of s × s blocks into an output taken from ``spare`` when given. No compile
        step, and no copy of the windows between numpy and the model. Measured against
        the XLA job (``jit_compile=True``) with an identity model: 32 RGB 512² images,
        first pass 5.5k vs 2.2k windows/s (XLA compiles ~0.3 s), steady 6-8k vs 10k;
        one 8192² image, 1.7k vs 0.74k windows/s.
        """
        (nh, nw), (sh, sw) = self.patch_size, self.stride
        kh, kw = nh // sh, nw // sw
        r, c, C = len(wy), len(wx), region.shape[2]
        n = r * c
        windows = sliding_window_view(region, (nh, nw, C))[::sh, ::sw, 0]
        buffers = self.__dict__.setdefault("_buffers", {})  # one reused window buffer per thread
        key = threading.get_ident()
        if buffers.get(key, np.empty(0)).shape != (n, nh, nw, C):
            buffers[key] = aligned_empty((n, nh, nw, C), np.float32)
        batch = buffers[key]
        np.divide(windows, divisor, out=batch.reshape(r, c, nh, nw, C), casting="unsafe")
        roi = (ry[:, None, :, None] * rx[None, :, None, :]).reshape(n, nh, nw) if self.masked else None
        b = self.batch_size
        pred = None
        for first in range(0, n, b):
            x = tf.experimental.dlpack.from_dlpack(batch[first : first + b].__dlpack__())
            m = None if roi is None else tf.constant(roi[first : first + b])
            out = _own_numpy(self._model_fn(x, m))
            if n <= b:
                pred = out
                break
            if pred is None:
                pred = np.empty((n, *out.shape[1:]), np.float32)
            pred[first : first + b] = out
        k = pred.shape[-1]
        p = pred.reshape(r, c, nh, nw * k)
        # One weighting pass: windows of one run of equal row windows × one run of equal
        # column windows share their 2-D window (interior windows all share one; at most
        # 3 x 3 runs on an aligned lattice), multiplied in as that one [nh, nw * k] plane:
        # one pass over the windows instead of two separable ones (0.6 against 1.1 ms per
        # 512² RGB image of 128² windows at stride 64, one thread).
        wxk = np.repeat(wx, k, axis=1)
        column_runs = _runs(wxk)
        for i0, i1 in _runs(wy):
            for j0, j1 in column_runs:
                p[i0:i1, j0:j1] *= wy[i0][:, None] * wxk[j0][None, :]
        # The output's fresh pages are written before they are read: zeros where block
        # (0, 0) does not reach, block (0, 0) copied, then the other blocks added. (Adding
        # into np.zeros reads each fresh page first: a second fault per page and, with
        # several threads, a TLB shootdown each. The 32 × 512² set of make bench-peers
        # ran in 0.21 s that way, 0.13 s this way.)
        shape = ((r + kh - 1) * sh, (c + kw - 1) * sw, k)
        result = np.empty(shape, np.float32) if spare is None else spare.take(shape)
        o = result.reshape(r + kh - 1, sh, c + kw - 1, sw * k)
        o[r:] = 0
        o[:r, :, c:] = 0
        p = pred.reshape(r, c, kh, sh, kw, sw * k)
        np.copyto(o[:r, :, :c], p[:, :, 0, :, 0].transpose(0, 2, 1, 3))
        for a in range(kh):
            for bb in range(kw):
                if a or bb:
                    view = o[a : a + r, :, bb : bb + c]
                    np.add(view, p[:, :, a, :, bb].transpose(0, 2, 1, 3), out=view)
        return result

    @property
    def _model_fn(self):
        if self.__dict__.get("_model_fn_") is None:
            def forward(x, roi):
                if roi is None:
                    roi = tf.ones(tf.shape(x)[:3], tf.float32)
                return self._forward(x, roi)
            self._model_fn_ = tf.function(forward, reduce_retracing=True, autograph=False)
        return self._model_fn_

    @property
    def _job_graph(self):
        if self.__dict__.get("_job_fn") is None:
            (nh, nw), (sh, sw) = self.patch_size, self.stride
            kh, kw = nh // sh, nw // sw

            def cut(region, wy, wx, divisor):
                r, c = tf.shape(wy)[0], tf.shape(wx)[0]
                # Under XLA, scaling the region first (a true division, as to_model_input) and
                # gathering rows then columns fuses into one loop per gather (measured ~1.7x
                # less CPU than block slices of the uint8 region, cast afterwards).
                x = tf.cast(region, tf.float32) / divisor
                rows = tf.gather(x, (tf.range(r) * sh)[:, None] + tf.range(nh)[None])  # [r, nh, W, C]
                windows = tf.gather(rows, (tf.range(c) * sw)[:, None] + tf.range(nw)[None], axis=2)
                return tf.reshape(tf.transpose(windows, [0, 2, 1, 3, 4]), [r * c, nh, nw, -1])

            def blend(pred, wy, wx):
                r, c, k = tf.shape(wy)[0], tf.shape(wx)[0], tf.shape(pred)[-1]
                p = tf.reshape(pred, [r, c, nh, nw, k]) * wy[:, None, :, None, None] * wx[None, :, None, :, None]
                p = tf.reshape(p, [r, c, kh, sh, kw, sw * k])
                # Window (i, j)'s block (a, b) lands on output block (i + a, j + b).
                parts = [tf.pad(p[:, :, a, :, b], [[a, kh - 1 - a], [b, kw - 1 - b], [0, 0], [0, 0]])
                         for a in range(kh) for b in range(kw)]
                blocks = parts[0] if len(parts) == 1 else tf.add_n(parts)
                return tf.reshape(tf.transpose(blocks, [0, 2, 1, 3]), [(r + kh - 1) * sh, (c + kw - 1) * sw, k])

            jit_cut = tf.function(cut, jit_compile=True)
            jit_blend = tf.function(blend, jit_compile=True)

            def job(region, wy, wx, ry, rx, divisor):
                batch = jit_cut(region, wy, wx, divisor)
                roi = tf.reshape(ry[:, None, :, None] * rx[None, :, None, :], [-1, nh, nw])
                return jit_blend(self._forward(batch, roi), wy, wx)

            def batched_job(region, wy, wx, ry, rx, divisor):  # slices and a concat: two more copies
                batch = jit_cut(region, wy, wx, divisor)
                roi = tf.reshape(ry[:, None, :, None] * rx[None, :, None, :], [-1, nh, nw])
                n, b = tf.shape(batch)[0], self.batch_size
                preds = tf.TensorArray(tf.float32, size=(n + b - 1) // b, infer_shape=False)
                for i in tf.range((n + b - 1) // b):
                    preds = preds.write(i, self._forward(batch[i * b : (i + 1) * b], roi[i * b : (i + 1) * b]))
                return jit_blend(preds.concat(), wy, wx)

            # A job of at most one batch (the usual case) calls the model once, unsliced.
            self._job_fn = (tf.function(job, reduce_retracing=True), tf.function(batched_job, reduce_retracing=True))
        return self._job_fn

    def _output_channels(self, image: np.ndarray) -> int:
        """K of the model's output, from one patch of zeros (cached per input channel count)."""
        cache = self.__dict__.setdefault("_channels", {})
        c = image.shape[-1]
        if c not in cache:
            zeros = tf.zeros([1, *self.patch_size, c], tf.float32)
            cache[c] = int(self._forward(zeros, tf.zeros([1, *self.patch_size], tf.float32)).shape[-1])
        return cache[c]

    @property
    def _graph(self):
        # Image sizes are dynamic: reduce_retracing settles on one trace per input dtype
        # and channel count once it has seen two sizes.
        if self.__dict__.get("_graph_fn") is None:
            self._graph_fn = tf.function(self._predict_graph, reduce_retracing=True)
        return self._graph_fn

    def _predict_graph(self, band, origins, wy, wx, acc, geometry, divisor):
        """Cuts every batch of a band's windows, runs the model and scatter-adds its
        outputs, weighted by the normalised windows, into ``acc`` (the output, in table
        layout). ``band`` holds image rows [y0, y0 + height) (fewer at the image's end;
        the rest is padding, roi 0), ``origins`` are band coordinates, ``geometry`` is
        (y0, height, image width)."""
        (nh, nw), (_, sw) = self.patch_size, self.stride
        g = math.gcd(nw, sw)
        y0, height, width = geometry[0], geometry[1], geometry[2]
        real = tf.shape(band, out_type=tf.int32)[:2]
        W = tf.maximum(width, nw)
        padded = tf.pad(band, [[0, height - real[0]], [0, W - real[1]], [0, 0]])
        layout = grid_tables({"image": padded}, origins, self.patch_size, self.stride)
        table, block, blocks = layout["table/image"], layout["block"], layout["blocks"]
        channels = band.shape[-1]
        n = tf.shape(origins)[0]
        b = self.batch_size
        for first in tf.range(0, n, b):
            rows = tf.range(first, tf.minimum(n, first + b))
            o = tf.gather(origins, rows)
            idx = grid_table_index(o[:, 0], tf.gather(block, rows), blocks, self.patch_size, g)
            batch = tf.reshape(tf.gather(table, idx), [-1, nh, nw, channels])
            batch = tf.cast(batch, tf.float32) / divisor  # a true division, as to_model_input
            ry = tf.cast(o[:, 0, None] + tf.range(nh)[None] < real[0], tf.float32)
            rx = tf.cast(o[:, 1, None] + tf.range(nw)[None] < real[1], tf.float32)
            pred = self._forward(batch, ry[:, :, None] * rx[:, None, :])
            k = tf.shape(pred)[-1]
            # Weights in the table layout [B, nh, nw * k]: broadcasting over a last axis of
            # k (3) channels runs ~2x slower than over a row.
            weight = tf.gather(wy, rows)[:, :, None] * tf.repeat(tf.gather(wx, rows), k, axis=1)[:, None, :]
            weighted = tf.reshape(pred, [-1, nh, nw * k]) * weight
            acc.scatter_nd_add((idx + y0 * blocks)[..., None], tf.reshape(weighted, [tf.shape(idx)[0], nh, nw // g, g * k]))
        return tf.constant(0)

    def _in_order(self, tasks):
        """Runs callables on the predictor's worker threads, at most ``workers`` ahead of
        the consumer, and yields their results in order."""
        pool = self.__dict__.get("_pool")
        if pool is None:
            pool = self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fcndata-predict")
        window = deque()
        for task in tasks:
            window.append(pool.submit(task))
            if len(window) > self.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def predict_many(self, images):
        """Yields :meth:`predict` of each image, in order. Images of up to about one job
        (float32 size <= :data:`JOB_BYTES`, e.g. 1024² RGB) are predicted ``workers`` at a
        time, one per thread (the numpy cut and blend and the model release the GIL);
        larger ones one at a time, their jobs side by side. Memory: ``workers + 1``
        outputs in flight besides the ones you keep.

        Example:
          >>> import keras
          >>> inp = keras.Input((None, None, 3))
          >>> p = SlidingWindowPredictor(keras.Model(inp, inp), patch_size=16, stride=8, pad_to_multiple=1)
          >>> images = [np.full((20 + i, 30, 3), i, np.uint8) for i in range(3)]
          >>> [float(out[0, 0, 0]) * 255 for out in p.predict_many(images)]
          [0.0, 1.0, 2.0]
        """
        if self.patch_size is None or self.workers == 1:
            yield from (self.predict(image) for image in images)
            return
        # Runs of images of about one job each are predicted side by side, one per thread;
        # a large image alone, its jobs side by side. The input is read lazily, in order.
        for small, run in itertools.groupby(images, key=lambda im: np.asarray(im).nbytes * 4 <= JOB_BYTES):
            if small:
                yield from self._in_order((lambda im=im: self._predict(im, parallel=False)) for im in run)
            else:
                yield from (self.predict(image) for image in run)

    def predict_labels(self, image: np.ndarray) -> np.ndarray:
        """Class ids ``[H, W]`` (uint8 when they fit) for one image."""
        labels = np.argmax(self.predict(image), axis=-1)
        return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int32)


#: Image bytes the predictor copies into TensorFlow at a time: it cuts an image in bands
#: of whole window rows of about this size, so a large image is never copied whole.
BAND_BYTES = 8 * 2**20


#: Float32 window bytes one job of the block predictor cuts at a time, in whole batches
#: (at least one): 64 windows of 128² RGB at batch 64, 16 of 256² at batch 16.
JOB_BYTES = 16 * 2**20


def _jobs(ys, xs, sh: int, sw: int, nh: int, max_windows: int, row_bytes: int, budget: int):
    """Rectangles of windows (row range, column range) on one lattice each: lattice rows
    in bands of at most ``budget`` image bytes and ``max_windows`` windows × lattice
    columns in segments, then the unaligned last row / column of ``border="shift"``.

    Example:
      >>> [(r.start, r.stop, c.start, c.stop) for r, c in _jobs(np.array([0, 2, 4, 5]), np.array([0, 2]), 2, 2, 4, 4, 1, 100)]
      [(0, 2, 0, 2), (2, 3, 0, 2), (3, 4, 0, 2)]
    """
    def split(origins, s):
        lattice = len(origins) - int(len(origins) > 0 and origins[-1] % s != 0)
        return lattice, [range(len(origins) - 1, len(origins))] if lattice < len(origins) else []

    nyl, extra_rows = split(ys, sh)
    nxl, extra_cols = split(xs, sw)
    per_segment = max(1, min(nxl, max_windows))
    col_groups = [range(j, min(j + per_segment, nxl)) for j in range(0, nxl, per_segment)] + extra_cols
    rows_per_band = max(1, max_windows // max(1, nxl)) if nxl <= max_windows else 1
    row_groups, first = [], 0
    while first < nyl:
        last = first + 1
        while (last < nyl and last - first < rows_per_band
               and (ys[last] + nh - ys[first]) * row_bytes <= budget):
            last += 1
        row_groups.append(range(first, last))
        first = last
    return [(r, c) for r in row_groups + extra_rows for c in col_groups]


def _bands(ys: np.ndarray, nh: int, row_bytes: int, budget: int) -> list[tuple[int, int]]:
    """Index ranges [first, last) of row-major grid origins, grouped in bands of whole
    window rows whose image rows take at most ``budget`` bytes (at least one window row).

    Example:
      >>> _bands(np.repeat([0, 8, 16, 24], 3), 16, 10, 300)
      [(0, 6), (6, 12)]
    """
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    ends = np.r_[starts[1:], len(ys)]
    bands, first = [], 0
    for i in range(1, len(starts) + 1):
        if i == len(starts) or (ys[ends[i] - 1] + nh - ys[starts[first]]) * row_bytes > budget:
            bands.append((int(starts[first]), int(ends[i - 1])))
            first = i
    return bands


class _Spare:
    """Float32 buffers given back after use, taken again by shape (thread-safe)."""

    def __init__(self):
        self._free, self._lock = {}, threading.Lock()

    def take(self, shape) -> np.ndarray:
        with self._lock:
            free = self._free.get(tuple(shape))
            if free:
                return free.pop()
        return np.empty(shape, np.float32)

    def give(self, array: np.ndarray) -> None:
        with self._lock:
            self._free.setdefault(array.shape, []).append(array)


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of equal consecutive rows of a 2-D array.

    >>> _runs(np.array([[1, 2], [3, 4], [3, 4], [3, 4], [5, 6]]))
    [(0, 1), (1, 4), (4, 5)]
    """
    cuts = np.flatnonzero((rows[1:] != rows[:-1]).any(axis=1)) + 1
    edges = [0, *cuts.tolist(), len(rows)]
    return list(zip(edges[:-1], edges[1:]))


def _own_numpy(tensor: tf.Tensor) -> np.ndarray:
    """The tensor's buffer as a writable numpy array, without the copy ``.numpy()`` makes
    (2 ms per 512² × 3 float32 output here): for tensors nothing else holds, such as a
    graph call's fresh result. The array keeps the buffer alive."""
    view = getattr(tensor, "_numpy", None)
    return view() if view is not None else tensor.numpy()


def _adopt(array: np.ndarray) -> tf.Tensor:
    """The array as a tensor with at most one copy (``tf.convert_to_tensor`` holds two):
    TensorFlow adopts an aligned buffer through DLPack, so only an array that is not
    64-byte aligned and C-contiguous is copied (into one that is)."""
    if array.ctypes.data % ALIGN or not array.flags.c_contiguous or not array.flags.writeable:
        copy = aligned_empty(array.shape, array.dtype)
        np.copyto(copy, array)
        array = copy
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _size_pair(value, name):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"SlidingWindowPredictor: {name} must be a positive int or (height, width). Received: {name}={value}")
    return value


# ---------------------------------------------------------------------------- stitching


def predictor_from_config(model, cfg, masked: bool | None = None, pad_to_multiple: int = 32) -> SlidingWindowPredictor:
    """A predictor from a ``predict:`` section (:class:`fcndata.config.PredictConfig`).

    ``pad_to_multiple``: the model's stride (``fcndata.models.model_stride(config.model)``).
    """
    return SlidingWindowPredictor(
        model,
        pad_to_multiple=pad_to_multiple,
        patch_size=cfg.patch_size,
        stride=cfg.stride,
        blend=cfg.blend,
        batch_size=cfg.batch_size,
        flip_tta=cfg.flip_tta,
        masked=masked,
        jit_compile=cfg.jit_compile,
    )
