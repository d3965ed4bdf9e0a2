"""Build time and time to the first batch of ``build_pipeline`` against the number of epochs.

    python benchmarks/pipeline.py             # 10, 200, 1000 epochs of pipelines/shapes.yaml
    python benchmarks/pipeline.py 10 200      # other epoch counts

The training stream is built once whatever the number of epochs (``Dataset.range(...)
.flat_map(one_epoch)``), so both columns should stay flat; a curve that grows with the
epochs means epochs are being chained in Python again. Prints one row per epoch count.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(epochs: int, recipe: str = "pipelines/shapes.yaml") -> tuple[float, float]:
    """(seconds to build, seconds to the first batch) for ``train.epochs=epochs``."""
    from fcndata.config import load_config
    from fcndata.pipeline import build_pipeline

    cfg = load_config(ROOT / recipe, [f"train.epochs={epochs}"])
    start = time.perf_counter()
    ds = build_pipeline(cfg, "train")
    built = time.perf_counter()
    next(iter(ds))
    return built - start, time.perf_counter() - built


def main(argv: list[str]) -> None:
    counts = [int(a) for a in argv] or [10, 200, 1000]
    measure(1)  # warm up: imports, the built-in dataset, tracing caches
    print(f"{'epochs':>7} {'build s':>8} {'first batch s':>14}")
    for n in counts:
        build, first = measure(n)
        print(f"{n:>7} {build:>8.2f} {first:>14.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
