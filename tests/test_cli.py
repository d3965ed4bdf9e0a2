"""Every command ends a bad input in one `error:` line (exit 2), an interrupt in one line (130 / 143).

Tiny files are generated in each test. Commands run in-process (``main(argv)``) where the
exit status and stderr are enough, and as subprocesses where start-up output or signals
are what is tested.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_raw_tiff

from fcndata import cli
from fcndata.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "OPENCV_LOG_LEVEL")}
ENV["CUDA_VISIBLE_DEVICES"] = ""
TINY = ["data.num_images=6", "data.val_num_images=3", "data.min_size=40", "data.max_size=64", "model.width=4",
        "model.variant=fcn32s", "loss.name=cross_entropy", "loss.terms=null",  # the mechanics, not the recipe's model
        "batching.batch_size=16", "train.steps_per_epoch=2", "train.verbose=0", "batching.pad_to_multiple=32"]


def _sets(items):
    return sum((["--set", s] for s in items), [])


def _one_error_line(err: str) -> str:
    """The single `error:` line of stderr; the only other lines allowed are `fcndata:` progress lines."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("fcndata: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _folder(tmp_path, n_train=3, n_val=2, val=True, truncate=None) -> Path:
    """images/{train,val} + masks with 3 stripe classes; ``truncate`` cuts that train file in half."""
    for split, n in (("train", n_train), ("val", n_val)):
        (tmp_path / split / "img").mkdir(parents=True)
        (tmp_path / split / "msk").mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / split / "img" / f"{i}.png"),
                        np.random.default_rng(i).integers(0, 255, (37, 53, 3), dtype=np.uint8))
            cv2.imwrite(str(tmp_path / split / "msk" / f"{i}.png"),
                        np.repeat((np.arange(53) // 18)[None].astype(np.uint8), 37, 0))
    if truncate is not None:
        path = tmp_path / "train" / "img" / f"{truncate}.png"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    lines = ["data:", "  source: folder", "  images: train/img/*.png", "  masks: 'train/msk/{stem}.png'"]
    if val:
        lines += ["  val_images: val/img/*.png", "  val_masks: 'val/msk/{stem}.png'"]
    lines += ["  num_classes: 3", "batching: {batch_size: 2}", "model: {variant: fcn32s, width: 4}",
              f"train: {{epochs: 1, verbose: 0, run_dir: {tmp_path / 'runs'}, name: r}}"]
    (tmp_path / "r.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path / "r.yaml"


# ---------------------------------------------------------------------------- one line, exit 2


@pytest.mark.parametrize("command", ["train", "inspect", "preview"])
def test_a_bad_recipe_value_is_one_line_naming_recipe_and_key(tmp_path, capsys, command):
    import importlib

    main = importlib.import_module(f"fcndata.{command}").main
    recipe = tmp_path / "r.yaml"
    recipe.write_text("augment: {rotate: 500}\n")
    assert main(["--config", str(recipe)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"error: {recipe}: augment.rotate must be in [0, 180]; it is the maximum absolute angle in "
                    "degrees. Received: augment.rotate=500.0")


def test_debug_shows_the_traceback_instead(tmp_path):
    from fcndata.train import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: {name: sum, terms: [{name: dice, wieght: 1}]}\n")
    with pytest.raises(ConfigError, match=r"loss.terms\[0\]: unknown key 'wieght'; did you mean 'weight'\?"):
        main(["--config", str(recipe), "--debug"])


def test_train_data_error_is_one_line_naming_the_file(tmp_path, capsys):
    from fcndata.train import main

    recipe = _folder(tmp_path, truncate=1)
    assert main(["--config", str(recipe)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    bad = tmp_path / "train" / "img" / "1.png"
    assert line.startswith(f"error: folder source: image {bad} is truncated (the PNG IEND chunk or JPEG end marker "
                           "is missing)"), line
    assert line.endswith(f"Received: path={bad}")


def test_inspect_data_error_is_one_line_naming_the_file(tmp_path, capsys):
    from fcndata.inspect import main

    recipe = _folder(tmp_path, truncate=0)
    assert main(["--config", str(recipe)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"image {tmp_path / 'train' / 'img' / '0.png'} is truncated" in line


def test_inspect_refuses_the_validation_split_of_a_recipe_without_one(tmp_path, capsys):
    from fcndata.inspect import main as inspect_main

    # train runs such a recipe without validation: tests/test_bad_input.py
    recipe = _folder(tmp_path, val=False)
    assert not load_config(recipe).data.has_validation
    assert inspect_main(["--config", str(recipe), "--split", "validation"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {recipe}: the recipe has no validation data (data.val_images / "
                           "data.val_tfrecords is not set)")
    assert line.endswith("Received: --split validation")


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    from fcndata.train import main

    assert main(["--resume", str(tmp_path)]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: --resume {tmp_path}: no config.yaml there; pass a folder written by fcndata.train, e.g. runs/NAME. "
        f"Received: --resume {tmp_path}"
    )


@pytest.fixture(scope="module")
def three_class_run(untrained_run, tmp_path_factory):
    run = untrained_run
    image = tmp_path_factory.mktemp("img") / "a.png"
    cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
    return run, image


def test_predict_refuses_a_model_with_fewer_classes_than_the_recipe(three_class_run, tmp_path, capsys):
    from fcndata.predict import main

    run, image = three_class_run
    model = run / "model.keras"
    args = ["--model", str(model), "--input", str(image), "--out", str(tmp_path)]
    assert main(args + ["--set", "data.num_classes=4"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {model}: the model predicts 3 classes but {run / 'config.yaml'} says "
                           "data.num_classes=4"), line
    assert main(args + ["--set", "data.channels=1"]) == 2
    assert "the model takes 3-channel images but" in _one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.glob("*_label.png"))


def test_predict_missing_input_and_model(three_class_run, tmp_path, capsys):
    from fcndata.predict import main

    run, _ = three_class_run
    missing = tmp_path / "nope.png"
    assert main(["--model", str(run / "model.keras"), "--input", str(missing), "--out", str(tmp_path)]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"error: --input: 1 file(s) not found: {missing}")
    assert main(["--model", str(tmp_path / "m.keras"), "--input", str(missing), "--out", str(tmp_path)]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"error: --model {tmp_path / 'm.keras'}: file not found")


# ---------------------------------------------------------------------------- quiet start-up


def test_quiet_defaults_yield_to_the_users_environment(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("OPENCV_LOG_LEVEL", "DEBUG")
    cli.quiet_defaults()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and os.environ["OPENCV_LOG_LEVEL"] == "DEBUG"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    cli.quiet_defaults()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_a_command_prints_no_tensorflow_start_up_lines(tmp_path):
    # A real source pass and an OpenCV decode (a TIFF) in a fresh process, with no logging variables set.
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.tif"), np.zeros((9, 11, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "msk" / "a.png"), np.zeros((9, 11), np.uint8))
    # and a corrupt TIFF (its header declares 100x100, its strip holds 16 bytes), which OpenCV logs at
    # ERROR level: reported once, by the data checks
    write_raw_tiff(tmp_path / "img" / "b.tif", np.zeros((4, 4, 1), np.uint8))
    data = bytearray((tmp_path / "img" / "b.tif").read_bytes())
    for tag in (256, 257):  # ImageWidth, ImageLength
        at = data.index(struct.pack("<HHI", tag, 4, 1))
        data[at + 8 : at + 12] = struct.pack("<I", 100)
    (tmp_path / "img" / "b.tif").write_bytes(bytes(data))
    cv2.imwrite(str(tmp_path / "msk" / "b.png"), np.zeros((9, 11), np.uint8))
    (tmp_path / "r.yaml").write_text(
        "data: {source: folder, images: 'img/*.tif', masks: 'msk/{stem}.png', num_classes: 2, on_error: skip}\n")
    out = subprocess.run([PYTHON, "-m", "fcndata.inspect", "--config", str(tmp_path / "r.yaml")], env=ENV, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["fcndata: one pass over the train split..."], out.stderr
    assert "1 images" in out.stdout and "rejected files: 1" in out.stdout


# ---------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_training_says_how_to_resume(tmp_path, sig, status):
    run = tmp_path / "run"
    args = ["--config", str(ROOT / "pipelines" / "shapes_patchwise.yaml"),
            *_sets(TINY + ["train.epochs=50", f"train.run_dir={tmp_path}", "train.name=run"])]
    proc = subprocess.Popen([PYTHON, "-m", "fcndata.train", *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # SIGINT once an epoch is checkpointed (inside fit); SIGTERM as soon as the run folder exists
    marker = run / "checkpoints" / "ckpt-1.index" if sig == signal.SIGINT else run / "config.yaml"
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"interrupted; continue with: python -m fcndata.train --resume {run}"
    assert not (run / "model.keras").exists()


def test_sigterm_handler_is_restored(capsys):
    before = signal.getsignal(signal.SIGTERM)

    def body():
        assert signal.getsignal(signal.SIGTERM) is not before
        raise cli.Interrupted(signal.SIGTERM)

    assert cli.run(body) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert capsys.readouterr().err.strip() == "interrupted"


# ---------------------------------------------------------------------------- saved models and public APIs


SAVE = r"""
import sys
import numpy as np
from fcndata import losses, metrics, models
m = models.fcn(3, "fcn32s", width=2, masked=True, norm="frozen_batch")
m.compile("adam", loss=losses.SumOfLosses([(losses.MaskedSparseCrossEntropy(), 1.0), (losses.DiceLoss(3), 0.5)]),
          weighted_metrics=[metrics.MeanIoU(3), metrics.PixelAccuracy(3)])
rng = np.random.default_rng(0)
x = {"image": rng.random((2, 32, 32, 3), dtype=np.float32), "roi": np.ones((2, 32, 32, 1), np.float32)}
m.fit(x, rng.integers(0, 3, (2, 32, 32)), epochs=2, verbose=0)  # a trained model: optimizer state is saved too
m.save(sys.argv[1])
np.savez(sys.argv[1] + ".npz", prediction=m.predict(x, verbose=0), **x)
"""
LOAD = r"""
import sys
{setup}
import keras
import numpy as np
m = keras.models.load_model(sys.argv[1])
saved = np.load(sys.argv[1] + ".npz")
x = {{"image": saved["image"], "roi": saved["roi"]}}
np.testing.assert_allclose(m.predict(x, verbose=0), saved["prediction"], rtol=1e-5, atol=1e-6)  # what it predicted
print(type(m.loss).__name__, m.output_shape[-1])
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    done = subprocess.run([PYTHON, "-c", SAVE, str(path)], env=ENV, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return path


def _load(path, setup):
    return subprocess.run([PYTHON, "-c", LOAD.format(setup=setup), str(path)], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("first", ["", "import tensorflow", "import keras"])
def test_keras_load_model_works_after_import_fcndata_with_no_import_hook(saved_model, first):
    # Keras' own convention: the classes are registered (register_keras_serializable) when
    # `import fcndata` runs; nothing is added to Python's import machinery.
    # (TensorFlow's own import adds finders of absl and six; none of fcndata's may be among them)
    done = _load(saved_model, f"{first}\nimport fcndata\n"
                              "assert not [f for f in sys.meta_path if type(f).__module__.startswith('fcndata')], sys.meta_path")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["SumOfLosses", "3"]


def test_fcndata_load_model(saved_model, tmp_path):
    from fcndata.saving import load_model

    assert load_model(saved_model, compile=False).output_shape[-1] == 3
    with pytest.raises(FileNotFoundError, match=r"nope.keras: model file not found"):
        load_model(tmp_path / "nope.keras")


def test_registered_names_are_exactly_the_ones_the_modules_register():
    import keras

    from fcndata import saving

    saving.register_custom_objects()
    registry = keras.saving.get_custom_objects()
    real = {name.split(">", 1)[1] for name in registry if name.startswith("fcndata>")}
    listed = {name for names in saving.REGISTERED.values() for name in names}
    assert real == listed
    for module, names in saving.REGISTERED.items():
        for name in names:
            assert registry[f"fcndata>{name}"].__module__ == module


def test_no_private_tensorflow_or_keras_api():
    private = re.compile(r"tensorflow\.python|\._inbound_nodes|\._outbound_nodes|\._keras_history")
    for path in sorted((ROOT / "fcndata").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not private.search(line), f"{path.relative_to(ROOT)}:{number}: {line.strip()}"


def test_an_error_raised_in_traced_code_keeps_its_message():
    import tensorflow as tf

    from fcndata.cli import one_line

    def stage(ds):
        raise ValueError("BucketBySize: boundaries=None must be derived. Received: boundaries=None")

    with pytest.raises(ValueError) as raised:  # autograph wraps it as "in user code: ... ValueError: ..."
        tf.data.Dataset.range(2).flat_map(lambda i: tf.data.Dataset.from_tensors(i).apply(stage))
    assert str(raised.value).lstrip().startswith("in user code:")
    assert one_line(raised.value) == "BucketBySize: boundaries=None must be derived. Received: boundaries=None"
