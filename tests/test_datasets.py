"""Tests for the built-in datasets (shapes, brain, digits) and their dispatch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fcndata import elements as E
from fcndata import sources as S
from fcndata.config import DataConfig
from fcndata.datasets import brain, digits, shapes
from fcndata.inspect import inspect_dataset

SHAPES = DataConfig(source="shapes", num_classes=4, num_images=12, val_num_images=4, min_size=31, max_size=47)
BRAIN = DataConfig(source="brain", num_classes=4, channels=1, slice_step=6)
DIGITS = DataConfig(source="digits", num_classes=11, channels=1, num_images=12, val_num_images=4, min_size=40, max_size=60)


def arrays(ds):
    return [(e["image"].numpy(), e["label"].numpy(), e["path"].numpy().decode()) for e in ds]


@pytest.mark.parametrize("data", [SHAPES, BRAIN, DIGITS], ids=["shapes", "brain", "digits"])
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
