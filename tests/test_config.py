"""Tests for the recipes in pipelines/ and the strict config loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fcndata import config as C

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))


def test_there_are_recipes():
    assert {p.name for p in PIPELINES} >= {"shapes.yaml", "brain.yaml", "digits.yaml", "folder.yaml"}


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_recipe_loads_and_says_what_it_is_for(path):
    assert path.read_text().startswith("#"), f"{path.name} must open with a comment saying what it is for"
    cfg = C.load_config(path)
    assert cfg.source == str(path) and cfg.data.root == str(path.parent.resolve())
    assert cfg.data.class_names is None or len(cfg.data.class_names) == cfg.data.num_classes
    C.config_from_dict(C.to_dict(cfg))  # the resolved config round-trips


def test_misspelled_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("data:\n  num_clases: 3\n")
    with pytest.raises(C.ConfigError, match=r"x.yaml: unknown key 'num_clases' in section 'data'; did you mean "
                       r"'num_classes'\? Valid keys: source, num_classes"):
        C.load_config(path)


def test_wrong_type(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("data:\n  num_classes: three\n")
    with pytest.raises(C.ConfigError, match=r"section 'data': key 'num_classes' must be an integer. Received: "
                       r"num_classes='three'"):
        C.load_config(path)


def test_set_override():
    cfg = C.load_config(PIPELINES[0].parent / "brain.yaml", ["data.slice_step=4", "batching.batch_size=2"])
    assert cfg.data.slice_step == 4 and cfg.batching.batch_size == 2
    with pytest.raises(C.ConfigError, match=r"overrides look like section.key=value"):
        C.load_config(None, ["slice_step=4"])


def test_unknown_section():
    with pytest.raises(C.ConfigError, match=r"unknown section 'batchig'; did you mean 'batching'\?"):
        C.load_config_text("batchig: {batch_size: 2}", name="y.yaml")


# ---------------------------------------------------------------------------- every section checked at load time


@pytest.mark.parametrize("text, message", [
    ("augment: {rotate: 500}", r"x.yaml: augment.rotate must be in \[0, 180\]; it is the maximum absolute angle in "
                               r"degrees. Received: augment.rotate=500.0"),
    ("augment: {probability: 1.5}", r"x.yaml: augment.probability must be in \[0, 1\]"),
    ("augment: {scale: [1.2, 0.8]}", r"x.yaml: Augment: scale must satisfy 0 < min <= max, e.g. \[0.75, 1.25\] \(config "
                                     r"key augment.scale\)"),
    ("loss: {name: sum, terms: [{name: dice, wieght: 0.5}]}",
     r"x.yaml: loss.terms\[0\]: unknown key 'wieght'; did you mean 'weight'\? Valid keys: name, weight, gamma"),
    ("loss: {name: sum, terms: [{name: dise}]}", r"x.yaml: loss.terms\[0\].name must be one of \['cross_entropy'"),
    ("loss: {name: sum}", r"x.yaml: loss.terms: name 'sum' needs a list of terms"),
    ("loss: {name: focal, alpha: [0.25, 1.0]}", r"x.yaml: loss.alpha needs one value per class, num_classes=3"),
    ("train: {epochs: 0}", r"x.yaml: train.epochs must be >= 1. Received: train.epochs=0"),
    ("train: {learning_rate: -0.1}", r"x.yaml: train.learning_rate must be > 0. Received: train.learning_rate=-0.1"),
    ("train: {momentum: 1.0}", r"x.yaml: train.momentum must be in \[0, 1\)"),
    ("train: {weight_decay: -1}", r"x.yaml: train.weight_decay must be >= 0; 0 turns weight decay off"),
    ("train: {verbose: 3}", r"x.yaml: train.verbose must be one of \[0, 1, 2\]"),
    ("train: {epochs: 2, steps_per_epoch: 5, warmup_steps: 10}",
     r"x.yaml: train.warmup_steps must be fewer than the training steps \(train.epochs x train.steps_per_epoch = 10\)"),
    ("sampling: {class_weights: [1, 2]}", r"x.yaml: sampling.class_weights needs one weight per class, num_classes=3"),
    ("data: {min_size: 50, max_size: 40}", r"x.yaml: data.max_size must be >= data.min_size"),
    ("data: {source: folder, images: 'a/*.png', masks: 'b/{stem}.png', val_images: 'c/*.png'}",
     r"x.yaml: data.val_images and data.val_masks go together"),
    ("data: {source: folder, masks: 'b/{stem}.png'}", r"x.yaml: data.images is needed with data.source=folder"),
    ("model: {dropout: 1.0}", r"x.yaml: model.dropout must be in \[0, 1\)"),
    ("predict: {batch_size: 0}", r"x.yaml: predict.batch_size must be >= 1"),
])
def test_every_section_is_checked_when_the_recipe_loads(text, message):
    with pytest.raises(C.ConfigError, match=message):
        C.load_config_text(text, name="x.yaml")


def test_set_names_the_override_that_is_wrong():
    with pytest.raises(C.ConfigError) as e:
        C.load_config(PIPELINES[0].parent / "shapes.yaml", ["patches.stide=16"])
    assert str(e.value).startswith("--set patches.stide=16: unknown key 'stide' in section 'patches'; did you mean "
                                   "'stride'? Valid keys: mode, patch_size, stride, ")
    with pytest.raises(C.ConfigError, match=r"--set trian.epochs=2: unknown section 'trian'; did you mean 'train'\?"):
        C.load_config(None, ["trian.epochs=2"])


def test_a_recipe_without_validation_files_says_so():
    folder = "data: {source: folder, images: 'a/*.png', masks: 'b/{stem}.png'}"
    assert not C.load_config_text(folder).data.has_validation
    with_val = folder[:-1] + ", val_images: 'c/*.png', val_masks: 'd/{stem}.png'}"
    assert C.load_config_text(with_val).data.has_validation
    assert C.load_config_text("data: {source: shapes}").data.has_validation


def test_the_augment_section_is_the_augment_stage():
    from fcndata.augment import Augment

    cfg = C.load_config_text("data: {seed: 13, ignore_label: 99}\naugment: {rotate: 5.0}")
    assert cfg.augment == Augment(rotate=5.0, seed=13, ignore_label=99)  # seed and ignore_label from data:
    assert C.load_config_text("data: {seed: 13}\naugment: {seed: 2}").augment.seed == 2
    with pytest.raises(C.ConfigError, match=r"x.yaml: unknown key 'ignore_label' in section 'augment'"):
        C.load_config_text("augment: {ignore_label: 3}", name="x.yaml")
    # written and read back: ignore_label stays under data:
    assert "ignore_label" not in C.to_dict(cfg)["augment"]
    assert C.config_from_dict(C.to_dict(cfg)) == cfg


# ---------------------------------------------------------------------------- no silent substitutions


def _optimizer(*overrides, steps=10):
    from fcndata.train import make_optimizer

    return make_optimizer(C.load_config(None, list(overrides)), steps)


def test_weight_decay_zero_means_zero():
    assert _optimizer("train.optimizer=adamw", "train.weight_decay=0").weight_decay == 0
    assert _optimizer("train.optimizer=adamw").weight_decay == pytest.approx(0.004)  # null: Keras' AdamW default
    assert _optimizer("train.optimizer=adamw", "train.weight_decay=0.01").weight_decay == pytest.approx(0.01)
    assert _optimizer("train.optimizer=adam").weight_decay is None


@pytest.mark.parametrize("schedule", ["constant", "cosine", "poly"])
def test_warmup_works_with_every_schedule(schedule):
    from fcndata.train import learning_rate_schedule

    cfg = C.load_config(None, [f"train.schedule={schedule}", "train.epochs=2", "train.learning_rate=0.1"])
    plain = learning_rate_schedule(cfg, 8)  # 16 steps, no warm-up
    warm = learning_rate_schedule(cfg.replace(train=dataclasses.replace(cfg.train, warmup_steps=4)), 10)  # 4 + 16
    values = [float(warm(s)) for s in range(21)]
    assert values[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    # after the warm-up: the plain schedule over the 16 remaining steps
    expected = [0.1] * 16 if schedule == "constant" else [float(plain(s)) for s in range(16)]
    assert values[4:20] == pytest.approx(expected)
    if schedule != "constant":
        assert values[20] == pytest.approx(0.0, abs=1e-6)


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match=r"train.warmup_steps must be fewer than the training steps \(train.epochs x "
                                         r"steps per epoch = 1 x 10 = 10\). Received: train.warmup_steps=10"):
        _optimizer("train.epochs=1", "train.warmup_steps=10")
