"""The trainer end to end: artifacts, resume after SIGKILL, mixed precision, XLA, MirroredStrategy."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fcndata.config import load_config

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "data.num_images=6", "data.val_num_images=3", "data.min_size=40", "data.max_size=64",
    "model.width=8", "model.variant=fcn32s", "batching.batch_size=16", "train.epochs=2", "train.steps_per_epoch=3",
    "train.verbose=0",
]
RECIPE = str(ROOT / "pipelines" / "shapes_patchwise.yaml")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _run_args(tmp_path, name, *extra):
    return ["--config", RECIPE, *sum((["--set", s] for s in TINY + [f"train.run_dir={tmp_path}", f"train.name={name}", *extra]), [])]


def test_train_writes_every_artifact(tmp_path, capsys):
    from fcndata.train import main

    assert main(_run_args(tmp_path, "run", "train.verbose=1")) == 0  # captured: not a terminal
    run = tmp_path / "run"
    for name in ["config.yaml", "metrics.csv", "history.png", "preview.png", "predictions.png", "model.keras",
                 "summary.json"]:
        assert (run / name).is_file(), name
    assert any((run / "logs").rglob("*tfevents*"))
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["validation"]["mean_iou"] <= 1.0
    assert set(summary["validation"]["per_class_iou"]) == {"class0", "class1", "class2", "class3"}
    assert 0.0 < summary["fit_seconds"] <= summary["seconds"]
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    # verbose 1 into a file or pipe: one line per epoch, no progress bar redrawn per step
    assert "━" not in out and "\r" not in out
    assert [ln.split()[0] for ln in lines if ln.startswith("Epoch ")] == ["Epoch", "Epoch"]
    assert lines[-1].startswith(f"fcndata: results in {run}")
    assert lines[-2].endswith(f"{summary['seconds']:.0f} s ({summary['fit_seconds']:.0f} s of training)")
    # the resolved config reloads and reproduces the run's settings
    assert load_config(run / "config.yaml").train.steps_per_epoch == 3


ONE_STEP = r"""
import json, sys
import keras
from fcndata.config import load_config
from fcndata.train import train
summary = train(load_config(sys.argv[1], sys.argv[2:]))
print(json.dumps({"loss": summary["last_epoch"]["loss"], "jit_compile": summary["jit_compile"],
                  "policy": summary["policy"], "after": keras.mixed_precision.global_policy().name}))
"""


@pytest.mark.parametrize("extra", [["train.mixed_precision=mixed_bfloat16"], ["train.jit_compile=true"]])
def test_one_step_under_mixed_precision_and_xla(tmp_path, extra):
    # A fresh process: op determinism, once turned on by an earlier run in this process, cannot
    # be turned off with TensorFlow's public API, and Keras runs XLA only without it.
    args = TINY + ["train.epochs=1", "train.steps_per_epoch=1", f"train.run_dir={tmp_path}", "train.name=x", *extra]
    out = subprocess.run([sys.executable, "-c", ONE_STEP, RECIPE, *args], env=ENV, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert np.isfinite(summary["loss"])
    assert summary["jit_compile"] == ("train.jit_compile=true" in extra)
    assert summary["policy"] == ("mixed_bfloat16" if "mixed" in extra[0] else "float32")
    assert summary["after"] == "float32"  # restored afterwards


def test_jit_compile_after_op_determinism_in_the_same_process_says_so(tmp_path, capsys):
    from fcndata import train as T

    T._enable_op_determinism()
    cfg = load_config(RECIPE, TINY + ["train.epochs=1", "train.steps_per_epoch=1", f"train.run_dir={tmp_path}",
                                      "train.name=x", "train.jit_compile=true"])
    summary = T.train(cfg)
    assert summary["jit_compile"] is False
    assert "train.jit_compile=true is ignored: op determinism was turned on earlier in this process" in \
        capsys.readouterr().err


def _weights(path):
    import keras

    import fcndata.losses  # noqa: F401
    import fcndata.metrics  # noqa: F401
    import fcndata.models  # noqa: F401

    return keras.models.load_model(path, compile=False).get_weights()


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    extra = ["train.epochs=3", "train.steps_per_epoch=6"]
    cmd = [sys.executable, "-m", "fcndata.train"]
    # the uninterrupted reference
    subprocess.run(cmd + _run_args(tmp_path, "straight", *extra), check=True, env=ENV, cwd=ROOT,
                   capture_output=True, timeout=600)
    # the same run, killed with SIGKILL once epoch 1 is checkpointed (so inside epoch 2)
    proc = subprocess.Popen(cmd + _run_args(tmp_path, "killed", *extra), env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt.glob("ckpt-1.index")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.keras").exists()
    done = subprocess.run(cmd + ["--resume", str(tmp_path / "killed")], env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    for a, b in zip(_weights(tmp_path / "straight" / "model.keras"), _weights(tmp_path / "killed" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


MIRRORED = r"""
import sys, json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from fcndata.config import load_config
from fcndata.pipeline import build_pipeline
from fcndata.train import build_model
from fcndata.distributed import select_strategy
cfg = load_config(sys.argv[1], sys.argv[2:])
batch = next(iter(build_pipeline(cfg, "train", epochs=1)))
losses = []
for devices in (None, ["/cpu:0", "/cpu:1"]):
    keras.utils.set_random_seed(0)
    strategy = select_strategy("auto", devices) if devices else tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(cfg)
    ds = tf.data.Dataset.from_tensors(batch)
    h = model.fit(ds, epochs=1, verbose=0)
    losses.append((strategy.num_replicas_in_sync, float(h.history["loss"][0]),
                   float(model.evaluate(ds, verbose=0)[0])))
print(json.dumps(losses))
"""


def test_mirrored_strategy_on_two_cpus_matches_one_device():
    args = TINY + ["model.norm=group"]
    out = subprocess.run([sys.executable, "-c", MIRRORED, RECIPE, *args], env=ENV, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (r1, loss1, after1), (r2, loss2, after2) = json.loads(out.stdout.strip().splitlines()[-1])
    assert (r1, r2) == (1, 2)
    assert loss2 == pytest.approx(loss1, rel=1e-4)
    assert after2 == pytest.approx(after1, rel=1e-3)
