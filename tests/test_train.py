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
    assert 0.0 < summary["training_seconds"] <= summary["fit_seconds"]
    assert (summary["seconds_budget"], summary["steps"], summary["epochs_reached"]) == (None, 6, 2.0)
    assert set(summary["checks"]) == {"mean_iou_inference_mode", "mean_iou_training_mode", "mode_gap",
                                      "predicted_classes", "warnings"}
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
                  "policy": summary["policy"], "after": keras.mixed_precision.global_policy().name,
                  "steps": summary["steps"]}))
"""


@pytest.mark.parametrize("extra", [["train.mixed_precision=mixed_bfloat16"], ["train.jit_compile=true"],
                                   # a time budget under XLA: the rate is set from a callback, the budget stops fit
                                   ["train.jit_compile=true", "train.seconds=0.001", "train.schedule=cosine"]])
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
    assert summary["steps"] == 1


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


def _kill_after_epoch_1(command, run_dir):
    """Starts a training command and SIGKILLs it once epoch 1 is checkpointed; returns the checkpoint folder."""
    proc = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt.glob("ckpt-1.index")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ckpt


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    extra = ["train.epochs=3", "train.steps_per_epoch=6"]
    cmd = [sys.executable, "-m", "fcndata.train"]
    # the uninterrupted reference
    subprocess.run(cmd + _run_args(tmp_path, "straight", *extra), check=True, env=ENV, cwd=ROOT,
                   capture_output=True, timeout=600)
    # the same run, killed with SIGKILL once epoch 1 is checkpointed (so inside epoch 2)
    _kill_after_epoch_1(cmd + _run_args(tmp_path, "killed", *extra), tmp_path / "killed")
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


# --- train.seconds: a time budget, measured with a fake clock ------------------------------------


class _FakeClock:
    """Each call advances ``tick`` seconds: a step (two calls) measures exactly one tick.
    ``stop_after`` calls, then KeyboardInterrupt: a crash at a known step."""

    def __init__(self, tick=0.5, stop_after=None):
        self.now, self.tick, self.calls, self.stop_after = 0.0, tick, 0, stop_after

    def __call__(self):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt("fake crash")
        self.now += self.tick
        return self.now


def _rates():
    """A callback recording the learning rate every step trained with."""
    import keras

    class Rates(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rates = []

        def on_train_batch_end(self, batch, logs=None):
            self.rates.append(float(self.model.optimizer.learning_rate.numpy()))

    return Rates()


def _budget_config(tmp_path, name, *extra):
    return load_config(RECIPE, TINY + ["train.steps_per_epoch=3", "train.learning_rate=0.01",
                                       f"train.run_dir={tmp_path}", f"train.name={name}", *extra])


def _cosine(fractions, lr=0.01):
    return [lr * 0.5 * (1 + np.cos(np.pi * f)) for f in fractions]


def test_seconds_stop_after_exactly_the_budgeted_steps_with_cosine_over_the_seconds(tmp_path, monkeypatch, capsys):
    from fcndata import train as T

    monkeypatch.setattr("fcndata.callbacks._clock", _FakeClock(tick=0.5))
    rates = _rates()
    # 3.5 s at 0.5 s a step: 7 steps, two epochs and a third of one; no epochs cap
    cfg = _budget_config(tmp_path, "budget", "train.epochs=null", "train.seconds=3.5", "train.schedule=cosine",
                         "train.verbose=1")
    summary = T.train(cfg, callbacks=[rates])
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if ln.startswith("Epoch")] == ["Epoch 1", "Epoch 2", "Epoch 3"]
    assert summary["steps"] == 7
    assert summary["epochs_reached"] == pytest.approx(7 / 3, abs=0.01)
    assert summary["seconds_budget"] == 3.5 and summary["training_seconds"] == 3.5
    np.testing.assert_allclose(rates.rates, _cosine([k * 0.5 / 3.5 for k in range(7)]), rtol=1e-6)
    saved = json.loads((tmp_path / "budget" / "summary.json").read_text())
    assert saved["steps"] == 7 and saved["epochs"] is None
    assert len(_read_csv_epochs(tmp_path / "budget" / "metrics.csv")) == 3  # the last epoch cut short


def _read_csv_epochs(path):
    import csv

    with path.open() as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def test_epochs_cap_a_time_budget_whichever_comes_first(tmp_path, monkeypatch):
    from fcndata import train as T

    monkeypatch.setattr("fcndata.callbacks._clock", _FakeClock(tick=0.5))
    rates = _rates()
    cfg = _budget_config(tmp_path, "cap", "train.epochs=1", "train.seconds=100", "train.schedule=poly")
    summary = T.train(cfg, callbacks=[rates])
    assert summary["steps"] == 3 and summary["epochs_reached"] == 1.0
    np.testing.assert_allclose(rates.rates, [0.01 * (1 - k * 0.5 / 100) ** 0.9 for k in range(3)], rtol=1e-6)


def test_resumed_time_budget_continues_the_seconds_and_the_schedule(tmp_path, monkeypatch):
    from fcndata import train as T

    extra = ["train.epochs=null", "train.seconds=4", "train.schedule=cosine", "train.warmup_steps=2"]
    expected = [r * min(k / 2, 1.0) for k, r in enumerate(_cosine([k * 0.5 / 4 for k in range(8)]))]
    # crashed in epoch 2 (after 4 steps: 8 clock calls); epoch 1 (3 steps, 1.5 s) is checkpointed
    monkeypatch.setattr("fcndata.callbacks._clock", _FakeClock(tick=0.5, stop_after=8))
    first = _rates()
    with pytest.raises(KeyboardInterrupt):
        T.train(_budget_config(tmp_path, "crashed", *extra), callbacks=[first])
    assert len(first.rates) == 4
    assert not (tmp_path / "crashed" / "model.keras").exists()
    monkeypatch.setattr("fcndata.callbacks._clock", _FakeClock(tick=0.5))
    resumed = _rates()
    cfg = load_config(tmp_path / "crashed" / "config.yaml")
    summary = T.train(cfg, tmp_path / "crashed", resume=True, callbacks=[resumed])
    # the budget continues from epoch 1's 1.5 s: 5 more steps, 8 in all, on the same schedule
    assert summary["steps"] == 8 and summary["training_seconds"] == 4.0
    np.testing.assert_allclose(first.rates[:3] + resumed.rates, expected, rtol=1e-6)
    # resuming a run whose budget is spent trains no more steps, and still writes the run
    again = _rates()
    summary = T.train(cfg, tmp_path / "crashed", resume=True, callbacks=[again])
    assert again.rates == [] and summary["steps"] == 8 and summary["training_seconds"] == 4.0


def test_minutes_sets_the_budget_and_lifts_the_epochs_cap(tmp_path, monkeypatch):
    import yaml

    from fcndata import train as T

    raw = yaml.safe_load(Path(RECIPE).read_text())
    del raw["train"]["epochs"]
    recipe = tmp_path / "no_epochs.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    no_epochs = [s for s in TINY if not s.startswith("train.epochs")]
    monkeypatch.setattr("fcndata.callbacks._clock", _FakeClock(tick=3.0))  # 0.05 minutes = 3 s: one step
    args = ["--config", str(recipe)] + sum((["--set", s] for s in no_epochs), [])
    assert T.main(args + ["--set", f"train.run_dir={tmp_path}", "--set", "train.name=m", "--minutes", "0.05"]) == 0
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert (summary["seconds_budget"], summary["epochs"], summary["steps"]) == (3.0, None, 1)
    assert load_config(tmp_path / "m" / "config.yaml").train.seconds == 3.0
    # the recipe's own train.epochs (3) stays a cap
    monkeypatch.setattr("fcndata.callbacks._clock", _FakeClock(tick=0.001))
    args = ["--config", RECIPE] + sum((["--set", s] for s in no_epochs), [])
    assert T.main(args + ["--set", f"train.run_dir={tmp_path}", "--set", "train.name=c", "--minutes", "10"]) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert (summary["seconds_budget"], summary["epochs"], summary["steps"]) == (600.0, 3, 9)


def test_minutes_keeps_an_epochs_override_as_the_cap(tmp_path):
    from fcndata.config import ConfigError
    from fcndata.train import _with_minutes

    cfg = load_config(RECIPE, ["train.epochs=2"])
    assert _with_minutes(cfg, 1.5, ["train.epochs=2"]).train.seconds == 90.0
    assert _with_minutes(cfg, 1.5, ["train.epochs=2"]).train.epochs == 2
    with pytest.raises(ConfigError, match=r"--minutes must be > 0 .*Received: --minutes 0"):
        _with_minutes(cfg, 0, [])


def test_minutes_in_help(capsys):
    from fcndata.train import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--minutes M" in capsys.readouterr().out


# --- the checks after training ------------------------------------------------------------------


def _bn_model_and_batch(moving_right: bool):
    """A model whose class-1 logit is its batch-normalised input: with batch statistics it
    labels the above-mean pixels (IoU 1.0); with moving statistics set far off, nothing."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 1)).astype("float32")
    label = (x[..., 0] > x.mean()).astype("int32")
    inputs = keras.Input((8, 8, 1))
    norm = keras.layers.BatchNormalization(center=False, scale=False)
    head = keras.layers.Conv2D(4, 1, use_bias=False)
    # a dropout branch weighted 0: no effect on the logits, but training mode advances its seed
    dropped = keras.layers.Conv2D(4, 1, use_bias=False, kernel_initializer="zeros")(keras.layers.Dropout(0.5)(inputs))
    model = keras.Model(inputs, keras.layers.Add()([head(norm(inputs)), dropped]))
    kernel = np.zeros((1, 1, 1, 4), "float32")
    kernel[..., 1] = 1.0
    head.kernel.assign(kernel)
    if moving_right:
        norm.moving_mean.assign([x.mean()])
        norm.moving_variance.assign([x.var()])
    else:
        norm.moving_mean.assign([100.0])
    return model, (x, label, np.ones(label.shape, "float32"))


def _confusion(label, pred, k=4):
    return np.bincount(label.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k).tolist()


def test_check_warns_when_normalisation_does_not_transfer_and_leaves_the_model_unchanged(capsys):
    import io

    import keras

    from fcndata.evaluation import check_trained_model

    cfg = load_config(RECIPE, TINY)
    model, batch = _bn_model_and_batch(moving_right=False)
    before = [v.numpy().copy() for v in model.variables]
    stream = io.StringIO()
    checks = check_trained_model(model, cfg, batch, _confusion(batch[1], batch[1]), stream=stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcndata: warning: normalisation statistics do not transfer")
    assert "mean IoU 1.00 in training mode" in lines[0] and "model.norm: group" in lines[0]
    assert checks["mean_iou_training_mode"] == 1.0 and checks["mode_gap"] > 0.05
    assert checks["predicted_classes"] == ["class0", "class1"]
    after = [v.numpy() for v in model.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # bit for bit, seed generators included
    model(batch[0], training=True)  # what the check would have done unrestored
    assert not all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.variables))
    keras.backend.clear_session()


def test_check_is_quiet_for_a_model_that_transfers():
    import io

    from fcndata.evaluation import check_trained_model

    cfg = load_config(RECIPE, TINY)
    model, batch = _bn_model_and_batch(moving_right=True)
    stream = io.StringIO()
    checks = check_trained_model(model, cfg, batch, _confusion(batch[1], batch[1]), stream=stream)
    assert stream.getvalue() == "" and checks["warnings"] == []
    assert checks["mean_iou_inference_mode"] == checks["mean_iou_training_mode"] == 1.0


def test_check_warns_when_the_model_predicts_a_single_class():
    import io

    import keras

    from fcndata.evaluation import check_trained_model

    cfg = load_config(RECIPE, TINY)
    # an untrained model with a zero kernel: all logits tie, argmax says class 0 everywhere
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 1, kernel_initializer="zeros")])
    x = np.ones((1, 8, 8, 1), "float32")
    label = np.tile(np.arange(4, dtype="int32"), (1, 8, 2))
    stream = io.StringIO()
    checks = check_trained_model(model, cfg, (x, label, np.ones(label.shape, "float32")),
                                 _confusion(label, np.zeros_like(label)), stream=stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fcndata: warning: the model predicts only class class0 on the validation split")
    assert "--minutes" in lines[0] and "python -m fcndata.inspect" in lines[0]
    assert checks["predicted_classes"] == ["class0"] and checks["mode_gap"] == 0.0


def test_sigkill_of_a_time_budget_run_then_resume_continues_its_seconds(tmp_path):
    import tensorflow as tf

    extra = ["train.epochs=null", "train.seconds=15", "train.steps_per_epoch=6", "train.schedule=cosine"]
    cmd = [sys.executable, "-m", "fcndata.train"]
    ckpt = _kill_after_epoch_1(cmd + _run_args(tmp_path, "killed", *extra), tmp_path / "killed")
    saved = float(tf.train.load_variable(str(ckpt / "ckpt-1"), "elapsed/.ATTRIBUTES/VARIABLE_VALUE"))
    assert saved > 0.0  # epoch 1's training seconds, checkpointed with the model
    done = subprocess.run(cmd + ["--resume", str(tmp_path / "killed")], env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at epoch 2, {saved:.1f} s of the 15 s budget spent" in done.stdout
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["training_seconds"] >= 15 and summary["steps"] > 6  # the budget, continued across the kill
    assert summary["epochs_reached"] == pytest.approx(summary["steps"] / 6, abs=0.01)
