"""Benchmark: the same patch pipeline locally and through the tf.data service (1 and 2 workers).

    python benchmarks/service.py [--quick]

Dispatcher and workers are real processes on loopback (``python -m fcndata.distributed``).
Two workloads, each as patches/s and as a ratio to the local pipeline in the same run:

* CPU-bound: 64 RGB 256² images from ``from_arrays``, class-balanced 64² patches. On
  this 2-core machine the workers share the cores with the client and each other, so
  the service cannot beat the local pipeline here: it only moves the same work to other
  processes and adds serialisation. It pays on other hosts, with their own CPUs.
* latency-bound: the same pipeline behind a stage that waits 20 ms per image (standing
  for slow storage: network file systems, object stores). Waiting costs no CPU, so two
  workers wait in parallel and should approach 2× one worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fcndata import distributed as D  # noqa: E402
from fcndata import testing  # noqa: E402
from fcndata.patches import BalancedPatches  # noqa: E402
from fcndata.sources import from_arrays  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fcndata.distributed", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:
        if "listening on" in line:
            return proc
    raise RuntimeError(f"could not start: {args}")


def pipeline(n: int, size: int, wait_us: int) -> tf.data.Dataset:
    images = [testing.random_image(size, size, 3, seed=i) for i in range(n)]
    labels = [(testing.random_image(size, size, 1, seed=100 + i)[..., 0] // 86).astype(np.uint8) for i in range(n)]
    ds = from_arrays(images, labels, num_classes=3)
    if wait_us:
        ds = ds.apply(testing.slow_down(wait_us))
    return ds.apply(BalancedPatches(patch_size=(64, 64), num_per_image=16, num_classes=3, seed=0)).batch(64)


def rate(ds: tf.data.Dataset, repeats: int) -> float:
    """Patches per second over ``repeats`` passes (after one warm-up pass)."""
    for _ in ds:
        pass
    start, count = time.perf_counter(), 0
    for _ in range(repeats):
        for batch in ds:
            count += int(batch["image"].shape[0])
    return count / (time.perf_counter() - start)


def through_service(workers: int, ds: tf.data.Dataset, repeats: int) -> float:
    """Patches/s of ``ds`` through a fresh dispatcher with ``workers`` workers.

    Fresh each time: TF's dispatcher keeps stopped workers in its jobs' task lists.
    """
    port = free_port()
    procs = [spawn(["dispatcher", "--port", str(port)])]
    try:
        procs += [spawn(["worker", "--dispatcher", f"localhost:{port}", "--port", str(free_port())])
                  for _ in range(workers)]
        return rate(D.distribute_dataset(ds, f"localhost:{port}"), repeats)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait()


def main(quick: bool = False) -> None:
    n, size, repeats = (32, 128, 2) if quick else (64, 256, 3)
    print(f"{n} RGB {size}² images, class-balanced 64² patches ×16 per image, batches of 64; "
          f"dispatcher and workers are processes on loopback, on the same {os.cpu_count()} cores")
    print(f"{'workload':<15}{'local':>10}{'1 worker':>18}{'2 workers':>18}{'2 w / 1 w':>11}")
    for name, wait_us in (("CPU-bound", 0), ("latency-bound", 20000)):
        local = rate(pipeline(n, size, wait_us), repeats)
        one, two = (through_service(k, pipeline(n, size, wait_us), repeats) for k in (1, 2))
        print(f"{name:<15}{local:>8.0f}/s{one:>8.0f}/s ({one / local:.2f}×){two:>8.0f}/s ({two / local:.2f}×)"
              f"{two / one:>9.2f}×", flush=True)
    print("patches/s; ratios in brackets are to the local pipeline in the same run. CPU-bound cannot "
          "win on one machine: the workers compete with the client for the same cores.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    main(parser.parse_args().quick)
