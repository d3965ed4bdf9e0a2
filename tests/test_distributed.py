"""Scale-out on loopback: a tf.data service of real processes, and training on two hosts.

Dispatcher and workers run as subprocesses started with the package's own command line
(``python -m fcndata.distributed``), so a Python function in a pipeline graph — which a
worker in another process cannot run — would fail here as it would on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import fcndata.testing as t
from fcndata import distributed as D
from fcndata.patches import BalancedPatches
from fcndata.sources import from_arrays

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(41, 37), (33, 45), (29, 29), (47, 31), (35, 39), (31, 43)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


class Service:
    """A dispatcher and workers as subprocesses of ``python -m fcndata.distributed``."""

    def __init__(self, tmp_path: Path, work_dir: str | None = None):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.address = f"localhost:{self.port}"
        self.work_dir = work_dir
        self.workers: list[subprocess.Popen] = []
        self.dispatcher = self._start_dispatcher()

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "fcndata.distributed", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        deadline = time.time() + 300  # a hang detector: a start under a loaded machine takes a minute
        try:
            while "listening on" not in (self.tmp_path / f"{name}.log").read_text():
                assert proc.poll() is None, (self.tmp_path / f"{name}.log").read_text()
                assert time.time() < deadline, f"{name} did not start"
                time.sleep(0.1)
        except BaseException:
            proc.kill()  # a failed start leaves no process behind
            raise
        return proc

    def _start_dispatcher(self) -> subprocess.Popen:
        args = ["dispatcher", "--port", str(self.port), "--worker-timeout-ms", "1500"]
        if self.work_dir:
            args += ["--work-dir", self.work_dir]
        return self._spawn(args, f"dispatcher{time.time_ns()}")

    def add_worker(self, port: int | None = None) -> subprocess.Popen:
        port = port or free_port()
        proc = self._spawn(["worker", "--dispatcher", self.address, "--port", str(port),
                            "--heartbeat-interval-ms", "200"], f"worker{len(self.workers)}")
        proc.port = port
        self.workers.append(proc)
        return proc

    def kill_and_restart(self, worker: subprocess.Popen) -> subprocess.Popen:
        """SIGKILL a worker, then start a new one at the same address (what a supervisor does)."""
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        return self.add_worker(worker.port)

    def restart_dispatcher(self) -> None:
        self.dispatcher.send_signal(signal.SIGKILL)
        self.dispatcher.wait()
        self.dispatcher = self._start_dispatcher()

    def stop(self, timeout: float = 30) -> list[int]:
        """SIGTERM every process (all at once) and their exit codes; SIGKILL after ``timeout`` s."""
        procs = [*self.workers, self.dispatcher]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One dispatcher and two workers for the module (each process costs seconds to start)."""
    s = Service(tmp_path_factory.mktemp("service"))
    s.add_worker()
    s.add_worker()
    yield s
    # Generous under load: a worker stops once its jobs' tasks are cancelled.
    s.stop(timeout=120)


def patch_pipeline(epoch: int) -> tf.data.Dataset:
    """A graph-only patchwise pipeline: arrays source, per-epoch key, class-balanced patches."""
    images = [t.random_image(h, w, 3, seed=i) for i, (h, w) in enumerate(SIZES)]
    labels = [t.stripe_label(h, w, 3).numpy() for h, w in SIZES]
    ds = from_arrays(images, labels, num_classes=3)
    ds = ds.map(lambda e: {**e, "epoch": tf.constant(epoch, tf.int64)})
    return ds.apply(BalancedPatches(patch_size=(16, 16), num_per_image=5, num_classes=3, seed=7))


def fingerprints(ds: tf.data.Dataset) -> Counter:
    """The multiset of (epoch, source_index, origin, hash of the pixels) of every patch."""
    out = Counter()
    for e in ds.as_numpy_iterator():
        digest = hashlib.sha1(e["image"].tobytes() + e["label"].tobytes()).hexdigest()[:12]
        out[(int(e["epoch"]), int(e["source_index"]), *map(int, e["origin"]), digest)] += 1
    return out


def test_two_workers_deliver_every_patch_once_per_epoch(service):
    for epoch in range(2):
        local = fingerprints(patch_pipeline(epoch))
        remote = fingerprints(D.distribute_dataset(patch_pipeline(epoch), service.address, sharding="dynamic"))
        # The same multiset: every patch once (balanced sampling may draw a patch twice
        # within an image, locally too), none missing, none extra.
        assert remote == local and sum(local.values()) == 5 * len(SIZES)


def test_sharding_off_gives_each_element_once_per_worker(service):
    local = fingerprints(patch_pipeline(0))
    remote = fingerprints(D.distribute_dataset(patch_pipeline(0), service.address, sharding="off"))
    assert remote == local + local


def folder_overrides(root: Path) -> list[str]:
    """A folder-source patchwise recipe (balanced patches) over images written to ``root``,
    as ``--set`` overrides of pipelines/folder.yaml."""
    import cv2

    if not (root / "images").is_dir():
        for d in ("images", "masks"):
            (root / d).mkdir(parents=True)
        for i, (h, w) in enumerate(SIZES):
            cv2.imwrite(str(root / "images" / f"im{i}.png"), t.random_image(h, w, 3, seed=i))
            cv2.imwrite(str(root / "masks" / f"im{i}.png"), t.stripe_label(h, w, 3).numpy())
    return [f"data.root={root}", "data.images=images/*.png", "data.masks=masks/{stem}.png",
            "data.val_images=images/*.png", "data.val_masks=masks/{stem}.png", "data.class_names=null",
            "patches.mode=balanced", "patches.patch_size=16", "patches.num_per_image=5", "patches.images_per_batch=2",
            "batching.batch_size=4", "train.epochs=2"]


def folder_recipe(root: Path, *overrides: str):
    from fcndata.config import load_config

    return load_config(ROOT / "pipelines" / "folder.yaml", [*folder_overrides(root), *overrides])


def batch_fingerprints(ds: tf.data.Dataset) -> Counter:
    """:func:`fingerprints` of the patches in a stream of batches."""
    return fingerprints(ds.unbatch())


def test_service_section_sends_the_recipe_to_the_workers(service, tmp_path):
    from fcndata.pipeline import build_pipeline, steps_per_epoch

    local_cfg = folder_recipe(tmp_path)
    cfg = folder_recipe(tmp_path, f"service.address={service.address}")
    local = batch_fingerprints(build_pipeline(local_cfg, "train", keras=False, fixed_length=False))
    remote = batch_fingerprints(build_pipeline(cfg, "train", keras=False, fixed_length=False))
    # 2 epochs x 6 images x 5 patches, each exactly once: the same multiset as without service.
    assert remote == local and sum(local.values()) == 2 * 6 * 5
    assert {k[0] for k in remote} == {0, 1}
    # The trainer's stream: Keras triplets, exactly steps_per_epoch x epochs batches.
    batches = list(build_pipeline(cfg, "train"))
    assert len(batches) == 2 * steps_per_epoch(cfg) and batches[0][0].dtype == tf.float32


def test_readme_train_command_with_a_service(service, tmp_path, capsys):
    # README: python -m fcndata.train --config my_data.yaml --set service.address=HOST:5050
    from fcndata.train import main

    sets = [*folder_overrides(tmp_path), f"service.address={service.address}", "model.width=4", "train.epochs=1",
            "train.steps_per_epoch=3", "train.verbose=0", f"train.run_dir={tmp_path}", "train.name=run"]
    assert main(["--config", str(ROOT / "pipelines" / "folder.yaml"), *(a for s in sets for a in ("--set", s))]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"fcndata: results in {tmp_path}/run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps_per_epoch"] == 3


@pytest.mark.parametrize("override, match", [
    ("data.on_error=skip", r"data.on_error=skip records each skipped file with tf.py_function.*set data.on_error: raise"),
    ("augment.albumentations={transform: {__class_fullname__: Compose, p: 1.0, transforms: [{__class_fullname__: HorizontalFlip, p: 0.5}]}}",
     "augment.albumentations runs albumentations through tf.numpy_function"),
    ("data.images=images/*.tif", "TIFF files are decoded with OpenCV.*convert them to PNG"),
])
def test_a_pipeline_that_calls_python_is_refused_before_registration(tmp_path, override, match):
    import cv2

    from fcndata.pipeline import build_pipeline

    folder_recipe(tmp_path)
    cv2.imwrite(str(tmp_path / "images" / "im0.tif"), t.random_image(41, 37, 3))
    # Port 1 has no dispatcher: the error comes before any attempt to reach one.
    cfg = folder_recipe(tmp_path, "service.address=localhost:1", override)
    with pytest.raises(ValueError, match=match):
        build_pipeline(cfg, "train")


def test_killed_worker_loses_only_images_in_flight(service):  # last user of the shared service
    # TF 2.21's dispatcher never drops a dead worker from a running job (it only times
    # out workers for snapshots), so the epoch ends once a worker is back at the dead
    # one's address — a supervisor's restart (systemd, Kubernetes) — as the README says.
    victim = service.workers[-1]
    images = [t.random_image(24, 24, 3, seed=i) for i in range(40)]
    labels = [np.zeros((24, 24), np.uint8) for _ in images]
    # Each image becomes 4 patches; each patch waits 20 ms, so the epoch lasts a few seconds.
    ds = from_arrays(images, labels, num_classes=2)
    ds = ds.apply(BalancedPatches(patch_size=(12, 12), num_per_image=4, num_classes=2, seed=1))
    ds = D.distribute_dataset(ds.apply(t.slow_down(20_000)), service.address)
    seen = Counter()
    for i, e in enumerate(ds.as_numpy_iterator()):
        seen[int(e["source_index"])] += 1
        if i == 20:
            service.kill_and_restart(victim)
    assert seen, "nothing arrived"
    assert max(seen.values()) <= 4, "a patch arrived twice"
    partial = {i for i, n in seen.items() if n < 4}
    missing = set(range(40)) - set(seen)
    # At-most-once: what the dead worker had in flight is lost, whole images or the
    # unfinished rest of one; everything else arrives complete.
    assert len(partial | missing) <= 8, (partial, missing)
    assert sum(seen.values()) >= 4 * 40 - 4 * 8


def test_restarted_fault_tolerant_dispatcher_loses_nothing(tmp_path):
    service = Service(tmp_path, work_dir=str(tmp_path / "journal"))
    try:
        service.add_worker()
        ds = D.distribute_dataset(patch_pipeline(0).apply(t.slow_down(20_000)), service.address)
        seen = Counter()
        for i, e in enumerate(ds.as_numpy_iterator()):
            seen[(int(e["source_index"]), *map(int, e["origin"]))] += 1
            if i == 5:
                service.restart_dispatcher()
        assert sum(seen.values()) == 5 * len(SIZES)
    finally:
        # Generous under load, as for the module's service: after the restart the worker
        # stops once its job's tasks are cancelled (over 30 s once in a full 2-core suite).
        codes = service.stop(timeout=120)
    assert codes == [0, 0]  # SIGTERM stops worker and dispatcher cleanly
    assert "stopped (SIGTERM)" in (tmp_path / "worker0.log").read_text()


def test_bad_service_settings_name_the_key():
    ds = tf.data.Dataset.range(3)
    with pytest.raises(ValueError, match=r"service.sharding must be one of \['dynamic', 'off'\]"):
        D.distribute_dataset(ds, "localhost:1", sharding="files")
    with pytest.raises(ValueError, match="train.strategy must be one of"):
        D.select_strategy("tpu")


def test_default_strategy_on_one_cpu():
    assert D.select_strategy().num_replicas_in_sync == 1
    assert D.strategy_name(D.select_strategy()) == "one_device"


# --- the trainer's train.strategy ------------------------------------------------------------

TRAIN_TINY = ["data.num_images=8", "data.val_num_images=2", "data.min_size=32", "data.max_size=48", "model.width=4",
              "model.variant=fcn32s", "model.norm=group", "batching.batch_size=4", "train.steps_per_epoch=3", "train.epochs=1",
              "train.verbose=0", "batching.pad_to_multiple=32",
              # cross-entropy alone: Dice over a host's half batch is not the Dice of the whole batch
              "loss.name=cross_entropy", "loss.terms=null"]


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return [np.ravel(v) for v in keras.saving.load_model(path, compile=False).get_weights()]


def test_train_command_on_two_hosts_ends_with_identical_weights(tmp_path, capsys, monkeypatch):
    from fcndata.train import main

    monkeypatch.chdir(ROOT)
    ports = [free_port(), free_port()]
    procs = []
    for index in range(2):
        env = _env()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}})
        sets = [arg for s in [*TRAIN_TINY, "train.strategy=multi_worker", f"train.run_dir={tmp_path}", "train.name=run"]
                for arg in ("--set", s)]
        procs.append(subprocess.Popen([sys.executable, "-m", "fcndata.train", "--config", "pipelines/shapes.yaml", *sets],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    # Meanwhile, the same global batch in this process, the README's command for several GPUs
    # (python -m fcndata.train --config pipelines/shapes.yaml --set train.strategy=mirrored):
    # one replica on one CPU; tests/test_train.py runs MirroredStrategy over two logical
    # CPUs, and its other runs use auto, which is one_device here.
    sets = [*TRAIN_TINY, f"train.run_dir={tmp_path}", "train.name=single"]
    assert main(["--config", "pipelines/shapes.yaml", "--set", "train.strategy=mirrored",
                 *(a for s in sets for a in ("--set", s))]) == 0
    single = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert (single["strategy"], single["replicas"], single["global_batch_size"], single["per_replica_batch_size"]) == (
        "mirrored", 1, 4, 4)
    assert "fcndata: strategy mirrored, 1 replica(s): global batch 4, 4 per replica" in capsys.readouterr().out
    outs = [p.communicate(timeout=900) for p in procs]
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err[-3000:]
    assert "fcndata: strategy multi_worker, 2 replica(s): global batch 4, 2 per replica" in outs[0][0]
    assert outs[1][0].strip().splitlines()[-1].startswith(f"fcndata: this worker's checkpoints and model copy in {tmp_path}/run/worker1")
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["strategy"], summary["replicas"], summary["global_batch_size"], summary["per_replica_batch_size"]) == (
        "multi_worker", 2, 4, 2)
    # The chief wrote the run's artifacts, checkpoints included; the other worker only its own copies.
    for name in ["metrics.csv", "history.png", "predictions.png", "checkpoints/checkpoint", "worker1/model.keras"]:
        assert (run / name).is_file(), name
    assert not (run / "worker1" / "metrics.csv").exists()
    w0, w1, w = (_weights(path) for path in (run / "model.keras", run / "worker1" / "model.keras",
                                                 tmp_path / "single" / "model.keras"))
    assert max(np.abs(a - b).max() for a, b in zip(w0, w1)) <= 1e-6  # both hosts end with the same model
    # Same global batch as one process: each host's loss is normalised by its own valid
    # pixels ("mean_with_sample_weight"), so the steps are close, not bit-equal.
    weight_gap = max(np.abs(a - b).max() for a, b in zip(w0, w))
    loss_gap = abs(summary["last_epoch"]["loss"] - single["last_epoch"]["loss"]) / abs(single["last_epoch"]["loss"])
    print(f"two hosts vs one process: loss rel. gap {loss_gap:.2e}, max |Δw| {weight_gap:.2e}")
    assert loss_gap < 0.1 and weight_gap < 0.05, (loss_gap, weight_gap)
