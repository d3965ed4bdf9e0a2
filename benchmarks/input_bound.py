"""Is training input-bound? Step time fed by the real pipeline vs the same batches from memory.

    python benchmarks/input_bound.py [--quick]

For each recipe (``brain_patchwise.yaml``: class-balanced patches; ``brain_fullimage.yaml``:
whole slices) and each model — the recipe's own model on the ``tiny`` backbone, and an
``fcn8s`` on ``vgg16`` (random weights, nothing downloaded) — the compiled training step of
``fcndata.train.build_model`` runs a fixed number of steps fed

* (a) by the real pipeline, ``build_pipeline(config, "train")``, as ``python -m fcndata.train``
  reads it (after a few warm-up steps, so the pipeline's start and graph tracing are not
  counted), and
* (b) by exactly those batches, read beforehand into memory.

real / cached is the share of the step that waits for input: ~1.0 means the model is the
bottleneck (the pipeline keeps up in the background, thanks to prefetch); well above 1 means
the input pipeline is. Both feeds alternate over two rounds and each keeps its best round, so
a change in the machine's load hits them alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = ("pipelines/brain_patchwise.yaml", "pipelines/brain_fullimage.yaml")
#: name -> (overrides, timed steps, warm-up steps) at full size
MODELS = {
    "recipe model (tiny)": ([], 12, 3),
    "fcn8s / vgg16": (["model.variant=fcn8s", "model.backbone=vgg16", "model.norm=none"], 4, 2),
}
ROUNDS = 2


def _model_name(config) -> str:
    m = config.model
    return f"{m.variant} / {m.backbone}" + (f" w{m.width}" if m.backbone == "tiny" else "") + f", norm {m.norm}"


def measure(recipe: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Seconds per step fed by the pipeline and by the same batches held in memory."""
    import keras

    from fcndata.config import load_config
    from fcndata.pipeline import build_pipeline, steps_per_epoch
    from fcndata.train import build_model

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    config = load_config(ROOT / recipe, overrides)
    model = build_model(config, steps_per_epoch(config))

    def stream():
        return iter(build_pipeline(config, "train"))

    # (b): the batches the real feed will time (the stream is seeded: every pass is the same)
    it = stream()
    for _ in range(warmup):
        next(it)
    cached = [next(it) for _ in range(steps)]
    for x, y, w in cached[: max(3, warmup)]:  # trace every batch shape before timing anything
        model.train_on_batch(x, y, sample_weight=w)

    def run_cached() -> float:
        start = time.perf_counter()
        for x, y, w in cached:
            model.train_on_batch(x, y, sample_weight=w)
        return (time.perf_counter() - start) / steps

    def run_real() -> float:
        it = stream()
        for _ in range(warmup):  # the pipeline's start; trained on, not timed
            x, y, w = next(it)
            model.train_on_batch(x, y, sample_weight=w)
        start = time.perf_counter()
        for _ in range(steps):
            x, y, w = next(it)
            model.train_on_batch(x, y, sample_weight=w)
        return (time.perf_counter() - start) / steps

    real = cached_s = float("inf")
    for _ in range(ROUNDS):
        cached_s = min(cached_s, run_cached())
        real = min(real, run_real())
    x = cached[0][1]
    return {"model": _model_name(config), "batch": f"{x.shape[0]} × {x.shape[1]}×{x.shape[2]}",
            "real_s_per_step": real, "cached_s_per_step": cached_s, "ratio": real / cached_s}


def run(quick: bool = False) -> list[dict]:
    """One table for ``benchmarks/run_all.py``: a row per recipe and model."""
    load_before = os.getloadavg()[0]
    rows = []
    print(f"{'recipe':<32} {'model':<32} {'batch':<16} {'real s/step':>11} {'cached':>8} {'real/cached':>11}")
    for recipe in RECIPES:
        for overrides, steps, warmup in MODELS.values():
            if quick:
                steps, warmup = 2, 1
            r = measure(recipe, overrides, steps, warmup)
            verdict = "input-bound" if r["ratio"] > 1.15 else "model-bound"
            rows.append([Path(recipe).name, r["model"], r["batch"], steps, r["real_s_per_step"],
                         r["cached_s_per_step"], r["ratio"], verdict])
            print(f"{Path(recipe).name:<32} {r['model']:<32} {r['batch']:<16} {r['real_s_per_step']:>11.3f} "
                  f"{r['cached_s_per_step']:>8.3f} {r['ratio']:>11.2f}  {verdict}", flush=True)
    return [{
        "title": "input-boundness: training step fed by the real pipeline vs the same batches from memory",
        "columns": ["recipe", "model", "first batch", "timed steps", "real s/step", "cached s/step", "real / cached",
                    "verdict"],
        "rows": rows,
        "notes": [(f"best of {ROUNDS} alternating rounds per feed; compiled with the trainer's loss and metrics "
                   "(fcndata.train.build_model), steps by train_on_batch"),
                  "verdict: input-bound when real / cached > 1.15 (the step waits for the pipeline)",
                  (f"load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
                   f"{os.cpu_count()} cores")],
    }]


def main(quick: bool = False) -> list[dict]:
    return run(quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the steps, one warm-up step")
    main(parser.parse_args().quick)
