"""Scale: distribution strategies, the tf.data service, and a training loop for several hosts.

Three ways past one machine's limits, all TensorFlow's own engines:

* several GPUs on one host: ``MirroredStrategy`` (``train.strategy: mirrored``, or ``auto``
  when more than one GPU is visible);
* several training hosts: ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``
  (``train.strategy: multi_worker``). Keras 3 ``fit`` fails under it (see
  :func:`fit_multi_worker`), so fcndata runs the same model, loss, optimizer and callbacks
  in its own ``strategy.run`` step loop;
* preprocessing that outgrows the trainer's CPUs: the tf.data service. Start a dispatcher
  and workers (each line on its own host or shell)::

      python -m fcndata.distributed dispatcher --port 5050 --work-dir /shared/dispatcher
      python -m fcndata.distributed worker --dispatcher HOST:5050 --port 5051

  and send a pipeline there with :func:`distribute_dataset` (or a recipe's ``service:``
  section). With ``sharding="dynamic"`` (the default) the dispatcher hands each element of
  the pipeline's source (one image) to one worker, so every patch arrives once per epoch;
  fcndata's per-element stateless keys make a patch identical whichever worker cuts it.
  If a worker dies, the images it had in flight are lost for that epoch (at-most-once
  delivery); nothing arrives twice.

The service runs a serialised graph in another process: a stage that calls Python
(``tf.py_function``/``tf.numpy_function``, e.g. the albumentations bridge) cannot run there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
SHARDING = ("dynamic", "off")


def _tf_config_workers() -> int:
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return len(tf_config.get("cluster", {}).get("worker", []))


def select_strategy(name: str = "auto", devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``train.strategy``.

    * ``auto``: ``multi_worker`` when ``TF_CONFIG`` names more than one worker, ``mirrored``
      when more than one GPU is visible (or ``devices`` lists several), else ``one_device``;
    * ``one_device``: the default strategy (one CPU or GPU);
    * ``mirrored``: ``MirroredStrategy`` over ``devices`` (default: every GPU, else the CPU);
    * ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``.

    Example:
      >>> select_strategy("one_device").num_replicas_in_sync
      1
    """
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {list(STRATEGIES)}. Received: strategy={name!r}")
    if name == "auto":
        if _tf_config_workers() > 1:
            name = "multi_worker"
        elif (devices is not None and len(devices) > 1) or len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if _tf_config_workers() < 1:
            raise ValueError(
                "train.strategy=multi_worker needs TF_CONFIG naming the cluster, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}; '
                "set it on every host. Received: TF_CONFIG unset or without workers"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """``one_device``, ``mirrored`` or ``multi_worker`` for a strategy object."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "one_device"


def is_chief() -> bool:
    """True on the host that writes the run's artifacts: the chief, else worker 0, else a lone process."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def task_name() -> str:
    """This process's task in ``TF_CONFIG``, e.g. ``worker1`` (``worker0`` for a lone process)."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("task", {})
    return f"{task.get('type', 'worker')}{int(task.get('index', 0))}"


def has_gpu() -> bool:
    """True when TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def distribute_dataset(
    ds: tf.data.Dataset,
    service: str,
    *,
    sharding: str = "dynamic",
    job_name: str | None = None,
    compression: str | None = "AUTO",
) -> tf.data.Dataset:
    """Runs ``ds`` on the tf.data service whose dispatcher is at ``service``.

    Args:
      ds: a graph-only pipeline (its source splittable for ``dynamic``: ``range``,
        ``from_tensor_slices``, TFRecord files — every fcndata source is).
      service: the dispatcher, ``grpc://HOST:PORT`` or ``HOST:PORT``.
      sharding: ``dynamic``: each element of the source (one image) goes to one worker, so
        with no failures every element arrives exactly once per pass; ``off``: every worker
        runs the whole pipeline (each element arrives once per worker — only for pipelines
        that are random per worker).
      job_name: several trainers naming the same job share one stream (each element goes to
        one of them); None: each trainer gets its own.
      compression: ``"AUTO"`` (compress when it pays) or None (also ``"auto"`` / ``"none"``,
        as in a recipe's ``service.compression``).

    Returns:
      The dataset, read from the service's workers.
    """
    if sharding not in SHARDING:
        raise ValueError(f"service.sharding must be one of {list(SHARDING)}. Received: sharding={sharding!r}")
    if not isinstance(service, str) or not service.strip():
        raise ValueError(f"service.address must be 'HOST:PORT' of a dispatcher. Received: address={service!r}")
    address = service if "://" in service else f"grpc://{service}"
    if isinstance(compression, str):
        compression = None if compression.lower() == "none" else compression.upper()
    policy = {
        "dynamic": tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        "off": tf.data.experimental.service.ShardingPolicy.OFF,
    }[sharding]
    return ds.apply(
        tf.data.experimental.service.distribute(
            processing_mode=policy, service=address, job_name=job_name, compression=compression
        )
    )


#: ops that call back into the Python process: a service worker in another process cannot run them
PYTHON_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")


def python_ops(ds: tf.data.Dataset) -> list[str]:
    """The ops of ``ds``'s graph (nested functions included) that call Python, e.g. ``EagerPyFunc``.

    An empty list means the pipeline serialises: it can run on a tf.data service worker.

    Example:
      >>> python_ops(tf.data.Dataset.range(3).map(lambda x: x + 1))
      []
      >>> python_ops(tf.data.Dataset.range(3).map(lambda x: tf.py_function(lambda v: v, [x], tf.int64)))
      ['EagerPyFunc']
    """
    # external_state_policy=1 (ignore): serialise anyway, so the Python ops can be listed.
    graph = tf.raw_ops.DatasetToGraphV2(input_dataset=tf.data.experimental.to_variant(ds), external_state_policy=1)
    graph_def = tf.compat.v1.GraphDef.FromString(graph.numpy())
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return sorted({n.op for n in nodes if n.op in PYTHON_OPS})


def start_dispatcher(
    port: int = 0, work_dir: str | None = None, worker_timeout_ms: int | None = None
) -> tf.data.experimental.service.DispatchServer:
    """Starts a tf.data service dispatcher in this process (port 0: pick a free one).

    With ``work_dir`` the dispatcher journals its state there and runs fault tolerant: a
    dispatcher restarted on the same directory resumes its jobs.
    """
    kwargs = {"port": port}
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
        kwargs.update(work_dir=str(work_dir), fault_tolerant_mode=True)
    if worker_timeout_ms:
        kwargs["worker_timeout_ms"] = int(worker_timeout_ms)
    return tf.data.experimental.service.DispatchServer(tf.data.experimental.service.DispatcherConfig(**kwargs))


def start_worker(
    dispatcher: str, port: int = 0, heartbeat_interval_ms: int | None = None
) -> tf.data.experimental.service.WorkerServer:
    """Starts a tf.data service worker serving the dispatcher at ``HOST:PORT``."""
    kwargs = {"dispatcher_address": dispatcher.removeprefix("grpc://"), "port": port}
    if heartbeat_interval_ms:
        kwargs["heartbeat_interval_ms"] = int(heartbeat_interval_ms)
    return tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(**kwargs))


# --- Training on several hosts ---------------------------------------------------------------


def distribute_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """``dataset`` of global batches as a distributed dataset: each replica takes its share of
    every batch (``AutoShardPolicy.DATA``), so N workers see the global batch one process would."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def train_step(strategy: tf.distribute.Strategy, model):
    """One training step of ``model`` under ``strategy`` as a ``tf.function`` of a distributed
    batch ``(inputs, label, sample_weight)``; returns the global mean loss (see :func:`fit_multi_worker`)."""
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

    @tf.function
    def step(batch):
        def replica(inputs, label, sample_weight):
            with tf.GradientTape() as tape:
                pred = model(inputs, training=True)
                loss = model.compute_loss(x=inputs, y=label, y_pred=pred, sample_weight=sample_weight, training=True)
                # as fit's step: the loss scale of mixed_float16 (identity otherwise)
                scaled = model.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return strategy.reduce("SUM", strategy.run(replica, args=batch), axis=None)

    return step


def sync_replica_state(strategy: tf.distribute.Strategy, model) -> None:
    """Averages non-trainable variables (batch-norm moving statistics) across all replicas."""
    variables = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
    if not variables or strategy.num_replicas_in_sync == 1:
        return

    @tf.function
    def average():
        def replica():
            ctx = tf.distribute.get_replica_context()
            return [ctx.all_reduce("MEAN", tf.identity(v.value)) for v in variables]

        return strategy.run(replica)

    for variable, value in zip(variables, average()):
        variable.assign(strategy.experimental_local_results(value)[0])


def agree_on_mean(strategy):
    """``x -> mean of x over every worker`` (one small all-reduce; ReduceOp has no MAX), so
    that the workers of a multi-worker run set the same learning rate and stop at the same step
    of a budget."""
    device = strategy.extended.worker_devices[0]

    @tf.function
    def reduce(x):
        def replica():
            # placed: the collective refuses a tensor without a device ("destinations can not be empty")
            with tf.device(device):
                value = tf.identity(x)
            return tf.distribute.get_replica_context().all_reduce("MEAN", value)

        return strategy.experimental_local_results(strategy.run(replica))[0]

    return lambda x: float(reduce(tf.constant(x, tf.float64)))


def fit_multi_worker(strategy: tf.distribute.Strategy, model, config, train_ds, val_ds, initial_epoch: int,
                     epochs: int, steps: int, callbacks) -> None:
    """What ``model.fit`` does, as a step loop that runs under ``MultiWorkerMirroredStrategy``.

    Why not ``model.fit``: Keras 3 (3.15 here) ``fit`` under ``MultiWorkerMirroredStrategy``
    fails before the first step (``Trainer._maybe_symbolic_build`` reduces the first
    distributed batch with ``strategy.reduce``, which raises ``ValueError: Attempt to
    convert a value (PerReplica...) to a Tensor``; upstream tensorflow/tensorflow#72388,
    keras-team/keras#20585). This loop does what ``fit``'s step does with public APIs
    (:func:`train_step`): the model's compiled loss (``model.compute_loss``, which divides by
    the replica count), ``GradientTape``, and the optimizer (which all-reduces gradients
    across replicas). ``train_ds`` yields global batches ``(inputs, label, sample_weight)``;
    each worker takes its share of every batch (:func:`distribute_batches`), so N workers see
    the same global batch one process would.

    The same stream, steps (epochs ``initial_epoch`` up to ``epochs``), callbacks (CSV,
    TensorBoard, images, checkpoints) and epoch logs (``loss`` and, on the chief,
    ``val_mean_iou`` and ``val_pixel_accuracy`` from :func:`fcndata.evaluation.evaluate`;
    no ``val_loss``), ``model.stop_training`` (a ``train.seconds`` budget) checked after
    every step; batch-norm moving statistics are averaged across workers at the end of every
    epoch (:func:`sync_replica_state`), so every worker ends with identical weights.
    """
    import keras

    from fcndata.evaluation import evaluate

    t = config.train
    step = train_step(strategy, model)
    iterator = iter(distribute_batches(strategy, train_ds))
    hooks = keras.callbacks.CallbackList(callbacks, add_history=False, add_progbar=False, model=model)
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        hooks.on_epoch_begin(epoch)
        total, done = 0.0, 0
        for i in range(steps):
            hooks.on_train_batch_begin(i)
            total += float(step(next(iterator)))
            done += 1
            hooks.on_train_batch_end(i)
            if model.stop_training:  # the same step on every worker: the budget's clock agrees on the mean
                break
        sync_replica_state(strategy, model)
        logs = {"loss": total / done}
        if val_ds is not None:
            # In this process only (Keras evaluate would wait for the other workers' collectives).
            result = evaluate(model, config, max_batches=t.validation_steps, dataset=val_ds)
            logs.update(val_mean_iou=result["mean_iou"], val_pixel_accuracy=result["pixel_accuracy"])
        if t.verbose:
            of = f"/{t.epochs}" if t.epochs is not None else ""
            print(f"Epoch {epoch + 1}{of}: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
        hooks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    hooks.on_train_end()


# --- Command line ----------------------------------------------------------------------------


def _serve(server, role: str, address: str) -> int:
    """Blocks until SIGTERM or Ctrl-C, then stops the server cleanly."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))
    print(f"fcndata: tf.data service {role} listening on {address}", flush=True)
    try:
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop.append("Ctrl-C")
    server.stop()
    print(f"fcndata: tf.data service {role} stopped ({stop[0]})", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fcndata.distributed", description="Run a tf.data service dispatcher or worker for fcndata pipelines."
    )
    sub = parser.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher", help="run a tf.data service dispatcher")
    d.add_argument("--port", type=int, default=5050, help="port to listen on (0: any free port)")
    d.add_argument("--work-dir", help="journal directory: makes the dispatcher fault tolerant (restart resumes jobs)")
    d.add_argument("--worker-timeout-ms", type=int, help="declare a silent worker dead after this long")
    w = sub.add_parser("worker", help="run a tf.data service worker")
    w.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    w.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    w.add_argument("--heartbeat-interval-ms", type=int, help="how often to report to the dispatcher")
    args = parser.parse_args(argv)
    if args.role == "dispatcher":
        server = start_dispatcher(args.port, args.work_dir, args.worker_timeout_ms)
        mode = f", fault tolerant, work dir {args.work_dir}" if args.work_dir else ""
        return _serve(server, "dispatcher", f"{server.target}{mode}")
    server = start_worker(args.dispatcher, args.port, args.heartbeat_interval_ms)
    return _serve(server, "worker", f"port {args.port or 'auto'} for dispatcher {args.dispatcher}")


if __name__ == "__main__":
    sys.exit(main())
