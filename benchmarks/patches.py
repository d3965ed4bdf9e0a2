"""Patch cutting, stitching and sliding-window prediction, as shares of numpy references.

Run ``python benchmarks/patches.py [--quick]``; a runner can call ``main(quick)``.

One run, the same seeded images, 2 threads, each row timed as the best of a few runs:

  grid      ``from_arrays`` -> ``ExtractPatches`` -> ``batch(64)``: 32 RGB 512² + mask,
            patch 128, stride 64; and 8 RGB images 300²…1000×700 (border shift and drop);
            and the chunked cut (``ExtractPatches.chunks``) unbatched or rebatched
  balanced  ``BalancedPatches`` (49 per image) on the 512² set
  Stitcher  numpy ``Stitcher`` (gaussian, grid stride) re-assembling the 512² grid
  predictor ``SlidingWindowPredictor`` with an identity Keras model, gaussian blend:
            the 512² set (patch 128, stride 64) and one 8192² image (patch 256, stride 128);
            the default block path (numpy cut and blend) and, as "(XLA)",
            ``jit_compile=True`` (XLA-compiled cut and blend); on the 512²
            set B, the Stitcher and the predictors are timed in alternating rounds
  where the time goes  the chunked cut alone (a tf.function), in a tf.data map, as
            chunks and as the stage; tf.data's cost per element; bytes per patch; and
            the limits these imply, printed as "limit:" lines

next to two numpy references measured on the same images in the same run:

  (A) window copy: ``sliding_window_view(image, (P, P, C))[::s, ::s, 0]`` copied into
      channels-last batches of 64, the mask likewise (patch streams are shares of A);
  (B) overlap-add: per image a float32 accumulator and a count plane, ``+=`` per window,
      divide (Stitcher and predictor are shares of B).

Targets: grid >= 30 % of A on the 512² set and >= 20 % on the 8-size set; predictor
>= 1.0x B; balanced no slower than before. Then, in fresh subprocesses, the peak
resident memory added on one 8192² RGB image, patch 256, stride 128: cutting from
``from_arrays`` (target <= +300 MiB over the arrays) and the whole predictor (target
<= 1.3x its float32 output). The machine may be shared: ratios, not absolute rates,
are what to compare, and only within one run.
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
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

THREADS = 2
PATCH, STRIDE, BATCH = 128, 64, 64
SIZES8 = [(300, 300), (384, 512), (512, 384), (600, 600), (640, 480), (720, 960), (800, 800), (1000, 700)]
MIB = 2**20


def _tf():
    import tensorflow as tf

    try:  # must happen before TF starts its thread pools; a runner may have done it already
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    except RuntimeError:
        pass
    return tf


def _stitcher_class():
    try:
        from fcndata.grid import Stitcher  # since the grid module
    except ImportError:  # the engines before it (for "before" numbers)
        try:
            from fcndata.infer import Stitcher
        except ImportError:
            from fcndata.patches import Stitcher
    return Stitcher


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for h, w in sizes:
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        # blocky labels with 5 classes, one of them rare, so balanced sampling has work to do
        blocks = rng.choice(5, size=(-(-h // 32), -(-w // 32)), p=[0.6, 0.2, 0.1, 0.08, 0.02])
        labels.append(np.repeat(np.repeat(blocks, 32, axis=0), 32, axis=1)[:h, :w].astype(np.uint8))
    return images, labels


def _timed(fn, repeats):
    """Best wall seconds over ``repeats`` runs, and fn's return value."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _count(ds):
    return sum(int(b["image"].shape[0]) for b in ds)


# ---------------------------------------------------------------------------- references


def numpy_window_copy(images, labels, patch=PATCH, stride=STRIDE, batch=BATCH) -> int:
    """Reference A: every VALID window copied into channels-last batches (image and mask)."""
    n = 0
    for image, label in zip(images, labels):
        c = image.shape[2]
        win = sliding_window_view(image, (patch, patch, c))[::stride, ::stride, 0]
        lwin = sliding_window_view(label, (patch, patch))[::stride, ::stride]
        win, lwin = win.reshape(-1, patch, patch, c), lwin.reshape(-1, patch, patch)
        for i in range(0, len(win), batch):
            np.array(win[i : i + batch])
            np.array(lwin[i : i + batch])
        n += len(win)
    return n


def numpy_overlap_add(image, patch, stride) -> tuple[np.ndarray, int]:
    """Reference B: float32 accumulator + count planes, ``+=`` per window, divide."""
    from fcndata.grid import grid_origins

    x = image.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    acc = np.zeros(x.shape, np.float32)
    count = np.zeros((h, w, 1), np.float32)
    ys, xs = grid_origins(h, patch, stride), grid_origins(w, patch, stride)
    for y in ys.tolist():
        for xx in xs.tolist():
            acc[y : y + patch, xx : xx + patch] += x[y : y + patch, xx : xx + patch]
            count[y : y + patch, xx : xx + patch] += 1
    acc /= count
    return acc, len(ys) * len(xs)


# ---------------------------------------------------------------------------- memory


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


def _identity_model(channels=3):
    import keras

    inp = keras.Input((None, None, channels))
    return keras.Model(inp, inp)


def _memory_child(what: str, size: int) -> None:
    """Runs in a subprocess: prints RSS added by cutting from from_arrays or by predicting."""
    tf = _tf()
    from fcndata import grid as G
    from fcndata import patches as P
    from fcndata.infer import SlidingWindowPredictor
    from fcndata.sources import from_arrays

    patch, stride = 256, 128
    image = np.broadcast_to(np.arange(size, dtype=np.uint8)[:, None, None], (size, size, 3)).copy()
    label = np.broadcast_to((np.arange(size) % 3).astype(np.uint8)[None], (size, size)).copy()
    if what == "cut":
        predictor = None
        tf.constant(0)  # TF's own start-up memory is not the source's
        with _PeakRss() as m:
            ds = from_arrays([image], [label], num_classes=3)
            built = _rss() - m.base
            n = _count(ds.apply(P.ExtractPatches(patch, stride)).batch(16))
        print(f"RESULT {m.added} {n} {image.nbytes + label.nbytes} {built}")
    else:
        predictor = SlidingWindowPredictor(_identity_model(), patch_size=patch, stride=stride, blend="gaussian",
                                           batch_size=16, pad_to_multiple=1)
        # Trace outside the measurement: two sizes, so the graph traced is the size-generic
        # one every later image uses, and a strip of two window rows of the full width, so
        # XLA has compiled the block path's job shapes (tracing and compiling memory is once
        # per predictor and shape, not per image).
        predictor.predict(image[:300, :300])
        predictor.predict(image[:333, :300])
        predictor.predict(image[: patch + stride])
        with _PeakRss() as m:
            out = predictor.predict(image)
        print(f"RESULT {m.added} {len(G.grid_origins_2d((size, size), patch, stride))} {out.nbytes} 0")


def _memory(what: str, size: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", what, "--size", str(size)]
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    line = [s for s in out.splitlines() if s.startswith("RESULT")][-1]
    return tuple(int(v) for v in line.split()[1:])


def _where_time_goes(P, from_arrays, images, labels, repeats) -> dict:
    """The grid stream taken apart on the 512 set: the cut alone, then each tf.data layer.

    Returns printable rows, the per-element overhead, bytes moved per patch and the
    limits they imply for a stream that hands out patches one element at a time.
    """
    from fcndata import grid as G

    tf = _tf()
    stage = P.ExtractPatches(PATCH, STRIDE)
    ds = from_arrays(images, labels, num_classes=5).cache()
    elements = list(ds)
    spec = ds.element_spec
    cutter = stage._cutter(spec)
    per_image = len(G.grid_origins_2d((512, 512), PATCH, STRIDE))
    bytes_per_patch = PATCH * PATCH * (images[0].shape[2] + 2)

    @tf.function(input_signature=[spec])
    def cut(e):
        return cutter(stage._job(e), tf.constant(0, tf.int64))

    cut(elements[0])
    n = len(elements) * per_image
    # every dataset is built (and its functions traced) before the clock starts
    mapped = ds.map(lambda e: cutter(stage._job(e), tf.constant(0, tf.int64)))
    chunks, whole = ds.apply(stage.chunks), ds.apply(stage).batch(BATCH)
    small = tf.data.Dataset.range(n).map(lambda i: {"image": tf.fill([1], i)}).batch(BATCH)
    unbatch = tf.data.Dataset.from_tensors({"image": tf.zeros([per_image, 1], tf.uint8)}).repeat(len(elements))
    unbatch = unbatch.unbatch().batch(BATCH)
    t_op, _ = _timed(lambda: [cut(e)["image"].shape for e in elements], repeats)
    t_map, _ = _timed(lambda: _count(mapped), repeats)
    t_chunks, _ = _timed(lambda: _count(chunks), repeats)
    t_stage, _ = _timed(lambda: _count(whole), repeats)
    t_elem, _ = _timed(lambda: _count(small), repeats)
    t_unbatch, _ = _timed(lambda: _count(unbatch), repeats)
    op_rate = n / t_op
    element_us = 1e6 * t_elem / n
    unbatch_us = 1e6 * t_unbatch / n
    pixels_us = 1e6 * t_op / n
    rows = [
        ("cut alone (tf.function, whole image, 2 threads)", f"{op_rate:8.0f} patches/s  {op_rate * bytes_per_patch / 1e9:5.2f} GB/s out"),
        ("cut in a tf.data map (one element per image)", f"{n / t_map:8.0f} patches/s"),
        ("ExtractPatches.chunks (per-image chunk datasets)", f"{n / t_chunks:8.0f} patches/s"),
        ("ExtractPatches -> batch(64) (one slice per patch)", f"{n / t_stage:8.0f} patches/s"),
        ("tf.data: one tiny element through map + batch(64)", f"{element_us:8.1f} us/element"),
        ("tf.data: one tiny element out of unbatch + batch(64)", f"{unbatch_us:8.1f} us/element"),
    ]
    map_us = 1e6 * t_map / n
    limits = [
        (f"the vectorised cut costs {pixels_us:.1f} us per patch as one tf.function (2 intra-op threads) and "
         f"{map_us:.1f} us inside a tf.data map: a stream of it cannot pass {n / t_map:.0f} patches/s here, "
         f"{1e6 * t_stage / n:.1f} us per patch is what one slice per patch costs today"),
        (f"per element tf.data adds {unbatch_us:.1f} us (unbatch) to {element_us:.1f} us (map + batch): "
         f"element count is not the limit; moving {bytes_per_patch / 1024:.0f} KiB per patch at "
         f"{n / t_map * bytes_per_patch / 1e9:.2f} GB/s inside tf.data is"),
    ]
    return {"rows": rows, "limits": limits, "bytes_per_patch": float(bytes_per_patch), "cut_alone_patches_per_s": op_rate,
            "cut_in_map_patches_per_s": n / t_map, "element_us": element_us, "unbatch_us": unbatch_us}


# ---------------------------------------------------------------------------- main


def main(quick: bool = False) -> dict:
    """Runs the benchmark, prints a table and returns the numbers."""
    _tf()
    from fcndata import grid as G
    from fcndata import patches as P
    from fcndata.infer import SlidingWindowPredictor
    from fcndata.sources import from_arrays

    Stitcher = _stitcher_class()
    num = 8 if quick else 32
    repeats = 2 if quick else 3
    images, labels = _images([(512, 512)] * num)
    images8, labels8 = _images(SIZES8[:4] if quick else SIZES8, seed=1)
    big = 4096 if quick else 8192
    rows = []  # (group, name, patches, seconds, reference name)

    def stream(imgs, labs, stage, then=lambda ds: ds.batch(BATCH)):
        ds = from_arrays(imgs, labs, num_classes=5).cache()
        for _ in ds:  # decode once: every variant reads the same tensors
            pass
        return then(ds.apply(stage))

    # (A) numpy window copy, both sets
    t, n = _timed(lambda: numpy_window_copy(images, labels), repeats)
    rows.append(("512", "A numpy window copy (VALID)", n, t, None))
    t, n = _timed(lambda: numpy_window_copy(images8, labels8), repeats)
    rows.append(("8", "A numpy window copy (VALID)", n, t, None))

    grid = stream(images, labels, P.ExtractPatches(PATCH, STRIDE))
    t, n = _timed(lambda: _count(grid), repeats)
    rows.append(("512", "ExtractPatches grid", n, t, "A"))
    for border in ("shift", "drop"):
        ds = stream(images8, labels8, P.ExtractPatches(PATCH, STRIDE, border=border))
        t, n = _timed(lambda ds=ds: _count(ds), repeats)
        rows.append(("8", f"ExtractPatches grid ({border})", n, t, "A"))
    # the chunked, vectorised cut (one gather per plane per chunk) in the same run
    chunked = P.ExtractPatches(PATCH, STRIDE).chunks
    for group, imgs, labs in (("512", images, labels), ("8", images8, labels8)):
        for name, then in (("unbatch -> batch(64)", lambda ds: ds.unbatch().batch(BATCH)),
                           ("rebatch(64)", lambda ds: ds.rebatch(BATCH))):
            ds = stream(imgs, labs, chunked, then)
            t, n = _timed(lambda ds=ds: _count(ds), repeats)
            rows.append((group, f"ExtractPatches.chunks -> {name}", n, t, "A"))
    limits = _where_time_goes(P, from_arrays, images, labels, repeats)
    per_image = len(G.grid_origins_2d((512, 512), PATCH, STRIDE))
    balanced = stream(images, labels, P.BalancedPatches(PATCH, num_per_image=per_image, num_classes=5, seed=0))
    t, n = _timed(lambda: _count(balanced), repeats)
    rows.append(("512", "BalancedPatches (49/image)", n, t, "A"))

    # (B) numpy overlap-add, the Stitcher and the whole predictor on the same images, timed
    # in alternating rounds: this machine's speed drifts by tens of percent within seconds.
    predictions = []
    for image in images:
        origins = G.grid_origins_2d((512, 512), PATCH, STRIDE)
        x = image.astype(np.float32) / 255.0
        predictions.append((origins, np.stack([x[y : y + PATCH, xx : xx + PATCH] for y, xx in origins])))

    def stitch_all():
        for origins, pred in predictions:
            s = Stitcher((512, 512), PATCH, 3, blend="gaussian", stride=STRIDE)
            for i in range(0, len(origins), BATCH):
                s.add(pred[i : i + BATCH], origins[i : i + BATCH])
            s.result()
        return sum(len(o) for o, _ in predictions)

    def predictor_of(**kwargs):
        kwargs = {**kwargs, "blend": "gaussian", "pad_to_multiple": 1}
        return SlidingWindowPredictor(_identity_model(), jit_compile=xla, **kwargs)

    contenders = {
        "B numpy overlap-add": (lambda: sum(numpy_overlap_add(im, PATCH, STRIDE)[1] for im in images), None),
        "Stitcher gaussian (numpy)": (stitch_all, "B"),
    }
    for xla in (False, True):
        predictor = predictor_of(patch_size=PATCH, stride=STRIDE, batch_size=BATCH)
        if predictor is not None:
            predictor.predict(images[0])  # trace (and compile) once
            name = "SlidingWindowPredictor identity" + " (XLA)" * xla

            def predict_all(p=predictor):
                for im in images:
                    p.predict(im)
                return num * per_image

            contenders[name] = (predict_all, "B")
    best = {name: float("inf") for name in contenders}
    counts = {}
    for _ in range(repeats + 1):
        for name, (fn, _ref) in contenders.items():
            t0 = time.perf_counter()
            counts[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    for name, (_fn, ref) in contenders.items():
        rows.append(("512", name, counts[name], best[name], ref))

    big_image = _images([(big, big)], seed=2)[0][0]
    t, n = _timed(lambda: numpy_overlap_add(big_image, 256, 128)[1], 1)
    rows.append((str(big), "B numpy overlap-add", n, t, None))
    for xla in (False, True):
        big_predictor = predictor_of(patch_size=256, stride=128, batch_size=16)
        if big_predictor is None:
            continue
        big_predictor.predict(big_image[:300, :300])  # trace the size-generic graph (two sizes)
        big_predictor.predict(big_image[:333, :300])
        big_predictor.predict(big_image[: 256 + 128])  # and compile the job shapes of full-width bands
        t, _ = _timed(lambda p=big_predictor: p.predict(big_image), 1)
        rows.append((str(big), "SlidingWindowPredictor identity" + " (XLA)" * xla, n, t, "B"))

    load = os.getloadavg()[0]
    print(f"\npatches: 512 set = {num} RGB 512x512 + mask, patch {PATCH}, stride {STRIDE}, batch {BATCH}; "
          f"8-size set = {len(images8)} RGB images {images8[0].shape[0]}x{images8[0].shape[1]}..; "
          f"{big}x{big}: patch 256, stride 128. {THREADS} threads; load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'set':6s} {'variant':34s} {'patches/s':>10s} {'share of ref':>13s}")
    refs, results = {}, {}
    for group, name, n, t, ref in rows:
        rate = n / t
        if ref is None:
            refs[group, name[0]] = rate
            share = ""
        else:
            share = f"{rate / refs[group, ref]:12.2f}x" if ref == "B" else f"{100 * rate / refs[group, ref]:11.1f} %"
        results[f"{group}: {name}"] = {"patches_per_s": rate, "share": rate / refs[group, ref] if ref else 1.0}
        print(f"{group:6s} {name:34s} {rate:10.0f} {share:>13s}")

    print(f"\nwhere the time goes (512 set, patch {PATCH}, {limits['bytes_per_patch'] / 1024:.0f} KiB per patch: "
          f"image + label + roi, uint8):")
    for name, value in limits["rows"]:
        print(f"  {name:58s} {value}")
    for line in limits["limits"]:
        print(f"  limit: {line}")
    results["where the time goes"] = {k: v for k, v in limits.items() if isinstance(v, float)}

    cut_added, cut_n, arrays_bytes, built = _memory("cut", big)
    pred_added, _, out_bytes, _ = _memory("predict", big)
    print(f"\n{big}x{big} RGB + mask ({arrays_bytes / MIB:.0f} MiB of numpy arrays), patch 256, stride 128 ({cut_n} patches):")
    print(f"  from_arrays + ExtractPatches adds {cut_added / MIB:7.1f} MiB over the arrays (target <= 300 MiB); "
          f"building the source alone {built / MIB:.1f} MiB")
    print(f"  SlidingWindowPredictor adds       {pred_added / MIB:7.1f} MiB = {pred_added / out_bytes:.2f}x its float32 "
          f"output of {out_bytes / MIB:.0f} MiB (target <= 1.3x)")
    results["memory"] = {"cut_added_mib": cut_added / MIB, "source_built_mib": built / MIB,
                         "predict_added_ratio": pred_added / out_bytes}
    targets = [
        ("grid 512² >= 30 % of A", results["512: ExtractPatches grid"]["share"], 0.30),
        ("grid 8-size (shift) >= 20 % of A", results["8: ExtractPatches grid (shift)"]["share"], 0.20),
        ("predictor 512² >= 1.0x B", results["512: SlidingWindowPredictor identity"]["share"], 1.0),
        (f"predictor {big}² >= 1.0x B", results[f"{big}: SlidingWindowPredictor identity"]["share"], 1.0),
    ]
    print("\ntargets (share reached / target):")
    for name, share, target in targets:
        print(f"  {name:36s} {share:6.2f} / {target:.2f}  {'met' if share >= target else 'NOT met'}")
    for name, value, target in ((f"cut {big}² <= +300 MiB", cut_added / MIB, 300.0),
                                (f"predictor {big}² <= 1.3x output", pred_added / out_bytes, 1.3)):
        print(f"  {name:36s} {value:6.2f} / {target:.2f}  {'met' if value <= target else 'NOT met'}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 + 4 images and a 4096² image")
    parser.add_argument("--memory-child", choices=["cut", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=8192, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.size)
    else:
        main(args.quick)
