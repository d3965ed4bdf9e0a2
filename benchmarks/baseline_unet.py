"""fcndata's recipe vs the plain Keras U-Net a user writes in 40 lines, at equal wall-clock.

The baseline is the U-Net of issue 13, fed the simplest way: every image and label of the
recipe's own train / validation split loaded into numpy, zero-padded to one fixed size
(labels padded with the ignore label), ``model.fit`` on the arrays, sparse cross-entropy
with ``ignore_class``, Adam 1e-3, no augmentation, no per-epoch validation.

For each seed the driver first trains the recipe with ``fcndata.train.train`` (timing
``Model.fit``, which includes fcndata's per-epoch validation and checkpoints), then gives
the U-Net exactly that many seconds of ``fit`` (it stops after the batch that crosses the
budget). Both are scored the same way: a confusion matrix over the validation split's
labeled pixels -> per-class IoU, mean IoU. Seconds per step are the median of the timed
training batches after the first epoch (compilation excluded).

    python benchmarks/baseline_unet.py --config pipelines/brain_fullimage.yaml --seeds 0 1
    python benchmarks/baseline_unet.py --config pipelines/shapes.yaml --seeds 0 --only fcndata
    python benchmarks/baseline_unet.py --config pipelines/digits_fullimage.yaml --budget 240 --only unet
    python benchmarks/baseline_unet.py --config pipelines/brain_fullimage.yaml --profile

Runs one training process at a time; on a shared machine compare numbers from one
invocation only (both models run back to back under the same load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The U-Net, its compile and its numpy feeding live in the package (the experiments train it too).
from fcndata.experiments.baseline import IGNORE, compiled_unet, load_arrays, unet  # noqa: F401

# ---------------------------------------------------------------------------- the baseline


class StepTimer:
    """A Keras callback: wall-clock per training batch, and an optional time budget."""

    def __new__(cls, budget: float | None = None):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.budget, self.steps, self.epoch_steps, self.curve = budget, [], [], []

            def on_train_begin(self, logs=None):
                self.started = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch_steps.append(0)

            def on_train_batch_begin(self, batch, logs=None):
                self._t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.steps.append((len(self.epoch_steps) - 1, time.perf_counter() - self._t))
                self.epoch_steps[-1] += 1
                if self.budget is not None and time.perf_counter() - self.started >= self.budget:
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                # (epoch, fit seconds so far, validation mean IoU when fit validates)
                val = (logs or {}).get("val_mean_iou")
                self.curve.append((epoch + 1, round(time.perf_counter() - self.started, 1), val and round(float(val), 3)))

            def on_train_end(self, logs=None):
                self.seconds = time.perf_counter() - self.started

            def seconds_per_step(self) -> float:
                later = [t for e, t in self.steps if e > 0] or [t for _, t in self.steps[1:]]
                return float(np.median(later))

        return _Timer()


def train_unet(config, seconds: float, seed: int) -> dict:
    import keras

    from fcndata.metrics import confusion_matrix, iou_by_name

    keras.utils.set_random_seed(seed)
    x, y, size = load_arrays(config, "train")
    xv, yv, _ = load_arrays(config, "validation", size)
    model = compiled_unet(config.data.num_classes, x.shape[-1])
    timer = StepTimer(budget=seconds)
    model.fit(x, y, batch_size=config.batching.batch_size, epochs=100_000, callbacks=[timer], verbose=0)
    k = config.data.num_classes
    pred = np.concatenate([np.argmax(model.predict_on_batch(xv[i : i + 8]), -1) for i in range(0, len(xv), 8)])
    confusion = confusion_matrix(yv, pred, k, ignore_label=IGNORE)
    return {
        "model": "unet",
        "seed": seed,
        "fit_seconds": round(timer.seconds, 1),
        "epochs": len(timer.epoch_steps),
        "steps": len(timer.steps),
        "s_per_step": round(timer.seconds_per_step(), 3),
        "padded_size": list(size),
        **iou_by_name(confusion, config.data.names),
    }


# ---------------------------------------------------------------------------- fcndata's recipe


def train_fcndata(config, seed: int) -> dict:
    """``fcndata.train.train`` with its ``Model.fit`` timed by a StepTimer."""
    import keras

    from fcndata import train as fcn_train

    config = config.replace(train=config.train.__class__(**{**_fields(config.train), "seed": seed, "verbose": 0}))
    timer = StepTimer()
    original_fit = keras.Model.fit

    def timed_fit(self, *args, **kwargs):
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [timer]
        return original_fit(self, *args, **kwargs)

    keras.Model.fit = timed_fit
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            summary = fcn_train.train(config, Path(run_dir))
    finally:
        keras.Model.fit = original_fit
    v = summary["validation"]
    return {
        "model": "fcndata",
        "seed": seed,
        "fit_seconds": round(timer.seconds, 1),
        "epochs": config.train.epochs,
        "steps": len(timer.steps),
        "s_per_step": round(timer.seconds_per_step(), 3),
        "mean_iou": v["mean_iou"],
        "per_class_iou": v["per_class_iou"],
        "curve": timer.curve,
    }


def _fields(dc) -> dict:
    import dataclasses

    return {f.name: getattr(dc, f.name) for f in dataclasses.fields(dc)}


# ---------------------------------------------------------------------------- profile


def profile(config) -> dict:
    """Seconds spent per epoch in each part of ``fcndata.train``'s fit loop, measured apart."""
    import tempfile as _tempfile

    from fcndata import train as fcn_train
    from fcndata.callbacks import EpochCheckpoint, image_logger
    from fcndata.pipeline import build_pipeline, steps_per_epoch

    out = {}
    steps = steps_per_epoch(config)
    t = time.perf_counter()
    n = sum(1 for _ in build_pipeline(config, "train", epochs=2))
    out["input_pipeline_s_per_batch"] = (time.perf_counter() - t) / n
    batches = list(build_pipeline(config, "train", epochs=1).take(steps))
    model = fcn_train.build_model(config, steps)
    for x, y, w in batches[:2]:
        model.train_on_batch(x, y, sample_weight=w)
    t = time.perf_counter()
    for x, y, w in batches:
        model.train_on_batch(x, y, sample_weight=w)
    out["train_step_s"] = (time.perf_counter() - t) / len(batches)
    out["train_steps_per_epoch"] = steps
    val = build_pipeline(config, "eval")
    model.evaluate(val, verbose=0)
    t = time.perf_counter()
    model.evaluate(val, verbose=0)
    out["validation_s_per_epoch"] = time.perf_counter() - t
    with _tempfile.TemporaryDirectory() as d:
        images = image_logger(model, config, Path(d))
        images.on_epoch_end(config.train.epochs - 1)  # first call reads the batch once
        t = time.perf_counter()
        images.on_epoch_end(config.train.epochs - 1)
        out["image_logging_s_when_logged"] = time.perf_counter() - t
        t = time.perf_counter()
        images.on_epoch_end(0 if config.train.epochs >= 10 else config.train.epochs - 1)
        out["image_logging_s_other_epochs"] = time.perf_counter() - t
        checkpoint = EpochCheckpoint(model, Path(d) / "ck")
        checkpoint.manager.save()
        t = time.perf_counter()
        checkpoint.manager.save()
        out["checkpoint_s_per_epoch"] = time.perf_counter() - t
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


# ---------------------------------------------------------------------------- driver


def table(rows, names) -> str:
    short = [n[:10] for n in names]
    lines = [
        "| model | seed | fit s | steps | s/step | mean IoU | " + " | ".join(short) + " |",
        "|---" * (6 + len(names)) + "|",
    ]
    for r in rows:
        per = " | ".join("n/a" if r["per_class_iou"][n] is None else f"{r['per_class_iou'][n]:.3f}" for n in names)
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['fit_seconds']:.0f} | {r['steps']} | {r['s_per_step']:.3f} | "
            f"{r['mean_iou']:.3f} | {per} |"
        )
    for model in ("fcndata", "unet"):
        ious = [r["mean_iou"] for r in rows if r["model"] == model]
        if ious:
            lines.append(
                f"| {model} mean ± half-range | {len(ious)} seeds | | | | {np.mean(ious):.3f} ± "
                f"{(max(ious) - min(ious)) / 2:.3f} |" + " |" * len(names)
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    from fcndata.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pipelines/brain_fullimage.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget", type=float, help="U-Net fit seconds (default: the recipe's fit seconds, per seed)")
    parser.add_argument("--only", choices=("fcndata", "unet"))
    parser.add_argument("--out", help="append every row as one JSON line to this file")
    parser.add_argument("--profile", action="store_true", help="only split one epoch's time of the recipe")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.profile:
        print(json.dumps({"config": args.config, "overrides": args.overrides, **profile(config)}))
        return 0
    rows = []
    for seed in args.seeds:
        budget = args.budget
        if args.only != "unet":
            rows.append(train_fcndata(config, seed))
            budget = budget or rows[-1]["fit_seconds"]
            print(json.dumps({"config": args.config, "overrides": args.overrides, **rows[-1]}), flush=True)
        if args.only != "fcndata":
            if budget is None:
                parser.error("--only unet needs --budget SECONDS")
            rows.append(train_unet(config, budget, seed))
            print(json.dumps({"config": args.config, **rows[-1]}), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.writelines(json.dumps({"config": args.config, "overrides": args.overrides, **r}) + "\n" for r in rows[-2 if args.only is None else -1 :])
    print(table(rows, config.data.names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
