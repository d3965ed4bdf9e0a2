"""Benchmark: the same patch pipeline locally and through the tf.data service (1 and 2 workers).

    python benchmarks/service.py [--quick] [--wait-ms 50] [--previous]

Dispatcher and workers are real processes on loopback (``python -m fcndata.distributed``).
Two workloads, each as patches/s and as a ratio to the local pipeline in the same run:

* CPU-bound: RGB 256² images made in the graph from their index, class-balanced 64²
  patches. On this 2-core machine the workers share the cores with the client and each
  other, so the service cannot beat the local pipeline here: it only moves the same work
  to other processes and adds serialisation, compression and a copy over loopback; two
  workers add a second process competing for the same two cores. It pays on other hosts,
  with their own CPUs.
* latency-bound: the same pipeline behind a stage that waits ``--wait-ms`` (50) per image,
  one image at a time per process (standing for slow storage that serves each host one
  read at a time: network file systems, object stores), with a read-ahead of 2 images so
  the next wait overlaps the cutting of the current image. Waiting costs no CPU, so two
  workers wait in parallel and approach 2× one worker — as long as the wait, not the CPU,
  is the limit: cutting 16 balanced patches from a 256² image costs ~15 ms of CPU here
  under load, and two workers share the same two cores with the client.

Each measurement is one service job streaming ``1 + repeats`` passes; patches/s are
counted after the first pass (warm-up). ``--previous`` measures as this benchmark first
did (2w/1w measured 0.78, and 1.10 on a rerun at load ~5): a new job per pass, over a ``from_arrays`` source, no
read-ahead, 20 ms. Three things held two workers back there: (1) every pass was a new job,
and a job's start — the client serialising the graph, each worker deserialising it (the
images are ~17 MB of constants in a ``from_arrays`` graph) and building its iterator —
is paid again on every pass, by every worker, on the same cores (``--previous`` prints
the seconds to each pass's first batch, local / 1 worker / 2 workers); (2) without read-ahead each worker waited and then cut, one after the other,
so a worker spent wait + CPU per image, not max(wait, CPU); (3) at 20 ms the wait is
barely above the CPU per image, so with two workers the two shared cores became the
limit and the workload was no longer latency-bound.
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
from fcndata import elements as E  # noqa: E402
from fcndata import testing  # noqa: E402
from fcndata.patches import BalancedPatches  # noqa: E402
from fcndata.sources import from_arrays  # noqa: E402

PATCHES_PER_IMAGE, BATCH = 16, 64


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


def graph_source(n: int, size: int) -> tf.data.Dataset:
    """``n`` RGB images and 3-class labels made in the graph from their index (a tiny graph)."""

    def element(i):
        seed = tf.stack([i, tf.constant(7, tf.int64)])
        image = tf.random.stateless_uniform([size, size, 3], seed, 0, 256, tf.int32)
        label = tf.random.stateless_uniform([size, size], seed + 1, 0, 3, tf.int32)
        return E.make_element(tf.cast(image, tf.uint8), tf.cast(label, tf.uint8), source_index=i,
                              path=tf.strings.as_string(i))

    return tf.data.Dataset.range(n).map(element)


def array_source(n: int, size: int) -> tf.data.Dataset:
    """The same kind of images as numpy constants in the graph (the previous benchmark's source)."""
    images = [testing.random_image(size, size, 3, seed=i) for i in range(n)]
    labels = [(testing.random_image(size, size, 1, seed=100 + i)[..., 0] // 86).astype(np.uint8) for i in range(n)]
    return from_arrays(images, labels, num_classes=3)


def pipeline(source: tf.data.Dataset, wait_us: int, read_ahead: bool = True) -> tf.data.Dataset:
    ds = source.apply(testing.slow_down(wait_us)) if wait_us else source
    if read_ahead:
        ds = ds.prefetch(2)  # the next image's wait overlaps this one's cutting
    ds = ds.apply(BalancedPatches(patch_size=(64, 64), num_per_image=PATCHES_PER_IMAGE, num_classes=3, seed=0))
    return ds.batch(BATCH)


def rate_one_stream(ds: tf.data.Dataset, warmup_patches: int) -> float:
    """Patches/s of one iteration of ``ds``, counted after the first ``warmup_patches``."""
    count, start = 0, None
    for batch in ds:
        count += int(batch["image"].shape[0])
        if start is None and count >= warmup_patches:
            start, count = time.perf_counter(), 0
    return count / (time.perf_counter() - start)


FIRST_BATCH: list[float] = []  # --previous: seconds to each pass's first batch


def rate_job_per_pass(ds: tf.data.Dataset, repeats: int) -> float:
    """Patches/s over ``repeats`` iterations of ``ds`` (one job each), after one warm-up iteration."""
    for _ in ds:
        pass
    start, count = time.perf_counter(), 0
    for _ in range(repeats):
        begin = time.perf_counter()
        for i, batch in enumerate(ds):
            if i == 0:
                FIRST_BATCH.append(time.perf_counter() - begin)
            count += int(batch["image"].shape[0])
    return count / (time.perf_counter() - start)


def measure(workers: int, ds: tf.data.Dataset, n: int, repeats: int, job_per_pass: bool) -> float:
    """Patches/s of ``ds`` locally (``workers=0``) or through a fresh dispatcher with ``workers`` workers.

    Fresh each time: TF's dispatcher keeps stopped workers in its jobs' task lists.
    """
    if not job_per_pass:
        ds = ds.repeat(1 + repeats)
    if workers == 0:
        return rate_job_per_pass(ds, repeats) if job_per_pass else rate_one_stream(ds, n * PATCHES_PER_IMAGE)
    port = free_port()
    procs = [spawn(["dispatcher", "--port", str(port)])]
    try:
        procs += [spawn(["worker", "--dispatcher", f"localhost:{port}", "--port", str(free_port())])
                  for _ in range(workers)]
        remote = D.distribute_dataset(ds, f"localhost:{port}")
        return rate_job_per_pass(remote, repeats) if job_per_pass else rate_one_stream(remote, n * PATCHES_PER_IMAGE)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait()


def main(quick: bool = False, wait_ms: float = 50, previous: bool = False) -> None:
    n, size, repeats = (32, 128, 2) if quick else (64, 256, 4)
    job_per_pass = previous
    wait_us = 20000 if previous else int(wait_ms * 1000)
    how = ("as first measured: a new job per pass, from_arrays source, no read-ahead" if previous else
           f"one job of {1 + repeats} passes, graph source, read-ahead 2")
    print(f"{n} RGB {size}² images, class-balanced 64² patches ×{PATCHES_PER_IMAGE} per image, batches of {BATCH}; "
          f"{how}; dispatcher and workers are processes on loopback, on the same {os.cpu_count()} cores; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'workload':<15}{'local':>10}{'1 worker':>18}{'2 workers':>18}{'2 w / 1 w':>11}")
    source = (array_source if job_per_pass else graph_source)(n, size)
    for name, wait in (("CPU-bound", 0), (f"wait {wait_us // 1000} ms", wait_us)):
        rates, starts = [], []
        for k in (0, 1, 2):
            FIRST_BATCH.clear()
            rates.append(measure(k, pipeline(source, wait, read_ahead=not previous), n, repeats, job_per_pass))
            starts.append(f"{np.mean(FIRST_BATCH):.2f}" if FIRST_BATCH else "-")
        local, one, two = rates
        print(f"{name:<15}{local:>8.0f}/s{one:>8.0f}/s ({one / local:.2f}×){two:>8.0f}/s ({two / local:.2f}×)"
              f"{two / one:>9.2f}×" + (f"   first batch of a pass: {' / '.join(starts)} s" if previous else ""),
              flush=True)
    print(f"patches/s; ratios in brackets are to the local pipeline in the same run; load average after: "
          f"{os.getloadavg()[0]:.2f}. CPU-bound cannot win on one machine: the workers compete with the client "
          "for the same cores.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--wait-ms", type=float, default=50, help="latency-bound: wait per image (default 50)")
    parser.add_argument("--previous", action="store_true",
                        help="measure as first done: a new job per pass, from_arrays source, no read-ahead, 20 ms")
    args = parser.parse_args()
    main(args.quick, args.wait_ms, args.previous)
