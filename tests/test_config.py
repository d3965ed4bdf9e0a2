"""Tests for the recipes in pipelines/ and the strict config loader."""

from __future__ import annotations

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
