"""Scale: distribution strategy selection and tf.data service helpers.

One machine, several GPUs: ``MirroredStrategy``. Several hosts: ``MultiWorkerMirroredStrategy``
configured from ``TF_CONFIG``. Preprocessing that outgrows the trainer's CPUs moves to the
tf.data service (``DispatchServer`` / ``WorkerServer``): fcndata's core stages are graph-only
and serialise there; the albumentations bridge (``tf.numpy_function``) cannot.

Launch a service (each line on its own host or shell)::

    python -m fcndata.distributed dispatcher --port 5050
    python -m fcndata.distributed worker --dispatcher HOST:5050 --port 5051

then set ``FCNDATA_DATA_SERVICE=grpc://HOST:5050`` for ``python -m fcndata.train``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import tensorflow as tf


def select_strategy(devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The strategy the trainer uses, chosen from the environment.

    * ``TF_CONFIG`` naming more than one worker: ``MultiWorkerMirroredStrategy``;
    * more than one GPU visible (or ``devices`` given with more than one): ``MirroredStrategy``;
    * otherwise the default (single-device) strategy.
    """
    if devices is not None and len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices=devices)
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def has_gpu() -> bool:
    """True when TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def distribute_dataset(ds: tf.data.Dataset, service: str, job_name: str | None = None) -> tf.data.Dataset:
    """Runs ``ds`` on a tf.data service (``grpc://host:port`` of its dispatcher).

    With ``job_name`` several trainers share one job and split the data; without, each
    gets the whole stream (``parallel_epochs``).
    """
    return ds.apply(
        tf.data.experimental.service.distribute(
            processing_mode=tf.data.experimental.service.ShardingPolicy.OFF,
            service=service,
            job_name=job_name,
        )
    )


def start_dispatcher(port: int = 0) -> tf.data.experimental.service.DispatchServer:
    """Starts a tf.data service dispatcher in this process (port 0: pick a free one)."""
    return tf.data.experimental.service.DispatchServer(tf.data.experimental.service.DispatcherConfig(port=port))


def start_worker(dispatcher: str, port: int = 0) -> tf.data.experimental.service.WorkerServer:
    """Starts a tf.data service worker serving the dispatcher at ``host:port``."""
    dispatcher = dispatcher.removeprefix("grpc://")
    return tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=dispatcher, port=port)
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcndata.distributed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher", help="run a tf.data service dispatcher")
    d.add_argument("--port", type=int, default=5050)
    w = sub.add_parser("worker", help="run a tf.data service worker")
    w.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    w.add_argument("--port", type=int, default=5051)
    args = parser.parse_args(argv)
    server = start_dispatcher(args.port) if args.role == "dispatcher" else start_worker(args.dispatcher, args.port)
    print(f"fcndata: tf.data service {args.role} listening on port {args.port}", flush=True)
    server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
