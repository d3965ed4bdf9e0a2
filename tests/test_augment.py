"""Tests for fcndata.augment: joint geometry, fills, determinism, the albumentations bridge."""

from __future__ import annotations

import json

import albumentations as A
import cv2
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import fcndata.testing as t
from fcndata import elements as E
from fcndata.albumentations_bridge import Albumentations
from fcndata.augment import (
    Augment,
    affine_matrix,
    affine_transform,
    crop_window,
)
from fcndata.config import load_config_text

IGNORE = 255


# ---------------------------------------------------------------------------- helpers


def block_label(h: int, w: int) -> np.ndarray:
    """Blocks of 3 classes varying along both axes, plus an ignored corner (roi 0)."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    label = ((rows // 10 + cols // 13) % 3).astype(np.uint8)
    label[:4, :5] = IGNORE
    return label


def code(label: np.ndarray) -> np.ndarray:
    """The label-encoding image value: 40 * label + 10 (ignored pixels 250)."""
    return np.where(label == IGNORE, 250, label.astype(np.int32) * 40 + 10)


def coded_element(h=37, w=53, source_index=0, channels=3, with_weight=False):
    label = block_label(h, w)
    image = np.repeat(code(label)[..., None], channels, axis=-1).astype(np.uint8)
    e = E.make_element(
        tf.constant(image),
        tf.constant(label),
        source_index=source_index,
        path=f"coded#{source_index}",
    )
    if with_weight:
        # 1.0, 1.1, 1.2 on classes 0, 1, 2 and 0.5 on the ignored corner
        e[E.WEIGHT] = tf.constant(
            np.where(label == IGNORE, 0.5, 1.0 + label / 10.0).astype(np.float32)
        )
    return e


def coded_dataset(n=4, sizes=((37, 53), (29, 41)), with_weight=False):
    ds = None
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        one = tf.data.Dataset.from_tensors(coded_element(h, w, i, with_weight=with_weight))
        ds = one if ds is None else ds.concatenate(one)
    return ds


def reversed_dataset(n, sizes=((37, 53), (29, 41))):
    """coded_dataset(n) in reverse order."""
    ds = None
    for i in reversed(range(n)):
        one = tf.data.Dataset.from_tensors(coded_element(*sizes[i % len(sizes)], i))
        ds = one if ds is None else ds.concatenate(one)
    return ds


def collect(ds):
    return [{k: v.numpy() for k, v in e.items()} for e in ds]


def uniform_interior(label: np.ndarray, roi: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood has one label and roi 1 (bilinear sees no edge there)."""
    h, w = label.shape
    ok = np.zeros_like(roi, bool)
    pad_l = np.pad(label.astype(np.int32), radius, constant_values=-1)
    pad_r = np.pad(roi, radius, constant_values=0)
    same = np.ones((h, w), bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= pad_l[dy : dy + h, dx : dx + w] == label
            same &= pad_r[dy : dy + h, dx : dx + w] == 1
    ok[:] = same
    return ok


# ---------------------------------------------------------------------------- TF transforms: geometry

GEOMETRIC = {
    "flip_horizontal": dict(flip_horizontal=True, probability=1.0),
    "flip_vertical": dict(flip_vertical=True, probability=1.0),
    "rot90": dict(rot90=True, probability=1.0),
    "scale": dict(scale=(0.7, 1.5)),
    "crop": dict(crop_size=(30, 60)),
    "scale_crop": dict(scale=(0.7, 1.5), crop_size=(32, 32)),
    "rotate": dict(rotate=30.0),
    "shear": dict(shear=20.0),
    "all": dict(
        flip_horizontal=True,
        flip_vertical=True,
        rot90=True,
        scale=(0.8, 1.3),
        crop_size=(33, 35),
        rotate=25.0,
        shear=10.0,
    ),
}
EXACT = ("flip_horizontal", "flip_vertical", "rot90", "crop")


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_transforms_move_image_and_label_together(name):
    out = collect(coded_dataset(4).apply(Augment(**GEOMETRIC[name], seed=7)))
    for e in out:
        image, label, roi = e["image"].astype(np.int32), e["label"], e["roi"]
        assert image.dtype == np.int32 and e["image"].dtype == np.uint8
        if name in EXACT:
            # pixel copies: the coded image equals the code of the label everywhere inside
            inside = ~((label == IGNORE) & (roi == 0) & (image[..., 0] == 0))
            np.testing.assert_array_equal(image[..., 0][inside], code(label)[inside])
        else:
            checked = uniform_interior(label, roi, radius=2)
            assert checked.mean() > 0.1, "too few interior pixels checked"
            diff = np.abs(image[..., 0] - code(label))[checked]
            assert diff.max() <= 1, f"{name}: image and label moved apart by {diff.max()}"
        # label values are a subset of the input's, plus ignore; filled pixels are roi 0
        assert set(np.unique(label)) <= {0, 1, 2, IGNORE}
        assert not np.any((roi == 1) & (label == IGNORE))


def test_flips_and_rot90_are_exact_permutations():
    e = coded_element()
    src = e["label"].numpy()
    out = Augment(flip_horizontal=True, flip_vertical=True, probability=1.0).augment(e)
    np.testing.assert_array_equal(out["label"].numpy(), src[::-1, ::-1])
    out = Augment(rot90=True, probability=1.0, seed=3).augment(e)
    assert any(np.array_equal(out["label"].numpy(), np.rot90(src, k)) for k in (1, 2, 3))


def test_crop_larger_than_image_pads_with_ignore_and_copies_exactly():
    e = coded_element(29, 41)
    out = Augment(crop_size=(40, 50), seed=1).augment(e)
    label, roi, image = out["label"].numpy(), out["roi"].numpy(), out["image"].numpy()
    assert label.shape == (40, 50) and out["image"].shape == (40, 50, 3)
    real = (roi == 1) | (image[..., 0] == 250)  # the ignored corner keeps its code
    assert real.sum() == 29 * 41
    ys, xs = np.nonzero(real)
    window = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    np.testing.assert_array_equal(label[window], e["label"].numpy())
    np.testing.assert_array_equal(image[window], e["image"].numpy())
    assert np.all(label[~real] == IGNORE) and np.all(roi[~real] == 0) and np.all(image[~real] == 0)


def test_affine_transform_crop_matrix_is_a_pixel_copy():
    e = t.element(9, 11)
    out = affine_transform(e, affine_matrix((9, 11), offset=(2, 3)), (5, 6))
    np.testing.assert_array_equal(out["image"].numpy(), e["image"].numpy()[2:7, 3:9])
    np.testing.assert_array_equal(out["label"].numpy(), e["label"].numpy()[2:7, 3:9])


@pytest.mark.parametrize("offset", [(0, 0), (3, 5), (-4, 7), (10, -6), (-2, -3)])
def test_crop_window_equals_a_translation_through_affine_transform(offset):
    e = coded_element(29, 41, with_weight=True)
    fast = crop_window(e, offset, (24, 45))
    slow = affine_transform(e, affine_matrix((29, 41), offset=offset), (24, 45))
    for key in ("image", "label", "roi", "weight"):
        np.testing.assert_array_equal(fast[key].numpy(), slow[key].numpy(), err_msg=key)


def test_roi_is_zero_exactly_where_pixels_came_from_outside():
    # float32 coordinate image: inside, bilinear interpolation of (row, col) is exact,
    # so the image itself reveals the source coordinate of every output pixel.
    h, w = 37, 53
    e = t.element(h, w, dtype="float32")
    stage = Augment(rotate=40.0, scale=(0.8, 1.2), shear=10.0, crop_size=(45, 49), seed=11)
    for epoch in range(3):
        e["epoch"] = tf.constant(epoch, tf.int64)
        out = stage.augment(e)
        img, roi = out["image"].numpy(), out["roi"].numpy()
        yy, xx = np.meshgrid(np.arange(45), np.arange(49), indexing="ij")
        # fit the output -> source affine map on pixels away from the fill (bilinear blends there)
        fit = uniform_interior(np.zeros_like(roi), roi, radius=1)
        design = np.stack([yy[fit], xx[fit], np.ones(fit.sum())], axis=1)
        coef, *_ = np.linalg.lstsq(design, img[fit][:, :2], rcond=None)
        np.testing.assert_allclose(design @ coef, img[fit][:, :2], atol=1e-3)
        full = np.stack([yy.ravel(), xx.ravel(), np.ones(yy.size)], axis=1) @ coef
        qy, qx = full[:, 0].reshape(yy.shape), full[:, 1].reshape(yy.shape)
        expected = (
            (np.round(qy) >= 0)
            & (np.round(qy) <= h - 1)
            & (np.round(qx) >= 0)
            & (np.round(qx) <= w - 1)
        )
        # tolerance: only pixels whose source lies within 0.01 px of a rounding boundary may differ
        edge = np.minimum.reduce(
            [np.abs(qy + 0.5), np.abs(qy - h + 0.5), np.abs(qx + 0.5), np.abs(qx - w + 0.5)]
        )
        mismatch = (expected != (roi == 1)) & (edge > 0.01)
        assert not mismatch.any(), f"epoch {epoch}: {mismatch.sum()} pixels with a wrong roi"
        assert (roi == 0).any() and (roi == 1).any()
        assert np.all(out["label"].numpy()[roi == 0] == IGNORE)


@settings(max_examples=20, deadline=None)
@given(
    flips=st.booleans(),
    rot90=st.booleans(),
    scale=st.one_of(st.none(), st.tuples(st.floats(0.5, 1.0), st.floats(1.0, 1.6))),
    crop=st.one_of(st.none(), st.tuples(st.integers(5, 60), st.integers(5, 60))),
    rotate=st.floats(0, 90),
    shear=st.floats(0, 30),
    seed=st.integers(0, 2**31 - 1),
    size=st.sampled_from(t.ODD_SIZES),
)
def test_label_values_stay_a_subset_plus_ignore(
    flips, rot90, scale, crop, rotate, shear, seed, size
):
    e = coded_element(*size, with_weight=True)
    stage = Augment(
        flip_horizontal=flips,
        flip_vertical=flips,
        rot90=rot90,
        scale=scale,
        crop_size=crop,
        rotate=rotate,
        shear=shear,
        seed=seed,
    )
    out = stage.augment(e)
    label, roi, weight = out["label"].numpy(), out["roi"].numpy(), out["weight"].numpy()
    assert set(np.unique(label)) <= set(np.unique(e["label"].numpy())) | {IGNORE}
    assert set(np.unique(roi)) <= {0, 1}
    # every input roi-0 pixel is ignore, every filled pixel is ignore with roi 0 and weight 0
    np.testing.assert_array_equal(roi == 0, label == IGNORE)
    assert np.all(weight[(roi == 0) & (weight != 0.5)] == 0.0)
    values = np.unique(weight)
    assert np.all(np.isclose(values[:, None], [0.0, 0.5, 1.0, 1.1, 1.2]).any(axis=1)), values
    if crop is not None:
        assert label.shape == crop


# ---------------------------------------------------------------------------- TF transforms: photometric


def test_photometric_changes_only_the_image_and_keeps_dtype():
    stage = Augment(
        brightness=0.2,
        contrast=0.3,
        gamma=0.3,
        hue=0.1,
        saturation=0.3,
        noise_std=0.05,
        blur_sigma=1.5,
        probability=1.0,
        seed=2,
    )
    e = t.element(37, 53)
    out = stage.augment(e)
    assert out["image"].dtype == tf.uint8 and out["image"].shape == e["image"].shape
    assert not np.array_equal(out["image"].numpy(), e["image"].numpy())
    for key in ("label", "roi", "origin", "source_shape", "source_index", "path"):
        np.testing.assert_array_equal(out[key].numpy(), e[key].numpy())
    for dtype in ("uint16", "float32"):
        e2 = t.element(17, 17, dtype=dtype)
        assert stage.augment(e2)["image"].dtype == e2["image"].dtype


def test_photometric_saturates_instead_of_wrapping():
    e = E.make_element(tf.fill([5, 7, 3], tf.constant(250, tf.uint8)), tf.zeros([5, 7], tf.uint8))
    out = Augment(brightness=1.0, probability=1.0, seed=0).augment(e)["image"].numpy()
    # the same draw on a float32 image (not clipped) gives the exact shift; uint8 must be it, saturated
    f = E.make_element(tf.fill([5, 7, 3], tf.constant(250 / 255, tf.float32)), tf.zeros([5, 7], tf.uint8))
    shifted = 255 * Augment(brightness=1.0, probability=1.0, seed=0).augment(f)["image"].numpy()
    assert shifted[0, 0, 0] != pytest.approx(250, abs=1)  # the draw moved the pixel
    assert len(np.unique(out)) == 1
    np.testing.assert_allclose(out.astype(np.float32), np.clip(np.round(shifted), 0, 255), atol=1)
    bright = [
        Augment(brightness=1.0, probability=1.0, seed=s).augment(e)["image"].numpy()[0, 0, 0]
        for s in range(8)
    ]
    assert (
        255 in bright and min(bright) < 250
    )  # saturated up, and some draws went down without wrapping


def test_probability_zero_is_identity():
    e = t.element(37, 53)
    stage = Augment(
        flip_horizontal=True, rot90=True, brightness=0.5, blur_sigma=2.0, probability=0.0
    )
    out = stage.augment(e)
    for key in ("image", "label", "roi"):
        np.testing.assert_array_equal(out[key].numpy(), e[key].numpy())


def test_blur_works_on_images_smaller_than_the_kernel():
    e = t.element(4, 5)
    out = Augment(blur_sigma=3.0, probability=1.0).augment(e)
    assert out["image"].shape == (4, 5, 3)


def test_hue_needs_three_channels():
    with pytest.raises(
        ValueError, match="hue and saturation need RGB images.*Received: channels=1"
    ):
        t.dataset([(5, 7)], channels=1).apply(Augment(hue=0.1))


# ---------------------------------------------------------------------------- TF transforms: determinism, spec, errors

FULL = dict(
    flip_horizontal=True,
    flip_vertical=True,
    rot90=True,
    scale=(0.8, 1.2),
    crop_size=(24, 24),
    rotate=20.0,
    shear=5.0,
    brightness=0.1,
    contrast=0.2,
    gamma=0.2,
    hue=0.05,
    saturation=0.2,
    noise_std=0.02,
    blur_sigma=1.0,
)


def test_same_seed_same_output_with_autotune_different_seed_differs():
    ds = coded_dataset(8).apply(E.Epochs(2))  # numbered epochs: keys are (seed, epoch, source_index)
    augmented = ds.apply(Augment(**FULL, seed=5))
    a, b = collect(augmented), collect(augmented)  # two runs of the parallel, autotuned map
    c = collect(ds.apply(Augment(**FULL, seed=6)))
    # serial, one element at a time, in reverse order: parallel workers do not matter
    epoch0 = lambda e: {**e, "epoch": tf.constant(0, tf.int64)}
    serial = collect(
        reversed_dataset(8).map(epoch0).map(
            tf.autograph.experimental.do_not_convert(Augment(**FULL, seed=5).augment)
        )
    )[::-1]
    for x, y, z in zip(a[:8], b[:8], serial):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
            np.testing.assert_array_equal(x[key], z[key])
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
    # the same element in the next epoch gets a fresh draw
    assert not np.array_equal(a[0]["image"], a[8]["image"])


def test_hand_composed_epochs_differ_and_replay_from_the_seed():
    ds = coded_dataset(4)
    augmented = ds.apply(Augment(**FULL, seed=5))
    first, second = collect(augmented), collect(augmented)  # two iterations = two Keras epochs
    assert all(not np.array_equal(x["image"], y["image"]) for x, y in zip(first, second))
    again = ds.apply(Augment(**FULL, seed=5))  # a fresh pipeline with the same seed
    for x, y in zip(first + second, collect(again) + collect(again)):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_epoch_changes_the_draw():
    e0, e1 = coded_element(), coded_element()
    e1["epoch"] = tf.constant(1, tf.int64)
    stage = Augment(**FULL, seed=5)
    assert not np.array_equal(
        stage.augment(e0)["image"].numpy(), stage.augment(e1)["image"].numpy()
    )


def test_element_spec_is_kept():
    ds = coded_dataset(2, with_weight=True).apply(Augment(**FULL))
    E.check_spec(ds)
    spec = ds.element_spec
    assert spec["image"].shape.as_list() == [24, 24, 3] and spec["image"].dtype == tf.uint8
    assert spec["label"].shape.as_list() == [24, 24] and spec["weight"].dtype == tf.float32
    spec = coded_dataset(2).apply(Augment(rotate=10.0)).element_spec
    assert spec["image"].shape.as_list() == [None, None, 3]


def test_disabled_stage_is_identity_and_repr_is_the_log_line():
    ds = coded_dataset(1)
    assert Augment()(ds) is ds
    assert repr(Augment(rotate=10.0, seed=3)) == "Augment(rotate=10.0, seed=3)"
    assert Augment(crop_size=32).crop_size == (32, 32)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(rotate=200.0),
            ValueError,
            r"augment.rotate must be in \[0, 180\].*Received: augment.rotate=200.0",
        ),
        (
            dict(scale=(1.2, 0.8)),
            ValueError,
            r"scale must satisfy 0 < min <= max.*Received: scale=\(1.2, 0.8\)",
        ),
        (dict(scale=1.2), TypeError, r"scale must be a \[min, max\] pair.*Received: scale=1.2"),
        (
            dict(crop_size=(0, 4)),
            ValueError,
            r"crop_size must be a positive int.*Received: crop_size=\(0, 4\)",
        ),
        (
            dict(probability=1.5),
            ValueError,
            r"augment.probability must be in \[0, 1\].*Received: augment.probability=1.5",
        ),
        (dict(gamma=1.0), ValueError, r"augment.gamma must be in \[0, 1\).*Received: augment.gamma=1.0"),
        (dict(brightness="a"), TypeError, r"augment.brightness must be a number.*Received: augment.brightness='a'"),
        (
            dict(flip_horizontal=1),
            TypeError,
            r"flip_horizontal must be true or false.*Received: flip_horizontal=1",
        ),
        (dict(seed=-1), ValueError, r"Augment: seed must be >= 0. Received: seed=-1"),
        (dict(seed=1.5), TypeError, r"Augment: seed must be an integer. Received: seed=1.5"),
    ],
)
def test_augment_validates_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        Augment(**kwargs)


def test_uint8_labels_need_ignore_label_below_256():
    with pytest.raises(
        ValueError, match="ignore_label does not fit uint8 labels.*Received: ignore_label=300"
    ):
        coded_dataset(1).apply(Augment(rotate=5.0, ignore_label=300))


def test_module_imports_albumentations_only_inside_the_bridge():
    # a static check (a subprocess importing TF again would cost seconds)
    import ast

    import fcndata.augment as module

    tree = ast.parse(open(module.__file__).read())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level for a in n.names] + [
        n.module for n in top_level if isinstance(n, ast.ImportFrom)
    ]
    assert not any(str(name).startswith("albumentations") for name in names)


# ---------------------------------------------------------------------------- albumentations bridge

FILLING = {
    "affine": A.Affine(rotate=(30, 30), p=1.0, fill_mask=0),
    "rotate": A.Rotate(limit=(25, 25), border_mode=cv2.BORDER_CONSTANT, p=1.0),
    "pad": A.PadIfNeeded(
        min_height=48, min_width=64, border_mode=cv2.BORDER_CONSTANT, fill_mask=7, p=1.0
    ),
    "crop_pad": A.RandomCrop(height=48, width=64, pad_if_needed=True, p=1.0),
}


@pytest.mark.parametrize("name", list(FILLING))
def test_bridge_padding_never_becomes_class_0(name):
    # every real pixel is class 0: any 0 outside them would be padding trained as background
    image = np.full((37, 53, 3), 200, np.uint8)
    e = E.make_element(tf.constant(image), tf.zeros([37, 53], tf.uint8), path="zeros.png")
    out = next(iter(tf.data.Dataset.from_tensors(e).apply(Albumentations(FILLING[name], seed=1))))
    label, roi, img = out["label"].numpy(), out["roi"].numpy(), out["image"].numpy()
    filled = img[..., 0] == 0  # the image fill is 0, real pixels are 200 (+ interpolation at edges)
    assert filled.any()
    assert set(np.unique(label)) <= {0, IGNORE}
    np.testing.assert_array_equal(label == 0, roi == 1)
    assert np.all(label[filled] == IGNORE) and np.all(roi[filled] == 0)
    if name in ("pad", "crop_pad"):
        assert (label == 0).sum() == 37 * 53  # padding adds no class-0 pixel


def test_bridge_forces_fills_and_nearest_without_touching_the_callers_pipeline():
    user = A.Compose(
        [A.Affine(rotate=(10, 10), fill_mask=7, mask_interpolation=cv2.INTER_LINEAR, p=1.0)]
    )
    bridge = Albumentations(user)
    assert user.transforms[0].fill_mask == 7 and bridge.pipeline.transforms[0].fill_mask == 0
    assert bridge.pipeline.transforms[0].mask_interpolation == cv2.INTER_NEAREST


def test_bridge_moves_image_label_roi_and_weight_together():
    pipeline = A.Compose(
        [A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), scale=(0.8, 1.2), p=1.0)]
    )
    out = collect(coded_dataset(4, with_weight=True).apply(E.Epochs(1)).apply(Albumentations(pipeline, seed=3)))
    for e in out:
        label, roi = e["label"], e["roi"]
        checked = uniform_interior(label, roi, radius=2)
        assert checked.mean() > 0.2
        assert np.abs(e["image"][..., 0].astype(int) - code(label))[checked].max() <= 1
        assert set(np.unique(label)) <= {0, 1, 2, IGNORE}
        np.testing.assert_array_equal(roi == 0, label == IGNORE)
        np.testing.assert_allclose(e["weight"][roi == 1], 1.0 + label[roi == 1] / 10.0, rtol=1e-6)


def test_bridge_keeps_dtypes_and_channels():
    e = t.element(17, 17, dtype="uint16")
    e["image"] = e["image"] * 1000  # up to 32000: would not survive an 8-bit detour
    e["label"] = tf.cast(e["label"], tf.int32)
    ds = tf.data.Dataset.from_tensors(e).apply(Albumentations(A.Rotate(limit=20, p=1.0)))
    spec = ds.element_spec
    assert spec["image"].dtype == tf.uint16 and spec["image"].shape.as_list() == [None, None, 3]
    assert spec["label"].dtype == tf.int32
    out = next(iter(ds))
    assert set(np.unique(out["label"].numpy())) <= {0, 1, 2, IGNORE}
    assert out["image"].numpy().max() > 255  # not squashed to 8 bits


PYTHON_PIPELINE = lambda: A.Compose(
    [
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-20, 20), scale=(0.8, 1.2), p=1.0),
        A.RandomBrightnessContrast(p=0.5),
        A.PadIfNeeded(min_height=48, min_width=64, border_mode=cv2.BORDER_CONSTANT, p=1.0),
    ]
)

YAML_RECIPE = """
augment:
  seed: 9
  albumentations:
    transform:
      __class_fullname__: Compose
      p: 1.0
      transforms:
        - {__class_fullname__: HorizontalFlip, p: 0.5}
        - {__class_fullname__: Affine, p: 1.0, rotate: [-20, 20], scale: [0.8, 1.2]}
        - {__class_fullname__: RandomBrightnessContrast, p: 0.5}
        - {__class_fullname__: PadIfNeeded, p: 1.0, min_height: 48, min_width: 64, border_mode: 0}
"""


def _assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.filterwarnings(
    "ignore:Argument.*'padding' are not valid:UserWarning"
)  # albumentations' own to_dict
def test_yaml_pipeline_equals_python_pipeline(tmp_path):
    ds = coded_dataset(6)
    python = collect(ds.apply(Albumentations(PYTHON_PIPELINE(), seed=9)))
    stage = load_config_text(YAML_RECIPE).augment
    assert not stage.enabled and stage.albumentations is not None  # the bridge alone
    _assert_same(collect(ds.apply(stage)), python)
    # the same pipeline as files: A.save YAML (relative to the recipe's folder) and our JSON
    A.save(PYTHON_PIPELINE(), str(tmp_path / "pipe.yaml"), data_format="yaml")
    (tmp_path / "pipe.json").write_text(json.dumps(A.to_dict(PYTHON_PIPELINE())))
    stage = load_config_text(f"data: {{root: '{tmp_path}'}}\naugment: {{albumentations: pipe.yaml, seed: 9}}").augment
    assert stage.albumentations == str(tmp_path / "pipe.yaml")  # relative to data.root
    _assert_same(collect(ds.apply(stage)), python)
    _assert_same(collect(ds.apply(Albumentations(str(tmp_path / "pipe.json"), seed=9))), python)


def test_bridge_same_seed_same_output_in_parallel_different_seed_differs():
    ds = coded_dataset(12).apply(E.Epochs(1))  # epoch 0, as the serial map below sees it
    pipeline = PYTHON_PIPELINE()
    a = collect(ds.apply(Albumentations(pipeline, seed=4)))
    b = collect(ds.apply(Albumentations(pipeline, seed=4)))
    _assert_same(a, b)
    # serial, in reverse order, on one thread: the draws belong to the element, not the worker
    epoch0 = lambda e: {**e, "epoch": tf.constant(0, tf.int64)}
    serial = collect(reversed_dataset(12).map(epoch0).map(Albumentations(pipeline, seed=4).augment))[::-1]
    _assert_same(a, serial)
    c = collect(ds.apply(Albumentations(pipeline, seed=5)))
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_bridge_transforms_are_not_correlated():
    # Compose(seed=...) seeds every child alike, so two p=0.5 flips would always agree
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    bridge = Albumentations(pipeline, seed=0)
    e = t.element(5, 7)
    seen = set()
    for i in range(16):
        e["source_index"] = tf.constant(i, tf.int64)
        img = bridge.augment(e)["image"].numpy()
        seen.add((int(img[0, 0, 0]), int(img[0, 0, 1])))
    assert len(seen) == 4


@pytest.mark.parametrize(
    "transform, error, match",
    [
        (
            "missing.yaml",
            ValueError,
            r"albumentations file not found.*Received: transform='missing.yaml'",
        ),
        (
            3,
            TypeError,
            r"transform must be an albumentations serialisation dict.*Received: transform=int",
        ),
        ({"foo": 1}, ValueError, r"with a 'transform' entry.*Received: keys=\['foo'\]"),
        (
            {"transform": {"__class_fullname__": "NoSuchFlip", "p": 1}},
            ValueError,
            r"albumentations could not build the pipeline \(KeyError",
        ),
    ],
)
def test_bridge_errors(transform, error, match):
    with pytest.raises(error, match=match):
        Albumentations(transform)


def test_augment_with_albumentations_runs_both_in_order():
    stage = load_config_text(
        "data: {seed: 13, ignore_label: 99}\naugment: {flip_horizontal: true, probability: 1.0, albumentations: "
        "{transform: {__class_fullname__: VerticalFlip, p: 1.0}}}").augment
    assert stage.enabled and stage.seed == 13 and stage.ignore_label == 99
    source = next(iter(t.dataset([(5, 7)])))
    out = next(iter(t.dataset([(5, 7)]).apply(stage)))
    # the TF flip left-right, then albumentations' up-down: the image turned by 180 degrees
    np.testing.assert_array_equal(out["image"].numpy(), source["image"].numpy()[::-1, ::-1])
    np.testing.assert_array_equal(out["label"].numpy(), source["label"].numpy()[::-1, ::-1])
