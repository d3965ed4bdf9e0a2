"""Tests for fcndata.patches: grid geometry, patch stages, class balance, stitching."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fcndata.testing as t
from fcndata import elements as E
from fcndata import grid as G
from fcndata import patches as P
from fcndata import samplers as S
from fcndata.config import load_config_text
from fcndata.grid import BLENDS, Stitcher, blend_window, stitch

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
AUTOTUNE = tf.data.AUTOTUNE


def as_list(ds):
    return [{k: v.numpy() for k, v in e.items()} for e in ds]


def one_batch(ds):
    return {k: v.numpy() for k, v in next(iter(ds.batch(100000))).items()}


# ---------------------------------------------------------------------------- golden tables


@pytest.mark.parametrize(
    "length, n, s, border, expected",
    [
        # L = 11, n = 4, s = 3: lattice 0 3 6 leaves pixel 10 uncovered
        (11, 4, 3, "shift", [0, 3, 6, 7]),
        (11, 4, 3, "pad", [0, 3, 6, 9]),
        (11, 4, 3, "drop", [0, 3, 6]),
        # L = 10, n = 4, s = 3: the lattice ends exactly on the edge, all rules agree
        (10, 4, 3, "shift", [0, 3, 6]),
        (10, 4, 3, "pad", [0, 3, 6]),
        (10, 4, 3, "drop", [0, 3, 6]),
        # L = 10, n = 4, s = 4
        (10, 4, 4, "shift", [0, 4, 6]),
        (10, 4, 4, "pad", [0, 4, 8]),
        (10, 4, 4, "drop", [0, 4]),
        # shorter than the patch
        (3, 4, 2, "shift", [0]),
        (3, 4, 2, "pad", [0]),
        (3, 4, 2, "drop", []),
        (4, 4, 1, "shift", [0]),
        (1, 1, 1, "shift", [0]),
    ],
)
def test_grid_origins_golden(length, n, s, border, expected):
    assert G.grid_origins(length, n, s, border).tolist() == expected
    graph = tf.function(lambda L: G.grid_origins_tf(L, n, s, border))
    assert graph(tf.constant(length)).numpy().tolist() == expected


def test_grid_origins_errors():
    with pytest.raises(ValueError, match=r"grid_origins: border must be one of .* Received: border='sheft'"):
        G.grid_origins(10, 4, 2, "sheft")
    with pytest.raises(ValueError, match=r"stride must be an int >= 1\. Received: stride=0"):
        G.grid_origins(10, 4, 0)


@FAST
@given(
    length=st.integers(1, 300),
    n=st.integers(1, 64),
    data=st.data(),
    border=st.sampled_from(G.BORDERS),
)
def test_grid_origins_properties(length, n, data, border):
    s = data.draw(st.integers(1, n))
    o = G.grid_origins(length, n, s, border)
    assert np.array_equal(o, G.grid_origins_tf(tf.constant(length), n, s, border).numpy())
    assert np.all(np.diff(o) > 0)
    lattice = np.arange(0, max(length - n, 0) + 1, s)
    if border == "drop":
        assert o.tolist() == (lattice.tolist() if length >= n else [])
        return
    covered = np.zeros(length, int)
    for v in o:
        covered[v : v + n] += 1
    assert covered.min() >= 1, "every pixel is covered"
    assert o[0] == 0
    if border == "shift":
        assert o.min() >= 0 and (length < n or o.max() + n <= length)
        assert o[:-1].tolist() == lattice[: len(o) - 1].tolist()
        assert o[-1] == max(length - n, 0)
    else:  # pad: regular lattice, the last origin is the first reaching the edge
        assert np.all(o % s == 0) and np.all(np.diff(o) == s)
        assert o[-1] + n >= length and (len(o) == 1 or o[-2] + n < length)


# ---------------------------------------------------------------------------- ExtractPatches


def test_extract_patches_trace_back_and_spec():
    ds = t.dataset([(37, 53), (29, 41)]).apply(P.ExtractPatches(patch_size=(16, 24), stride=(8, 12)))
    E.check_spec(ds, where="test")
    assert ds.element_spec["image"].shape.as_list() == [16, 24, 3]
    patches = as_list(ds)
    expected = sum(len(G.grid_origins_2d(hw, (16, 24), (8, 12))) for hw in [(37, 53), (29, 41)])
    assert len(patches) == expected
    for p in patches:
        y, x = p["origin"]
        assert p["image"][0, 0, 0] == y and p["image"][0, 0, 1] == x  # coordinate image
        assert p["roi"].all() and p["path"].startswith(b"testing/")
        h, w = p["source_shape"]
        assert 0 <= y <= h - 16 and 0 <= x <= w - 24  # shift never pads nor goes negative


def test_extract_patches_pad_border_pads_with_ignore():
    ps = as_list(t.dataset([(11, 11)]).apply(P.ExtractPatches(4, 3, border="pad")))
    assert sorted({int(p["origin"][0]) for p in ps}) == [0, 3, 6, 9]
    (last,) = [p for p in ps if list(p["origin"]) == [9, 9]]
    # rows 9, 10 and columns 9, 10 are real; the rest of the 4x4 patch is padding
    assert last["roi"].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert (last["label"][last["roi"] == 0] == 255).all()
    assert (last["image"][last["roi"] == 0] == 0).all()


def test_small_image_padded_under_shift_and_skipped_under_drop():
    ds = t.dataset([(3, 5), (20, 20)])
    shift = as_list(ds.apply(P.ExtractPatches(8, 8)))
    assert [list(p["origin"]) for p in shift[:1]] == [[0, 0]] and shift[0]["roi"].sum() == 15
    assert shift[0]["image"].shape == (8, 8, 3)
    stage = P.ExtractPatches(8, 8, border="drop")
    dropped = as_list(ds.apply(stage))
    assert {int(p["source_index"]) for p in dropped} == {1}
    assert stage.count_skipped(ds) == 1 and P.ExtractPatches(8, 8).count_skipped(ds) == 0


def test_weight_and_epoch_are_carried():
    e = dict(t.element(9, 11), weight=tf.fill([9, 11], 0.5), epoch=tf.constant(3, tf.int64))
    ps = as_list(tf.data.Dataset.from_tensors(e).apply(P.ExtractPatches(4, 4, border="pad")))
    assert all(p["epoch"] == 3 for p in ps)
    assert all(np.array_equal(p["weight"], 0.5 * p["roi"]) for p in ps)


def test_patches_at_equals_crop_patch():
    e = t.element(9, 11)
    origins = [[0, 0], [-2, 3], [7, 9], [12, 12], [-5, -5]]
    fast = as_list(P.patches_at(e, origins, (4, 5)))
    for o, p in zip(origins, fast):
        slow = {k: v.numpy() for k, v in P.crop_patch(e, o, (4, 5)).items()}
        for k in slow:
            assert np.array_equal(p[k], slow[k]), (o, k)


def test_origins_are_in_source_coordinates_for_cropped_elements():
    e = dict(t.element(9, 11), origin=tf.constant([100, 200], tf.int32))
    ps = as_list(tf.data.Dataset.from_tensors(e).apply(P.ExtractPatches(4, 4)))
    assert [list(p["origin"]) for p in ps][:2] == [[100, 200], [100, 204]]


@SLOW
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    n=st.integers(1, 64),
    data=st.data(),
    border=st.sampled_from(G.BORDERS),
)
def test_extract_then_stitch_is_identity(h, w, n, data, border):
    s = data.draw(st.integers(1, n))
    count = len(G.grid_origins_2d((h, w), n, s, border))
    assume(count <= 120)
    ds = t.dataset([(h, w)], dtype="float32").apply(P.ExtractPatches(n, s, border=border))
    image = t.coordinate_image(h, w, dtype="float32").numpy()
    if border == "drop":
        if count == 0:
            assert not list(ds)
            return
        b = one_batch(ds)
        valid = tf.image.extract_patches(image[None], [1, n, n, 1], [1, s, s, 1], [1, 1, 1, 1], "VALID")
        assert np.array_equal(b["image"], tf.reshape(valid, [-1, n, n, 3]).numpy())
        return
    b = one_batch(ds)
    coverage = np.zeros((h, w), int)
    for y, x in b["origin"]:
        coverage[max(y, 0) : y + n, max(x, 0) : x + n] += 1
    assert coverage.min() >= 1
    for blend in BLENDS:
        out = stitch(b["image"], b["origin"], (h, w), blend=blend)
        assert out.dtype == np.float32 and np.array_equal(out, image), blend
        grid = Stitcher((h, w), n, 3, blend=blend, stride=s, border=border)
        grid.add(b["image"], b["origin"])
        # float32 weighted mean of up to (ceil(n/s) + 1)² windows per pixel (the shifted last one included)
        np.testing.assert_allclose(grid.result(), image, rtol=t.sum_rtol((-(-n // s) + 1) ** 2), atol=0)


# ---------------------------------------------------------------------------- RandomPatches


def test_random_patches_inside_and_padded_when_small():
    ps = as_list(t.dataset([(37, 53), (5, 40)]).apply(P.RandomPatches(patch_size=8, num_per_image=50, seed=2)))
    big = np.array([p["origin"] for p in ps if p["source_index"] == 0])
    assert big.min() >= 0 and big[:, 0].max() <= 29 and big[:, 1].max() <= 45
    assert len(np.unique(big, axis=0)) > 30
    small = [p for p in ps if p["source_index"] == 1]
    assert all(-3 <= p["origin"][0] <= 0 and p["roi"].sum() == 5 * 8 for p in small)


def _stream(stage, seed_map=True):
    ds = t.dataset([(37, 53), (29, 41), (64, 31)]).map(lambda e: e, num_parallel_calls=AUTOTUNE)
    return [p["origin"].tolist() + [int(p["source_index"])] for p in as_list(ds.apply(stage))]


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: P.RandomPatches(8, num_per_image=5, seed=seed, images_per_batch=2),
        lambda seed: P.BalancedPatches(8, num_per_image=5, num_classes=3, seed=seed, images_per_batch=2),
    ],
)
def test_same_seed_same_patches_different_seed_different(make):
    first = _stream(make(1))
    assert first == _stream(make(1))
    assert first != _stream(make(2))


def test_epoch_changes_the_draw():
    stage = P.RandomPatches(8, num_per_image=5, seed=1)
    epoch = t.dataset([(37, 53)]).map(lambda e: dict(e, epoch=tf.constant(1, tf.int64)))
    a = [p["origin"].tolist() for p in as_list(epoch.apply(stage))]
    b = [p["origin"].tolist() for p in as_list(t.dataset([(37, 53)]).apply(stage))]
    assert a != b


def test_images_per_batch_interleaves_one_patch_per_image():
    stage = P.RandomPatches(4, num_per_image=3, images_per_batch=3)
    order = [int(p["source_index"]) for p in as_list(t.dataset([(9, 9), (10, 10), (11, 11)]).apply(stage))]
    assert order == [0, 1, 2] * 3


# ---------------------------------------------------------------------------- BalancedPatches

WIDTHS = [99, 1, 100]  # class 1 is one column of 200: 0.5 % of the pixels


def _centre_classes(probabilities, num=10000, seed=0):
    label = t.stripe_label(40, 200, WIDTHS)
    origins, chosen = S.balanced_origins(
        label, tf.ones_like(label), 7, num, 3, tf.constant([seed, 7], tf.int64), probabilities, return_classes=True
    )
    origins = origins.numpy()
    centres = label.numpy()[origins[:, 0] + 3, origins[:, 1] + 3]
    assert np.array_equal(centres, chosen.numpy())  # the chosen pixel is the patch centre
    return np.bincount(centres, minlength=3) / num


@pytest.mark.parametrize("probabilities, target", [("uniform", [1 / 3] * 3), ([0.5, 0.2, 0.3], [0.5, 0.2, 0.3])])
def test_balanced_frequencies_hit_target(probabilities, target):
    realised = _centre_classes(probabilities)
    assert np.abs(realised - target).max() < 0.02, realised


def test_balanced_inverse_frequency_and_renormalisation():
    # inverse frequency: p ~ 1/area, so the 0.5 % class gets ~98 % of the patches
    assert _centre_classes("inverse_frequency", num=2000)[1] > 0.95
    # a class absent from the image is skipped and the rest renormalised
    label = t.stripe_label(20, 30, [10, 0, 20])
    origins = S.balanced_origins(label, tf.ones_like(label), 5, 3000, 3, tf.constant([1, 1], tf.int64), [0.2, 0.6, 0.2])
    centres = label.numpy()[origins[:, 0] + 2, origins[:, 1] + 2]
    assert abs(np.mean(centres == 0) - 0.5) < 0.04 and not np.any(centres == 1)


def test_balanced_stage_patch_centres_match_classes():
    ds = tf.data.Dataset.from_tensors(t.element(40, 200, widths=WIDTHS))
    stage = P.BalancedPatches(7, num_per_image=60, num_classes=3, class_probabilities=[0, 1, 0], seed=4)
    E.check_spec(ds.apply(stage), where="test")
    ps = as_list(ds.apply(stage))
    assert len(ps) == 60 and all(p["label"][3, 3] == 1 and p["origin"][1] == 99 - 3 for p in ps)


def test_foreground_fraction_holds_per_batch():
    sizes = [(30, 60), (31, 61), (32, 62), (33, 63)]
    ds = t.dataset(sizes).map(lambda e: dict(e, label=tf.cast(e["label"] == 2, tf.uint8) * 2))  # mostly 0, some 2
    stage = P.BalancedPatches(5, num_per_image=9, num_classes=3, class_probabilities=[1, 0, 0], foreground_fraction=0.33, images_per_batch=2)
    for batch in ds.apply(stage).batch(18):
        fg = int(np.sum(batch["label"].numpy()[:, 2, 2] != 0))
        assert fg == 2 * math.ceil(0.33 * 9)
    assert S.foreground_mask(9, 0.33).count(True) == 3


def test_ignored_pixels_are_never_centres():
    label = np.zeros((20, 60), np.uint8)
    label[:, 20:40] = 255
    label[:, 50:] = 1
    label[5:8, 10:15] = 1  # real class-1 pixels, but outside the roi
    roi = (label != 255).astype(np.uint8)
    roi[5:8, 10:15] = 0
    element = E.make_element(np.zeros((20, 60, 1), np.uint8), label)
    element["roi"] = tf.constant(roi)
    stage = P.BalancedPatches(5, num_per_image=400, num_classes=2, seed=1)
    centres = [(p["origin"][0] + 2, p["origin"][1] + 2) for p in as_list(tf.data.Dataset.from_tensors(element).apply(stage))]
    assert all(label[y, x] != 255 and roi[y, x] == 1 for y, x in centres)


def test_balanced_without_foreground_or_valid_pixels_still_works():
    blank = E.make_element(np.zeros((9, 9, 1), np.uint8), np.zeros((9, 9), np.uint8))
    ignored = E.make_element(np.zeros((9, 9, 1), np.uint8), np.full((9, 9), 255, np.uint8))
    ds = tf.data.Dataset.from_tensors(blank).concatenate(tf.data.Dataset.from_tensors(ignored))
    ps = as_list(ds.apply(P.BalancedPatches(4, num_per_image=6, num_classes=2, foreground_fraction=1.0)))
    assert len(ps) == 12 and all(0 <= p["origin"].min() and p["origin"].max() <= 5 for p in ps)


def test_balanced_errors():
    with pytest.raises(ValueError, match=r"class_probabilities must list num_classes=3 .* Received: class_probabilities=\[0.5, 0.5\]"):
        P.BalancedPatches(8, num_classes=3, class_probabilities=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"foreground_fraction must be a number in \[0, 1\].*Received: foreground_fraction=1.5"):
        P.BalancedPatches(8, foreground_fraction=1.5)
    with pytest.raises(ValueError, match=r"class_probabilities must be one of \['uniform', 'inverse_frequency'\]"):
        P.BalancedPatches(8, class_probabilities="balanced")


# ---------------------------------------------------------------------------- config and errors


def test_patches_from_config_mixes_images():
    cfg = load_config_text(
        "data: {num_classes: 3}\npatches: {mode: random, patch_size: 8, num_per_image: 20, images_per_batch: 3, shuffle_buffer: 0}"
    )
    stage = P.patches_from_config(cfg.patches, cfg.data, seed=5)
    assert isinstance(stage.patches, P.RandomPatches) and stage.patches.seed == 5
    batch = next(iter(t.dataset([(37, 53), (29, 41), (64, 31)]).apply(stage).batch(60)))
    assert np.bincount(batch["source_index"].numpy()).tolist() == [20, 20, 20]
    for mode, cls in [("grid", P.ExtractPatches), ("balanced", P.BalancedPatches)]:
        cfg = load_config_text(f"patches: {{mode: {mode}, patch_size: [8, 12], border: pad, class_probabilities: [0.2, 0.3, 0.5]}}")
        stage = P.patches_from_config(cfg.patches, cfg.data, seed=0)
        assert isinstance(stage.patches, cls) and stage.patches.patch_size == (8, 12)
        shuffled = as_list(t.dataset([(37, 53)]).apply(stage))
        assert len(shuffled) > 0


def test_stage_errors_name_stage_and_value():
    with pytest.raises(ValueError, match=r"ExtractPatches: border must be one of \['shift', 'pad', 'drop'\].*Received: border='sheft'"):
        P.ExtractPatches(8, border="sheft")
    with pytest.raises(ValueError, match=r"ExtractPatches: stride larger than patch_size.*Received: stride=\(9, 9\), patch_size=\(8, 8\)"):
        P.ExtractPatches(8, 9)
    P.ExtractPatches(8, 9, border="drop")  # gaps are fine when asked for
    with pytest.raises(TypeError, match=r"RandomPatches: patch_size must be an int or a \(height, width\) pair"):
        P.RandomPatches("8")
    with pytest.raises(ValueError, match=r"RandomPatches: num_per_image must be >= 1\. Received: num_per_image=0"):
        P.RandomPatches(8, num_per_image=0)
    bad = tf.data.Dataset.from_tensors({"image": tf.zeros([4, 4, 3], tf.uint8)})
    with pytest.raises(ValueError, match=r"ExtractPatches: element is missing required keys"):
        bad.apply(P.ExtractPatches(2))


# ---------------------------------------------------------------------------- stitching


def _two_patches():
    # width 6, patch 4, stride 2: origins 0 and 2 overlap on columns 2 and 3
    predictions = np.stack([np.full((1, 4, 1), 1.0), np.full((1, 4, 1), 3.0)]).astype(np.float32)
    return predictions, np.array([[0, 0], [0, 2]])


@pytest.mark.parametrize(
    "blend, row",
    [
        ("average", [1, 1, 2, 2, 3, 3]),
        # centres at 1.5 and 3.5: column 2 is nearer the first, column 3 the second
        ("crop", [1, 1, 1, 3, 3, 3]),
    ],
)
def test_stitch_golden(blend, row):
    predictions, origins = _two_patches()
    assert stitch(predictions, origins, (1, 6), blend)[0, :, 0].tolist() == row
    s = Stitcher((1, 6), (1, 4), 1, blend=blend, stride=(1, 2))
    s.add(predictions, origins)
    assert s.result()[0, :, 0].tolist() == row


def test_stitch_hann_weights_by_hand():
    predictions, origins = _two_patches()
    w = blend_window(4, "hann")  # [0.345, 0.905, 0.905, 0.345]
    out = stitch(predictions, origins, (1, 6), "hann")[0, :, 0]
    expected_col2 = (1 * w[2] + 3 * w[0]) / (w[2] + w[0])
    assert out[0] == 1 and out[5] == 3 and abs(out[2] - expected_col2) < 1e-6


def test_stitcher_grid_and_generic_agree_any_channels():
    rng = np.random.default_rng(0)
    origins = G.grid_origins_2d((37, 53), 16, 6)
    predictions = rng.random((len(origins), 16, 16, 5), dtype=np.float32)
    for blend in BLENDS:
        grid = Stitcher((37, 53), 16, 5, blend=blend, stride=6)
        generic = Stitcher((37, 53), 16, 5, blend=blend)
        for i in range(0, len(origins), 7):  # batches, never all at once
            grid.add(predictions[i : i + 7], origins[i : i + 7])
            generic.add(predictions[i : i + 7], origins[i : i + 7])
        # two float32 weighted means of up to (ceil(16/6) + 1)² = 16 windows per pixel, each within sum_rtol(16)
        np.testing.assert_allclose(grid.result(), generic.result(), rtol=2 * t.sum_rtol(16), atol=0, err_msg=blend)


def test_stitch_keeps_random_patches_exact():
    ds = t.dataset([(37, 53)], dtype="float32").apply(P.RandomPatches(16, num_per_image=60, seed=0))
    b = one_batch(ds)
    out = stitch(b["image"], b["origin"], (37, 53), "gaussian")
    covered = stitch(np.ones_like(b["image"][..., :1]), b["origin"], (37, 53), "average")[..., 0] > 0
    assert np.array_equal(out[covered], t.coordinate_image(37, 53, dtype="float32").numpy()[covered])


def test_stitcher_errors():
    s = Stitcher((37, 53), 16, 3, stride=8)
    with pytest.raises(ValueError, match=r"Stitcher.add: origin \(3, 0\) is not on the grid .* Received: origin=\(3, 0\)"):
        s.add(np.zeros((1, 16, 16, 3)), [[3, 0]])
    with pytest.raises(ValueError, match=r"Stitcher.add: predictions must be \[B, 16, 16, 3\].*Received: predictions.shape=\(1, 16, 16\)"):
        s.add(np.zeros((1, 16, 16)), [[0, 0]])
    with pytest.raises(ValueError, match=r"Stitcher: blend must be one of .* Received: blend='max'"):
        Stitcher((37, 53), 16, 3, blend="max")
    with pytest.raises(ValueError, match=r"stitch: predictions must be \[N, height, width, channels\]"):
        stitch(np.zeros((2, 4, 4)), [[0, 0], [0, 0]], (4, 4))


# ---------------------------------------------------------------------------- chunked engine


def _reference(element, origins, n):
    """Today's per-patch engine (one slice per patch): the pixels every stage must reproduce."""
    return as_list(P.patches_at(element, origins, n)) if len(origins) else []


@SLOW
@given(
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    n=st.integers(1, 40),
    data=st.data(),
    border=st.sampled_from(G.BORDERS),
    chunk=st.sampled_from([1, 7, 64]),
    dtype=st.sampled_from(["uint8", "float32"]),
)
def test_grid_chunks_equal_per_patch_engine(h, w, n, data, border, chunk, dtype):
    s = data.draw(st.integers(1, n))
    origins = G.grid_origins_2d((h, w), n, s, border)
    assume(len(origins) <= 150)
    element = dict(t.element(h, w, dtype=dtype), weight=tf.fill([h, w], 0.5))
    ds = tf.data.Dataset.from_tensors(element)
    stage = P.ExtractPatches(n, s, border=border, chunk_size=chunk)
    old = _reference(element, origins, n)
    for new in (as_list(ds.apply(stage)), as_list(ds.apply(stage.chunks).unbatch())):
        assert len(new) == len(old) == len(origins)
        for a, b in zip(new, old):
            assert a.keys() == b.keys()
            for k in b:
                assert np.array_equal(a[k], b[k]), k
    sizes = [int(c["image"].shape[0]) for c in ds.apply(stage.chunks)]
    assert all(0 < v <= chunk for v in sizes) and sum(sizes) == len(origins)


@pytest.mark.parametrize(
    "stage",
    [
        P.RandomPatches((8, 6), num_per_image=11, seed=3, chunk_size=4),
        P.BalancedPatches(9, num_per_image=5, num_classes=3, seed=2, foreground_fraction=0.5),
    ],
)
def test_random_and_balanced_chunks_equal_per_patch_engine(stage):
    for h, w in [(37, 53), (5, 40), (29, 3)]:
        # An explicit epoch: without one the stage draws a fresh key per iteration.
        element = {**t.element(h, w), "epoch": tf.constant(0, tf.int64)}
        origins = stage.origins(element)
        new = as_list(tf.data.Dataset.from_tensors(element).apply(stage))
        old = _reference(element, origins, stage.patch_size)
        assert len(new) == len(old) == stage.num_per_image
        for a, b in zip(new, old):
            for k in b:
                assert np.array_equal(a[k], b[k]), k
        chunks = list(tf.data.Dataset.from_tensors(element).apply(stage.chunks))
        assert [int(c["origin"].shape[0]) for c in chunks] == [min(stage.chunk_size, stage.num_per_image - i) for i in range(0, stage.num_per_image, stage.chunk_size)]


def test_chunks_follow_the_batched_contract():
    stage = P.ExtractPatches((16, 24), (8, 12), chunk_size=5)
    chunks = t.dataset([(37, 53), (29, 41)], dtype="uint16").apply(stage.chunks)
    E.check_spec(chunks, batched=True, where="test")
    for c in chunks:
        assert len(set(c["source_index"].numpy().tolist())) == 1  # a chunk never mixes images
        assert c["image"].dtype == tf.uint16 and c["path"].shape == c["source_index"].shape


def test_grid_stream_is_deterministic_under_parallel_map():
    stage = P.ExtractPatches(8, 5, chunk_size=3, images_per_batch=2)
    first = _stream(stage)
    assert first == _stream(stage) and len(first) == sum(len(G.grid_origins_2d(hw, 8, 5)) for hw in [(37, 53), (29, 41), (64, 31)])


def test_class_tile_counts_equal_numpy_on_partial_tiles_and_bands():
    rng = np.random.default_rng(4)
    label = rng.integers(0, 4, (150, 200)).astype(np.uint8)
    label[rng.random(label.shape) < 0.05] = 255
    roi = (rng.random(label.shape) > 0.1).astype(np.uint8)
    old = S.BAND_PIXELS
    try:
        for band_pixels in (1 << 20, 1):  # one band, and one tile row per band
            S.BAND_PIXELS = band_pixels
            got = S.class_tile_counts(tf.constant(label), tf.constant(roi), 3, tile=64).numpy()
            want = [[np.sum((label[y:y + 64, x:x + 64] == c) & (roi[y:y + 64, x:x + 64] > 0)) for c in range(3)]
                    for y in range(0, 150, 64) for x in range(0, 200, 64)]
            assert np.array_equal(got, want)  # class 3 (>= num_classes) and 255 are never counted
    finally:
        S.BAND_PIXELS = old


def test_balanced_centres_are_uniform_over_the_class_pixels_across_tiles():
    # a class spread unevenly over partial tiles: each tile must get its share of the pixels
    rng = np.random.default_rng(5)
    label = (rng.random((150, 200)) < np.linspace(0.02, 0.6, 200)[None]).astype(np.uint8)
    num = 20000
    centres, chosen = S.balanced_origins(tf.constant(label), tf.ones_like(label), 1, num, 2,
                                         tf.constant([3, 9], tf.int64), [0.0, 1.0], return_classes=True)
    centres = centres.numpy()
    assert (chosen.numpy() == 1).all() and (label[centres[:, 0], centres[:, 1]] == 1).all()
    tiles = (centres[:, 0] // 64) * 4 + centres[:, 1] // 64
    share = np.array([np.sum(label[y:y + 64, x:x + 64]) for y in range(0, 150, 64) for x in range(0, 200, 64)]) / label.sum()
    realised = np.bincount(tiles, minlength=12) / num
    assert np.all(np.abs(realised - share) <= 4 * np.sqrt(share * (1 - share) / num) + 1e-9), (realised, share)
    # inside one tile, left and right halves in proportion to their class pixels
    inside = tiles == 5
    left = np.sum(centres[inside, 1] < 96) / inside.sum()
    want = label[64:128, 64:96].sum() / label[64:128, 64:128].sum()
    assert abs(left - want) <= 4 * np.sqrt(want * (1 - want) / inside.sum())


@pytest.mark.parametrize("probabilities, foreground", [("uniform", None), ([0.1, 0.2, 0.7], [True, False] * 100)])
def test_balanced_whole_tile_plan_draws_what_the_general_plan_draws(probabilities, foreground):
    # A static size of whole tiles finds a tile's pixels by constant offsets; a size known only
    # when the graph runs takes the general path (in-image mask): same keys, same origins.
    rng = np.random.default_rng(11)
    label = rng.choice(4, size=(128, 192), p=[0.6, 0.3, 0.1, 0.0]).astype(np.uint8)
    label[rng.random(label.shape) < 0.05] = 255
    roi = (rng.random(label.shape) > 0.1).astype(np.uint8)
    args = (1, 200, 3, tf.constant([4, 2], tf.int64), probabilities, foreground)  # patch 1: origin = centre

    def draw(lab, r):
        return S.balanced_origins(lab, r, *args, return_classes=True)

    dynamic = tf.function(draw, input_signature=[tf.TensorSpec([None, None], tf.uint8)] * 2, autograph=False)
    static = tf.function(draw, input_signature=[tf.TensorSpec(label.shape, tf.uint8)] * 2, autograph=False)
    got, want = static(label, roi), dynamic(label, roi)
    assert all(np.array_equal(g.numpy(), w.numpy()) for g, w in zip(got, want))
    origins, chosen = (v.numpy() for v in got)
    assert np.array_equal(label[origins[:, 0], origins[:, 1]], chosen) and (roi[origins[:, 0], origins[:, 1]] == 1).all()


@pytest.mark.parametrize("border", ["shift", "pad", "drop"])
def test_grid_batches_equal_the_batched_patch_stream(border):
    ds = t.dataset([(37, 53), (29, 41), (8, 70)], dtype="uint16")
    stage = P.ExtractPatches((16, 12), (8, 6), border=border, chunk_size=7)
    want = [{k: v.numpy() for k, v in b.items()} for b in ds.apply(stage).batch(10)]
    got = [{k: v.numpy() for k, v in b.items()} for b in stage.batches(ds, 10)]
    assert len(got) == len(want) and all(g.keys() == w.keys() for g, w in zip(got, want))
    assert all(np.array_equal(g[k], w[k]) for g, w in zip(got, want) for k in w)


def _arrays(sizes, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    labels = [rng.integers(0, 3, (h, w), dtype=np.uint8) for h, w in sizes]
    for lab in labels:
        lab[rng.random(lab.shape) < 0.1] = 255
    return images, labels


def _dynamic(ds):
    """The same stream with its height and width hidden from the element spec."""
    return ds.map(lambda e: {k: (tf.compat.v1.placeholder_with_default(v, [None, None, *v.shape[2:]])
                                 if v.shape.rank >= 2 else v) for k, v in e.items()})


@pytest.mark.parametrize("patch, stride, border, planned", [
    (16, 8, "shift", True), (16, 8, "pad", True), (16, 6, "shift", True),
    ((16, 12), (8, 6), "shift", False),  # width 64 is not a multiple of gcd(12, 6): rebuilt table
    (48, 16, "shift", False),  # taller than the image: padded
])
def test_grid_planned_on_static_sizes_equals_the_graph_plan(patch, stride, border, planned):
    # from_arrays states one size in the element spec; the grid is then planned at trace
    # time (when it needs no padding and no rebuilt table) and must cut what the per-element
    # graph plan cuts on the same stream with the size hidden.
    from fcndata.sources import from_arrays

    ds = from_arrays(*_arrays([(40, 64), (40, 64)]), num_classes=3)
    assert ds.element_spec["image"].shape.as_list() == [40, 64, 3]
    hidden = _dynamic(ds)
    assert hidden.element_spec["image"].shape.as_list() == [None, None, 3]
    stage = P.ExtractPatches(patch, stride, border=border, chunk_size=5)
    assert (stage._static_origins(ds.element_spec) is not None) == planned
    for cut in (lambda d: stage.batches(d, 7), lambda d: d.apply(stage).batch(7)):
        want = [{k: v.numpy() for k, v in b.items()} for b in cut(hidden)]
        got = [{k: v.numpy() for k, v in b.items()} for b in cut(ds)]
        assert len(got) == len(want) > 0
        assert all(np.array_equal(g[k], w[k]) for g, w in zip(got, want) for k in w)


def test_from_arrays_states_the_size_only_when_all_images_share_it():
    from fcndata.sources import from_arrays

    assert from_arrays(*_arrays([(40, 64), (41, 64)]), num_classes=3).element_spec["image"].shape.as_list() == [None, None, 3]
    assert from_arrays(*_arrays([(40, 64)] * 3), num_classes=3).element_spec["label"].shape.as_list() == [40, 64]


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_class_tile_counts_equal_numpy_with_static_and_dynamic_sizes(dtype):
    rng = np.random.default_rng(7)
    spec = tf.TensorSpec([None, None], tf.as_dtype(dtype))
    for h, w in [(150, 200), (64, 64), (1, 1), (0, 5), (130, 3)]:
        label = rng.integers(0, 4, (h, w)).astype(dtype)
        label[rng.random(label.shape) < 0.05] = 255
        roi = (rng.random(label.shape) > 0.1).astype(np.uint8)
        want = np.array([[np.sum((label[y:y + 64, x:x + 64] == c) & (roi[y:y + 64, x:x + 64] > 0)) for c in range(3)]
                         for y in range(0, h, 64) for x in range(0, w, 64)]).reshape(-1, 3)
        static = S.class_tile_counts(tf.constant(label), tf.constant(roi), 3).numpy()
        dynamic = tf.function(lambda a, b: S.class_tile_counts(a, b, 3),
                              input_signature=[spec, tf.TensorSpec([None, None], tf.uint8)])(label, roi).numpy()
        assert np.array_equal(static, want) and np.array_equal(dynamic, want), (h, w)
