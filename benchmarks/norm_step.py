"""Training step time of a width-16 unet per normalisation, as ratios against ``norm: none``.

Each variant trains on the same 4 x 192 x 224 padded batch (a 37 %-padding roi: images of
~150 x 180 in the top-left corner), with Adam and the masked cross-entropy, compiled with
``jit_compile=False`` as the trainer does by default. Variants run interleaved in rounds
(none, plain batch, roi batch, roi group, roi instance, plain group, then again), so a
neighbour's load spreads over all of them; the table gives the median step time of each
and its ratio to ``none`` from the same run (never an absolute target).

    python benchmarks/norm_step.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fcndata.losses import MaskedSparseCrossEntropy  # noqa: E402
from fcndata.models import fcn  # noqa: E402

VARIANTS = (  # (label, norm, masked)
    ("none", "none", True),
    ("plain batch", "batch", False),
    ("roi batch", "batch", True),
    ("roi group", "group", True),
    ("roi instance", "instance", True),
    ("plain group", "group", False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    b, h, w = 4, 192, 224
    image = rng.random((b, h, w, 3), dtype=np.float32)
    roi = np.zeros((b, h, w, 1), np.float32)
    roi[:, :150, :180] = 1
    image *= roi
    label = rng.integers(0, 4, (b, h, w)).astype(np.int32)
    weight = roi[..., 0]
    steps = {}
    for label_, norm, masked in VARIANTS:
        keras.utils.set_random_seed(0)
        model = fcn(4, "unet", norm=norm, masked=masked, width=args.width)
        model.compile(optimizer="adam", loss=MaskedSparseCrossEntropy())
        inputs = {"image": image, "roi": roi} if masked else image
        for _ in range(3):  # trace and warm up
            model.train_on_batch(inputs, label, sample_weight=weight)
        steps[label_] = (model, inputs)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, (model, inputs) in steps.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                model.train_on_batch(inputs, label, sample_weight=weight)
                times[name].append(time.perf_counter() - t0)
    base = np.median(times["none"])
    print(f"unet width {args.width}, batch {b}x{h}x{w}, {args.rounds} rounds x {args.steps} steps, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'norm':<14} {'median ms':>10} {'p90 ms':>8} {'ratio':>6}")
    for name, values in times.items():
        print(f"{name:<14} {1000 * np.median(values):>10.1f} {1000 * np.percentile(values, 90):>8.1f} "
              f"{np.median(values) / base:>6.2f}")


if __name__ == "__main__":
    main()
