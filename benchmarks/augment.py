"""Throughput of the pure-TF augmentations against the albumentations bridge.

The same chain -- horizontal flip, random scale + crop, rotation, brightness / contrast
(and, second, a flip + crop chain without resampling) -- runs (a) as
fcndata.augment.Augment (graph ops, GIL-free) and (b) as an albumentations 2.0 pipeline
through fcndata.albumentations_bridge.Albumentations (tf.numpy_function), both on 512x512 RGB uint8
images with uint8 label and roi, mapped with num_parallel_calls=2. Reported as images/s
and their ratio, measured in the same run (never an absolute target). Also measures
what the bridge pays per call for thread-safe seeding: re-seeding a per-thread copy of
the pipeline versus deep-copying it for every element.

    python benchmarks/augment.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import time

import numpy as np
import tensorflow as tf

import fcndata.testing as t
from fcndata import elements as E
from fcndata.albumentations_bridge import Albumentations
from fcndata.augment import Augment

SIZE = 512
CROP = 384
PARALLEL = 2


def _dataset(num_images: int, num_elements: int) -> tf.data.Dataset:
    images = np.stack([t.random_image(SIZE, SIZE, 3, seed=i) for i in range(num_images)])
    labels = (images[..., 0] // 64).astype(np.uint8)  # 4 classes
    base = tf.data.Dataset.from_tensor_slices((images, labels)).cache().repeat()

    def to_element(index, pair):
        return E.make_element(pair[0], pair[1], source_index=index, path="bench")

    # distinct source_index per element, so every element gets its own draw
    return tf.data.Dataset.zip((tf.data.Dataset.range(num_elements), base)).map(to_element)


def _chains():
    """(name, Augment, equivalent albumentations pipeline) pairs."""
    import albumentations as A
    import cv2

    full = (
        "flip + scale-crop + rotate + colour",
        Augment(
            flip_horizontal=True,
            scale=(0.75, 1.25),
            crop_size=(CROP, CROP),
            rotate=15.0,
            brightness=0.2,
            contrast=0.2,
            probability=0.5,
        ),
        A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.Affine(
                    scale=(0.75, 1.25), rotate=(-15, 15), border_mode=cv2.BORDER_CONSTANT, p=1.0
                ),
                A.RandomCrop(
                    CROP, CROP, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, p=1.0
                ),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            ]
        ),
    )
    # no resampling: Augment copies the window instead of warping it
    copy_only = (
        "flip + crop (no resampling)",
        Augment(flip_horizontal=True, crop_size=(CROP, CROP), probability=0.5),
        A.Compose([A.HorizontalFlip(p=0.5), A.RandomCrop(CROP, CROP, p=1.0)]),
    )
    return [full, copy_only]


def _images_per_second(stage_fn, num_elements: int, warmup: int) -> float:
    ds = _dataset(8, num_elements + warmup)
    ds = ds.map(
        tf.autograph.experimental.do_not_convert(stage_fn), num_parallel_calls=PARALLEL
    ).prefetch(2)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    count = 0
    for element in it:
        assert element["image"].shape == (CROP, CROP, 3)
        count += 1
    return count / (time.perf_counter() - start)


def _seeding_cost(bridge: Albumentations, repeats: int) -> tuple[float, float]:
    """Microseconds per call: re-seed the thread's copy vs deep-copy the pipeline."""
    compose = bridge.pipeline
    start = time.perf_counter()
    for i in range(repeats):
        compose.set_random_state(np.random.default_rng(i), random.Random(i))
    reseed = (time.perf_counter() - start) / repeats * 1e6
    start = time.perf_counter()
    for _ in range(max(1, repeats // 10)):
        copy.deepcopy(compose)
    deep = (time.perf_counter() - start) / max(1, repeats // 10) * 1e6
    return reseed, deep


def main(quick: bool = False) -> dict[str, float]:
    """Runs the benchmark, prints a small table and returns the numbers."""
    num_elements, warmup, rounds = (24, 4, 1) if quick else (150, 10, 2)
    load_before = os.getloadavg()
    results = {}
    lines = []
    for name, augment, pipeline in _chains():
        bridge = Albumentations(pipeline, seed=0)
        # alternate the two and keep each one's best round: the machine's load drifts
        tf_rate = bridge_rate = 0.0
        for _ in range(rounds):
            tf_rate = max(tf_rate, _images_per_second(augment.augment, num_elements, warmup))
            bridge_rate = max(bridge_rate, _images_per_second(bridge.augment, num_elements, warmup))
        results[name] = (tf_rate, bridge_rate)
        lines.append(
            f"  {name:38s} TF {tf_rate:7.1f}   bridge {bridge_rate:7.1f}   TF/bridge {tf_rate / bridge_rate:5.2f}"
        )
    reseed_us, deepcopy_us = _seeding_cost(bridge, 200 if quick else 2000)
    load_after = os.getloadavg()
    print(
        f"augment benchmark: {SIZE}x{SIZE} RGB uint8 + uint8 label/roi -> {CROP}x{CROP}, "
        f"num_parallel_calls={PARALLEL}, {num_elements} images x {rounds} rounds, {os.cpu_count()} CPUs (images/s)"
    )
    print("\n".join(lines))
    print(
        f"  bridge seeding per call: re-seed a per-thread copy {reseed_us:.0f} us, deep copy {deepcopy_us:.0f} us"
    )
    print(
        f"  load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        "(shared machine: compare ratios, not absolute rates)"
    )
    full_tf, full_bridge = results[_chains()[0][0]]
    return {
        "tf_images_per_second": full_tf,
        "bridge_images_per_second": full_bridge,
        "ratio": full_tf / full_bridge,
        "reseed_us": reseed_us,
        "deepcopy_us": deepcopy_us,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images only (smoke run)")
    main(parser.parse_args().quick)
