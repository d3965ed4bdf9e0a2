"""Sliding-window and whole-image prediction, and the predict command."""

from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcndata.config import dump_config, load_config
from fcndata.grid import BLENDS, Stitcher, grid_origins_2d
from fcndata.infer import SlidingWindowPredictor
from fcndata.testing import sum_rtol

ROOT = Path(__file__).resolve().parent.parent


def overlap(n: int, s: int) -> int:
    """The most windows of size n, stride s covering one pixel along an axis (the shifted last one included)."""
    return -(-n // s) + 1


def _identity(channels=3):
    inp = keras.Input((None, None, channels))
    return keras.Model(inp, inp)


@pytest.mark.parametrize("blend", ["average", "gaussian", "hann", "crop"])
@pytest.mark.parametrize("size", [(37, 53), (20, 9), (64, 64)])
def test_identity_model_reproduces_the_input(blend, size):
    image = np.random.default_rng(1).random((*size, 3)).astype(np.float32)
    p = SlidingWindowPredictor(_identity(), patch_size=(16, 24), stride=(8, 10), blend=blend, batch_size=5,
                               pad_to_multiple=8)
    out = p.predict(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    if blend == "crop":  # one patch per pixel with weight 1: exact
        assert np.array_equal(out, image)
    else:  # weighted sum / summed weights: exact to float32 rounding of (16/8 x 24/10 windows) terms
        np.testing.assert_allclose(out, image, rtol=sum_rtol(overlap(16, 8) * overlap(24, 10)), atol=0)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), n=st.sampled_from([8, 16, 24]), data=st.data(),
       blend=st.sampled_from(BLENDS))
def test_identity_any_size_and_stride(h, w, n, data, blend):
    s = data.draw(st.integers(1, n))
    image = (np.random.default_rng(h * w).random((h, w, 3)) * 255).astype(np.uint8)
    out = SlidingWindowPredictor(_identity(), patch_size=n, stride=s, blend=blend, batch_size=7,
                                 pad_to_multiple=8).predict(image)
    expected = image / np.float32(255)
    if blend == "crop":
        assert np.array_equal(out, expected)
    else:  # float32 sums of up to ceil(n/s)² weighted terms, plus the /255 of the expected value
        np.testing.assert_allclose(out, expected, rtol=sum_rtol(overlap(n, s) ** 2, extra_ops=3), atol=0)


class _Scores(keras.Model):
    """A model whose output depends on the position inside the patch (so blending shows)."""

    def call(self, x):
        ramp = keras.ops.arange(keras.ops.shape(x)[2], dtype="float32")[None, None, :, None]
        return keras.ops.concatenate([x[..., :1] * 2.0 + ramp, keras.ops.sum(x, axis=-1, keepdims=True)], axis=-1)


@pytest.mark.parametrize("blend", BLENDS)
def test_predictor_equals_the_numpy_stitcher(blend):
    image = np.random.default_rng(3).random((45, 61, 3)).astype(np.float32)
    model = _Scores(name="scores")
    out = SlidingWindowPredictor(model, patch_size=16, stride=(6, 10), blend=blend, batch_size=4,
                                 pad_to_multiple=8).predict(image)
    origins = grid_origins_2d((45, 61), 16, (6, 10))
    patches = np.stack([image[y : y + 16, x : x + 16] for y, x in origins])
    reference = Stitcher((45, 61), 16, 2, blend=blend)  # generic: [H, W] weight map, any origins
    reference.add(model(patches).numpy(), origins)
    np.testing.assert_allclose(out, reference.result(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "crop"])  # crop: exact; gaussian: summed weights
def test_bands_of_window_rows_give_the_same_output(blend, monkeypatch):
    # A large image is copied into TensorFlow band by band; tiny bands (one or two window
    # rows) must give the one-band result: same pixels, uint8/uint16 scaled exactly.
    import fcndata.infer as I

    rng = np.random.default_rng(4)
    for dtype, scale in ((np.uint8, 255), (np.uint16, 65535)):
        image = rng.integers(0, scale + 1, (53, 45, 3)).astype(dtype)
        image = image[:, 3:]  # not C-contiguous in rows: copied, not adopted
        expected = image.astype(np.float32) / np.float32(scale)
        whole = SlidingWindowPredictor(_Scores(), patch_size=16, stride=(6, 10), blend=blend, batch_size=3,
                                       pad_to_multiple=8)
        one_band = whole.predict(image)
        for budget in (1, 2 * image[0].nbytes + 16 * image[0].nbytes):  # one window row / two per band
            monkeypatch.setattr(I, "BAND_BYTES", budget)
            assert np.array_equal(whole.predict(image), one_band)
        monkeypatch.setattr(I, "BAND_BYTES", 1)
        out = SlidingWindowPredictor(_identity(), patch_size=16, stride=(6, 10), blend=blend, batch_size=3,
                                     pad_to_multiple=8).predict(image)
        if blend == "crop":
            assert np.array_equal(out, expected)
        else:
            np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)
        monkeypatch.undo()


# ---------------------------------------------------------------- block path (stride divides patch)


@pytest.mark.parametrize("blend", BLENDS)
def test_block_path_identity_exact_for_crop_odd_sizes(blend):
    # Stride divides the patch: k² shifted block adds under XLA. Odd sizes give the
    # shifted last row and column of windows (their own jobs); batch 5 and tiny bands
    # split the lattice into several jobs whose outputs overlap.
    import fcndata.infer as I

    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (45, 61, 3)).astype(np.uint8)
    expected = image / np.float32(255)
    p = SlidingWindowPredictor(_identity(), patch_size=(16, 24), stride=(8, 12), blend=blend, batch_size=5,
                               pad_to_multiple=8)
    outs = [p.predict(image)]
    old, I.BAND_BYTES = I.BAND_BYTES, 1  # one window row per band
    try:
        outs.append(p.predict(image))
    finally:
        I.BAND_BYTES = old
    for out in outs:
        assert out.dtype == np.float32 and out.shape == image.shape
        if blend == "crop":
            assert np.array_equal(out, expected)
        else:
            np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("blend", ["gaussian", "crop"])
def test_block_paths_equal_scatter_path_and_numpy_stitcher(blend):
    image = np.random.default_rng(3).random((45, 61, 3)).astype(np.float32)
    model = _Scores(name="scores")
    kwargs = {"patch_size": 16, "stride": 8, "blend": blend, "batch_size": 4, "pad_to_multiple": 8}
    block = SlidingWindowPredictor(model, **kwargs).predict(image)  # numpy jobs
    xla = SlidingWindowPredictor(model, jit_compile=True, **kwargs).predict(image)
    scatter = SlidingWindowPredictor(model, **kwargs)._sliding(image)  # what other strides use
    origins = grid_origins_2d((45, 61), 16, 8)
    patches = np.stack([image[y : y + 16, x : x + 16] for y, x in origins])
    reference = Stitcher((45, 61), 16, 2, blend=blend)
    reference.add(model(patches).numpy(), origins)
    np.testing.assert_allclose(block, reference.result(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block, scatter, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(block, xla, rtol=1e-6, atol=1e-6)


def test_block_path_small_image_masked_and_flipped():
    image = keras.Input((None, None, 3), name="image")
    roi = keras.Input((None, None, 1), name="roi")
    masked = keras.Model({"image": image, "roi": roi}, keras.layers.Concatenate()([image, roi]))
    out = SlidingWindowPredictor(masked, patch_size=16, stride=8, pad_to_multiple=8).predict(np.ones((10, 20, 3), np.float32))
    assert out.shape == (10, 20, 4) and np.allclose(out, 1.0)  # padded rows 10..15 are roi 0, never returned
    x = np.random.default_rng(2).random((33, 40, 3)).astype(np.float32)
    np.testing.assert_allclose(SlidingWindowPredictor(_identity(), patch_size=32, stride=16, flip_tta=True).predict(x), x, atol=1e-6)


def test_predict_section_chooses_the_path():
    from fcndata.infer import predictor_from_config

    image = np.random.default_rng(5).random((50, 71, 3)).astype(np.float32)
    outs = []
    for jit in ("true", "false"):
        cfg = load_config(None, ["predict.patch_size=32", "predict.stride=16", f"predict.jit_compile={jit}"]).predict
        p = predictor_from_config(_identity(), cfg)
        assert p.jit_compile is (jit == "true")
        outs.append(p.predict(image))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)
    np.testing.assert_allclose(outs[0], image, rtol=1e-6)


def test_jobs_cover_the_grid_once_in_lattice_rectangles():
    from fcndata.grid import grid_origins
    from fcndata.infer import _jobs

    ys, xs = grid_origins(45, 16, 8), grid_origins(61, 24, 12)  # both end with a shifted origin
    jobs = _jobs(ys, xs, 8, 12, 16, max_windows=5, row_bytes=1, budget=10**6)
    cells = sorted((i, j) for rows, cols in jobs for i in rows for j in cols)
    assert cells == [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    for rows, cols in jobs:
        assert len(rows) * len(cols) <= 5
        for o, group, s in ((ys, rows, 8), (xs, cols, 12)):  # one lattice per job and axis
            assert len(group) == 1 or all(o[i] % s == 0 for i in group)


def test_masked_model_sees_roi_zero_on_padding():
    image = keras.Input((None, None, 3), name="image")
    roi = keras.Input((None, None, 1), name="roi")
    model = keras.Model({"image": image, "roi": roi}, keras.layers.Concatenate()([image, roi]))
    out = SlidingWindowPredictor(model, patch_size=16, stride=8, pad_to_multiple=8).predict(np.ones((10, 20, 3), np.float32))
    assert out.shape == (10, 20, 4) and np.allclose(out, 1.0)  # the padded rows 10..15 never come back


def test_whole_image_prediction_pads_and_crops_back():
    image = (np.arange(37 * 53 * 3) % 256).astype(np.uint8).reshape(37, 53, 3)
    out = SlidingWindowPredictor(_identity()).predict(image)
    np.testing.assert_allclose(out, image / 255.0, atol=1e-6)


def test_flip_tta_of_identity_is_identity():
    image = np.random.default_rng(2).random((33, 40, 3)).astype(np.float32)
    out = SlidingWindowPredictor(_identity(), patch_size=32, stride=16, flip_tta=True).predict(image)
    np.testing.assert_allclose(out, image, atol=1e-5)


def test_patch_size_must_suit_the_model():
    with pytest.raises(ValueError, match="multiple of 32"):
        SlidingWindowPredictor(_identity(), patch_size=48)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    from fcndata.models import model_from_config

    run = tmp_path_factory.mktemp("run")
    cfg = load_config(ROOT / "pipelines" / "shapes_patchwise.yaml", ["model.width=8"])
    model_from_config(cfg.model, cfg.data).save(run / "model.keras")
    dump_config(cfg, run / "config.yaml")
    return run


@pytest.mark.parametrize("patch", [None, 32])
def test_predict_command_writes_label_and_overlay_pngs(saved_run, tmp_path, patch):
    from fcndata.predict import main

    a = tmp_path / "a.png"
    cv2.imwrite(str(a), np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8))
    b = tmp_path / "b.jpg"
    cv2.imwrite(str(b), np.random.default_rng(1).integers(0, 255, (20, 33), dtype=np.uint8))
    args = ["--model", str(saved_run / "model.keras"), "--input", str(a), str(b), "--out", str(tmp_path / "out")]
    if patch:
        args += ["--set", f"predict.patch_size={patch}"]
    assert main(args) == 0
    for stem, shape in (("a", (45, 70)), ("b", (20, 33))):
        label = cv2.imread(str(tmp_path / "out" / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == shape and label.max() < 4
        overlay = cv2.imread(str(tmp_path / "out" / f"{stem}_overlay.png"))
        assert overlay.shape == (*shape, 3)


def test_predict_command_names_a_bad_file(saved_run, tmp_path, capsys):
    from fcndata.predict import main

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["--model", str(saved_run / "model.keras"), "--input", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"skipped: predict: image {bad} is truncated" in err and "error: predict: 1 of 1 input(s) failed" in err


def test_block_path_output_is_the_callers_own_array():
    # One job covers a small image, so its result is handed back without a copy: it must
    # still be writable and not shared with a later prediction.
    x = np.random.default_rng(3).random((48, 40, 3)).astype(np.float32)
    p = SlidingWindowPredictor(_identity(), patch_size=16, stride=8, batch_size=64, pad_to_multiple=8)
    first = p.predict(x)
    assert first.flags.writeable
    first += 1.0
    second = p.predict(x)
    np.testing.assert_allclose(second, x, atol=1e-6)
    np.testing.assert_allclose(first, x + 1.0, atol=1e-6)


def test_predict_many_keeps_order_across_small_and_large_images_and_equals_predict():
    rng = np.random.default_rng(7)
    sizes = [(40, 70), (1200, 1210), (50, 64), (70, 40)]  # the second is over JOB_BYTES / 4: its jobs side by side
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    p = SlidingWindowPredictor(_identity(), patch_size=64, stride=32, pad_to_multiple=1, workers=2)
    many = list(p.predict_many(iter(images)))  # read lazily from an iterator
    assert [o.shape[:2] for o in many] == sizes
    for out, image in zip(many, images):
        np.testing.assert_array_equal(out, p.predict(image))
