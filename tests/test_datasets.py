"""Tests for the built-in datasets (shapes, brain, digits, scenes, phantom) and their dispatch."""

from __future__ import annotations

import dataclasses
import time
import types
from pathlib import Path

import numpy as np
import pytest

from fcndata import elements as E
from fcndata import sources as S
from fcndata.config import DataConfig, load_config
from fcndata.datasets import brain, digits, phantom, scenes, shapes
from fcndata.inspect import inspect_dataset

SHAPES = DataConfig(source="shapes", num_classes=4, num_images=12, val_num_images=4, min_size=31, max_size=47)
BRAIN = DataConfig(source="brain", num_classes=4, channels=1, slice_step=6)
DIGITS = DataConfig(source="digits", num_classes=11, channels=1, num_images=12, val_num_images=4, min_size=40, max_size=60)
SCENES = DataConfig(source="scenes", num_classes=5, num_images=5, val_num_images=3, min_size=61, max_size=83)
PHANTOM = DataConfig(source="phantom", num_classes=12, channels=1, num_images=5, val_num_images=3, min_size=57, max_size=71)
ROOT = Path(__file__).resolve().parent.parent


def arrays(ds):
    return [(e["image"].numpy(), e["label"].numpy(), e["path"].numpy().decode()) for e in ds]


@pytest.mark.parametrize("data", [SHAPES, BRAIN, DIGITS, SCENES, PHANTOM],
                         ids=["shapes", "brain", "digits", "scenes", "phantom"])
def test_elements_follow_the_contract(data):
    for split in ("train", "validation"):
        ds = S.load_source(data, split)
        E.check_spec(ds, where=data.source)
        assert ds.element_spec["image"].shape[-1] == data.channels
        out = list(ds)
        assert [int(e["source_index"]) for e in out] == list(range(len(out)))
        info = inspect_dataset(ds, data.num_classes)
        assert info["ignored_pixels"] == 0 and len(info["shapes"]) > 1  # sizes vary
        assert len(out) == {"train": data.num_images, "validation": data.val_num_images}[split] or data.source == "brain"


def test_shapes_seeded_classes_and_imbalance():
    a, b = arrays(S.load_source(SHAPES)), arrays(S.load_source(SHAPES))
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
    other = arrays(S.load_source(dataclasses.replace(SHAPES, seed=1)))
    assert not (a[0][0].shape == other[0][0].shape and (a[0][0] == other[0][0]).all())
    assert a[0][2] == "shapes/train/0000"
    sizes = {x[0].shape[:2] for x in a}
    assert all(31 <= h <= 47 and 31 <= w <= 47 for h, w in sizes)
    many = dataclasses.replace(SHAPES, num_images=40, class_imbalance=8.0, min_size=40, max_size=48)
    pixels = inspect_dataset(S.load_source(many), 4)["class_pixels"]
    assert all(p > 0 for p in pixels) and pixels[1] > pixels[2] > pixels[3]  # class 1 most frequent
    assert np.std(a[0][0][a[0][1] == 0]) > 20  # textured background, not flat


def test_shapes_other_class_counts_and_channels():
    ds = S.load_source(dataclasses.replace(SHAPES, num_classes=6, channels=1))
    labels = np.concatenate([e["label"].numpy().ravel() for e in ds])
    assert labels.max() <= 5 and ds.element_spec["image"].shape[-1] == 1
    with pytest.raises(ValueError, match=r"class_imbalance .* must be >= 1"):
        S.load_source(dataclasses.replace(SHAPES, class_imbalance=0.5))


def test_brain_classes_shapes_and_split():
    train, val = arrays(S.load_source(BRAIN)), arrays(S.load_source(BRAIN, "validation"))
    assert set(np.unique(np.concatenate([x[1].ravel() for x in train]))) == {0, 1, 2, 3}
    assert {x[0].shape for x in train} == {(95, 117, 1), (95, 99, 1), (117, 99, 1)}
    assert all(x[0].dtype == np.uint8 for x in train)
    train_paths, val_paths = {x[2] for x in train}, {x[2] for x in val}
    assert not train_paths & val_paths and val_paths
    for axis in (0, 1, 2):  # validation is one contiguous slab of the kept slices per axis
        kept = sorted(int(p[-3:]) for p in train_paths | val_paths if f"axis{axis}/" in p)
        held = [i for i, k in enumerate(kept) if f"brain/axis{axis}/slice{k:03d}" in val_paths]
        assert held == list(range(held[0], held[0] + len(held)))
    assert train[0][2].startswith("brain/axis0/slice")
    with pytest.raises(ValueError, match=r"brain dataset: it has 4 classes; set data.num_classes: 4"):
        S.load_source(dataclasses.replace(BRAIN, num_classes=3, class_names=None))


def test_digits_split_pool_and_labels():
    train_pool, val_pool = digits.digit_pools(0, 0.2)
    assert len(val_pool) == 1000 and not set(train_pool) & set(val_pool) and len(train_pool) + len(val_pool) == 5000
    out = arrays(S.load_source(DIGITS))
    labels = np.concatenate([x[1].ravel() for x in out])
    assert labels.max() <= 10 and len(np.unique(labels)) > 3
    for image, label, _ in out:  # digit pixels are bright strokes
        assert image[label > 0].min() >= digits.THRESHOLD
    with pytest.raises(ValueError, match=r"digits dataset: it has 11 classes"):
        S.load_source(dataclasses.replace(DIGITS, num_classes=10))


def _recipe_data(name: str, **changes) -> DataConfig:
    return dataclasses.replace(load_config(ROOT / "pipelines" / f"{name}.yaml").data, **changes)


def _fractions(labels, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.concatenate([x.ravel() for x in labels]), minlength=num_classes)
    return counts / counts.sum()


@pytest.mark.parametrize("module, data", [(scenes, SCENES), (phantom, PHANTOM)], ids=["scenes", "phantom"])
def test_new_datasets_are_seeded_sized_and_typed(module, data):
    images, labels, paths = module.arrays(data)
    module.generate.cache_clear()  # regenerate: the same seed must give the same arrays, not the cached ones
    again, again_labels, _ = module.arrays(data)
    assert all((a == b).all() for a, b in zip(images, again)) and all((a == b).all() for a, b in zip(labels, again_labels))
    other, _, _ = module.arrays(dataclasses.replace(data, seed=1))
    assert not any(a.shape == b.shape and (a == b).all() for a, b in zip(images, other))
    val, _, val_paths = module.arrays(data, "validation")
    assert len(images) == data.num_images and len(val) == data.val_num_images
    assert paths[0] == f"{data.source}/train/0000" and val_paths[0] == f"{data.source}/validation/0000"
    assert all(data.min_size <= s <= data.max_size for x in images + val for s in x.shape[:2])
    assert len({x.shape for x in images}) > 1  # sizes vary
    dtype = {"scenes": np.uint8, "phantom": np.uint16}[data.source]
    assert all(x.dtype == dtype and x.shape[-1] == data.channels for x in images)
    assert all(y.dtype == np.uint8 and y.max() < data.num_classes for y in labels)
    ds = S.load_source(data)
    E.check_spec(ds, where=data.source)
    assert ds.element_spec["image"].dtype.as_numpy_dtype == dtype and ds.element_spec["label"].shape.rank == 2
    with pytest.raises(ValueError, match=rf"{data.source} dataset: it has {data.num_classes} classes; "
                                         rf"set data.num_classes: {data.num_classes}"):
        module.arrays(dataclasses.replace(data, num_classes=3, class_names=None))


def test_scenes_recipe_sizes_classes_and_overlapping_colours():
    data = _recipe_data("scenes", num_images=12, val_num_images=2)
    assert (data.min_size, data.max_size) == (512, 640) and data.class_names == scenes.CLASS_NAMES
    start = time.perf_counter()
    images, labels, _ = scenes.arrays(data)
    seconds = time.perf_counter() - start
    assert all(512 <= s <= 640 for x in images for s in x.shape[:2])
    fraction = _fractions(labels, 5)
    assert (fraction > 0.01).all() and 0.5 < fraction[0] < 0.85, fraction  # every class, none swamped
    # No class has its own brightness: each class's middle half overlaps the background's.
    brightness = [np.concatenate([x[y == k].mean(-1) for x, y in zip(images, labels)]) for k in range(5)]
    low, high = np.percentile(brightness[0], [25, 75])
    for k in range(1, 5):
        q1, q3 = np.percentile(brightness[k], [25, 75])
        assert q1 < high and q3 > low, (scenes.CLASS_NAMES[k], (q1, q3), (low, high))
    assert seconds < 30  # ~0.4 s on 2 cores for these 12; a slow generator shows up here first


def test_phantom_recipe_ct_values_rare_classes_and_every_class_in_train():
    data = _recipe_data("phantom")
    assert data.class_names == phantom.CLASS_NAMES and (data.num_images, data.val_num_images) == (120, 30)
    images, labels, _ = phantom.arrays(data)
    assert all(160 <= s <= 256 for x in images for s in x.shape[:2])
    fraction = _fractions(labels, 12)
    assert (fraction > 0).all(), fraction  # every class is in the training split
    rare = [phantom.CLASS_NAMES[k] for k in np.flatnonzero(fraction < 0.005)]
    assert set(rare) >= {"aorta", "gallbladder", "adrenal", "lesion"}, rare
    val_fraction = _fractions(phantom.arrays(data, "validation")[1], 12)
    assert (val_fraction[[6, 7, 8]] > 0).all()  # aorta, spine and rib are in every slice
    pixels = np.concatenate([x.ravel() for x in images]).astype(np.int64)
    label = np.concatenate([y.ravel() for y in labels])
    # CT's storage: HU + 1024 (air near 0, soft tissue just above 1024, bone far above)
    assert np.percentile(pixels[label == 0], 10) < 100 and pixels.max() > 1800
    assert 1000 < np.median(pixels[label == 2]) < 1120 and np.median(pixels[label == 7]) > 1300
    # soft-tissue classes overlap in HU: the liver's middle half overlaps spleen, kidney, aorta and lesion
    l1, l3 = np.percentile(pixels[label == 2], [5, 95])
    for k in (3, 4, 6, 11):
        q1, q3 = np.percentile(pixels[label == k], [25, 75])
        assert q1 < l3 and q3 > l1, phantom.CLASS_NAMES[k]


@pytest.mark.parametrize("name, module, changes", [("scenes", scenes, {"num_images": 12, "val_num_images": 4}),
                                                   ("phantom", phantom, {})], ids=["scenes", "phantom"])
def test_a_per_pixel_brightness_rule_does_not_segment_them(name, module, changes):
    # The best rule from a pixel's brightness alone (the majority class of each of 256 brightness
    # bins, fitted on train) scores 0.17 (scenes) and 0.24 (phantom) mean IoU on validation.
    data = _recipe_data(name, **changes)
    k = data.num_classes
    (x, y, _), (vx, vy, _) = module.arrays(data), module.arrays(data, "validation")

    def grey(images):
        return np.concatenate([a.reshape(-1, a.shape[-1]).mean(-1) for a in images])

    g, vg = grey(x), grey(vx)
    y, vy = np.concatenate([a.ravel() for a in y]), np.concatenate([a.ravel() for a in vy])
    edges = np.linspace(0, g.max() + 1, 257)
    table = np.zeros((258, k))
    np.add.at(table, (np.digitize(g, edges), y), 1)
    pred = table.argmax(1)[np.digitize(vg, edges)]
    iou = [((pred == c) & (vy == c)).sum() / ((pred == c) | (vy == c)).sum() for c in range(k) if (vy == c).any()]
    assert np.mean(iou) < 0.35, np.round(iou, 2)


def test_datasets_dispatch_through_one_table():
    from fcndata import datasets
    from fcndata.sections import BUILTIN_SOURCES

    assert set(datasets.MODULES) == set(BUILTIN_SOURCES)
    images, _, _ = datasets.arrays(SCENES, "validation")
    assert len(images) == SCENES.val_num_images
    with pytest.raises(ValueError, match=r"not a built-in dataset; choose one of \['shapes'"):
        datasets.arrays(types.SimpleNamespace(source="folder"))


def test_loads_are_cached():
    assert shapes.generate.cache_info().hits + brain.slices.cache_info().hits + digits.generate.cache_info().hits > 0


def test_inspect_command_reports_sizes_classes_and_rejected_files(folder, capsys):
    from fcndata import inspect as I

    (folder / "images" / "z.png").write_bytes(b"")  # an empty image with a mask
    (folder / "masks" / "z.png").write_bytes((folder / "masks" / "a.png").read_bytes())
    recipe = folder / "r.yaml"
    recipe.write_text("# test\ndata: {source: folder, images: 'images/*.png', masks: 'masks/{stem}.png', "
                      "num_classes: 3, class_names: [bg, one, two], on_error: skip}\n")
    assert I.main(["--config", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "shapes  13x17 x1, 11x9 x1, 15x12 x1" in out
    assert " 1 one" in out and "rejected files: 1" in out and "z.png is an empty file (0 bytes)" in out
    assert I.main(["--config", str(recipe), "--set", "data.num_clases=3"]) == 2
    assert "did you mean 'num_classes'" in capsys.readouterr().err
