"""Patch extraction and stitching throughput, as ratios against a plain memory copy.

Run ``python benchmarks/patches.py [--quick]``; a runner can call ``main(quick)``.

One run, the same images (32 RGB 512×512 uint8 + label + roi, patch 128, stride 64):

  (a) ExtractPatches grid, batched by 64                       (fcndata)
  (b) tf.image.extract_patches + reshape in a tf.data pipeline (TF baseline)
  (c) numpy sliding_window_view + copy                          (numpy baseline)
  (d) one plain memory copy of the same number of bytes        (the yardstick)
  (e) BalancedPatches, 49 patches per image
  (f) Stitcher (gaussian) re-assembling the grid patches of (a)

Each row gives patches/s and its share of (d). Wall time is what a user sees; CPU time
(process time, all threads) is also shown because the machine may be shared: on a
loaded machine a long pipeline loses its time slices while a 20 ms memcpy does not,
so the CPU-time share is the fairer ratio. Then, in fresh subprocesses, the peak
resident memory added while cutting one 8192×8192 RGB image into 256×256 patches
with stride 128, and while stitching it back.

Targets (shares of (d), 2 threads): grid >= 25 %, balanced >= 10 %, stitching >= 25 %;
8192² cutting adds <= 300 MiB, stitching <= 1.1× its float32 output.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

THREADS = 2
PATCH, STRIDE, BATCH = 128, 64, 64


def _tf():
    import tensorflow as tf

    try:  # must happen before TF starts its thread pools; a runner may have done it already
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    except RuntimeError:
        pass
    return tf


def _options(tf):
    # Only the global pools are capped (see _tf): a private tf.data pool of 2 measured
    # slower on a shared 2-core machine, and tf.data's own default is the core count.
    return tf.data.Options()


def _images(num, size, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num, size, size, 3), dtype=np.uint8)
    # blocky labels with 5 classes, one of them rare, so balanced sampling has work to do
    blocks = rng.choice(5, size=(num, size // 32, size // 32), p=[0.6, 0.2, 0.1, 0.08, 0.02])
    labels = np.repeat(np.repeat(blocks, 32, axis=1), 32, axis=2).astype(np.uint8)
    return images, labels


def _source(tf, images, labels):
    from fcndata import elements as E

    num, h, w = labels.shape
    ds = tf.data.Dataset.from_tensor_slices(
        {
            E.IMAGE: images,
            E.LABEL: labels,
            E.ROI: np.ones_like(labels),
            E.ORIGIN: np.zeros((num, 2), np.int32),
            E.SOURCE_SHAPE: np.tile(np.array([h, w], np.int32), (num, 1)),
            E.SOURCE_INDEX: np.arange(num, dtype=np.int64),
            E.PATH: np.array([f"bench/{i}".encode() for i in range(num)]),
        }
    ).cache()
    for _ in ds:  # fill the cache: every variant then reads the same decoded tensors
        pass
    return ds


def _timed(fn, repeats):
    """Best (wall, cpu) seconds over ``repeats`` runs, and fn's return value."""
    best_wall = best_cpu = float("inf")
    result = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, result


def _count(ds):
    n = 0
    for batch in ds:
        n += int(batch["image"].shape[0])
    return n


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Samples this process's resident memory every 2 ms in a thread."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def added(self) -> int:
        return self.peak - self.base


def _memory_child(what: str, size: int) -> None:
    """Runs in a subprocess: prints base and peak RSS added by cutting or stitching."""
    tf = _tf()
    from fcndata import elements as E
    from fcndata import patches as P

    patch, stride = 256, 128
    if what.startswith("cut"):
        image = tf.constant(np.broadcast_to(np.arange(size, dtype=np.uint8)[:, None, None], (size, size, 3)).copy())
        label = tf.constant(np.broadcast_to((np.arange(size) % 3).astype(np.uint8)[None], (size, size)).copy())
        element = E.make_element(image, label, path="bench/8192")
        ds = tf.data.Dataset.from_tensors(element).apply(P.ExtractPatches(patch, stride)).batch(16)
        if what == "cut-noopt":
            # tf.data's default graph rewrite serialises captured constants once when the
            # iterator is made: +1 transient copy of a from_tensors source (not of sources
            # that read files). Without it we see what cutting itself adds.
            options = tf.data.Options()
            options.experimental_optimization.apply_default_optimizations = False
            ds = ds.with_options(options)
        with _PeakRss() as m:
            n = _count(ds)
        print(f"RESULT {m.added} {n} {image.numpy().nbytes + 2 * label.numpy().nbytes}")
    else:
        origins = P.grid_origins_2d((size, size), patch, stride)
        batch = 16
        predictions = np.random.default_rng(0).random((batch, patch, patch, 3), dtype=np.float32)
        with _PeakRss() as m:
            stitcher = P.Stitcher((size, size), patch, 3, blend="gaussian", stride=stride)
            for i in range(0, len(origins), batch):
                o = origins[i : i + batch]
                stitcher.add(predictions[: len(o)], o)
            out = stitcher.result()
        print(f"RESULT {m.added} {len(origins)} {out.nbytes}")


def _memory(what: str, size: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", what, "--size", str(size)]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    line = [s for s in out.splitlines() if s.startswith("RESULT")][-1]
    added, count, reference = (int(v) for v in line.split()[1:])
    return added, count, reference


def main(quick: bool = False) -> dict:
    """Runs the benchmark, prints a table and returns the numbers."""
    tf = _tf()
    from fcndata import patches as P

    num = 8 if quick else 32
    repeats = 2 if quick else 3
    images, labels = _images(num, 512)
    source = _source(tf, images, labels)
    options = _options(tf)
    per_image = len(P.grid_origins_2d((512, 512), PATCH, STRIDE))
    patch_bytes = PATCH * PATCH * (3 + 1 + 1)  # image + label + roi
    rows = {}

    # (a) fcndata grid
    grid = source.apply(P.ExtractPatches(PATCH, STRIDE)).batch(BATCH).with_options(options)
    rows["(a) ExtractPatches grid"] = _timed(lambda: _count(grid), repeats)

    # (a0) the floor of any patch stream in tf.data: batching ready-made patches costs this
    ready = {
        "image": tf.zeros([PATCH, PATCH, 3], tf.uint8),
        "label": tf.zeros([PATCH, PATCH], tf.uint8),
        "roi": tf.zeros([PATCH, PATCH], tf.uint8),
    }
    floor = tf.data.Dataset.from_tensors(ready).repeat(num * per_image).batch(BATCH).with_options(options)
    rows["(a0) tf.data batch of ready patches"] = _timed(lambda: _count(floor), repeats)

    # (b) tf.image.extract_patches (VALID; 512 = 384 + 128, so the same 49 patches)
    def tf_patches(e):
        def cut(x):
            x = x if x.shape.rank == 3 else x[..., None]
            c = x.shape[-1]
            p = tf.image.extract_patches(x[None], [1, PATCH, PATCH, 1], [1, STRIDE, STRIDE, 1], [1, 1, 1, 1], "VALID")
            return tf.reshape(p, [-1, PATCH, PATCH, c])

        return {"image": cut(e["image"]), "label": cut(e["label"])[..., 0], "roi": cut(e["roi"])[..., 0]}

    baseline = source.map(tf_patches).unbatch().batch(BATCH).with_options(options)
    rows["(b) tf.image.extract_patches"] = _timed(lambda: _count(baseline), repeats)

    # (c) numpy sliding_window_view + copy
    from numpy.lib.stride_tricks import sliding_window_view

    rois = np.ones_like(labels)

    def numpy_patches():
        n = 0
        for image, label, roi in zip(images, labels, rois):
            a = sliding_window_view(image, (PATCH, PATCH), axis=(0, 1))[::STRIDE, ::STRIDE].copy()
            b = sliding_window_view(label, (PATCH, PATCH))[::STRIDE, ::STRIDE].copy()
            c = sliding_window_view(roi, (PATCH, PATCH))[::STRIDE, ::STRIDE].copy()
            n += a.shape[0] * a.shape[1] + 0 * (b.size + c.size)
        return n

    rows["(c) numpy sliding_window_view"] = _timed(numpy_patches, repeats)

    # (d) memcpy of the same bytes
    total = num * per_image
    src = np.ones(total * patch_bytes, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first

    def memcpy():
        np.copyto(dst, src)
        return total

    rows["(d) memory copy"] = _timed(memcpy, max(repeats, 5))

    # (e) BalancedPatches, 49 per image
    balanced = source.apply(P.BalancedPatches(PATCH, num_per_image=per_image, num_classes=5, seed=0))
    balanced = balanced.batch(BATCH).with_options(options)
    rows["(e) BalancedPatches"] = _timed(lambda: _count(balanced), repeats)

    # (f) stitching the grid patches of (a), gaussian blend, one Stitcher per image
    batches = [(b["image"].numpy(), b["origin"].numpy(), b["source_index"].numpy()) for b in grid]

    def stitch_all():
        stitchers = {}
        n = 0
        for pred, origin, index in batches:
            for i in np.unique(index):
                if i not in stitchers:
                    stitchers[i] = P.Stitcher((512, 512), PATCH, 3, blend="gaussian", stride=STRIDE)
                sel = index == i
                stitchers[i].add(pred[sel], origin[sel])
                n += int(sel.sum())
        for s in stitchers.values():
            s.result()
        return n

    rows["(f) Stitcher gaussian"] = _timed(stitch_all, repeats)

    load = os.getloadavg()[0]
    wall_d, cpu_d, _ = rows["(d) memory copy"]
    print(f"\npatches: {num} images 512x512 RGB+label+roi, patch {PATCH}, stride {STRIDE}, "
          f"{per_image} patches/image, batch {BATCH}; {THREADS} threads; load average {load:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'variant':34s} {'patches/s':>10s} {'% of (d)':>9s} {'cpu % of (d)':>13s}")
    results = {}
    for name, (wall, cpu, n) in rows.items():
        rate = n / wall
        share = (n / wall) / (total / wall_d)
        cpu_share = (n / cpu) / (total / cpu_d) if cpu > 0 else float("nan")
        results[name] = {"patches_per_s": rate, "share_of_memcpy": share, "cpu_share_of_memcpy": cpu_share}
        print(f"{name:34s} {rate:10.0f} {100 * share:8.1f}% {100 * cpu_share:12.1f}%")

    size = 4096 if quick else 8192
    cut_added, cut_n, source_bytes = _memory("cut-noopt", size)
    rewrite_added, _, _ = _memory("cut", size)
    st_added, st_n, out_bytes = _memory("stitch", size)
    mib = 2**20
    print(f"\n{size}x{size} RGB, patch 256, stride 128 ({cut_n} patches):")
    print(f"  cutting adds   {cut_added / mib:7.1f} MiB over the source element of {source_bytes / mib:.0f} MiB "
          f"(target <= 300 MiB)")
    print(f"                 {rewrite_added / mib:7.1f} MiB with tf.data's default graph rewrite, which copies a "
          "from_tensors source once")
    print(f"  stitching adds {st_added / mib:7.1f} MiB = {st_added / out_bytes:.2f}x its float32 output "
          f"of {out_bytes / mib:.0f} MiB (target <= 1.1x)")
    results["memory"] = {
        "cut_added_mib": cut_added / mib,
        "cut_added_with_rewrite_mib": rewrite_added / mib,
        "stitch_added_ratio": st_added / out_bytes,
    }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 images and a 4096² memory test")
    parser.add_argument("--memory-child", choices=["cut", "cut-noopt", "stitch"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=8192, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.size)
    else:
        main(args.quick)
