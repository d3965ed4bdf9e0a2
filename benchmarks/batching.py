"""Benchmark: padding and throughput of plain batching vs size bucketing.

    python benchmarks/batching.py [--quick]

On the built-in brain dataset (MNI152 slices of three shapes: 95x99, 95x117, 117x99),
shuffled as in training, for each batching strategy it reports

* padded: the exact fraction of batch pixels that are padding
  (:func:`fcndata.batching.padded_fraction` with ``stage=``);
* floor: the padding that no batching can avoid at this ``pad_to_multiple`` (each
  image alone, rounded up to the multiple), and excess = padded − floor, the part
  that batching strategy is responsible for;
* shapes: distinct batch shapes (each is a retrace / XLA compile);
* model px: pixels the model must process per epoch, as a ratio to plain batching
  (the compute that bucketing saves: real pixels / (1 - padded));
* images/s through batching + to_keras on the in-memory source, as a ratio to plain
  batching measured in the same run (input pipeline only; group_by_window costs a
  little per element, far below what a model step takes). Images, not batches: bucketing
  makes batches of different sizes (a bucket's last batch is short).

If the brain source cannot be loaded, synthetic slices of the same shapes (plus a
few varied ones) are used instead, and the output says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import tensorflow as tf

from fcndata import elements as E
from fcndata import testing
from fcndata.batching import BucketBySize, PadAndBatch, padded_fraction, to_keras

BATCH_SIZE = 8
SEED = 0


def brain_or_synthetic() -> tuple[tf.data.Dataset, str]:
    """The brain training split, or brain-like synthetic slices if it is not available."""
    try:
        from fcndata.config import DataConfig
        from fcndata.sources import load_source

        ds = load_source(DataConfig(source="brain", num_classes=4, channels=1), "train")
        return ds.cache(), "brain (MNI152 slices, train split)"
    except Exception as e:  # noqa: BLE001 - the fallback is the point
        rng = np.random.default_rng(0)
        base = [(95, 99), (95, 117), (117, 99)]
        sizes = [base[i % 3] for i in range(84)] + [tuple(rng.integers(60, 130, 2)) for _ in range(8)]
        return testing.dataset(sizes, channels=1, num_classes=4).cache(), f"synthetic brain-like slices ({e!r})"


def sizes_of(ds: tf.data.Dataset) -> np.ndarray:
    return np.array([e[E.LABEL].shape for e in ds], np.int64)


def floor_fraction(sizes: np.ndarray, multiple: int) -> float:
    padded = -(-sizes // multiple) * multiple
    return 1.0 - sizes.prod(1).sum() / padded.prod(1).sum()


def batch_shapes(ds: tf.data.Dataset) -> int:
    return len({tuple(b[E.LABEL].shape[1:]) for b in ds})


def throughput(ds: tf.data.Dataset, stages: dict, epochs: int, repeats: int) -> dict:
    """Images/s of each stage: best of ``repeats`` rounds, the stages interleaved in each
    round, so load from other processes on a shared machine hits them alike."""
    pipelines = {k: ds.repeat(epochs).apply(s).apply(to_keras()).prefetch(tf.data.AUTOTUNE) for k, s in stages.items()}
    for pipeline in pipelines.values():
        for _ in pipeline.take(2):  # warm up (tracing)
            pass
    best = dict.fromkeys(stages, 0.0)
    for _ in range(repeats):
        for key, pipeline in pipelines.items():
            start, n = time.perf_counter(), 0
            for _, label, _ in pipeline:
                n += int(label.shape[0])
            best[key] = max(best[key], n / (time.perf_counter() - start))
    return best


COLUMNS = ["pad_to", "strategy", "padded", "floor", "excess", "model px", "shapes", "images/s", "ratio to plain"]


def run(quick: bool = False) -> list[dict]:
    """The benchmark as one table for ``benchmarks/run_all.py`` (see its docstring)."""
    results, name, repeats, epochs = measure(quick)
    rows = [[multiple, label, f"{r['padded']:.1%}", f"{r['floor']:.1%}", f"{max(r['padded'] - r['floor'], 0):.1%}",
             r["model_pixels"], r["shapes"], r["images_per_s"], r["ratio"]] for (multiple, label), r in results.items()]
    return [{"title": f"batching strategies on {name}, batch_size={BATCH_SIZE}", "columns": COLUMNS, "rows": rows,
             "notes": [(f"images/s: best of {repeats} runs of {epochs} epochs through batching + to_keras (input "
                        "pipeline only); ratio to plain batching at the same pad_to, measured in the same run"),
                       "model px: pixels the model processes per epoch relative to plain batching",
                       f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"]}]


def main(quick: bool = False) -> dict:
    return measure(quick)[0]


def measure(quick: bool = False):
    source, name = brain_or_synthetic()
    sizes = sizes_of(source)
    # Training order: shuffled images (the source itself is grouped by slice axis,
    # which would make plain batching look as good as bucketing).
    shuffled = source.shuffle(len(sizes), seed=SEED, reshuffle_each_iteration=False)
    epochs, repeats = (2, 1) if quick else (3, 5)
    multiples = (32,) if quick else (32, 8, 1)
    print(f"data: {name}: {len(sizes)} images, shapes {sorted({tuple(s) for s in sizes.tolist()})[:6]}")
    print(f"batch_size={BATCH_SIZE}; images/s: best of {repeats} runs of {epochs} epochs (input pipeline only)\n")
    print(f"{'pad_to':>6} {'strategy':<18} {'padded':>7} {'floor':>6} {'excess':>7} {'model px':>8} {'shapes':>6} {'images/s':>9} {'ratio':>6}")
    results = {}
    for multiple in multiples:
        floor = floor_fraction(sizes, multiple)
        strategies = {
            "plain": PadAndBatch(BATCH_SIZE, multiple),
            "bucket area (4)": BucketBySize(BATCH_SIZE, "area", num_buckets=4, pad_to_multiple=multiple),
            "bucket aspect (4)": BucketBySize(BATCH_SIZE, "aspect", num_buckets=4, pad_to_multiple=multiple),
            "bucket shape": BucketBySize(BATCH_SIZE, "shape", pad_to_multiple=multiple),
        }
        rates = throughput(shuffled, strategies, epochs, repeats)
        base_rate, base_frac = rates["plain"], None
        for label, stage in strategies.items():
            frac = padded_fraction(shuffled, stage=stage)
            base_frac = frac if base_frac is None else base_frac
            shapes = batch_shapes(shuffled.apply(stage))
            rate = rates[label]
            model_px = (1.0 - base_frac) / (1.0 - frac)
            results[(multiple, label)] = {
                "padded": frac, "floor": floor, "model_pixels": model_px, "shapes": shapes, "images_per_s": rate,
                "ratio": rate / base_rate,
            }
            print(
                f"{multiple:>6} {label:<18} {frac:>7.1%} {floor:>6.1%} {max(frac - floor, 0.0):>7.1%} {model_px:>8.2f} {shapes:>6} "
                f"{rate:>9.1f} {rate / base_rate:>6.2f}"
            )
    return results, name, repeats, epochs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short timing, pad_to_multiple=32 only")
    main(parser.parse_args().quick)
